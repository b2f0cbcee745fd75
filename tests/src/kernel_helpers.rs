//! Helpers for the real-kernel boot test (`tests/kernel_boot.rs`): finding
//! the `krypton` binary and the guest kernel, making a small ext4 disk,
//! running a VM with a deadline. Included with `#[path]` from the test.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Why this host cannot run the test, if it cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm is not usable: {e}")),
    }
}

/// Whether /dev/kvm is kvm_pvm (software virtualization): the module is
/// loaded, or the CPU has neither VT-x nor AMD-V.
pub fn host_is_pvm() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        !c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    })
}

/// The `krypton` binary: `$KRYPTON_BIN`, else `cargo build -p krypton`
/// (debug profile, shared with the other tests) and target/debug/krypton.
pub fn krypton_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KRYPTON_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let status = Command::new(cargo())
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "krypton", "--bin", "krypton"])
        .status()
        .context("running cargo build -p krypton")?;
    if !status.success() {
        bail!("cargo build -p krypton failed: {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("krypton");
    if !bin.is_file() {
        bail!("{} missing after cargo build", bin.display());
    }
    Ok(bin)
}

/// The kernel artifact directory (vmlinux, bzImage, config) of a variant:
/// `$KRYPTON_KERNEL_DIR`, else `cargo xtask kernel --variant <v>` (free when
/// cached, a ~5 min build otherwise) whose stdout is that directory.
pub fn kernel_dir(variant: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KRYPTON_KERNEL_DIR") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["xtask", "kernel", "--variant", variant])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo xtask kernel")?;
    if !out.status.success() {
        bail!(
            "cargo xtask kernel --variant {variant} failed: {}",
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text.lines().last().map(str::trim).unwrap_or_default();
    if dir.is_empty() || !Path::new(dir).join("vmlinux").is_file() {
        bail!("cargo xtask kernel printed {text:?}, not an artifact directory");
    }
    Ok(PathBuf::from(dir))
}

/// The initramfs built by `cargo xtask images` (static agent as /init);
/// `$KRYPTON_INITRAMFS` overrides.
pub fn initramfs() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KRYPTON_INITRAMFS") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["xtask", "images"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo xtask images")?;
    if !out.status.success() {
        bail!("cargo xtask images failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("initramfs="))
        .map(PathBuf::from);
    path.filter(|p| p.is_file())
        .with_context(|| format!("cargo xtask images printed {text:?}, no initramfs"))
}

/// The Debian minbase root tar built by `cargo xtask debian` (cached;
/// debootstrap from the Debian mirror the first time).
pub fn debian_minbase_tar() -> Result<PathBuf> {
    let out = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["xtask", "debian"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo xtask debian")?;
    if !out.status.success() {
        bail!("cargo xtask debian failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tar="))
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .with_context(|| format!("cargo xtask debian printed {text:?}, no tar"))
}

/// The switches of `guest/kernel/pvm-test.cmdline`, joined by spaces.
pub fn pvm_test_cmdline() -> Result<String> {
    let path = workspace_root().join("guest/kernel/pvm-test.cmdline");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" "))
}

/// `guest/kernel/pvm-test.cpuid` as `krypton boot --hide-cpuid` values
/// (`LEAF:SUBLEAF:REG:BIT`).
pub fn pvm_test_cpuid_hides() -> Result<Vec<String>> {
    let path = workspace_root().join("guest/kernel/pvm-test.cpuid");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [leaf, sub, reg, bit, _name] = f.as_slice() else {
            bail!("{}: bad line {line:?}", path.display());
        };
        out.push(format!("{leaf}:{sub}:{reg}:{bit}"));
    }
    Ok(out)
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("krypton-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// An 8 MiB ext4 image holding one marker file, made with `mkfs.ext4 -d`.
pub fn make_ext4_disk(dir: &Path) -> Result<PathBuf> {
    let content = dir.join("disk-root");
    std::fs::create_dir_all(content.join("etc"))?;
    std::fs::write(
        content.join("etc/krypton-test-marker"),
        b"kernel boot test\n",
    )?;
    let image = dir.join("disk.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "krypton-test", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("8M")
        .status()
        .context("running mkfs.ext4 (install e2fsprogs)")?;
    if !status.success() {
        bail!("mkfs.ext4 failed: {status}");
    }
    Ok(image)
}

/// How a VM run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The process exited by itself.
    Exited(ExitStatus),
    /// It was killed at the deadline.
    TimedOut,
}

/// Runs `cmd` with stdout/stderr to `log`, killing it after `deadline`.
/// Returns how it ended and the elapsed wall time.
pub fn run_with_deadline(
    cmd: &mut Command,
    log: &Path,
    deadline: Duration,
) -> Result<(RunEnd, Duration)> {
    let file = std::fs::File::create(log)?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((RunEnd::Exited(status), started.elapsed()));
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((RunEnd::TimedOut, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel timestamp (`[   12.345678]`) of the first log line containing
/// `needle`, in seconds, with the line itself.
pub fn find_line<'a>(log: &'a str, needle: &str) -> Option<(Option<f64>, &'a str)> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let stamp = line
        .trim_start()
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(t, _)| t.trim().parse::<f64>().ok());
    Some((stamp, line))
}
