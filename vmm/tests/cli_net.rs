//! `--net` and `-p` on the `krypton` binary: bad values are one line and
//! status 125, a taken host port is refused before the VM starts, and a
//! tiny test guest (not Linux) boots with each backend attached, passt
//! stopped afterwards.

use std::path::PathBuf;
use std::process::{Command, Output};

mod support;
use support::elf64;

const BIN: &str = env!("CARGO_BIN_EXE_krypton");
/// mov al, 0x2a ; out 0xf4, al ; hlt
const EXIT_2A: &[u8] = &[0xb0, 0x2a, 0xe6, 0xf4, 0xf4];
const EXIT_STATUS: i32 = (0x2a << 1) | 1;

struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kernel(name: &str) -> (TmpDir, String) {
    let d = std::env::temp_dir().join(format!("krypton-cli-net-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmpdir");
    let k = d.join("guest.elf");
    std::fs::write(&k, elf64(EXIT_2A)).expect("kernel");
    let k = k.to_str().expect("utf8").to_owned();
    (TmpDir(d), k)
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

fn krypton(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn krypton")
}

fn assert_one_line_125(out: &Output, want: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(lines.len(), 1, "want one line: {stderr}");
    assert!(lines[0].starts_with("krypton: error: "), "{stderr}");
    assert!(lines[0].contains(want), "want '{want}' in: {stderr}");
}

#[test]
fn bad_net_values_are_one_line_and_125() {
    for bad in ["tap0", "stream:tcp:host", "stream:unix:", "stream:udp:h:1"] {
        assert_one_line_125(&krypton(&["boot", "--kernel", "k", "--net", bad]), bad);
    }
    assert_one_line_125(
        &krypton(&["boot", "--kernel", "k", "-p", "80"]),
        "HOSTPORT:CONTAINERPORT",
    );
    assert_one_line_125(
        &krypton(&["run", "--net", "bogus", "--", "true"]),
        "invalid value 'bogus' for '--net",
    );
}

#[test]
fn ports_without_passt_and_unreachable_peers_are_refused() {
    if !kvm_usable() {
        return;
    }
    let (_d, k) = kernel("refused");
    assert_one_line_125(
        &krypton(&["boot", "--kernel", &k, "-p", "8080:80"]),
        "-p needs --net passt",
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    let net = format!("stream:tcp:{addr}");
    assert_one_line_125(
        &krypton(&["boot", "--kernel", &k, "--net", &net]),
        "cannot connect",
    );
    let net = "stream:unix:/nonexistent/passt.sock";
    assert_one_line_125(
        &krypton(&["boot", "--kernel", &k, "--net", net]),
        "/nonexistent/passt.sock",
    );
}

#[test]
fn a_guest_boots_with_a_stream_peer_attached() {
    if !kvm_usable() {
        return;
    }
    let (_d, k) = kernel("stream");
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let net = format!("stream:tcp:{}", l.local_addr().expect("addr"));
    let out = krypton(&[
        "boot",
        "--kernel",
        &k,
        "--serial",
        "none",
        "--timeout",
        "20",
        "--net",
        &net,
    ]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_STATUS),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The VMM connected to the peer.
    l.set_nonblocking(true).expect("nonblocking");
    assert!(l.accept().is_ok(), "krypton connected");
}

#[cfg(target_os = "linux")]
fn passt_installed() -> bool {
    let ok = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("passt").is_file()));
    if !ok {
        eprintln!("skipped: passt is not installed");
    }
    ok
}

#[cfg(target_os = "linux")]
#[test]
fn passt_is_started_and_stopped_and_taken_ports_are_refused() {
    if !kvm_usable() || !passt_installed() {
        return;
    }
    let (_d, k) = kernel("passt");
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let map = format!("{port}:80");
    assert_one_line_125(
        &krypton(&["boot", "--kernel", &k, "--net", "passt", "-p", &map]),
        &format!("host port {port}/tcp is not available"),
    );
    drop(taken);
    let child = Command::new(BIN)
        .args([
            "boot",
            "--kernel",
            &k,
            "--serial",
            "none",
            "--timeout",
            "20",
            "--net",
            "passt",
            "-p",
            &map,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn krypton");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(EXIT_STATUS),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // passt was stopped with the VM: the published port is free again.
    std::net::TcpListener::bind(("0.0.0.0", port)).expect("port released");
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .expect("tmp")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("krypton-passt-{pid}-"))
        })
        .count();
    assert_eq!(leftovers, 0, "passt socket directories removed");
}

/// `krypton run` without `--net`: where passt is not on PATH, one notice
/// line says the container has no network (before anything else fails,
/// here the missing kernel); `--net none` says nothing about passt.
#[cfg(target_os = "linux")]
#[test]
fn run_without_passt_says_so_in_one_notice_line() {
    let empty = std::env::temp_dir().join(format!("krypton-cli-net-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .env("PATH", &empty)
            .args(["run", "--kernel", "/nonexistent/vmlinux"])
            .args(extra)
            .args(["--", "true"])
            .output()
            .expect("spawn krypton")
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("passt is not installed"))
        .collect();
    assert_eq!(notices.len(), 1, "{stderr}");
    assert!(notices[0].starts_with("krypton: notice: "), "{stderr}");
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("/nonexistent/vmlinux"), "{stderr}");
    let out = run(&["--net", "none"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("passt"), "{stderr}");
    let _ = std::fs::remove_dir_all(&empty);
}
