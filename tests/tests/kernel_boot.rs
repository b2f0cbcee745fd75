//! The slow real-kernel test: boots our pvm-test guest kernel with
//! `krypton boot` on this host's /dev/kvm (2 vCPUs, 256 MiB, an ext4 disk on
//! virtio-blk) and checks the serial log line by line.
//!
//! The disk has no init, so every platform ends the same way: the kernel
//! mounts the root, finds no init and panics; krypton sees the panic on the
//! serial line and exits with its guest-panic status (`panic=-1 reboot=k`
//! would also reset through the i8042). Booting our initramfs and agent is
//! the end-to-end suite's job (`tests/e2e/`).
//!
//! `cargo test -p krypton-tests --test kernel_boot` boots three ways, one
//! after the other: vmlinux via PVH, vmlinux via the 64-bit entry
//! (`--linux64`) and the bzImage. Measured on this kvm_pvm host with 2 vCPUs:
//! 23 s, 22 s and 28 s wall (root mounted at 13-17 s guest time).
//! Overrides: `KRYPTON_BIN`, `KRYPTON_KERNEL_DIR`, `KRYPTON_BOOT_TIMEOUT`
//! (seconds per boot, default 420: two vCPU threads share the machine with the
//! rest of the suite),
//! `KRYPTON_BOOT_CPUS` (default 2).

#[path = "../src/kernel_helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::RunEnd;
use krypton::cli::status::GUEST_PANIC;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// One emulated boot at a time: each takes both cores for ~90 s.
static ONE_BOOT: Mutex<()> = Mutex::new(());

/// vCPUs: 2 unless `KRYPTON_BOOT_CPUS` says otherwise (for diagnosis).
fn cpus() -> u32 {
    std::env::var("KRYPTON_BOOT_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(2)
}
const MEM_MIB: u32 = 256;

/// The kernel command line this test gives; the log must echo it.
fn test_cmdline() -> anyhow::Result<String> {
    Ok(format!(
        "console=ttyS0 reboot=k panic=-1 root=/dev/vda ro rootfstype=ext4 {}",
        helpers::pvm_test_cmdline()?
    ))
}

/// What the serial log must contain: (what it shows, substring).
fn expected_lines(cmdline: &str, cpus: u32) -> Vec<(&'static str, String)> {
    let s = |x: &str| x.to_string();
    vec![
        ("kernel banner", s("Linux version 6.1")),
        ("our exact command line", format!("Command line: {cmdline}")),
        (
            "e820: low RAM below the EBDA",
            s("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"),
        ),
        (
            "e820: EBDA (MP table) to 1 MiB reserved",
            s("BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved"),
        ),
        (
            "e820: RAM from 1 MiB to the end of 256 MiB",
            s("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        ),
        ("MP table found", s("found SMP MP-table at")),
        ("IOAPIC from the MP table", s("IOAPIC[0]: apic_id")),
        ("IOAPIC at its address", s("address 0xfec00000, GSI 0-23")),
        ("kvm-clock", s("kvm-clock: Using msrs")),
        ("TSC-deadline timer", s("TSC deadline timer available")),
        (
            "clock source chosen",
            s("clocksource: Switched to clocksource"),
        ),
        (
            "all CPUs up",
            format!(
                "smp: Brought up 1 node, {cpus} CPU{}",
                if cpus == 1 { "" } else { "s" }
            ),
        ),
        (
            "all CPUs activated",
            format!("smpboot: Total of {cpus} processors activated"),
        ),
        ("serial console", s("ttyS0 at I/O 0x3f8")),
        ("virtio-blk probed", s("virtio_blk virtio")),
        ("virtio-blk is vda", s("[vda]")),
        (
            "vsock family",
            s("NET: Registered PF_VSOCK protocol family"),
        ),
        (
            "CRNG seeded (by virtio-rng, see ORDERED)",
            s("random: crng init done"),
        ),
        (
            "root mounted from virtio-blk",
            s("EXT4-fs (vda): mounted filesystem"),
        ),
        (
            "VFS root",
            s("VFS: Mounted root (ext4 filesystem) readonly"),
        ),
        ("end of kernel boot", s("No working init found")),
    ]
}

/// Lines that must come in this order: (earlier, later, why). Measured on
/// kvm_pvm with 1 vCPU: with virtio-rng the CRNG is ready 0.2 s after the
/// virtio-blk probe and 6 s before the root mount; with `--no-rng` it is not
/// seeded at all before the kernel panics, so "crng init done" in this
/// window is virtio-rng's doing.
const ORDERED: &[(&str, &str, &str)] = &[
    (
        "virtio-mmio: Registering device",
        "random: crng init done",
        "the CRNG is seeded once virtio-rng has probed",
    ),
    (
        "random: crng init done",
        "EXT4-fs (vda): mounted filesystem",
        "virtio-rng (quality 1000) seeds it before the mount",
    ),
];

fn boot_and_check(name: &str, kernel_file: &str, extra_args: &[&str]) {
    let _one = ONE_BOOT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = helpers::kvm_unavailable() {
        eprintln!("kernel_boot/{name}: skipped: {why}");
        return;
    }
    let krypton = helpers::krypton_bin().expect("building krypton");
    let kdir = helpers::kernel_dir("pvm-test").expect("building the pvm-test kernel");
    let kernel = kdir.join(kernel_file);
    let scratch = helpers::scratch_dir(&format!("kernel-boot-{name}")).expect("scratch dir");
    let disk = helpers::make_ext4_disk(&scratch).expect("ext4 disk");
    let serial = scratch.join("serial.log");
    let vmm_log = scratch.join("krypton.log");
    let cmdline = test_cmdline().expect("cmdline");
    let cpus = cpus();
    let timeout = std::env::var("KRYPTON_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(420);

    let mut cmd = Command::new(&krypton);
    cmd.args(["--log-level", "info", "boot"])
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--cpus",
            &cpus.to_string(),
            "--mem",
            &MEM_MIB.to_string(),
            "--cmdline",
            &cmdline,
        ])
        .arg("--serial")
        .arg(&serial)
        .arg("--disk")
        .arg(format!("{},ro", disk.display()))
        .args(extra_args);
    // Every MMIO exit of the real kernel is also decoded by the WHP
    // backend's emulator and compared with KVM's decoding.
    cmd.env("KRYPTON_CHECK_MMIO", "1");
    for hide in helpers::pvm_test_cpuid_hides().expect("pvm-test.cpuid") {
        cmd.args(["--hide-cpuid", &hide]);
    }
    eprintln!(
        "kernel_boot/{name}: {cmd:?} (pvm host: {})",
        helpers::host_is_pvm()
    );
    let (end, took) = helpers::run_with_deadline(&mut cmd, &vmm_log, Duration::from_secs(timeout))
        .expect("running krypton");
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    eprintln!(
        "kernel_boot/{name}: {end:?} after {:.1} s wall; serial log {} bytes",
        took.as_secs_f64(),
        log.len()
    );
    report_timings(name, &log);

    let mut failures = Vec::new();
    for (what, needle) in expected_lines(&cmdline, cpus) {
        if !log.contains(&needle) {
            failures.push(format!("missing {what}: {needle:?}"));
        }
    }
    let e820 = log.lines().filter(|l| l.contains("BIOS-e820: ")).count();
    if e820 != 3 {
        failures.push(format!(
            "expected exactly 3 e820 entries, the log has {e820}"
        ));
    }
    // Linux's own drivers set DRIVER_OK on our devices; the VMM logs the
    // first activation of each (the kernel prints nothing for vsock/rng).
    let vmm = std::fs::read_to_string(&vmm_log).unwrap_or_default();
    for (ty, driver) in [(2, "virtio_blk"), (4, "virtio_rng"), (19, "virtio_vsock")] {
        let needle = format!("virtio-mmio: device type {ty} activated by the guest driver");
        if !vmm.contains(&needle) {
            failures.push(format!(
                "{driver} did not activate our device (no {needle:?} in the VMM log)"
            ));
        }
    }
    match vmm
        .lines()
        .find_map(|l| l.split("MMIO emulator differential check: ").nth(1))
    {
        Some(rest) => {
            let n: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            eprintln!("kernel_boot/{name}: MMIO differential check: {rest}");
            if n.first().copied().unwrap_or(0) < 100 || n.get(1).copied() != Some(0) {
                failures.push(format!("MMIO emulator check: {rest}"));
            }
        }
        None => failures.push("no MMIO emulator differential check summary in the VMM log".into()),
    }
    for (first, second, why) in ORDERED {
        if let (Some(a), Some(b)) = (log.find(first), log.find(second))
            && a > b
        {
            failures.push(format!("{first:?} should come before {second:?}: {why}"));
        }
    }
    match end {
        RunEnd::TimedOut => failures.push(format!("the VM did not end within {timeout} s")),
        RunEnd::Exited(status) if status.code() == Some(i32::from(GUEST_PANIC)) => {
            eprintln!("kernel_boot/{name}: krypton reported the guest panic ({status})")
        }
        RunEnd::Exited(status) => failures.push(format!(
            "krypton exited with {status}, expected {GUEST_PANIC} (guest panic)"
        )),
    }
    if !failures.is_empty() {
        let vmm = std::fs::read_to_string(&vmm_log).unwrap_or_default();
        panic!(
            "kernel_boot/{name}: {} check(s) failed:\n  {}\n--- serial log (tail) ---\n{}\n--- krypton output (tail) ---\n{}\n(files kept in {})",
            failures.len(),
            failures.join("\n  "),
            tail(&log, 60),
            tail(&vmm, 30),
            scratch.display()
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Prints guest timestamps of milestones (guest time runs ~11% slow here).
fn report_timings(name: &str, log: &str) {
    for needle in [
        "Linux version",
        "smpboot: Total of",
        "virtio_blk virtio",
        "EXT4-fs (vda): mounted",
        "No working init",
    ] {
        if let Some((Some(t), _)) = helpers::find_line(log, needle) {
            eprintln!("kernel_boot/{name}: [{t:>10.3}] {needle}");
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn vmlinux_boots_via_pvh() {
    boot_and_check("pvh", "vmlinux", &[]);
}

#[test]
fn vmlinux_boots_via_64bit_entry() {
    boot_and_check("elf64", "vmlinux", &["--linux64"]);
}

#[test]
fn bzimage_boots() {
    boot_and_check("bzimage", "bzImage", &[]);
}

#[test]
fn cmdline_file_is_well_formed() {
    let line = helpers::pvm_test_cmdline().expect("read pvm-test.cmdline");
    assert!(line.starts_with("noxsave clearcpuid="), "{line}");
    assert!(!line.contains('\n') && !line.contains("  "));
    let hides = helpers::pvm_test_cpuid_hides().expect("read pvm-test.cpuid");
    for needed in ["0x1:0:ecx:13", "0x7:0:edx:29"] {
        assert!(
            hides.iter().any(|h| h == needed),
            "{needed} missing from {hides:?}"
        );
    }
    assert!(hides.iter().all(|h| h.split(':').count() == 4), "{hides:?}");
}
