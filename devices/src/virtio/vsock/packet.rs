//! The virtio-vsock packet header and scatter-gather access to descriptor
//! chains.
//!
//! Chains are treated as scatter-gather lists: Linux put header and payload
//! in two descriptors up to 6.1, in one descriptor from 6.2 on, and since
//! mid-2025 splits large TX payloads over several descriptors. Nothing here
//! assumes a particular layout.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Writer};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};

use crate::GuestMem;

/// Size of the packed `virtio_vsock_hdr`.
pub const HDR_LEN: usize = PKT_HEADER_SIZE;
/// Largest payload accepted in one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// `type` of a stream socket packet (the only type offered).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (virtio spec 5.10.6).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset.
    pub const RST: u16 = 3;
    /// Half or full close.
    pub const SHUTDOWN: u16 = 4;
    /// Payload.
    pub const RW: u16 = 5;
    /// Unsolicited credit announcement.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Request for a credit announcement.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded packet header with plain fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

impl Hdr {
    /// Decodes a header from its wire form, using the virtio-vsock crate's
    /// packet accessors.
    pub fn decode(raw: &[u8; HDR_LEN]) -> Hdr {
        let mut buf = [0u8; HDR_LEN];
        // SAFETY: `buf` is a local array that outlives `pkt` and is accessed
        // only through `pkt` while `pkt` exists.
        let pkt = unsafe { VsockPacket::new(&mut buf, None) };
        let Ok(mut pkt) = pkt else {
            return Hdr::default();
        };
        if pkt.set_header_from_raw(raw).is_err() {
            return Hdr::default();
        }
        Hdr {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Encodes the header into its wire form.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut buf = [0u8; HDR_LEN];
        {
            // SAFETY: `buf` is a local array that outlives `pkt` and is
            // accessed only through `pkt` while `pkt` exists.
            let pkt = unsafe { VsockPacket::new(&mut buf, None) };
            if let Ok(mut pkt) = pkt {
                pkt.set_src_cid(self.src_cid)
                    .set_dst_cid(self.dst_cid)
                    .set_src_port(self.src_port)
                    .set_dst_port(self.dst_port)
                    .set_len(self.len)
                    .set_type(self.type_)
                    .set_op(self.op)
                    .set_flags(self.flags)
                    .set_buf_alloc(self.buf_alloc)
                    .set_fwd_cnt(self.fwd_cnt);
            }
        }
        buf
    }

    /// A reply header: source and destination swapped, everything else zero.
    pub fn reply(&self, op: u16) -> Hdr {
        Hdr {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op,
            ..Hdr::default()
        }
    }
}

/// Why a TX chain was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain's buffers are not in guest memory.
    #[error("descriptor chain outside guest memory")]
    BadChain,
    /// Fewer readable bytes than a header.
    #[error("chain shorter than a packet header ({0} bytes)")]
    ShortHeader(usize),
    /// `len` exceeds the chain's readable bytes.
    #[error("header len {len} exceeds the {avail} payload bytes in the chain")]
    ShortPayload {
        /// Header `len`.
        len: u32,
        /// Readable bytes after the header.
        avail: usize,
    },
    /// `len` exceeds [`MAX_PKT_PAYLOAD`].
    #[error("payload of {0} bytes is oversized")]
    Oversized(u32),
    /// The RX chain cannot hold a header.
    #[error("receive buffer of {0} bytes is too small")]
    SmallRxBuffer(usize),
}

/// Reads a TX packet from `chain` into `payload` (cleared first). The header
/// `len` bytes are copied whatever the descriptor layout.
pub fn read_tx(
    mem: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
    payload: &mut Vec<u8>,
) -> Result<Hdr, PacketError> {
    payload.clear();
    let mut reader = chain.reader(mem).map_err(|_| PacketError::BadChain)?;
    let avail = reader.available_bytes();
    if avail < HDR_LEN {
        return Err(PacketError::ShortHeader(avail));
    }
    let mut raw = [0u8; HDR_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::BadChain)?;
    let hdr = Hdr::decode(&raw);
    let len = hdr.len as usize;
    if len > MAX_PKT_PAYLOAD {
        return Err(PacketError::Oversized(hdr.len));
    }
    let avail = avail - HDR_LEN;
    if len > avail {
        return Err(PacketError::ShortPayload {
            len: hdr.len,
            avail,
        });
    }
    payload.resize(len, 0);
    reader
        .read_exact(payload)
        .map_err(|_| PacketError::BadChain)?;
    Ok(hdr)
}

/// A writer over an RX chain's device-writable bytes, or an error if they
/// cannot hold a header.
pub fn rx_writer<'m>(
    mem: &'m GuestMem,
    chain: DescriptorChain<&GuestMem>,
) -> Result<Writer<'m>, PacketError> {
    let writer = chain.writer(mem).map_err(|_| PacketError::BadChain)?;
    let cap = writer.available_bytes();
    if cap < HDR_LEN {
        return Err(PacketError::SmallRxBuffer(cap));
    }
    Ok(writer)
}

/// Writes header and payload (`a` then `b`, the two halves of a ring
/// buffer) through an [`rx_writer`] that has room; returns the bytes
/// written. `hdr.len` must equal the payload length.
pub fn write_rx(w: &mut Writer<'_>, hdr: &Hdr, a: &[u8], b: &[u8]) -> Result<u32, PacketError> {
    w.write_all(&hdr.encode())
        .map_err(|_| PacketError::BadChain)?;
    w.write_all(a).map_err(|_| PacketError::BadChain)?;
    w.write_all(b).map_err(|_| PacketError::BadChain)?;
    u32::try_from(w.bytes_written()).map_err(|_| PacketError::BadChain)
}
