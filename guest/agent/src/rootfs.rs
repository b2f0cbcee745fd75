//! Container root filesystem: an ext4 block device or image file (through
//! a loop device) mounted read-only, an overlay with a tmpfs upper layer,
//! minimal /dev, /proc, /sys, /tmp, then `pivot_root`.

use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use krypton_protocol::Mount;

use crate::sys::{check, mount, umount2};

/// Where [`stage`] builds the root.
pub(crate) const STAGE: &str = "/tmp";

pub(crate) fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))
}

/// Builds the container root under a private tmpfs at `/tmp` and pivots
/// into it. Runs in the container init, in its new mount namespace.
pub fn enter(rootfs: &str) -> Result<()> {
    stage(rootfs)?;
    pivot_staged()
}

/// Pivots into the root [`stage`] built.
pub fn pivot_staged() -> Result<()> {
    pivot(&Path::new(STAGE).join("root"))
}

/// Files a container usually runs first: the shell and, in the default
/// busybox rootfs, the binary behind every command.
const WARM: &[&str] = &["bin/sh", "bin/busybox", "usr/bin/env"];

/// Reads [`WARM`] from the staged root into the page cache, so the first
/// exec does not wait for virtio-blk reads page by page (and a template
/// snapshot carries the pages). Best effort.
pub fn warm_page_cache() {
    let root = Path::new(STAGE).join("root");
    for rel in WARM {
        if let Ok(mut f) = File::open(root.join(rel)) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    }
}

/// Undoes [`stage`] (lazily: nothing in it is in use yet).
pub fn unstage() -> Result<()> {
    umount2(STAGE, libc::MNT_DETACH)
}

/// Everything of [`enter`] but the pivot: the rootfs mounted read-only,
/// the overlay with a tmpfs upper layer, /proc, /dev, /sys and /tmp in it.
/// A container init started ahead of time does this for the default
/// rootfs while it waits for its exec.
pub fn stage(rootfs: &str) -> Result<()> {
    let src = Path::new(rootfs);
    let meta = fs::metadata(src).with_context(|| format!("rootfs {rootfs}"))?;
    let (device, _loop_handle) = if meta.file_type().is_block_device() {
        (rootfs.to_owned(), None)
    } else if meta.is_file() {
        let backing = File::open(src).with_context(|| format!("open {rootfs}"))?;
        let (path, handle) = crate::loopdev::attach(&backing, 0, 0)?;
        (path, Some(handle))
    } else {
        bail!("rootfs {rootfs} is neither a block device nor an image file");
    };
    let stage = stage_tmpfs()?;
    let lower = stage.join("lower");
    mkdir(&lower)?;
    mount(&device, &lower, "ext4", libc::MS_RDONLY, "")?;
    overlay(&[lower])
}

/// A private tmpfs at [`STAGE`] for the root's parts.
pub(crate) fn stage_tmpfs() -> Result<&'static Path> {
    let stage = Path::new(STAGE);
    mount(
        "krypton-stage",
        stage,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0700",
    )?;
    Ok(stage)
}

/// The overlay of `lower` (topmost first) under a tmpfs upper layer at
/// `STAGE/root`, with /proc, /dev, /sys, /tmp and resolv.conf in it.
pub(crate) fn overlay(lower: &[std::path::PathBuf]) -> Result<()> {
    overlay_on(lower, Path::new(STAGE))
}

/// [`overlay`] with the upper and work directories under `base` (the
/// staging tmpfs, or a scratch filesystem mounted in it).
pub(crate) fn overlay_on(lower: &[std::path::PathBuf], base: &Path) -> Result<()> {
    let stage = Path::new(STAGE);
    let (upper, work, root) = (base.join("upper"), base.join("work"), stage.join("root"));
    for d in [&upper, &work, &root] {
        mkdir(d)?;
    }
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    mount("overlay", &root, "overlay", 0, &opts)?;
    populate(&root, true)?;
    if let Err(e) = crate::net::install_resolv_conf(&root) {
        log::warn!("resolv.conf: {e:#}");
    }
    Ok(())
}

/// Mounts each virtio-fs share at its target in the current root (the
/// container's, after [`enter`]); read-only shares get MS_RDONLY on top of
/// the host's own enforcement.
pub fn mount_shares(mounts: &[Mount]) -> Result<()> {
    for m in mounts {
        m.check()
            .map_err(|e| anyhow!("share {} at {}: {e}", m.tag, m.target))?;
        let target = Path::new(&m.target);
        mkdir(target)?;
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if m.read_only {
            flags |= libc::MS_RDONLY;
        }
        mount(&m.tag, target, "virtiofs", flags, "")
            .with_context(|| format!("virtio-fs share {} at {}", m.tag, m.target))?;
    }
    Ok(())
}

/// Mounts /proc, /dev, /sys and (with `tmp`) /tmp inside `root`.
pub(crate) fn populate(root: &Path, tmp: bool) -> Result<()> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mkdir(&root.join("proc"))?;
    mount("proc", root.join("proc"), "proc", nosuid, "")?;
    mkdir(&root.join("sys"))?;
    if let Err(e) = mount(
        "sysfs",
        root.join("sys"),
        "sysfs",
        nosuid | libc::MS_RDONLY,
        "",
    ) {
        log::warn!("{e:#}");
    }
    if tmp {
        mkdir(&root.join("tmp"))?;
        mount(
            "tmpfs",
            root.join("tmp"),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        )?;
    }
    let dev = root.join("dev");
    mkdir(&dev)?;
    mount(
        "tmpfs",
        &dev,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0755",
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let node = dev.join(name);
        File::create(&node).with_context(|| format!("create {}", node.display()))?;
        mount(&host.to_string_lossy(), &node, "", libc::MS_BIND, "")?;
    }
    mkdir(&dev.join("pts"))?;
    mount(
        "devpts",
        dev.join("pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mkdir(&dev.join("shm"))?;
    mount("shm", dev.join("shm"), "tmpfs", nosuid, "mode=1777")?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).with_context(|| format!("symlink /dev/{link}"))?;
    }
    Ok(())
}

/// `pivot_root(".", ".")` then detach the old root; falls back to
/// `MS_MOVE` + `chroot` where pivot_root is refused (initramfs root).
fn pivot(root: &Path) -> Result<()> {
    std::env::set_current_dir(root).with_context(|| format!("chdir {}", root.display()))?;
    // SAFETY: "." is a valid C string for both arguments.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if r == 0 {
        umount2(".", libc::MNT_DETACH)?;
    } else {
        let e = std::io::Error::last_os_error();
        log::debug!("pivot_root refused ({e}), using MS_MOVE + chroot");
        mount(".", "/", "", libc::MS_MOVE, "")?;
        // SAFETY: valid C string.
        check(unsafe { libc::chroot(c".".as_ptr()) }).context("chroot")?;
    }
    std::env::set_current_dir("/").context("chdir /")?;
    Ok(())
}
