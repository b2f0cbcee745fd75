//! `cargo xtask images`: the initramfs (static agent as /init) and the
//! default container rootfs (Debian's busybox-static in an ext4 image).
//!
//! Both are cached under `<cache>/images/` by a hash of their inputs
//! (`initramfs-<hash>.cpio`, `rootfs-<hash>.ext4`); the stable names
//! `initramfs.cpio` and `rootfs.ext4` there are symlinks to the newest.

use crate::cache::{self, InputHash};
use crate::cpio::CpioWriter;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the image recipes below change.
const RECIPE_VERSION: &str = "1";
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
const BUSYBOX: &str = "/bin/busybox";
/// Size of the default rootfs image.
const ROOTFS_SIZE: &str = "32M";
/// Mount points the agent and the kernel need in the initramfs.
const INITRAMFS_DIRS: &[&str] = &["dev", "proc", "sys", "tmp", "run", "mnt", "etc"];
/// Mount points and standard directories in the (read-only) rootfs.
const ROOTFS_DIRS: &[&str] = &[
    "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root",
    "home", "var/tmp", "mnt",
];

/// Paths of the built images.
#[derive(Debug)]
pub struct Images {
    /// Newc cpio, uncompressed (no decompression work at boot).
    pub initramfs: PathBuf,
    /// ext4 image with busybox.
    pub rootfs: PathBuf,
}

/// Builds the initramfs and default rootfs; prints their paths and returns
/// their directory.
#[allow(clippy::print_stdout)] // the paths are this task's output
pub fn build_all() -> Result<PathBuf> {
    let dir = cache::root()?.join("images");
    std::fs::create_dir_all(&dir)?;
    let agent = build_agent()?;
    let images = Images {
        initramfs: build_initramfs(&dir, &agent)?,
        rootfs: build_rootfs(&dir)?,
    };
    println!("initramfs={}", images.initramfs.display());
    println!("rootfs={}", images.rootfs.display());
    Ok(dir)
}

/// `cargo build --profile agent -p krypton-agent` (size-optimised, stripped), statically linked.
fn build_agent() -> Result<PathBuf> {
    let root = cache::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cache::run(
        Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--profile",
                "agent",
                "-p",
                "krypton-agent",
                "--target",
                AGENT_TARGET,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target_dir
        .join(AGENT_TARGET)
        .join("agent")
        .join("krypton-agent");
    let elf = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if has_interpreter(&elf)? {
        bail!(
            "{} is dynamically linked (has PT_INTERP); it must be static to run as /init",
            bin.display()
        );
    }
    Ok(bin)
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header.
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not a 64-bit ELF file");
    }
    let phoff = u64_at(0x20).context("short ELF header")?;
    let phentsize = u16_at(0x36).context("short ELF header")?;
    let phnum = u16_at(0x38).context("short ELF header")?;
    for i in 0..u64::from(phnum) {
        let off = usize::try_from(phoff + i * u64::from(phentsize)).context("bad phoff")?;
        if u32_at(off).context("truncated program headers")? == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The initramfs: the agent as /init, mount points, /dev/console.
fn build_initramfs(dir: &Path, agent: &Path) -> Result<PathBuf> {
    let agent_bytes = std::fs::read(agent)?;
    let mut hash = InputHash::new();
    hash.add("recipe", RECIPE_VERSION.as_bytes())
        .add("agent", &agent_bytes);
    let out = dir.join(format!("initramfs-{}.cpio", hash.hex()));
    if !out.is_file() {
        let mut w = CpioWriter::new(Vec::with_capacity(agent_bytes.len() + 4096));
        for d in INITRAMFS_DIRS {
            w.dir(d, if *d == "tmp" { 0o1777 } else { 0o755 })?;
        }
        // The kernel opens /dev/console for init's stdio before devtmpfs is
        // mounted; 5:1 is the console device.
        w.char_dev("dev/console", 0o600, 5, 1)?;
        w.char_dev("dev/null", 0o666, 1, 3)?;
        w.file("init", 0o755, &agent_bytes)?;
        write_atomic(&out, &w.finish()?)?;
        eprintln!(
            "initramfs: wrote {} ({} bytes)",
            out.display(),
            std::fs::metadata(&out)?.len()
        );
    } else {
        eprintln!("initramfs: cached");
    }
    cache::update_link(&dir.join("initramfs.cpio"), &out)?;
    prune(dir, "initramfs-", &out);
    Ok(out)
}

/// The default rootfs: busybox with its applet links, minimal /etc, ext4.
fn build_rootfs(dir: &Path) -> Result<PathBuf> {
    if !Path::new(BUSYBOX).is_file() {
        cache::apt_install(&["busybox-static"])?;
    }
    let busybox = std::fs::read(BUSYBOX).context("reading busybox")?;
    if has_interpreter(&busybox)? {
        bail!("{BUSYBOX} is not static; install busybox-static");
    }
    let mut hash = InputHash::new();
    hash.add("recipe", RECIPE_VERSION.as_bytes())
        .add("busybox", &busybox)
        .add("size", ROOTFS_SIZE.as_bytes());
    for (name, text) in ETC_FILES {
        hash.add(name, text.as_bytes());
    }
    let out = dir.join(format!("rootfs-{}.ext4", hash.hex()));
    if out.is_file() {
        eprintln!("rootfs: cached");
    } else {
        let staging = dir.join(format!(".rootfs-staging-{}", std::process::id()));
        let result = stage_rootfs(&staging, &busybox).and_then(|()| make_ext4(&staging, &out));
        let _ = std::fs::remove_dir_all(&staging);
        result?;
        eprintln!("rootfs: wrote {}", out.display());
    }
    cache::update_link(&dir.join("rootfs.ext4"), &out)?;
    prune(dir, "rootfs-", &out);
    Ok(out)
}

/// Removes older images of one kind (every agent edit makes a new
/// initramfs); failures only cost disk space.
fn prune(dir: &Path, prefix: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path != keep && e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Minimal /etc for the default rootfs.
const ETC_FILES: &[(&str, &str)] = &[
    (
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("group", "root:x:0:\nnogroup:x:65534:\n"),
    ("hostname", "krypton\n"),
    ("hosts", "127.0.0.1\tlocalhost\n"),
    ("os-release", "NAME=\"Krypton busybox\"\nID=krypton\n"),
];

fn stage_rootfs(root: &Path, busybox: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    for d in ROOTFS_DIRS {
        std::fs::create_dir_all(root.join(d))?;
    }
    for d in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777))?;
    }
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))?;
    let bb = root.join("bin/busybox");
    std::fs::write(&bb, busybox)?;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755))?;
    let applets = cache::output(Command::new(BUSYBOX).arg("--list-full"))?;
    let mut count = 0;
    for rel in applets
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(".."))
    {
        let link = root.join(rel);
        if link.exists() {
            continue;
        }
        let depth = rel.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {rel}"))?;
        count += 1;
    }
    if count < 100 {
        bail!("busybox --list-full gave only {count} applets");
    }
    for (name, text) in ETC_FILES {
        std::fs::write(root.join("etc").join(name), text)?;
    }
    Ok(())
}

fn make_ext4(staging: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_extension("ext4.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mkfs = ["/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(mkfs) = mkfs else {
        cache::apt_install(&["e2fsprogs"])?;
        return make_ext4(staging, out);
    };
    cache::run(
        Command::new(mkfs)
            .args([
                "-q",
                "-F",
                "-L",
                "krypton-root",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(staging)
            .arg(&tmp)
            .arg(ROOTFS_SIZE),
    )?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_detection() {
        // The test binary itself is dynamically linked; busybox-static is not.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read self");
        assert!(has_interpreter(&me).expect("elf"));
        if let Ok(bb) = std::fs::read(BUSYBOX) {
            assert!(!has_interpreter(&bb).expect("elf"));
        } else {
            eprintln!("busybox check skipped: {BUSYBOX} missing");
        }
        assert!(has_interpreter(b"not an elf").is_err());
        let mut truncated = me[..64].to_vec();
        truncated[0x38] = 0xff; // many program headers past the end
        assert!(has_interpreter(&truncated).is_err());
    }
}
