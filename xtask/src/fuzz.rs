//! Bounded fuzzing of every cargo-fuzz target in `fuzz/fuzz_targets` (CI
//! runs each for a few seconds; longer runs: `cargo +nightly fuzz run T`).

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::cache;

/// Seconds each target runs in CI.
const SECONDS_PER_TARGET: u32 = 10;

/// The cargo invocation for cargo-fuzz: nightly when installed (or
/// installable), else the stable toolchain with RUSTC_BOOTSTRAP=1 for the
/// `-Z` sanitizer flags cargo-fuzz passes.
fn fuzz_cargo(root: &Path, nightly: bool) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root);
    // The sanitizer build of every target takes minutes: keep it in the
    // cache outside the clone so later runs are incremental.
    if let Ok(cache) = cache::root() {
        c.env("CARGO_TARGET_DIR", cache.join("fuzz-target"));
    }
    if nightly {
        c.arg("+nightly");
    } else {
        c.env("RUSTC_BOOTSTRAP", "1");
    }
    c.arg("fuzz");
    c
}

fn have_nightly() -> bool {
    let listed = cache::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    listed
        || cache::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .is_ok()
}

/// The targets: the files in fuzz/fuzz_targets (fuzz/src/bin holds plain
/// smoke harnesses, not libFuzzer targets).
fn targets(root: &Path) -> Result<Vec<String>> {
    let mut t: Vec<String> = std::fs::read_dir(root.join("fuzz").join("fuzz_targets"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    t.sort();
    Ok(t)
}

/// Runs every fuzz target for [`SECONDS_PER_TARGET`] seconds.
pub(crate) fn run_bounded() -> Result<crate::test::Verdict> {
    let root = cache::workspace_root();
    let targets = targets(&root)?;
    if targets.is_empty() {
        anyhow::bail!("no fuzz targets in fuzz/fuzz_targets");
    }
    if !crate::setup::have("cargo-fuzz")
        && cache::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"])).is_err()
    {
        return Ok(crate::test::Verdict::Skipped(
            "WARNING: cargo-fuzz cannot be installed; fuzz targets did NOT run".into(),
        ));
    }
    let nightly = have_nightly();
    if !nightly {
        eprintln!("nightly toolchain unavailable: fuzzing with stable and RUSTC_BOOTSTRAP=1");
    }
    for t in &targets {
        let mut cmd = fuzz_cargo(&root, nightly);
        cmd.args(["run", t, "--"])
            .arg(format!("-max_total_time={SECONDS_PER_TARGET}"));
        cache::run(&mut cmd)?;
    }
    eprintln!(
        "fuzzed {} targets, {SECONDS_PER_TARGET} s each: {}",
        targets.len(),
        targets.join(", ")
    );
    Ok(crate::test::Verdict::Passed)
}
