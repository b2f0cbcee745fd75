//! After a snapshot restore: the VM shares its kernel RNG state and its
//! clock with every sibling started from the same template. Mix in the
//! host's fresh entropy, force the CRNG to reseed, and set the wall clock.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

/// `RNDADDENTROPY`: _IOW('R', 0x03, int[2]).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: _IO('R', 0x07).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds `entropy` to the input pool (credited), reseeds the CRNG and sets
/// CLOCK_REALTIME to `unix_time_ns`.
pub fn apply(entropy: &[u8], unix_time_ns: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .context("opening /dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    let bits = i32::try_from(entropy.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(entropy.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(entropy);
    // Whole u32 words for the kernel's buffer type.
    info.resize(8 + entropy.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a complete rand_pool_info of `len` bytes of data,
    // alive for the call; the kernel only reads it.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    crate::sys::check(r).context("RNDADDENTROPY")?;
    // SAFETY: an argument-less ioctl on our own descriptor.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) };
    crate::sys::check(r).context("RNDRESEEDCRNG")?;
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the call.
    let r = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    crate::sys::check(r).context("clock_settime")?;
    Ok(())
}
