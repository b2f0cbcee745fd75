//! Small guest-memory helpers shared by the loaders: every write is range
//! checked first so a bad address becomes a [`BootError`], never a panic.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::BootError;

/// Fails unless `[addr, addr + len)` lies entirely in guest RAM.
pub(crate) fn check(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    len: u64,
) -> Result<(), BootError> {
    let err = || BootError::OutOfGuestMemory { what, addr, len };
    if len == 0 {
        return Ok(());
    }
    addr.checked_add(len).ok_or_else(err)?;
    let len_usize = usize::try_from(len).map_err(|_| err())?;
    if mem.check_range(GuestAddress(addr), len_usize) {
        Ok(())
    } else {
        Err(err())
    }
}

/// Writes `bytes` at `addr`.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), BootError> {
    check(mem, what, addr, bytes.len() as u64)?;
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BootError::GuestWrite { what, addr, source })
}

/// Zeroes `len` bytes at `addr`.
pub(crate) fn zero(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    len: u64,
) -> Result<(), BootError> {
    check(mem, what, addr, len)?;
    const CHUNK: u64 = 64 * 1024;
    let zeros = [0u8; CHUNK as usize];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK);
        // n <= CHUNK, so the slice bound holds.
        write(mem, what, addr + off, &zeros[..n as usize])?;
        off += n;
    }
    Ok(())
}
