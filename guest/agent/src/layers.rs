//! Container roots made of image layers: read-only EROFS images packed
//! into one disk (`ImageRoot::disk`), each attached to a loop device over
//! its window of the disk, mounted read-only and stacked with overlayfs
//! under a tmpfs upper layer, or one on a scratch disk
//! (`ImageRoot::scratch`, an empty ext2/ext4 filesystem made by the host).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use krypton_protocol::ImageRoot;

use crate::rootfs::{mkdir, overlay_on, stage_tmpfs};
use crate::sys::mount;

/// BLKFLSBUF: drop the disk's cached pages. The utility VM may have read
/// the layer disk's first sectors (partition scan) before a template
/// snapshot, when nothing was mapped there yet.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// BLKGETSIZE64: the disk's size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Builds the root of `img` in the staging tmpfs (see `rootfs::stage`).
pub fn stage_image(img: &ImageRoot) -> Result<()> {
    img.check().context("image root")?;
    let disk = File::open(&img.disk).with_context(|| format!("open layer disk {}", img.disk))?;
    let end = img
        .layers
        .iter()
        .map(|l| l.offset + l.size)
        .max()
        .unwrap_or(0);
    let meta = disk.metadata().context("layer disk")?;
    let size = if meta.is_file() {
        meta.len()
    } else {
        block_size(&disk)?
    };
    if size < end {
        bail!(
            "layer disk {} has {size} bytes, the layers need {end}",
            img.disk
        );
    }
    if !meta.is_file() {
        // SAFETY: BLKFLSBUF takes no argument.
        if unsafe { libc::ioctl(disk.as_raw_fd(), BLKFLSBUF, 0) } < 0 {
            bail!(
                "BLKFLSBUF {}: {}",
                img.disk,
                std::io::Error::last_os_error()
            );
        }
    }
    let stage = stage_tmpfs()?;
    let mut lower: Vec<PathBuf> = Vec::with_capacity(img.layers.len());
    for (i, l) in img.layers.iter().enumerate() {
        let dir = stage.join("l").join(i.to_string());
        mkdir(&dir)?;
        let (dev, _handle) = crate::loopdev::attach_direct(&disk, l.offset, l.size)
            .with_context(|| format!("layer {i}"))?;
        mount(&dev, &dir, "erofs", libc::MS_RDONLY | libc::MS_NODEV, "")
            .with_context(|| format!("layer {i} ({} bytes at {})", l.size, l.offset))?;
        lower.push(dir);
    }
    // overlayfs takes the topmost lower layer first.
    lower.reverse();
    if img.scratch.is_empty() {
        return overlay_on(&lower, stage);
    }
    // Like the layer disk: a template's boot may have cached the first
    // sectors of that run's scratch disk (same size, another UUID).
    let dev =
        File::open(&img.scratch).with_context(|| format!("open scratch disk {}", img.scratch))?;
    if dev.metadata().is_ok_and(|m| !m.is_file()) {
        // SAFETY: BLKFLSBUF takes no argument.
        if unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF, 0) } < 0 {
            bail!(
                "BLKFLSBUF {}: {}",
                img.scratch,
                std::io::Error::last_os_error()
            );
        }
    }
    drop(dev);
    let scratch = stage.join("scratch");
    mkdir(&scratch)?;
    mount(&img.scratch, &scratch, "ext4", 0, "")
        .with_context(|| format!("scratch disk {}", img.scratch))?;
    overlay_on(&lower, &scratch)
}

fn block_size(disk: &File) -> Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKGETSIZE64, &mut size) } < 0 {
        bail!("BLKGETSIZE64: {}", std::io::Error::last_os_error());
    }
    Ok(size)
}
