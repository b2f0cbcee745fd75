//! Loop devices: an image file, or a window of a disk, as a read-only
//! block device.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};

use crate::sys::check;

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `size` bytes at `offset` of `backing` (0, 0: all of it) to a
/// free loop device, read-only and auto-clearing on last close/unmount.
/// Returns the device path and an open handle: the handle must stay open
/// until the device is mounted, or autoclear detaches it at once.
pub fn attach(backing: &File, offset: u64, size: u64) -> Result<(String, File)> {
    attach_with(backing, offset, size, false)
}

/// [`attach`] with direct I/O to the backing (no second copy of every
/// page in the backing's page cache), 4 KiB loop blocks.
pub fn attach_direct(backing: &File, offset: u64, size: u64) -> Result<(String, File)> {
    attach_with(backing, offset, size, true)
}

fn attach_with(backing: &File, offset: u64, size: u64, direct: bool) -> Result<(String, File)> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("open /dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n = check(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) })
            .context("LOOP_CTL_GET_FREE")?;
        let path = format!("/dev/loop{n}");
        let dev = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: all-zero is a valid LoopConfig.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        cfg.info.offset = offset;
        cfg.info.sizelimit = size;
        if direct {
            cfg.info.flags |= LO_FLAGS_DIRECT_IO;
            cfg.block_size = 4096;
        }
        // SAFETY: cfg is a valid loop_config for LOOP_CONFIGURE.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
        if r == 0 {
            return Ok((path, dev));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) => continue, // raced with another user
            Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                // Kernel before 5.8: LOOP_SET_FD + LOOP_SET_STATUS64.
                // SAFETY: LOOP_SET_FD takes the backing fd.
                if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) } < 0 {
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
                        continue;
                    }
                    bail!("LOOP_SET_FD {path}: {}", std::io::Error::last_os_error());
                }
                // SAFETY: cfg.info is a valid loop_info64.
                check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &cfg.info) })
                    .context("LOOP_SET_STATUS64")?;
                return Ok((path, dev));
            }
            _ => bail!("LOOP_CONFIGURE {path}: {err}"),
        }
    }
    bail!("no free loop device")
}
