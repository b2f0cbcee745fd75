//! One virtio-blk request: parse a descriptor chain, do the I/O, report.
//!
//! A chain is flattened into segments, checked (every segment inside guest
//! memory, device-readable before device-writable, the status byte last),
//! then split into header (first 16 readable bytes), data and status (last
//! writable byte). Anything malformed is answered with VIRTIO_BLK_S_IOERR;
//! a chain without a writable last byte cannot be answered and is returned
//! with length 0. Guest memory is only touched through slices that
//! vm-memory has bounds-checked.

use std::fs::File;
use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::SECTOR_SIZE;
use super::backing::Backing;
use crate::GuestMem;
use crate::warn_ratelimited;

/// Size of the request header (type, reserved, sector).
pub const HEADER_LEN: u64 = 16;
/// Segments kept per chain; longer chains are rejected.
pub const MAX_SEGMENTS: usize = 1024;

/// The open image and what requests need to know about it.
#[derive(Debug)]
pub struct Disk {
    backing: Backing,
    capacity: u64,
    read_only: bool,
    id: [u8; 20],
}

/// One descriptor, flattened.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: u64,
    len: u64,
}

/// Why a request failed (logged rate-limited, reported as a status).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("descriptor chain is malformed: {0}")]
    BadChain(&'static str),
    #[error("access beyond the end of the disk (sector {sector}, {len} bytes)")]
    OutOfRange { sector: u64, len: u64 },
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("guest buffer outside guest memory")]
    GuestMemory,
    #[error("disk I/O")]
    Io(#[source] io::Error),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl Disk {
    /// Wraps an already opened and locked image of `capacity` sectors.
    pub fn new(backing: Backing, capacity: u64, read_only: bool, id: [u8; 20]) -> Disk {
        Disk {
            backing,
            capacity,
            read_only,
            id,
        }
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The GET_ID serial.
    pub fn id(&self) -> [u8; 20] {
        self.id
    }

    /// Handles one request chain; returns the used length (bytes written to
    /// the chain, status byte included). Never panics on guest input.
    pub fn process(&self, mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> u32 {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut error: Option<&'static str> = None;
        let mut count = 0usize;
        let mut last: Option<(Segment, bool)> = None;
        for desc in chain {
            count += 1;
            let seg = Segment {
                addr: desc.addr().0,
                len: u64::from(desc.len()),
            };
            let write = desc.is_write_only();
            last = Some((seg, write));
            if count > MAX_SEGMENTS {
                error.get_or_insert("too many descriptors");
                continue;
            }
            if !in_memory(mem, seg) {
                error.get_or_insert("descriptor outside guest memory");
            }
            if write {
                writable.push(seg);
            } else if writable.is_empty() {
                readable.push(seg);
            } else {
                error.get_or_insert("device-readable descriptor after a writable one");
            }
        }
        // The status byte is the last byte of the last descriptor.
        let status_addr = match last {
            Some((seg, true)) if seg.len > 0 && in_memory(mem, seg) => seg.addr + seg.len - 1,
            _ => {
                warn_ratelimited!("virtio-blk: chain has no writable status byte");
                return 0;
            }
        };
        if let Some(last) = writable.last_mut() {
            last.len = last.len.saturating_sub(1);
        }
        let result = match error {
            Some(e) => Err(RequestError::BadChain(e)),
            None => self.execute(mem, &readable, &writable),
        };
        let (status, written) = match result {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(RequestError::Unsupported(t)) => {
                warn_ratelimited!("virtio-blk: unsupported request type {t}");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            Err(e) => {
                warn_ratelimited!("virtio-blk: request failed: {e}");
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        if mem
            .write_obj(status as u8, GuestAddress(status_addr))
            .is_err()
        {
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Runs a well-formed request; returns the data bytes written to guest
    /// memory.
    fn execute(
        &self,
        mem: &GuestMem,
        readable: &[Segment],
        writable: &[Segment],
    ) -> Result<u64, RequestError> {
        let mut header = [0u8; HEADER_LEN as usize];
        if total(readable) < HEADER_LEN {
            return Err(RequestError::BadChain("header shorter than 16 bytes"));
        }
        copy_from_guest(mem, readable, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let data_out = total(readable) - HEADER_LEN;
        let data_in = total(writable);
        match kind {
            VIRTIO_BLK_T_IN => {
                if data_out != 0 {
                    return Err(RequestError::BadChain(
                        "IN request with device-readable data",
                    ));
                }
                let offset = self.check_range(sector, data_in)?;
                self.read_to_guest(mem, writable, offset)?;
                Ok(data_in)
            }
            VIRTIO_BLK_T_OUT => {
                if data_in != 0 {
                    return Err(RequestError::BadChain(
                        "OUT request with device-writable data",
                    ));
                }
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.check_range(sector, data_out)?;
                self.write_from_guest(mem, readable, HEADER_LEN, offset)?;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.backing.sync_data().map_err(RequestError::Io)?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = data_in.min(u64::from(VIRTIO_BLK_ID_BYTES));
                copy_to_guest(mem, writable, self.id.get(..n as usize).unwrap_or(&[]))?;
                Ok(n)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Checks that `len` bytes at `sector` are sector-aligned and on the
    /// disk; returns the byte offset.
    fn check_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if len & (SECTOR_SIZE - 1) != 0 {
            return Err(RequestError::Unaligned(len));
        }
        let end = sector.checked_add(len / SECTOR_SIZE);
        match end {
            Some(end) if end <= self.capacity => Ok(sector * SECTOR_SIZE),
            _ => Err(RequestError::OutOfRange { sector, len }),
        }
    }

    fn read_to_guest(
        &self,
        mem: &GuestMem,
        segs: &[Segment],
        mut offset: u64,
    ) -> Result<(), RequestError> {
        for seg in segs {
            for slice in mem.get_slices(GuestAddress(seg.addr), seg.len as usize) {
                let slice = slice.map_err(|_| RequestError::GuestMemory)?;
                let guard = slice.ptr_guard_mut();
                // SAFETY: vm-memory checked that the slice lies inside a
                // mapped guest region, which stays mapped while `mem` is
                // borrowed. The guest handed these bytes to the device, so
                // at worst it races with its own buffer and reads torn data;
                // u8 has no invalid values.
                let buf = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), slice.len()) };
                self.backing
                    .read_exact_at(buf, offset)
                    .map_err(RequestError::Io)?;
                offset += slice.len() as u64;
            }
        }
        Ok(())
    }

    fn write_from_guest(
        &self,
        mem: &GuestMem,
        segs: &[Segment],
        mut skip: u64,
        mut offset: u64,
    ) -> Result<(), RequestError> {
        for seg in segs {
            let s = skip.min(seg.len);
            skip -= s;
            let (addr, len) = (seg.addr + s, seg.len - s);
            for slice in mem.get_slices(GuestAddress(addr), len as usize) {
                let slice = slice.map_err(|_| RequestError::GuestMemory)?;
                let guard = slice.ptr_guard();
                // SAFETY: as in `read_to_guest`; here the memory is only read.
                let buf = unsafe { std::slice::from_raw_parts(guard.as_ptr(), slice.len()) };
                self.backing
                    .write_all_at(buf, offset)
                    .map_err(RequestError::Io)?;
                offset += slice.len() as u64;
            }
        }
        Ok(())
    }
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

fn in_memory(mem: &GuestMem, seg: Segment) -> bool {
    match usize::try_from(seg.len) {
        // Never accessed, so any address will do.
        Ok(0) => true,
        Ok(len) => mem.check_range(GuestAddress(seg.addr), len),
        Err(_) => false,
    }
}

/// Gathers `buf.len()` bytes from the start of `segs`.
fn copy_from_guest(mem: &GuestMem, segs: &[Segment], buf: &mut [u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for seg in segs {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(seg.len as usize);
        let dst = buf
            .get_mut(done..done + n)
            .ok_or(RequestError::GuestMemory)?;
        mem.read_slice(dst, GuestAddress(seg.addr))
            .map_err(|_| RequestError::GuestMemory)?;
        done += n;
    }
    Ok(())
}

/// Scatters `data` over the start of `segs`.
fn copy_to_guest(mem: &GuestMem, segs: &[Segment], data: &[u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for seg in segs {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(seg.len as usize);
        let src = data.get(done..done + n).ok_or(RequestError::GuestMemory)?;
        mem.write_slice(src, GuestAddress(seg.addr))
            .map_err(|_| RequestError::GuestMemory)?;
        done += n;
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, offset)
}

/// Positioned read of exactly `buf.len()` bytes; EOF is an error.
pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Positioned write of all of `buf`.
pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match write_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
