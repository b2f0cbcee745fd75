//! The build cache shared by the kernel and image tasks, kept outside the
//! clone: `${KRYPTON_CACHE:-$HOME/.cache/krypton}`. Artifacts live in
//! directories named after a hash of everything that went into them, so a
//! second build with the same inputs is free.

use anyhow::{Context, Result, bail};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cache root.
pub fn root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KRYPTON_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither KRYPTON_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("krypton"))
}

/// The workspace root (parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A stable 64-bit FNV-1a hash over labelled inputs; the label and length
/// of each part are mixed in so that moving bytes between parts changes it.
#[derive(Debug, Clone)]
pub struct InputHash(u64);

impl InputHash {
    /// A fresh hash.
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Adds one named input.
    pub fn add(&mut self, label: &str, data: &[u8]) -> &mut Self {
        self.bytes(label.as_bytes());
        self.bytes(&(data.len() as u64).to_le_bytes());
        self.bytes(data);
        self
    }

    /// Adds a file's contents under its file name.
    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(self.add(&name, &data))
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Runs a command with its stdout sent to our stderr (our stdout carries
/// only the artifact paths), failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let err = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = cmd
        .stdout(Stdio::from(err))
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout (trimmed).
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether we run as root (needed for apt-get).
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s == "0")
        .unwrap_or(false)
}

/// Installs Debian packages with apt-get when running as root, otherwise
/// fails with the command the user should run.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing packages; run as root: apt-get install -y {}",
            packages.join(" ")
        );
    }
    run(Command::new("apt-get")
        .args(["install", "-y"])
        .args(packages))
}

/// Moves a finished staging directory into place (atomic rename), replacing
/// a stale directory of the same name.
pub fn publish(staging: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    std::fs::rename(staging, dest)
        .with_context(|| format!("moving {} to {}", staging.display(), dest.display()))
}

/// Points `link` at `target` (a relative symlink inside the cache).
pub fn update_link(link: &Path, target: &Path) -> Result<()> {
    let _ = std::fs::remove_file(link);
    let rel = target
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| target.to_path_buf());
    std::os::unix::fs::symlink(&rel, link).with_context(|| format!("linking {}", link.display()))
}
