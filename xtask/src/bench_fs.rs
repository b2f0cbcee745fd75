//! `cargo xtask bench` part: host directories in the guest. Krypton's
//! in-process virtio-fs against QEMU's virtio-9p (`-M microvm`,
//! `virtio-9p-device`, `-fsdev local,security_model=passthrough`) on the
//! same pvm-test kernel, with the same workload (`bench_fs/fsbench.c`,
//! built static here): sequential write (with fsync) and read MiB/s,
//! create+stat+unlink per second, untar of a 5,000-file tree. The same
//! program on the host directly is the floor.
//!
//! One VM per side: Krypton through `krypton run -v DIR:/mnt` (from its
//! template snapshot), QEMU by booting the kernel cold with a busybox
//! initramfs whose /init mounts the 9p share and runs the workload; the
//! guest prints its own timings on the serial line, and the VM is stopped
//! once it has. The guest kernel is emulated on kvm_pvm hosts, which
//! dominates both sides: the ratios are the result, not the absolute
//! figures.
#![allow(clippy::print_stdout)] // the figures are this module's output

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cpio::CpioWriter;

const FSBENCH_C: &str = include_str!("bench_fs/fsbench.c");

/// Files in the untar tree: `dirs()` directories of `FILES` files.
const FILES: usize = 100;

/// Directories in the untar tree: KRYPTON_BENCH_FS_DIRS, default 50
/// (5,000 files).
fn dirs() -> usize {
    usize::try_from(env_num("KRYPTON_BENCH_FS_DIRS", 50)).unwrap_or(50)
}

/// The longest one VM side may take: KRYPTON_BENCH_FS_DEADLINE seconds,
/// default 1800 (the QEMU side boots cold, about two minutes here, and
/// each file operation of the emulated guest costs tens of milliseconds).
fn side_deadline() -> Duration {
    Duration::from_secs(env_num("KRYPTON_BENCH_FS_DEADLINE", 1800))
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The workload's figures, parsed from its `key=value` lines.
#[derive(Debug, Clone, Copy)]
struct Figures {
    write_mibs: f64,
    read_mibs: f64,
    meta_ops: f64,
    untar_s: f64,
}

impl Figures {
    fn parse(lines: &[String]) -> Result<Self> {
        let kv: HashMap<&str, &str> = lines
            .iter()
            .filter_map(|l| l.trim().split_once('='))
            .collect();
        if let Some(what) = kv.get("fsbench-failed") {
            bail!("the workload failed at {what}: {}", lines.join("\n"));
        }
        let get = |k: &str| -> Result<f64> {
            kv.get(k)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {k} in the workload's output: {}", lines.join("\n")))
        };
        Ok(Figures {
            write_mibs: get("seq_write_mibs")?,
            read_mibs: get("seq_read_mibs")?,
            meta_ops: get("meta_ops")?,
            untar_s: get("untar_s")?,
        })
    }
}

/// A share directory holding the workload's inputs: `read.bin`,
/// `tree.tar` and the `fsbench` binary itself.
fn make_share(dir: &Path, fsbench: &Path, tar: &Path, mib: u64) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("read.bin"))?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::copy(tar, dir.join("tree.tar"))?;
    std::fs::copy(fsbench, dir.join("fsbench"))?;
    Ok(())
}

/// Builds the workload (static) and the 5,000-file tar.
fn build_inputs(work: &Path) -> Result<(PathBuf, PathBuf)> {
    let src = work.join("fsbench.c");
    std::fs::write(&src, FSBENCH_C)?;
    let bin = work.join("fsbench");
    let o = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running cc")?;
    ensure!(
        o.status.success(),
        "cc -static fsbench.c failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let tree = work.join("tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    for d in 0..dirs() {
        let dir = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..FILES {
            std::fs::write(dir.join(format!("f{f}")), format!("file {d}/{f}\n"))?;
        }
    }
    let tar = work.join("tree.tar");
    let st = Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .context("running tar")?;
    ensure!(st.success(), "tar cf failed");
    Ok((bin, tar))
}

/// Reads `child`'s stdout lines until `fsbench-done=1` or a failure line,
/// then kills it (the QEMU guest never exits by itself).
fn collect(mut child: std::process::Child, what: &str) -> Result<Vec<String>> {
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let deadline = side_deadline();
    let mut lines = Vec::new();
    let result = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_owned();
                let end = l.starts_with("fsbench-done") || l.starts_with("fsbench-failed");
                lines.push(l);
                if end {
                    break Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if t.elapsed() < deadline => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(anyhow::anyhow!("{what}: no result within {deadline:?}"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow::anyhow!("{what} ended before the workload did"));
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result.with_context(|| format!("{what} printed: {}", lines.join("\n")))?;
    Ok(lines)
}

fn krypton_side(krypton: &Path, share: &Path, mib: u64, ops: u64) -> Result<Vec<String>> {
    // The volume layout of the e2e virtio-fs case (one read-write, one
    // read-only share), so both start from one template snapshot.
    let vol = format!("{}:/mnt", share.display());
    let ro = format!("{}:/mnt-ro:ro", share.display());
    let child = Command::new(krypton)
        .args(["run", "-v", &vol, "-v", &ro, "--", "/mnt/fsbench", "/mnt"])
        .arg(mib.to_string())
        .arg(ops.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting krypton run")?;
    collect(child, "krypton run")
}

/// A busybox initramfs whose /init mounts the 9p share at /mnt and runs
/// the workload there.
fn qemu_initramfs(path: &Path, mib: u64, ops: u64) -> Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 bench /mnt \
         || echo fsbench-failed=mount\n\
         /mnt/fsbench /mnt {mib} {ops}\n\
         /bin/busybox sleep 1000\n"
    );
    let mut w = CpioWriter::new(std::io::BufWriter::new(std::fs::File::create(path)?));
    for d in ["bin", "dev", "proc", "mnt", "tmp"] {
        w.dir(d, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &busybox)?;
    w.file("init", 0o755, init.as_bytes())?;
    w.finish()?.flush()?;
    Ok(())
}

fn qemu_side(qemu: &str, share: &Path, mib: u64, ops: u64) -> Result<Vec<String>> {
    let sw = crate::pvm_kernel::switches(true)?;
    let kernel = crate::cache::root()?.join("kernel/pvm-test-latest/vmlinux");
    ensure!(
        kernel.is_file(),
        "{} is missing (cargo xtask kernel --variant pvm-test)",
        kernel.display()
    );
    let initrd = share.with_extension("cpio");
    qemu_initramfs(&initrd, mib, ops)?;
    let append = format!(
        "console=ttyS0 reboot=k panic=-1 nomodule tsc=reliable no_timer_check quiet {} rdinit=/init",
        sw.cmdline
    );
    let fsdev = format!(
        "local,id=fs0,path={},security_model=passthrough",
        share.display()
    );
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm,acpi=off,rtc=on",
            "-accel",
            "kvm",
            "-m",
            "256M",
            "-smp",
            "1",
        ])
        .arg("-cpu")
        .arg(&sw.qemu_cpu)
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-fsdev", &fsdev])
        .args(["-device", "virtio-9p-device,fsdev=fs0,mount_tag=bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    collect(child, "qemu")
}

fn host_side(fsbench: &Path, share: &Path, mib: u64, ops: u64) -> Result<Vec<String>> {
    let o = Command::new(fsbench)
        .arg(share)
        .arg(mib.to_string())
        .arg(ops.to_string())
        .output()
        .context("running fsbench on the host")?;
    ensure!(
        o.status.success(),
        "fsbench on the host failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Runs the comparison.
pub fn run(krypton: &Path, qemu: &str) -> Result<()> {
    let mib = env_num("KRYPTON_BENCH_FS_MIB", 64);
    let ops = env_num("KRYPTON_BENCH_FS_OPS", 500);
    let work = crate::cache::target_dir().join("bench-fs");
    std::fs::create_dir_all(&work)?;
    let (fsbench, tar) = build_inputs(&work)?;
    let mut results = Vec::new();
    for name in ["host", "krypton", "qemu"] {
        let share = work.join(format!("share-{name}"));
        make_share(&share, &fsbench, &tar, mib)?;
        let t = Instant::now();
        let lines = match name {
            "host" => host_side(&fsbench, &share, mib, ops),
            "krypton" => krypton_side(krypton, &share, mib, ops),
            _ => qemu_side(qemu, &share, mib, ops),
        }?;
        let f = Figures::parse(&lines).with_context(|| format!("{name} side"))?;
        let untarred = std::fs::read_dir(share.join("untar/d0"))
            .map(Iterator::count)
            .unwrap_or(0);
        ensure!(
            untarred == FILES,
            "{name}: {untarred} files in untar/d0 on the host, want {FILES}; the guest printed: {}",
            lines.join("\n")
        );
        eprintln!(
            "bench fs: {name} side took {:.1} s: {f:?}",
            t.elapsed().as_secs_f64()
        );
        results.push((name, f));
        std::fs::remove_dir_all(&share)?;
    }
    let [(_, h), (_, k), (_, q)] = results.as_slice() else {
        bail!("three sides expected");
    };
    println!(
        "== host directories: krypton virtio-fs vs qemu virtio-9p (pvm-test kernel, {mib} MiB, {ops} ops, {} files untarred) ==",
        dirs() * FILES
    );
    println!(
        "  (guest kernel emulated on kvm_pvm: absolute guest figures are slow; read the ratios)"
    );
    println!(
        "  {:26} {:>10} {:>10} {:>10}",
        "", "host", "krypton", "qemu-9p"
    );
    let row = |what: &str, hv: f64, kv: f64, qv: f64| {
        println!("  {what:26} {hv:10.1} {kv:10.1} {qv:10.1}");
    };
    row(
        "seq write MiB/s (fsync)",
        h.write_mibs,
        k.write_mibs,
        q.write_mibs,
    );
    row("seq read MiB/s", h.read_mibs, k.read_mibs, q.read_mibs);
    row("create+stat+unlink /s", h.meta_ops, k.meta_ops, q.meta_ops);
    row("untar seconds", h.untar_s, k.untar_s, q.untar_s);
    let w = k.write_mibs / q.write_mibs;
    let r = k.read_mibs / q.read_mibs;
    let m = k.meta_ops / q.meta_ops;
    let u = q.untar_s / k.untar_s;
    println!(
        "  krypton/qemu write {w:.2}x, read {r:.2}x (goal >= 1x: {})",
        verdict(w >= 1.0 && r >= 1.0)
    );
    println!(
        "  krypton/qemu metadata {m:.2}x, untar speed {u:.2}x (goal >= 2x: {})",
        verdict(m >= 2.0 && u >= 2.0)
    );
    Ok(())
}
