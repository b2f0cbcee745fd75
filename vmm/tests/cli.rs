//! The `krypton` binary against bad input: every case must end with exit
//! status 125 and exactly one line on stderr naming the problem, never a
//! panic. Also one good boot, to show the same paths do work.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::elf64;

const BIN: &str = env!("CARGO_BIN_EXE_krypton");

/// A scratch directory, removed on drop (also when the test fails).
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("krypton-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmpdir");
    TmpDir(d)
}

/// mov al, 0x2a ; out 0xf4, al ; hlt
const EXIT_2A: &[u8] = &[0xb0, 0x2a, 0xe6, 0xf4, 0xf4];

fn good_kernel(dir: &Path) -> PathBuf {
    let p = dir.join("guest.elf");
    std::fs::write(&p, elf64(EXIT_2A)).expect("write kernel");
    p
}

fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm is not usable here");
    }
    ok
}

/// Runs krypton and checks: status 125, one stderr line, containing `want`.
fn expect_error(args: &[&str], want: &str) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn krypton");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        out.status.code(),
        Some(125),
        "args {args:?}: stderr {stderr}"
    );
    assert_eq!(lines.len(), 1, "args {args:?}: want one line, got {stderr}");
    assert!(
        lines[0].starts_with("krypton: error: "),
        "args {args:?}: {stderr}"
    );
    assert!(
        lines[0].to_lowercase().contains(&want.to_lowercase()),
        "args {args:?}: want '{want}' in: {}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn argument_errors_are_one_line_and_125() {
    expect_error(&[], "subcommand");
    expect_error(&["frobnicate"], "unrecognized subcommand");
    expect_error(&["boot"], "--kernel");
    expect_error(&["boot", "--kernel", "k", "--bogus"], "--bogus");
    expect_error(&["boot", "--kernel", "k", "--mem", "lots"], "--mem");
    expect_error(&["boot", "--kernel", "k", "--cpus", "300"], "--cpus");
    expect_error(
        &["boot", "--kernel", "k", "--hide-cpuid", "1:0:esi:3"],
        "esi",
    );
    expect_error(&["boot", "--kernel", "k", "--disk", "x.img,rx"], "rx");
}

#[test]
fn scratch_errors_are_one_line_and_125() {
    expect_error(&["run", "--scratch", "64M", "--", "true"], "--scratch");
    expect_error(&["run", "--scratch", "1x", "--", "true"], "1x");
    expect_error(&["run", "--scratch", "", "--", "true"], "--scratch");
    expect_error(
        &["run", "--layer", "x.erofs", "--scratch", "1M", "--", "true"],
        "out of bounds",
    );
    expect_error(
        &["run", "--layer", "x.erofs", "--scratch", "2T", "--", "true"],
        "out of bounds",
    );
    expect_error(
        &["snapshot", "create", "--scratch", "64M"],
        "--scratch needs an image root",
    );
}

#[test]
fn missing_files_are_named() {
    let dir = tmpdir("missing");
    let k = good_kernel(&dir);
    expect_error(
        &["boot", "--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
    expect_error(
        &[
            "boot",
            "--kernel",
            k.to_str().expect("utf8"),
            "--initrd",
            "/nonexistent/initrd",
        ],
        "/nonexistent/initrd",
    );
    if kvm_usable() {
        expect_error(
            &[
                "boot",
                "--kernel",
                k.to_str().expect("utf8"),
                "--disk",
                "/nonexistent/disk.img",
            ],
            "/nonexistent/disk.img",
        );
    }
}

#[test]
fn bad_sizes_and_values() {
    let dir = tmpdir("sizes");
    let k = good_kernel(&dir);
    let k = k.to_str().expect("utf8");
    expect_error(&["boot", "--kernel", k, "--timeout", "-1"], "timeout");
    if !kvm_usable() {
        return;
    }
    expect_error(&["boot", "--kernel", k, "--mem", "0"], "memory");
    expect_error(&["boot", "--kernel", k, "--mem", "999999999"], "memory");
    expect_error(&["boot", "--kernel", k, "--cpus", "0"], "vcpu");
    let long = "x".repeat(10_000);
    expect_error(&["boot", "--kernel", k, "--cmdline", &long], "command line");
}

#[test]
fn corrupt_kernels_and_oversized_initrd() {
    if !kvm_usable() {
        return;
    }
    let dir = tmpdir("corrupt");
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").expect("write");
    expect_error(
        &["boot", "--kernel", empty.to_str().expect("utf8")],
        "kernel",
    );
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, vec![0x5a; 4096]).expect("write");
    expect_error(
        &["boot", "--kernel", garbage.to_str().expect("utf8")],
        "kernel",
    );
    let truncated = dir.join("truncated");
    std::fs::write(&truncated, &elf64(EXIT_2A)[..90]).expect("write");
    expect_error(
        &["boot", "--kernel", truncated.to_str().expect("utf8")],
        "kernel",
    );
    let k = good_kernel(&dir);
    let big = dir.join("initrd");
    std::fs::write(&big, vec![0u8; 24 << 20]).expect("write");
    expect_error(
        &[
            "boot",
            "--kernel",
            k.to_str().expect("utf8"),
            "--mem",
            "16",
            "--initrd",
            big.to_str().expect("utf8"),
        ],
        "initrd",
    );
}

#[test]
fn a_missing_hypervisor_is_one_clear_line() {
    let dir = tmpdir("nokvm");
    let k = good_kernel(&dir);
    let out = Command::new(BIN)
        .args(["boot", "--kernel", k.to_str().expect("utf8")])
        .env("KRYPTON_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/kvm does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_good_guest_exits_with_its_debug_exit_status() {
    if !kvm_usable() {
        return;
    }
    let dir = tmpdir("good");
    let k = good_kernel(&dir);
    let out = Command::new(BIN)
        .args([
            "boot",
            "--kernel",
            k.to_str().expect("utf8"),
            "--serial",
            "none",
            "--timeout",
            "20",
        ])
        .output()
        .expect("spawn");
    assert_eq!(
        out.status.code(),
        Some((0x2a << 1) | 1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stdin_reaches_the_guest_through_com1() {
    if !kvm_usable() {
        return;
    }
    let dir = tmpdir("stdin");
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
        0xec,                   // in al, dx
        0xa8, 0x01,             // test al, 1 (data ready)
        0x74, 0xfb,             // jz back to `in`
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec,                   // in al, dx
        0xe6, 0xf4,             // out 0xf4, al
        0xf4,
    ];
    let k = dir.join("echo.elf");
    std::fs::write(&k, elf64(&code)).expect("write");
    let mut child = Command::new(BIN)
        .args([
            "boot",
            "--kernel",
            k.to_str().expect("utf8"),
            "--serial",
            "stdio",
            "--timeout",
            "20",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"A").expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some((i32::from(b'A') << 1) | 1));
}

#[test]
fn a_writable_disk_cannot_be_shared_by_two_vms() {
    if !kvm_usable() {
        return;
    }
    let dir = tmpdir("lock");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
    let k = dir.join("spin.elf");
    std::fs::write(&k, elf64(&[0xeb, 0xfe])).expect("kernel"); // jmp $
    let (k, img) = (k.to_str().expect("utf8"), img.to_str().expect("utf8"));
    let mut first = Command::new(BIN)
        .args([
            "boot",
            "--kernel",
            k,
            "--disk",
            img,
            "--serial",
            "none",
            "--timeout",
            "30",
        ])
        .spawn()
        .expect("first VM");
    // Wait until the first VM holds the lock (its disk is opened before boot).
    std::thread::sleep(std::time::Duration::from_millis(500));
    expect_error(
        &["boot", "--kernel", k, "--disk", img, "--serial", "none"],
        "in use by another VM",
    );
    // Read-only sharing of a disk nobody writes is fine once the writer is gone.
    let _ = first.kill();
    let _ = first.wait();
    let ro = format!("{img},ro");
    let mut a = Command::new(BIN)
        .args([
            "boot",
            "--kernel",
            k,
            "--disk",
            &ro,
            "--serial",
            "none",
            "--timeout",
            "2",
        ])
        .spawn()
        .expect("reader a");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let b = Command::new(BIN)
        .args([
            "boot",
            "--kernel",
            k,
            "--disk",
            &ro,
            "--serial",
            "none",
            "--timeout",
            "1",
        ])
        .output()
        .expect("reader b");
    assert_eq!(
        b.status.code(),
        Some(124),
        "second reader: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(a.wait().expect("reader a").code(), Some(124));
}
