//! `krypton boot --snapshot-out` and `--restore` with a test guest that
//! waits for a byte on COM1: a restored VM must end exactly as the saved
//! one would have (its registers, RIP and UART restored), twice from one
//! file, and bad snapshots get one line and exit 125.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;
use support::elf64;

const BIN: &str = env!("CARGO_BIN_EXE_krypton");

struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("krypton-snapshot-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmpdir");
    TmpDir(d)
}

/// 64-bit: EBX = 0x11, then poll COM1's line status until a byte arrives,
/// read it, add BL and write the sum to the debug-exit port. Saved while it
/// polls, a restored VM exits with (byte + 0x11) only if its registers,
/// RIP and UART came back.
const WAIT_FOR_BYTE: &[u8] = &[
    0xbb, 0x11, 0x00, 0x00, 0x00, // mov ebx, 0x11
    0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
    0xec, // wait: in al, dx
    0xa8, 0x01, // test al, 1 (data ready)
    0x74, 0xfb, // jz wait
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8 (RBR)
    0xec, // in al, dx
    0x00, 0xd8, // add al, bl
    0xe6, 0xf4, // out 0xf4, al
    0xf4, // hlt
];

/// The exit status for input byte `b`: QEMU's debug-exit mapping.
fn status_for(b: u8) -> i32 {
    i32::from(((b.wrapping_add(0x11) as u32) << 1 | 1) as u8)
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn krypton(args: &[&str]) -> Output {
    krypton_stdin(args, b"")
}

/// Runs krypton with `input` on stdin, then EOF.
fn krypton_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn krypton");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait krypton")
}

fn one_error_line(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert_eq!(lines.len(), 1, "want one line: {err}");
    assert!(
        lines[0].starts_with("krypton: error: ") && lines[0].contains(want),
        "want '{want}': {err}"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn a_restored_guest_finishes_what_the_saved_one_started() {
    let dir = tmpdir("wait");
    let kernel = dir.0.join("wait.elf");
    std::fs::write(&kernel, elf64(WAIT_FOR_BYTE)).expect("kernel");
    let snap = dir.0.join("wait.snap");
    let (k, s) = (path(&kernel), path(&snap));
    let base = ["boot", "--kernel", k, "--serial", "stdio", "--mem", "16"];

    // Arguments are checked before any hypervisor is needed.
    let missing = dir.0.join("missing.snap");
    let mut args = base.to_vec();
    args.extend(["--restore", path(&missing)]);
    one_error_line(&krypton(&args), "missing.snap");
    let junk = dir.0.join("junk.snap");
    std::fs::write(&junk, b"not a snapshot at all").expect("junk");
    let mut args = base.to_vec();
    args.extend(["--restore", path(&junk)]);
    one_error_line(&krypton(&args), "is not a Krypton snapshot");

    if !kvm_usable() {
        eprintln!("SKIPPED the save/restore half: /dev/kvm is not usable here");
        return;
    }
    // The guest itself works: a byte on stdin ends it.
    let mut args = base.to_vec();
    args.extend(["--timeout", "60"]);
    let out = krypton_stdin(&args, b"A");
    assert_eq!(out.status.code(), Some(status_for(b'A')), "cold run");

    let mut args = base.to_vec();
    args.extend([
        "--snapshot-out",
        s,
        "--snapshot-after",
        "0.3",
        "--timeout",
        "120",
    ]);
    let out = krypton(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "saving while it waits: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read(&snap).expect("snapshot written");
    assert!(saved.starts_with(b"KRYPSNAP"));

    let mut args = base.to_vec();
    args.extend(["--restore", s, "--timeout", "120"]);
    let out = krypton_stdin(&args, b"B");
    assert_eq!(
        out.status.code(),
        Some(status_for(b'B')),
        "the restored guest must reach its debug exit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The file is untouched by the restored guest's writes (MAP_PRIVATE),
    // so it restores again, to another ending.
    assert_eq!(std::fs::read(&snap).expect("reread"), saved);
    let out = krypton_stdin(&args, b"C");
    assert_eq!(out.status.code(), Some(status_for(b'C')), "second restore");

    // Another VM shape, or a damaged file: refused in one line.
    let args = [
        "boot",
        "--kernel",
        k,
        "--serial",
        "none",
        "--mem",
        "32",
        "--restore",
        s,
    ];
    one_error_line(&krypton(&args), "different VM");
    let mut bad = saved.clone();
    let n = bad.len();
    bad.truncate(n - 4096);
    let cut = dir.0.join("cut.snap");
    std::fs::write(&cut, &bad).expect("cut");
    let mut args = base.to_vec();
    args.extend(["--restore", path(&cut)]);
    one_error_line(&krypton(&args), "corrupt");
}
