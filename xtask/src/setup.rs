//! Prerequisites and the main job (`cargo xtask run`).
//!
//! Everything the project needs on a fresh Debian machine with Rust is
//! installed from here: Debian packages (as root), rustup components and
//! targets. A missing Windows target is reported loudly and only the
//! Windows steps are skipped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cache;

/// Debian packages the build and the tests use.
const PACKAGES: &[&str] = &[
    "linux-source-6.1",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "lz4",
    "busybox-static",
    "e2fsprogs",
    "socat",
    "passt",
    "qemu-system-x86",
    "mingw-w64",
    "wine",
    "wine64",
    // Real clients and servers the tests drive: the layer converter's
    // output checked by fsck.erofs, a local registry pushed to by skopeo,
    // podman with krypton as its OCI runtime.
    "erofs-utils",
    "docker-registry",
    "apache2-utils",
    "skopeo",
    "podman",
];

/// Whether `prog` is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Whether rustup has the standard library for `target`.
pub fn has_rust_target(target: &str) -> bool {
    cache::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == target))
}

/// Environment for running Windows binaries under wine quietly, with a
/// private prefix so nothing touches the user's ~/.wine.
pub fn wine_env() -> Vec<(String, String)> {
    let cache = crate::cache::root().unwrap_or_else(|_| std::env::temp_dir());
    let prefix = cache.join("wine-prefix");
    vec![
        ("WINEDEBUG".into(), "-all".into()),
        ("WINEPREFIX".into(), prefix.display().to_string()),
        ("TMPDIR".into(), windows_tmp().display().to_string()),
        (
            "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER".into(),
            "wine".into(),
        ),
    ]
}

/// A private TMPDIR for the Windows-target builds and wine: the MinGW
/// toolchain leaves empty `cc*` files in the temp dir. Under the cache,
/// emptied after each Windows step.
pub fn windows_tmp() -> PathBuf {
    let dir = crate::cache::root()
        .unwrap_or_else(|_| std::env::temp_dir())
        .join("tmp-windows");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Installs whatever is missing. Idempotent and quick when all is there.
pub fn ensure_prerequisites() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("installing Debian packages: {}", missing.join(" "));
        if cache::is_root() {
            cache::run(Command::new("apt-get").arg("update").arg("-qq"))?;
        }
        cache::apt_install(&missing)?;
    }
    for component in ["clippy", "rustfmt"] {
        if cache::run(Command::new("rustup").args(["component", "add", component])).is_err() {
            eprintln!("WARNING: rustup could not add {component}");
        }
    }
    for target in ["x86_64-pc-windows-gnu"] {
        if !has_rust_target(target)
            && cache::run(Command::new("rustup").args(["target", "add", target])).is_err()
        {
            eprintln!(
                "\n!!! WARNING: `rustup target add {target}` FAILED: the Windows build, clippy and wine tests will be SKIPPED !!!\n"
            );
        }
    }
    Ok(())
}

/// Whether /dev/kvm here is kvm_pvm (software virtualization): the module
/// is loaded, or the CPU has neither VT-x nor AMD-V. `krypton run` then
/// boots the pvm-test kernel variant.
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
        || std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
            !c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
}

fn krypton_release() -> Result<PathBuf> {
    let root = cache::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cache::run(Command::new(cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "krypton",
    ]))?;
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(dir.join("release").join("krypton"))
}

/// Installs, builds the default guest (kernel, initramfs with the agent,
/// rootfs) and runs the main job: `krypton selftest`, then
/// `krypton run -- uname -a` in a real VM. On a kvm_pvm host the kernel is
/// the pvm-test variant, which `krypton run` picks there by itself.
pub fn run_main_job() -> Result<()> {
    ensure_prerequisites()?;
    let krypton = krypton_release()?;
    let variant = if host_is_pvm() {
        crate::kernel::Variant::PvmTest
    } else {
        crate::kernel::Variant::Product
    };
    crate::kernel::build(&crate::kernel::KernelArgs { variant })?;
    crate::images::build_all()?;
    eprintln!("\n$ krypton selftest");
    let st = Command::new(&krypton)
        .arg("selftest")
        .status()
        .context("running krypton selftest")?;
    if !st.success() {
        bail!("krypton selftest failed: {st}");
    }
    eprintln!("\n$ krypton run --timings -- uname -a");
    let st = Command::new(&krypton)
        .args(["run", "--timings", "--", "uname", "-a"])
        .status()
        .context("running krypton run")?;
    if !st.success() {
        bail!("krypton run failed: {st}");
    }
    Ok(())
}
