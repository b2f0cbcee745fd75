//! `cargo xtask test`: everything CI runs, in order, each step timed. A step
//! that cannot run on this machine says why and is counted as skipped; the
//! run fails if any step fails. The last line is `N passed, M failed, K skipped`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::cache;
use crate::setup;

/// Crates that build for Windows (the agent is Linux-only, xtask and the
/// test crate drive Linux tools).
const WINDOWS_CRATES: &[&str] = &[
    "krypton",
    "krypton-devices",
    "krypton-boot",
    "krypton-protocol",
    "krypton-image",
];
const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

/// How a step ended, when it did not fail.
pub(crate) enum Verdict {
    /// It ran and passed.
    Passed,
    /// It could not run here; the text says why.
    Skipped(String),
}

struct Step {
    name: &'static str,
    run: Box<dyn Fn() -> Result<Verdict>>,
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(cache::workspace_root());
    c
}

fn run(cmd: &mut Command) -> Result<Verdict> {
    cache::run(cmd)?;
    Ok(Verdict::Passed)
}

fn windows_steps() -> Vec<Step> {
    let target_ok = || setup::has_rust_target(WINDOWS_TARGET);
    let pkgs: Vec<String> = WINDOWS_CRATES
        .iter()
        .flat_map(|c| ["-p".to_string(), c.to_string()])
        .collect();
    let p1 = pkgs.clone();
    let p2 = pkgs;
    vec![
        Step {
            name: "clippy (x86_64-pc-windows-gnu)",
            run: Box::new(move || {
                if !target_ok() {
                    return Ok(Verdict::Skipped(format!(
                        "WARNING: rust target {WINDOWS_TARGET} is NOT installed; the Windows build was NOT checked"
                    )));
                }
                run(cargo()
                    .env("TMPDIR", setup::windows_tmp())
                    .args(["clippy", "--target", WINDOWS_TARGET, "--all-targets"])
                    .args(&p1)
                    .args(["--", "-D", "warnings"]))
            }),
        },
        Step {
            name: "unit tests under wine",
            run: Box::new(move || {
                if !target_ok() {
                    return Ok(Verdict::Skipped(format!(
                        "WARNING: rust target {WINDOWS_TARGET} is NOT installed"
                    )));
                }
                if !setup::have("wine") {
                    return Ok(Verdict::Skipped(
                        "WARNING: wine is not installed; Windows unit tests did NOT run".into(),
                    ));
                }
                prepare_wine()?;
                cache::run(
                    cargo()
                        .args(["test", "--target", WINDOWS_TARGET, "--lib"])
                        .args(&p2)
                        .envs(setup::wine_env()),
                )?;
                // The named-pipe vsock host, end to end under wine.
                cache::run(
                    cargo()
                        .args([
                            "test",
                            "--target",
                            WINDOWS_TARGET,
                            "-p",
                            "krypton-devices",
                            "--test",
                            "vsock_pipe",
                        ])
                        .envs(setup::wine_env()),
                )?;
                // The layer converter's integration tests (conversion and
                // bad input; the fsck/mount read-back is Linux-only).
                cache::run(
                    cargo()
                        .args([
                            "test",
                            "--target",
                            WINDOWS_TARGET,
                            "-p",
                            "krypton-image",
                            "--tests",
                        ])
                        .envs(setup::wine_env()),
                )?;
                // The platform-neutral emulator's own test files too.
                run(cargo()
                    .args([
                        "test",
                        "--target",
                        WINDOWS_TARGET,
                        "-p",
                        "krypton",
                        "--test",
                        "emulator_*",
                    ])
                    .envs(setup::wine_env()))
            }),
        },
        Step {
            name: "krypton.exe selftest under wine says WHP is unavailable",
            run: Box::new(move || {
                if !target_ok() || !setup::have("wine") {
                    return Ok(Verdict::Skipped(
                        "WARNING: Windows target or wine missing".into(),
                    ));
                }
                prepare_wine()?;
                cache::run(cargo().args(["build", "--target", WINDOWS_TARGET, "-p", "krypton"]))?;
                let exe = target_dir()
                    .join(WINDOWS_TARGET)
                    .join("debug")
                    .join("krypton.exe");
                let out = Command::new("wine")
                    .arg(&exe)
                    .arg("selftest")
                    .envs(setup::wine_env())
                    .output()?;
                let stderr = String::from_utf8_lossy(&out.stderr);
                let line = stderr
                    .lines()
                    .find(|l| l.starts_with("krypton: error:"))
                    .unwrap_or("")
                    .to_string();
                eprintln!(
                    "wine krypton.exe selftest -> {:?}: {line}",
                    out.status.code()
                );
                if out.status.code() != Some(125) || !line.contains("Hypervisor Platform") {
                    bail!(
                        "expected exit 125 with a WHP-unavailable message, got {:?}: {stderr}",
                        out.status.code()
                    );
                }
                Ok(Verdict::Passed)
            }),
        },
    ]
}

/// Creates the private wine prefix with the bcryptprimitives.dll shim
/// (`.ci/wine/setup.sh`; Debian's wine 8.0 lacks the DLL Rust std needs).
fn prepare_wine() -> Result<()> {
    let script = cache::workspace_root()
        .join(".ci")
        .join("wine")
        .join("setup.sh");
    cache::run(Command::new("sh").arg(script).envs(setup::wine_env()))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache::workspace_root().join("target"))
}

fn steps() -> Vec<Step> {
    let mut steps = vec![
        Step {
            name: "rustfmt",
            run: Box::new(|| run(cargo().args(["fmt", "--all", "--check"]))),
        },
        Step {
            name: "clippy (linux)",
            run: Box::new(|| {
                run(cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        },
        Step {
            name: "guest kernel (pvm-test variant), images, Debian minbase",
            run: Box::new(|| {
                crate::kernel::build(&crate::kernel::KernelArgs {
                    variant: crate::kernel::Variant::PvmTest,
                })?;
                crate::images::build_all()?;
                crate::debian::minbase()?;
                Ok(Verdict::Passed)
            }),
        },
        Step {
            name: "cargo test --workspace",
            run: Box::new(|| {
                crate::testlog::run(cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
                Ok(Verdict::Passed)
            }),
        },
    ];
    steps.extend(windows_steps());
    steps.push(Step {
        name: "fuzz targets (bounded)",
        run: Box::new(crate::fuzz::run_bounded),
    });
    steps
}

/// Runs every step.
pub fn run_all() -> Result<()> {
    setup::ensure_prerequisites()?;
    let started = Instant::now();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut summary = Vec::new();
    for step in steps() {
        eprintln!("\n=== {} ===", step.name);
        let t = Instant::now();
        let verdict = (step.run)();
        // What the Windows toolchain left in its private temp dir.
        let _ = std::fs::remove_dir_all(setup::windows_tmp());
        let secs = t.elapsed().as_secs_f64();
        let line = match verdict {
            Ok(Verdict::Passed) => {
                passed += 1;
                format!("PASS  {:<60} {secs:7.1}s", step.name)
            }
            Ok(Verdict::Skipped(why)) => {
                skipped += 1;
                format!("SKIP  {:<60} {why}", step.name)
            }
            Err(e) => {
                failed += 1;
                format!("FAIL  {:<60} {secs:7.1}s  {e:#}", step.name)
            }
        };
        eprintln!("{line}");
        summary.push(line);
    }
    eprintln!(
        "\n=== summary ({:.0}s) ===",
        started.elapsed().as_secs_f64()
    );
    for l in &summary {
        eprintln!("{l}");
    }
    #[allow(clippy::print_stdout)]
    {
        println!("xtask: {passed} passed, {failed} failed, {skipped} skipped");
    }
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    Ok(())
}
