//! `cargo xtask bench`: Krypton against QEMU microvm on the same stub guests.
//!
//! 1. Start-to-exit: wall time from process spawn to exit for a guest that
//!    writes the debug-exit port at once (runs interleaved, median/min/max).
//! 2. PIO round trips per second: a guest looping `out` to a port neither VMM
//!    claims, K times; rate = K / (median(t_K) - median(t_0)).
//! 3. VMM memory overhead: RSS of the VMM process outside guest RAM (summed
//!    from /proc/PID/smaps, RAM-sized mappings excluded) while the guest idles.

mod measure;
mod stub;

use anyhow::{Context, Result, bail};
use measure::{Stats, VmmCmd};
use std::path::{Path, PathBuf};
use stub::Stub;

/// Options for `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Runs per VMM for start-to-exit.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Port writes in the PIO loop.
    #[arg(long, default_value_t = 100_000)]
    pio_count: u32,
    /// Runs per VMM and loop length for the PIO rate.
    #[arg(long, default_value_t = 5)]
    pio_runs: usize,
    /// Guest RAM in MiB for the memory measurement.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// The krypton binary (default: build it with `cargo build --release`).
    #[arg(long)]
    krypton: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
    /// Only the image benchmarks (tar → EROFS against mkfs, pull against
    /// skopeo).
    #[arg(long)]
    pub image_only: bool,
    /// Run only the host-directory part (virtio-fs against virtio-9p).
    #[arg(long)]
    pub fs_only: bool,
    /// Run only the network benchmark (TCP through passt against QEMU).
    #[arg(long)]
    pub net_only: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub fn krypton_binary(args: &BenchArgs) -> Result<PathBuf> {
    if let Some(p) = &args.krypton {
        return Ok(p.clone());
    }
    release_krypton()
}

/// Builds krypton with `cargo build --release` and returns its path.
pub fn release_krypton() -> Result<PathBuf> {
    let root = workspace_root();
    eprintln!("building krypton (release)...");
    let st = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "krypton", "--bin", "krypton"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("cargo build --release -p krypton failed");
    }
    Ok(crate::cache::target_dir().join("release/krypton"))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// Runs the benchmarks and prints the three figures with their ratios.
#[allow(clippy::print_stdout)] // the figures are this task's output
pub fn run(args: &BenchArgs) -> Result<()> {
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm is missing: the benchmark needs KVM");
    }
    let krypton = krypton_binary(args)?;
    let dir = crate::cache::target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exit_elf = dir.join("stub-exit.elf");
    let pio0_elf = dir.join("stub-pio-0.elf");
    let pio_elf = dir.join("stub-pio.elf");
    let idle_elf = dir.join("stub-idle.elf");
    stub::write(Stub::Exit, &exit_elf)?;
    stub::write(Stub::PioLoop(0), &pio0_elf)?;
    stub::write(Stub::PioLoop(args.pio_count), &pio_elf)?;
    stub::write(Stub::Idle, &idle_elf)?;
    let vmms = [
        VmmCmd::Krypton(krypton.clone()),
        VmmCmd::Qemu(args.qemu.clone()),
    ];

    // Warm-up (page cache, first-run costs), then interleaved runs.
    for v in &vmms {
        v.time_to_exit(&exit_elf, 128)?;
    }
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..args.runs {
        for (i, v) in vmms.iter().enumerate() {
            times[i].push(v.time_to_exit(&exit_elf, 128)?);
        }
    }
    let s = [Stats::of(&times[0]), Stats::of(&times[1])];
    println!(
        "== start-to-exit (stub guest, n={} each, interleaved) ==",
        args.runs
    );
    for (v, st) in vmms.iter().zip(&s) {
        println!(
            "  {:8} median {:7.1} ms   min {:7.1}   max {:7.1}",
            v.name(),
            st.median,
            st.min,
            st.max
        );
    }
    let met = s[0].median <= 0.5 * s[1].median;
    println!(
        "  krypton/qemu = {} (goal <= 0.50x: {})",
        ratio(s[0].median, s[1].median),
        verdict(met)
    );

    let mut rates = [0.0f64; 2];
    println!(
        "== PIO round trips (K={}, n={} each) ==",
        args.pio_count, args.pio_runs
    );
    for (i, v) in vmms.iter().enumerate() {
        let (mut t0, mut tk) = (Vec::new(), Vec::new());
        for _ in 0..args.pio_runs {
            t0.push(v.time_to_exit(&pio0_elf, 128)?);
            tk.push(v.time_to_exit(&pio_elf, 128)?);
        }
        let dt = (Stats::of(&tk).median - Stats::of(&t0).median) / 1000.0;
        rates[i] = if dt > 0.0 {
            f64::from(args.pio_count) / dt
        } else {
            0.0
        };
        println!(
            "  {:8} {:10.0} exits/s   (K=0 median {:.1} ms, K={} median {:.1} ms)",
            v.name(),
            rates[i],
            Stats::of(&t0).median,
            args.pio_count,
            Stats::of(&tk).median
        );
    }
    let met = rates[0] >= rates[1];
    println!(
        "  krypton/qemu = {} (goal >= 1.00x: {})",
        ratio(rates[0], rates[1]),
        verdict(met)
    );

    println!(
        "== VMM memory overhead (idle guest, {} MiB RAM) ==",
        args.mem
    );
    let mut over = [None, None];
    for (i, v) in vmms.iter().enumerate() {
        match v.idle_overhead(&idle_elf, args.mem) {
            Ok(m) => {
                println!(
                    "  {:8} RSS outside guest RAM {:6.2} MiB (private {:.2} MiB; guest RAM RSS {:.2} MiB)",
                    v.name(),
                    m.outside_kib as f64 / 1024.0,
                    m.private_outside_kib as f64 / 1024.0,
                    m.ram_kib as f64 / 1024.0
                );
                over[i] = Some(m.outside_kib as f64 / 1024.0);
            }
            Err(e) => println!("  {:8} failed: {e:#}", v.name()),
        }
    }
    if let (Some(k), Some(q)) = (over[0], over[1]) {
        println!(
            "  krypton/qemu = {} (goal: krypton <= 5 MiB: {})",
            ratio(k, q),
            verdict(k <= 5.0)
        );
    }
    Ok(())
}
