//! Bounded fuzzing of every cargo-fuzz target in `fuzz/` (CI runs each for
//! a few seconds; longer runs: `cargo +nightly fuzz run TARGET`).

use std::process::Command;

use anyhow::Result;

use crate::cache;

/// Seconds each target runs in CI.
const SECONDS_PER_TARGET: u32 = 20;

fn ensure_tools() -> Result<(), String> {
    let nightly = cache::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if !nightly && cache::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"])).is_err() {
        return Err("WARNING: the nightly toolchain cannot be installed; fuzz targets did NOT run".into());
    }
    if !crate::setup::have("cargo-fuzz") && cache::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"])).is_err() {
        return Err("WARNING: cargo-fuzz cannot be installed; fuzz targets did NOT run".into());
    }
    Ok(())
}

/// Runs every fuzz target for [`SECONDS_PER_TARGET`] seconds.
pub(crate) fn run_bounded() -> Result<crate::test::Verdict> {
    let root = cache::workspace_root();
    if !root.join("fuzz").join("Cargo.toml").is_file() {
        anyhow::bail!("fuzz/Cargo.toml is missing");
    }
    if let Err(why) = ensure_tools() {
        return Ok(crate::test::Verdict::Skipped(why));
    }
    let list = cache::output(Command::new("cargo").current_dir(&root).args(["+nightly", "fuzz", "list"]))?;
    let targets: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if targets.is_empty() {
        anyhow::bail!("no fuzz targets found");
    }
    for t in targets {
        cache::run(Command::new("cargo").current_dir(&root).args(["+nightly", "fuzz", "run", t, "--"]).arg(format!("-max_total_time={SECONDS_PER_TARGET}")))?;
    }
    Ok(crate::test::Verdict::Passed)
}
