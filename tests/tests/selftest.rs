//! The conformance guests on this host's /dev/kvm: once through the
//! `krypton selftest` binary (exit status and table), and once per case
//! in-process so CI shows each case's result. Skips (with the reason
//! printed) when /dev/kvm is not usable.
//!
//! `cargo test -p krypton-tests --test selftest`. Override the binary with
//! `KRYPTON_BIN`.

#[path = "../src/kernel_helpers.rs"]
#[allow(dead_code)]
mod helpers;

use krypton::selftest::{self, Status};
use std::process::Command;

/// Runs one case in-process; fails the test if the case failed.
fn run_case(name: &str) {
    if let Some(why) = helpers::kvm_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let hv = krypton::hv::new(krypton::hv::Backend::host_default()).expect("open KVM");
    let report = selftest::run_all(hv.as_ref(), Some(name));
    let case = report
        .case(name)
        .unwrap_or_else(|| panic!("case {name} did not run:\n{report}"));
    match &case.status {
        Status::Pass => {}
        Status::Skip(why) => eprintln!("{name} skipped: {why}"),
        Status::Fail(why) => panic!("{name} failed: {why}"),
    }
}

macro_rules! cases {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run_case($name);
            }
        )*

        /// Every case has a test above, and every test names a case.
        #[test]
        fn every_case_has_a_test() {
            let mut listed = vec![$($name),*];
            let mut known = selftest::case_names();
            listed.sort_unstable();
            known.sort_unstable();
            assert_eq!(listed, known);
        }
    };
}

cases! {
    entry_real => "entry-real",
    entry_prot => "entry-prot",
    entry_long => "entry-long",
    pio_real => "pio-real",
    pio_prot => "pio-prot",
    pio_long => "pio-long",
    pio_string_real => "pio-string-real",
    pio_string_prot => "pio-string-prot",
    pio_string_long => "pio-string-long",
    mmio_real => "mmio-real",
    mmio_prot => "mmio-prot",
    mmio_long => "mmio-long",
    iret_real => "iret-real",
    iret_prot => "iret-prot",
    iret_long => "iret-long",
    soft_int_real => "soft-int-real",
    soft_int_prot => "soft-int-prot",
    soft_int_long => "soft-int-long",
    ioapic_irq_hlt_real => "ioapic-irq-hlt-real",
    ioapic_irq_hlt_prot => "ioapic-irq-hlt-prot",
    ioapic_irq_hlt_long => "ioapic-irq-hlt-long",
    ioapic_level_irq_real => "ioapic-level-irq-real",
    ioapic_level_irq_prot => "ioapic-level-irq-prot",
    ioapic_level_irq_long => "ioapic-level-irq-long",
    lapic_timer_oneshot_real => "lapic-timer-oneshot-real",
    lapic_timer_oneshot_prot => "lapic-timer-oneshot-prot",
    lapic_timer_oneshot_long => "lapic-timer-oneshot-long",
    lapic_timer_periodic_real => "lapic-timer-periodic-real",
    lapic_timer_periodic_prot => "lapic-timer-periodic-prot",
    lapic_timer_periodic_long => "lapic-timer-periodic-long",
    lapic_timer_tsc_deadline_real => "lapic-timer-tsc-deadline-real",
    lapic_timer_tsc_deadline_prot => "lapic-timer-tsc-deadline-prot",
    lapic_timer_tsc_deadline_long => "lapic-timer-tsc-deadline-long",
    serial_real => "serial-real",
    serial_prot => "serial-prot",
    serial_long => "serial-long",
    serial_input_real => "serial-input-real",
    serial_input_prot => "serial-input-prot",
    serial_input_long => "serial-input-long",
    serial_irq_real => "serial-irq-real",
    serial_irq_prot => "serial-irq-prot",
    serial_irq_long => "serial-irq-long",
    smp_init_sipi_real => "smp-init-sipi-real",
    smp_init_sipi_prot => "smp-init-sipi-prot",
    smp_init_sipi_long => "smp-init-sipi-long",
    debug_exit_real => "debug-exit-real",
    debug_exit_prot => "debug-exit-prot",
    debug_exit_long => "debug-exit-long",
    i8042_reset_real => "i8042-reset-real",
    i8042_reset_prot => "i8042-reset-prot",
    i8042_reset_long => "i8042-reset-long",
    triple_fault_real => "triple-fault-real",
    triple_fault_prot => "triple-fault-prot",
    triple_fault_long => "triple-fault-long",
}

/// Parses the table `krypton selftest` prints: (tag, name) per case line.
fn table(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tag = f.next()?;
            let name = f.next()?;
            ["PASS", "FAIL", "SKIP"]
                .contains(&tag)
                .then(|| (tag.to_string(), name.to_string()))
        })
        .collect()
}

#[test]
fn krypton_selftest_binary_passes() -> anyhow::Result<()> {
    if let Some(why) = helpers::kvm_unavailable() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let out = Command::new(helpers::krypton_bin()?)
        .arg("selftest")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows = table(&stdout);
    let names: Vec<String> = rows.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(names, selftest::case_names(), "one line per case, in order");
    let count = |t: &str| rows.iter().filter(|(tag, _)| tag == t).count();
    let summary = format!(
        "{} passed, {} failed, {} skipped",
        count("PASS"),
        count("FAIL"),
        count("SKIP")
    );
    assert_eq!(stdout.lines().last(), Some(summary.as_str()));
    assert_eq!(count("FAIL"), 0, "failed cases");
    assert_eq!(out.status.code(), Some(0));
    // Every mode can at least be entered and do port I/O.
    for case in [
        "entry-real",
        "entry-prot",
        "entry-long",
        "pio-real",
        "pio-prot",
        "pio-long",
    ] {
        assert!(
            rows.contains(&("PASS".into(), case.into())),
            "{case} must pass"
        );
    }
    Ok(())
}

#[test]
fn krypton_selftest_filter_runs_only_matching_cases() -> anyhow::Result<()> {
    if let Some(why) = helpers::kvm_unavailable() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let out = Command::new(helpers::krypton_bin()?)
        .args(["selftest", "--filter", "serial-input"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names: Vec<String> = table(&stdout).into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        names,
        [
            "serial-input-real",
            "serial-input-prot",
            "serial-input-long"
        ],
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    Ok(())
}

/// The WHP backend's MMIO emulator, checked live against KVM on every MMIO
/// exit of every conformance guest (all three modes): same address, size,
/// direction and data (see `krypton::mmio_check`).
#[test]
fn conformance_mmio_exits_agree_with_our_emulator() -> anyhow::Result<()> {
    if let Some(why) = helpers::kvm_unavailable() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let out = Command::new(helpers::krypton_bin()?)
        .args(["--log-level", "info", "selftest"])
        .env("KRYPTON_CHECK_MMIO", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("disagrees"), "{stderr}");
    let (mut checked, mut mismatched, mut runs) = (0u64, 0u64, 0);
    for line in stderr.lines() {
        let Some(rest) = line.split("MMIO emulator differential check: ").nth(1) else {
            continue;
        };
        let nums: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        checked += nums.first().copied().unwrap_or(0);
        mismatched += nums.get(1).copied().unwrap_or(0);
        runs += 1;
    }
    eprintln!("{runs} VMs, {checked} MMIO exits checked, {mismatched} mismatches");
    assert!(runs >= 3, "expected one line per VM: {stderr}");
    assert!(checked >= 30, "too few MMIO exits checked ({checked})");
    assert_eq!(mismatched, 0);
    Ok(())
}
