//! Moving frames between descriptor chains and host buffers. Every guest
//! length is checked before anything is allocated or copied, and guest
//! memory is only touched through vm-memory's bounds-checked accessors.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::frame::MAX_FRAME;
use crate::GuestMem;

/// Size of `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1).
pub const HDR_LEN: usize = 12;
/// An Ethernet header: the shortest frame passed either way.
pub const MIN_FRAME: usize = 14;
/// Most descriptors per chain (Linux's big RX buffers use about 20).
pub const MAX_SEGMENTS: usize = 256;
/// `num_buffers` offset in the header.
const NUM_BUFFERS: usize = 10;
/// VIRTIO_NET_HDR_F_NEEDS_CSUM.
const F_NEEDS_CSUM: u8 = 1;

/// Why a chain was refused (logged rate-limited by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A TX chain contains a device-writable descriptor.
    #[error("device-writable descriptor in a TX chain")]
    WritableInTx,
    /// An RX chain contains a device-readable descriptor.
    #[error("device-readable descriptor in an RX chain")]
    ReadableInRx,
    /// A descriptor points outside guest memory.
    #[error("descriptor outside guest memory")]
    OutsideMemory,
    /// The chain has more than [`MAX_SEGMENTS`] descriptors.
    #[error("chain longer than {MAX_SEGMENTS} descriptors")]
    TooLong,
    /// A TX chain's length, header included, is out of bounds.
    #[error("TX chain of {0} bytes (header {HDR_LEN} + frame {MIN_FRAME}..={MAX_FRAME})")]
    BadLength(u64),
    /// The TX header asks for an offload that was not offered.
    #[error("TX header asks for an offload (flags {flags:#x}, gso type {gso})")]
    Offload {
        /// Header flags.
        flags: u8,
        /// GSO type.
        gso: u8,
    },
    /// The frame does not fit the RX buffer.
    #[error("{need}-byte frame with header does not fit a {room}-byte RX buffer")]
    NoRoom {
        /// Bytes needed, header included.
        need: usize,
        /// Bytes the chain offers.
        room: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: u64,
    len: u64,
}

/// Flattens `chain`, checking direction, count and that every descriptor
/// lies in guest memory. Returns the segments and their total length.
fn segments(
    mem: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
    writable: bool,
) -> Result<(Vec<Segment>, u64), ChainError> {
    let mut segs = Vec::new();
    let mut total = 0u64;
    for desc in chain {
        if segs.len() == MAX_SEGMENTS {
            return Err(ChainError::TooLong);
        }
        if desc.is_write_only() != writable {
            return Err(if writable {
                ChainError::ReadableInRx
            } else {
                ChainError::WritableInTx
            });
        }
        let seg = Segment {
            addr: desc.addr().0,
            len: u64::from(desc.len()),
        };
        let len = usize::try_from(seg.len).map_err(|_| ChainError::OutsideMemory)?;
        if len > 0 && !mem.check_range(GuestAddress(seg.addr), len) {
            return Err(ChainError::OutsideMemory);
        }
        total += seg.len;
        segs.push(seg);
    }
    Ok((segs, total))
}

/// Reads a TX chain: checks the header and returns the frame without it.
pub fn read_tx(mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> Result<Vec<u8>, ChainError> {
    let (segs, total) = segments(mem, chain, false)?;
    let min = (HDR_LEN + MIN_FRAME) as u64;
    let max = (HDR_LEN + MAX_FRAME) as u64;
    if !(min..=max).contains(&total) {
        return Err(ChainError::BadLength(total));
    }
    // The header into `hdr`, the rest straight into the frame (bounded by
    // MAX_FRAME above).
    let mut hdr = [0u8; HDR_LEN];
    let mut frame = vec![0u8; (total as usize) - HDR_LEN];
    let mut at = 0usize;
    for seg in &segs {
        let mut addr = seg.addr;
        let mut left = seg.len as usize;
        while left > 0 {
            let dst = if at < HDR_LEN {
                hdr.get_mut(at..HDR_LEN.min(at + left))
            } else {
                frame.get_mut(at - HDR_LEN..at - HDR_LEN + left)
            }
            .ok_or(ChainError::BadLength(total))?;
            let n = dst.len();
            mem.read_slice(dst, GuestAddress(addr))
                .map_err(|_| ChainError::OutsideMemory)?;
            at += n;
            addr += n as u64;
            left -= n;
        }
    }
    let (flags, gso) = (hdr[0], hdr[1]);
    if flags & F_NEEDS_CSUM != 0 || gso != 0 {
        return Err(ChainError::Offload { flags, gso });
    }
    Ok(frame)
}

/// Writes `frame` behind a zeroed header (`num_buffers` = 1) into an RX
/// chain; returns the used length.
pub fn write_rx(
    mem: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
    frame: &[u8],
) -> Result<u32, ChainError> {
    let (segs, room) = segments(mem, chain, true)?;
    let need = HDR_LEN + frame.len();
    if room < need as u64 {
        return Err(ChainError::NoRoom { need, room });
    }
    let mut hdr = [0u8; HDR_LEN];
    hdr[NUM_BUFFERS..].copy_from_slice(&1u16.to_le_bytes());
    let mut pieces = [&hdr[..], frame].into_iter();
    let mut src: &[u8] = pieces.next().unwrap_or(&[]);
    for seg in &segs {
        let mut addr = seg.addr;
        let mut left = seg.len;
        while left > 0 {
            if src.is_empty() {
                match pieces.next() {
                    Some(p) => src = p,
                    None => break,
                }
                continue;
            }
            let n = src.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let (now, rest) = src.split_at(n);
            mem.write_slice(now, GuestAddress(addr))
                .map_err(|_| ChainError::OutsideMemory)?;
            src = rest;
            addr += n as u64;
            left -= n as u64;
        }
    }
    u32::try_from(need).map_err(|_| ChainError::NoRoom { need, room })
}
