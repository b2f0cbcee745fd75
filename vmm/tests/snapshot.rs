//! `krypton boot --snapshot-out` and `--restore` with a test guest that
//! counts down in registers: a restored VM must finish the count exactly
//! where the saved one stopped (wrong registers or RIP never reach the
//! debug exit), and bad snapshots get one line and exit 125.

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

/// 32-bit: 20 x 2^28 iterations of `dec ecx; jnz` (seconds of work), then
/// `out 0xf4, 0x2a; hlt`.
const COUNTDOWN: &[u8] = &[
    0xba, 0x14, 0x00, 0x00, 0x00, // mov edx, 20
    0xb9, 0x00, 0x00, 0x00, 0x10, // outer: mov ecx, 0x10000000
    0x49, // inner: dec ecx
    0x75, 0xfd, // jnz inner
    0x4a, // dec edx
    0x75, 0xf5, // jnz outer
    0xb0, 0x2a, // mov al, 0x2a
    0xe6, 0xf4, // out 0xf4, al
    0xf4, // hlt
];

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn krypton(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn krypton")
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
    let dir = tmpdir("countdown");
    let kernel = dir.0.join("countdown.elf");
    std::fs::write(&kernel, elf64(COUNTDOWN)).expect("kernel");
    let snap = dir.0.join("countdown.snap");
    let (k, s) = (path(&kernel), path(&snap));
    let base = ["boot", "--kernel", k, "--serial", "none", "--mem", "16"];

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
        "saving mid-count: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read(&snap).expect("snapshot written");
    assert!(saved.starts_with(b"KRYPSNAP"));

    let mut args = base.to_vec();
    args.extend(["--restore", s, "--timeout", "120"]);
    let out = krypton(&args);
    assert_eq!(
        out.status.code(),
        Some((0x2a << 1) | 1),
        "the restored guest must reach its debug exit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The file is untouched by the restored guest's writes (MAP_PRIVATE),
    // so it restores again.
    assert_eq!(std::fs::read(&snap).expect("reread"), saved);

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
