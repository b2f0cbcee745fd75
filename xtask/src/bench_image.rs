//! `cargo xtask bench` part: layer conversion throughput. One tree is
//! packed into a tar and unpacked again; then, interleaved, our converter
//! turns the tar into an EROFS image while `mkfs.erofs` and `mkfs.ext4 -d`
//! build theirs from the unpacked tree (all inputs in the page cache, every
//! output fsynced; the scratch dir is /dev/shm when there is one). Prints MB/s of tree data, the ratios, and image sizes.
//!
//! The tree: `KRYPTON_BENCH_IMAGE_TREE`, else the kernel source subset
//! (fs, net, include, kernel, mm of the cached Debian 6.1 source), else
//! /usr/share.
#![allow(clippy::print_stdout)] // the figures are this module's output

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn runs() -> usize {
    std::env::var("KRYPTON_BENCH_IMAGE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

/// The source directories and a label.
fn source() -> Result<(Vec<PathBuf>, String)> {
    if let Some(t) = std::env::var_os("KRYPTON_BENCH_IMAGE_TREE") {
        let p = PathBuf::from(t);
        return Ok((vec![p.clone()], p.display().to_string()));
    }
    let k = crate::cache::root()?.join("kernel/work-pvm-test/linux-source-6.1");
    let subset = ["fs", "net", "include", "kernel", "mm"];
    if subset.iter().all(|d| k.join(d).is_dir()) {
        let dirs = subset.iter().map(|d| k.join(d)).collect();
        return Ok((dirs, format!("Linux 6.1 source {{{}}}", subset.join(","))));
    }
    Ok((vec![PathBuf::from("/usr/share")], "/usr/share".into()))
}

/// Where the trees and images go: `KRYPTON_BENCH_IMAGE_DIR`, else
/// /dev/shm (RAM: the figures are the converters', not the disk's, which
/// other work on a shared host makes noisy), else the temp dir.
fn scratch_root() -> PathBuf {
    if let Some(d) = std::env::var_os("KRYPTON_BENCH_IMAGE_DIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly()) {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

/// Bytes of regular-file data and the entry count under `dir`.
fn tree_size(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut n) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            n += 1;
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                bytes += md.len();
            }
        }
    }
    (bytes, n)
}

/// Builds the converter CLI (`krypton-image`'s `tar2erofs` example).
fn build_converter() -> Result<PathBuf> {
    let root = crate::cache::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "krypton-image",
        "--example",
        "tar2erofs",
    ]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("release/examples/tar2erofs"))
}

/// CPU time (user + system) of all waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv =
        |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and CPU time of one command, plus an fsync of `img`.
fn timed(cmd: &mut Command, img: &Path) -> Result<(Duration, Duration)> {
    let (t, c) = (Instant::now(), children_cpu());
    run(cmd)?;
    run(Command::new("sync").arg(img))?;
    Ok((t.elapsed(), children_cpu().saturating_sub(c)))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run_bench() -> Result<()> {
    let (dirs, label) = source()?;
    let scratch = scratch_root().join(format!("krypton-bench-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let tree = scratch.join("tree");
    std::fs::create_dir_all(&tree)?;
    let result = bench_in(&dirs, &label, &scratch, &tree);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn bench_in(dirs: &[PathBuf], label: &str, scratch: &Path, tree: &Path) -> Result<()> {
    // Pack the source, then unpack it: both sides see the same tree.
    let tar = scratch.join("layer.tar");
    let mut pack = Command::new("tar");
    pack.args(["--numeric-owner", "-cf"]).arg(&tar);
    for d in dirs {
        let parent = d.parent().unwrap_or(Path::new("/"));
        let name = d
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        pack.arg("-C").arg(parent).arg(name);
    }
    run(&mut pack)?;
    run(Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(&tar)
        .arg("-C")
        .arg(tree))?;
    let (bytes, entries) = tree_size(tree);
    let tar_len = std::fs::metadata(&tar)?.len();
    println!(
        "tree: {label}: {entries} entries, {:.1} MB of file data (tar {:.1} MB)",
        bytes as f64 / 1e6,
        tar_len as f64 / 1e6
    );
    let ext4_size = (bytes + entries * 4096) * 3 / 2 + (64 << 20);
    let conv = build_converter()?;
    let mut tools: Vec<Tool> = vec![("krypton tar→EROFS", scratch.join("ours.img"), Vec::new(), 0)];
    for (name, pkg) in [("mkfs.erofs", "erofs-utils"), ("mkfs.ext4 -d", "e2fsprogs")] {
        let bin = name.split(' ').next().unwrap_or(name);
        if have(bin) {
            tools.push((name, scratch.join(format!("{bin}.img")), Vec::new(), 0));
        } else {
            println!("SKIPPED {name}: not installed (apt-get install {pkg})");
        }
    }
    // Run 0 warms the page cache and is not counted.
    for i in 0..=runs() {
        for (name, img, samples, size) in tools.iter_mut() {
            let _ = std::fs::remove_file(&*img);
            let mut cmd = match *name {
                "mkfs.erofs" => {
                    let mut c = Command::new("mkfs.erofs");
                    c.arg("-d0").arg(&*img).arg(tree);
                    c
                }
                "mkfs.ext4 -d" => {
                    File::create(&*img)?.set_len(ext4_size)?;
                    let mut c = Command::new("mkfs.ext4");
                    c.args(["-q", "-F", "-b", "4096", "-d"])
                        .arg(tree)
                        .arg(&*img);
                    c
                }
                _ => {
                    let mut c = Command::new(&conv);
                    c.arg(&tar).arg(&*img);
                    c
                }
            };
            let s = timed(&mut cmd, img)?;
            // Allocated bytes: the ext4 image file is sparse.
            *size = allocated(img);
            let _ = std::fs::remove_file(&*img);
            if i > 0 {
                samples.push(s);
            }
        }
    }
    let mut med: Vec<(Duration, Duration)> = Vec::new();
    for (_, _, samples, _) in &tools {
        let mut w: Vec<Duration> = samples.iter().map(|s| s.0).collect();
        let mut c: Vec<Duration> = samples.iter().map(|s| s.1).collect();
        med.push((median(&mut w), median(&mut c)));
    }
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "converter", "wall ms", "MB/s", "CPU ms", "MB/CPU-s", "image MB"
    );
    for ((name, _, _, size), &(w, c)) in tools.iter().zip(&med) {
        println!(
            "{name:<20} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            w.as_secs_f64() * 1e3,
            mbps(w),
            c.as_secs_f64() * 1e3,
            mbps(c),
            *size as f64 / 1e6
        );
    }
    let (ow, oc) = med[0];
    for ((name, ..), &(w, c)) in tools.iter().zip(&med).skip(1) {
        println!(
            "krypton/{name} throughput ratio: {:.2}x wall, {:.2}x CPU",
            w.as_secs_f64() / ow.as_secs_f64().max(1e-9),
            c.as_secs_f64() / oc.as_secs_f64().max(1e-9)
        );
    }
    println!(
        "(median of {} runs each, interleaved, in {}; wall time on a shared host is noisy, CPU time less so; goal: ratio >= 1.0x)",
        runs(),
        scratch.display()
    );
    Ok(())
}

/// A contender: name, image path, samples of (wall, CPU), image bytes.
type Tool = (&'static str, PathBuf, Vec<(Duration, Duration)>, u64);

/// Bytes a sparse file occupies on disk.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}
