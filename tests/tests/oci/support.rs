//! The runtime wrapper, the busybox image, and running commands with a
//! deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

#[path = "../../src/kernel_helpers.rs"]
#[allow(dead_code)]
pub mod kernel_helpers;

/// The image every podman case runs.
pub const IMAGE: &str = "localhost/krypton-oci-busybox:test";

/// Why the VM cases cannot run here.
pub fn unsupported() -> Option<String> {
    if let Some(w) = kernel_helpers::kvm_unavailable() {
        return Some(w);
    }
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        return Some("podman cases need root".into());
    }
    for tool in ["podman", "conmon", "script"] {
        let found = std::env::var_os("PATH").is_some_and(|p| {
            std::env::split_paths(&p).any(|d| d.join(tool).is_file() || d.join(tool).is_symlink())
        }) || Path::new("/usr/bin").join(tool).is_file()
            || Path::new("/usr/libexec/podman").join(tool).is_file();
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install -y podman)"
            ));
        }
    }
    None
}

fn podman_globals(dir: &Path, runtime: &Path) -> Vec<String> {
    vec![
        "--root".into(),
        dir.join("podman-root").display().to_string(),
        "--runroot".into(),
        dir.join("podman-run").display().to_string(),
        "--runtime".into(),
        runtime.display().to_string(),
    ]
}

/// What every case uses.
pub struct Env {
    /// The krypton binary.
    pub krypton: PathBuf,
    /// `--runtime` for podman: a script that execs krypton with this
    /// suite's environment.
    pub runtime: PathBuf,
    /// Scratch directory (bundles, state root, volumes).
    pub dir: PathBuf,
    /// The busybox tree (a bundle's root and the image's content).
    pub rootfs: PathBuf,
}

impl Env {
    pub fn prepare() -> Result<Env> {
        let krypton = kernel_helpers::krypton_bin()?;
        let dir = kernel_helpers::scratch_dir("oci")?;
        let rootfs = dir.join("rootfs");
        busybox_tree(&rootfs)?;
        let runtime = dir.join("krypton-runtime");
        // A cold boot (the template) can take minutes of silent console
        // on a loaded kvm_pvm host.
        if std::env::var_os("KRYPTON_BOOT_TIMEOUT").is_none() {
            // SAFETY: set before any thread of this test binary starts VMs.
            unsafe { std::env::set_var("KRYPTON_BOOT_TIMEOUT", "1500") };
        }
        let mut script = String::from("#!/bin/sh\n");
        for var in ["KRYPTON_CACHE", "KRYPTON_BOOT_TIMEOUT", "KRYPTON_LOG"] {
            if let Ok(v) = std::env::var(var) {
                script.push_str(&format!("export {var}='{v}'\n"));
            }
        }
        script.push_str(&format!("exec '{}' \"$@\"\n", krypton.display()));
        std::fs::write(&runtime, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755))?;
        if unsupported().is_none() {
            let tar = dir.join("rootfs.tar");
            check(&run(
                Command::new("tar")
                    .arg("-C")
                    .arg(&rootfs)
                    .arg("-cf")
                    .arg(&tar)
                    .arg("."),
                60,
            )?)?;
            check(&run(
                Command::new("podman")
                    .args(podman_globals(&dir, &runtime))
                    .arg("import")
                    .arg(&tar)
                    .arg(IMAGE),
                120,
            )?)?;
        }
        Ok(Env {
            krypton,
            runtime,
            dir,
            rootfs,
        })
    }

    /// podman's global options: the krypton runtime, and storage of the
    /// suite's own in its scratch dir (no images or containers left in the
    /// machine's store, none from an earlier run in the way).
    pub fn podman_globals(&self) -> Vec<String> {
        podman_globals(&self.dir, &self.runtime)
    }

    /// `podman GLOBALS ARGS`.
    pub fn podman(&self, args: &[&str], secs: u64) -> Result<Output> {
        let mut c = Command::new("podman");
        c.args(self.podman_globals()).args(args);
        run(&mut c, secs)
    }

    /// Removes every container of the suite's store, then the scratch dir.
    pub fn clean_up(&self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"], 300);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// `krypton --root DIR/root ARGS`.
    pub fn krypton(&self, args: &[&str], secs: u64) -> Result<Output> {
        let mut c = Command::new(&self.krypton);
        c.arg("--root").arg(self.dir.join("root")).args(args);
        run(&mut c, secs)
    }
}

/// `krypton create ...` whose container stdio (inherited by the monitor,
/// which outlives the command) goes to `out` and `err`; its status.
pub fn create_to_files(env: &Env, args: &[&str], out: &Path, err: &Path) -> Result<i32> {
    let mut child = Command::new(&env.krypton)
        .arg("--root")
        .arg(env.dir.join("root"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out)?)
        .stderr(std::fs::File::create(err)?)
        .spawn()?;
    let t = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st.code().unwrap_or(-1));
        }
        if t.elapsed() > Duration::from_secs(1800) {
            let _ = child.kill();
            bail!("krypton create did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cmd` (stdin /dev/null) and kills it after `secs`.
pub fn run(cmd: &mut Command, secs: u64) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // SAFETY: kill has no memory effects; the child is not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("{cmd:?} did not finish within {secs} s")
        }
    }
}

/// Fails with the output unless the command succeeded.
pub fn check(o: &Output) -> Result<()> {
    if !o.status.success() {
        bail!(
            "failed ({}): {}{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
    }
    Ok(())
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// busybox-static with its applet links and a minimal /etc (users root,
/// app 1000 and nobody).
fn busybox_tree(root: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing (apt-get install -y busybox-static)");
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run",
        "var/tmp", "home/app", "data",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list-full").output()?;
    for rel in text(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let link = root.join(rel);
        if !link.exists() {
            std::os::unix::fs::symlink("/bin/busybox", &link)?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    for d in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777))?;
    }
    Ok(())
}
