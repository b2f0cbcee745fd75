//! `cargo xtask bench` part: `krypton run -- true` started from the
//! template snapshot against the same command with a cold boot
//! (`--no-snapshot`), interleaved in one run, plus how long a restore takes
//! until the vCPUs run and how much guest RAM a restored VM made its own.
#![allow(clippy::print_stdout)] // the figures are this module's output

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn runs() -> usize {
    std::env::var("KRYPTON_BENCH_SNAPSHOT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

/// One `krypton run --timings -- true`.
struct Sample {
    wall_ms: f64,
    /// "vcpus resumed" since process start (warm runs).
    resumed_ms: Option<f64>,
    /// (private, resident) guest RAM in MiB (warm runs).
    ram: Option<(f64, f64)>,
}

fn mark(stderr: &str, what: &str) -> Option<f64> {
    stderr
        .lines()
        .find(|l| l.trim_start().starts_with(what))
        .and_then(|l| l.split_whitespace().rev().nth(1))
        .and_then(|v| v.parse().ok())
}

fn ram(stderr: &str) -> Option<(f64, f64)> {
    let line = stderr.lines().find(|l| l.starts_with("guest RAM ("))?;
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    // "guest RAM (M MiB, restored): R MiB resident, P MiB private copies, S MiB shared"
    match nums.as_slice() {
        [_, resident, private, ..] => Some((*private, *resident)),
        _ => None,
    }
}

fn sample(krypton: &Path, cold: bool) -> Result<Sample> {
    let mut cmd = Command::new(krypton);
    cmd.args(["run", "--timings"]);
    if cold {
        cmd.arg("--no-snapshot");
    }
    cmd.args(["--", "true"]);
    let t = Instant::now();
    let out = cmd.output().context("running krypton run")?;
    let wall_ms = t.elapsed().as_secs_f64() * 1e3;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("krypton run -- true failed ({}): {err}", out.status);
    }
    Ok(Sample {
        wall_ms,
        resumed_ms: mark(&err, "vcpus resumed"),
        ram: ram(&err),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Runs the comparison with the given krypton binary.
pub fn run(krypton: &Path, mem_mib: f64) -> Result<()> {
    let n = runs();
    // The first warm run makes the template if this build has none yet.
    let t = Instant::now();
    sample(krypton, false)?;
    println!(
        "== krypton run -- true: template snapshot vs cold boot (n={n} each, interleaved) ==\n  first run (template made if missing): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..n {
        cold.push(sample(krypton, true)?);
        warm.push(sample(krypton, false)?);
    }
    let c = median(cold.iter().map(|s| s.wall_ms).collect());
    let w = median(warm.iter().map(|s| s.wall_ms).collect());
    println!("  cold (--no-snapshot)  median {:8.1} ms", c);
    println!("  warm (template)       median {:8.1} ms", w);
    let r = if c > 0.0 { w / c } else { f64::NAN };
    println!(
        "  warm/cold = {r:.2}x (goal <= 0.10x: {})",
        verdict(r <= 0.10)
    );
    let resumed: Vec<f64> = warm.iter().filter_map(|s| s.resumed_ms).collect();
    if resumed.len() == warm.len() {
        let m = median(resumed);
        println!(
            "  restore: process start to vCPUs running, median {m:.1} ms (goal <= 10 ms: {})",
            verdict(m <= 10.0)
        );
    } else {
        println!("  restore: no 'vcpus resumed' mark in the warm runs' --timings");
    }
    let rams: Vec<(f64, f64)> = warm.iter().filter_map(|s| s.ram).collect();
    if rams.len() == warm.len() {
        let private = median(rams.iter().map(|r| r.0).collect());
        let resident = median(rams.iter().map(|r| r.1).collect());
        let share = 100.0 * private / mem_mib;
        println!(
            "  guest RAM after `true`: {private:.1} MiB private ({share:.1}% of {mem_mib:.0} MiB; goal <= 10%: {}), {resident:.1} MiB resident in all",
            verdict(share <= 10.0)
        );
    } else {
        println!("  guest RAM: no usage line in the warm runs' --timings");
    }
    Ok(())
}
