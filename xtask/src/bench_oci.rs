//! `cargo xtask bench` part: `podman run --rm IMAGE true` with Krypton as
//! the OCI runtime against the host's container runtime (Debian's crun,
//! or runc where crun cannot run here), interleaved in one run, with the
//! share of Krypton's time spent starting the VM (monitor start to the
//! agent's first connection, from the monitor's `KRYPTON_OCI_TIMINGS`
//! records). Needs root, podman and KVM; says why and skips otherwise.
#![allow(clippy::print_stdout)] // the figures are this module's output

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const IMAGE: &str = "localhost/krypton-bench-busybox:latest";
/// The same for both runtimes: this machine's hard limits are below
/// podman's defaults, which runc and crun would fail to set.
const RUN: &[&str] = &[
    "run",
    "--rm",
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn runs() -> usize {
    std::env::var("KRYPTON_BENCH_OCI_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

fn why_not() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().nth(1))
            == Some("0")
    });
    if !root {
        return Some("not root".into());
    }
    if !Path::new("/dev/kvm").exists() {
        return Some("no /dev/kvm".into());
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return Some("podman is not installed".into());
    }
    None
}

fn podman_true(runtime: &Path) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("podman")
        .arg("--runtime")
        .arg(runtime)
        .args(RUN)
        .args([IMAGE, "true"])
        .output()
        .context("running podman")?;
    if !out.status.success() {
        bail!(
            "podman --runtime {} run true failed ({}): {}",
            runtime.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A busybox tree (static busybox and its applet links) imported as IMAGE.
fn import_image(dir: &Path) -> Result<()> {
    let root = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (apt-get install -y busybox-static)")?;
    let list = Command::new("/bin/busybox").arg("--list-full").output()?;
    for rel in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(rel.trim());
        if !rel.trim().is_empty() && !link.exists() {
            std::os::unix::fs::symlink("/bin/busybox", &link)?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    let tar = dir.join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?
        .success()
        && Command::new("podman")
            .arg("import")
            .arg(&tar)
            .arg(IMAGE)
            .output()?
            .status
            .success();
    if !ok {
        bail!("cannot import the busybox image");
    }
    Ok(())
}

/// Parses the monitor's `"agent_ms":N` from its timing records.
fn agent_ms(records: &str) -> Vec<f64> {
    records
        .lines()
        .filter_map(|l| l.split_once("\"agent_ms\":"))
        .filter_map(|(_, rest)| {
            rest.split([',', '}'])
                .next()
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Runs the comparison with the given krypton binary.
pub fn run(krypton: &Path) -> Result<()> {
    println!("== podman run --rm IMAGE true: krypton vs the host runtime ==");
    if let Some(why) = why_not() {
        println!("  skipped: {why}");
        return Ok(());
    }
    let dir = crate::cache::target_dir().join("bench-oci");
    std::fs::create_dir_all(&dir)?;
    import_image(&dir)?;
    let timings = dir.join("timings.jsonl");
    let wrapper = dir.join("krypton-runtime");
    let mut script = String::from("#!/bin/sh\nexport KRYPTON_BOOT_TIMEOUT=1500\n");
    if let Some(c) = std::env::var_os("KRYPTON_CACHE") {
        script.push_str(&format!(
            "export KRYPTON_CACHE='{}'\n",
            Path::new(&c).display()
        ));
    }
    script.push_str(&format!(
        "export KRYPTON_OCI_TIMINGS='{}'\nexec '{}' \"$@\"\n",
        timings.display(),
        krypton.display()
    ));
    std::fs::write(&wrapper, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    // The peer: crun, else runc (crun refuses hybrid cgroup hierarchies).
    let mut peer = None;
    for name in ["crun", "runc"] {
        let path = PathBuf::from(format!("/usr/bin/{name}"));
        let path = if path.exists() {
            path
        } else {
            PathBuf::from(format!("/usr/sbin/{name}"))
        };
        match podman_true(&path) {
            Ok(_) => {
                peer = Some((name, path));
                break;
            }
            Err(e) => println!("  {name} cannot run here: {e:#}"),
        }
    }
    let Some((peer_name, peer)) = peer else {
        println!("  skipped: neither crun nor runc runs containers on this host");
        return Ok(());
    };
    let t = Instant::now();
    podman_true(&wrapper)?;
    println!(
        "  first krypton run (makes the OCI template if missing): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&timings);
    let n = runs();
    let (mut k, mut p) = (Vec::new(), Vec::new());
    for _ in 0..n {
        k.push(podman_true(&wrapper)?);
        p.push(podman_true(&peer)?);
    }
    let (km, pm) = (median(k), median(p));
    println!("  krypton      median {km:8.1} ms (n={n})");
    println!("  {peer_name:12} median {pm:8.1} ms (n={n})");
    println!("  krypton/{peer_name} = {:.1}x", km / pm.max(1e-9));
    let vm = agent_ms(&std::fs::read_to_string(&timings).unwrap_or_default());
    if vm.len() == n {
        let vm = median(vm);
        println!(
            "  VM start (monitor start to agent connected): median {vm:.1} ms = {:.0}% of krypton's time",
            100.0 * vm / km.max(1e-9)
        );
    } else {
        println!("  VM start share: no monitor timing records");
    }
    Ok(())
}
