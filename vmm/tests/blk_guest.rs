//! virtio-blk conformance on the host's real hypervisor: a hand-assembled
//! guest with its own minimal virtio-blk driver (see `blk_guest/driver.rs`)
//! initializes the device as the virtio 1.2 spec says, writes, flushes and
//! reads back sectors through virtqueue 0 and checks every answer; the host
//! then checks the image file. The durability test runs the real `krypton`
//! binary, kills it with SIGKILL right after the guest's FLUSH completed and
//! checks the file. Every test skips (with the reason) without /dev/kvm.

#[path = "blk_guest/code.rs"]
mod code;
#[path = "blk_guest/driver.rs"]
mod driver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use code::describe;
use driver::{Mode, Plan, SECTORS, pattern};
use krypton::hv::Hypervisor;
use krypton::machine::{Machine, MachineConfig, Outcome, SerialOut};
use krypton_devices::virtio::blk::Block;

mod support;
use support::hypervisor;

/// Image size in sectors; the guest writes `FIRST..FIRST + 64`.
const DISK_SECTORS: u64 = 128;
const FIRST: u64 = 16;
/// What the host puts in sectors the guest must not touch.
const FILLER: u8 = 0xee;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d =
            std::env::temp_dir().join(format!("krypton-blk-guest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The image the host expects after the guest wrote the pattern (or the one
/// it prepares for the read-only case).
fn image_with_pattern(seed: u32) -> Vec<u8> {
    let mut img = vec![FILLER; (DISK_SECTORS * 512) as usize];
    for s in FIRST..FIRST + u64::from(SECTORS) {
        let at = (s * 512) as usize;
        img[at..at + 512].copy_from_slice(&pattern(s, seed));
    }
    img
}

/// Compares the image with `expected` and names the first differing sector.
fn assert_image(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).expect("read image");
    assert_eq!(got.len(), expected.len(), "image size changed");
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "image differs from the expected content first at byte {i} (sector {})",
            i / 512
        );
    }
}

/// Runs the guest for `plan` in-process against `disk`.
fn run_in_process(
    hv: &dyn Hypervisor,
    disk: &Path,
    read_only: bool,
    plan: impl FnOnce(&Block) -> Plan,
) -> Outcome {
    let _ = env_logger::builder()
        .is_test(true)
        .filter_level(log::LevelFilter::Warn)
        .try_init();
    let cfg = MachineConfig {
        mem_mib: 16,
        cpus: 1,
        serial: SerialOut::Null,
        hide_cpuid: vec![],
    };
    let mut m = Machine::new(hv, cfg).expect("machine");
    let blk = Block::new(disk, read_only).expect("open disk");
    let plan = plan(&blk);
    let slot = m.add_virtio_device(Box::new(blk)).expect("add virtio-blk");
    assert_eq!(
        slot.base,
        driver::MMIO,
        "the guest expects the disk in the first virtio slot"
    );
    let code = driver::assemble(&plan).expect("assemble guest");
    let state =
        krypton_boot::test_guest::load_elf(m.memory(), &support::elf64(&code)).expect("load guest");
    let t = Instant::now();
    let out = m.run(state, Some(Duration::from_secs(20))).expect("run");
    let what = match out {
        Outcome::DebugExit(c) => format!("{} ({c:#x})", describe(c)),
        other => format!("{other:?}"),
    };
    eprintln!("{:?} guest: {what} after {:?}", plan.mode, t.elapsed());
    out
}

fn assert_pass(out: Outcome) {
    match out {
        Outcome::DebugExit(c) => {
            assert_eq!(c, code::PASS, "guest failed: {} (code {c:#x})", describe(c))
        }
        other => panic!("guest did not report: {other:?}"),
    }
}

#[test]
fn guest_driver_writes_flushes_and_reads_back() {
    let Some(hv) = hypervisor() else { return };
    let dir = Scratch::new("full");
    let img = dir.0.join("disk.img");
    std::fs::write(&img, vec![FILLER; (DISK_SECTORS * 512) as usize]).expect("create image");
    let seed = 0x5eed_0001;
    let out = run_in_process(hv.as_ref(), &img, false, |blk| Plan {
        capacity: blk.capacity(),
        first: FIRST,
        seed,
        id: Some(blk.id()),
        mode: Mode::Full,
    });
    assert_pass(out);
    assert_image(&img, &image_with_pattern(seed));
}

#[test]
fn guest_driver_sees_read_only_disk_refuse_writes() {
    let Some(hv) = hypervisor() else { return };
    let dir = Scratch::new("ro");
    let img = dir.0.join("disk.img");
    let seed = 0x5eed_0002;
    let content = image_with_pattern(seed);
    std::fs::write(&img, &content).expect("create image");
    let out = run_in_process(hv.as_ref(), &img, true, |blk| Plan {
        capacity: blk.capacity(),
        first: FIRST,
        seed,
        id: None,
        mode: Mode::ReadOnly,
    });
    assert_pass(out);
    assert_image(&img, &content);
}

/// The guest's own checks can fail: told the wrong capacity it says so
/// (and stops before writing anything).
#[test]
fn guest_driver_reports_a_capacity_mismatch() {
    let Some(hv) = hypervisor() else { return };
    let dir = Scratch::new("cap");
    let img = dir.0.join("disk.img");
    let content = vec![FILLER; (DISK_SECTORS * 512) as usize];
    std::fs::write(&img, &content).expect("create image");
    let out = run_in_process(hv.as_ref(), &img, false, |blk| Plan {
        capacity: blk.capacity() + 1,
        first: FIRST,
        seed: 3,
        id: None,
        mode: Mode::Full,
    });
    assert_eq!(
        out,
        Outcome::DebugExit(code::CAPACITY),
        "expected the capacity check to fail"
    );
    assert_image(&img, &content);
}

/// Data the guest wrote and flushed is in the file after `kill -9` of the
/// VMM: the device keeps no write-back cache of its own.
#[test]
fn flushed_data_survives_sigkill_of_the_vmm() {
    if hypervisor().is_none() {
        return;
    }
    let dir = Scratch::new("kill");
    let (img, kernel, serial) = (
        dir.0.join("disk.img"),
        dir.0.join("guest.elf"),
        dir.0.join("serial.txt"),
    );
    std::fs::write(&img, vec![FILLER; (DISK_SECTORS * 512) as usize]).expect("create image");
    let seed = 0x5eed_0003;
    let plan = Plan {
        capacity: DISK_SECTORS,
        first: FIRST,
        seed,
        id: None,
        mode: Mode::Durability,
    };
    let code = driver::assemble(&plan).expect("assemble guest");
    std::fs::write(&kernel, support::elf64(&code)).expect("write guest");
    let stderr = std::fs::File::create(dir.0.join("stderr.txt")).expect("stderr file");
    let t = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_krypton"))
        .args([
            "boot",
            "--mem",
            "32",
            "--no-rng",
            "--timeout",
            "60",
            "--kernel",
        ])
        .arg(&kernel)
        .arg("--disk")
        .arg(&img)
        .arg("--serial")
        .arg(&serial)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn krypton");
    let deadline = t + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains(driver::FLUSHED) {
            break;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let err = std::fs::read_to_string(dir.0.join("stderr.txt")).unwrap_or_default();
            // Debug exit v gives status ((v << 1) | 1) & 0xff: only the low
            // 7 bits of the guest's code survive.
            let low = status
                .code()
                .map(|c| format!("{:#x}", c >> 1))
                .unwrap_or_default();
            panic!(
                "krypton ended before the guest flushed: {status} (debug-exit code & 0x7f = {low}); serial {text:?}; stderr: {err}"
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no {:?} on the serial console within 30 s; got {text:?}",
                driver::FLUSHED
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let flushed = t.elapsed();
    assert!(
        child.try_wait().expect("wait").is_none(),
        "krypton must still be running when killed"
    );
    child.kill().expect("SIGKILL krypton");
    let status = child.wait().expect("wait");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "krypton was not ended by SIGKILL: {status}"
        );
    }
    eprintln!("guest flushed after {flushed:?}, killed: {status}");
    assert_image(&img, &image_with_pattern(seed));
}
