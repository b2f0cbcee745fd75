//! Firecracker's hybrid vsock protocol against a real client, Debian's
//! `socat`, with the simulated guest driver on the other side.
#![cfg(unix)]

mod vsock_driver;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use krypton_devices::virtio::vsock::VsockHost;
use vsock_driver::{Guest, Layout, SHUT_RCV, SHUT_SEND, pattern};

const T: Duration = Duration::from_secs(15);

fn have_socat() -> bool {
    let ok = Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: socat is not installed (apt-get install socat)");
    }
    ok
}

/// A scratch directory, removed on drop (also when the test fails).
struct TmpDir(std::path::PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("krypton-vsock-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    TmpDir(d)
}

/// A child killed and reaped on drop (a failed assertion leaves no socat).
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether /proc/net/unix lists a listening socket bound to `path`
/// (flag __SO_ACCEPTCON, 0x10000).
fn unix_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists(); // not Linux: the file is the best sign
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let listening = f
            .get(3)
            .and_then(|x| u32::from_str_radix(x, 16).ok())
            .is_some_and(|flags| flags & 0x10000 != 0);
        listening && f.get(7).is_some_and(|p| *p == want)
    })
}

/// Runs `socat -t 10 - UNIX-CONNECT:<sock>` with `input` on stdin; returns a
/// thread yielding its stdout.
fn socat_client(sock: &Path, input: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
    let mut child = Command::new("socat")
        .args(["-t", "10", "-", &format!("UNIX-CONNECT:{}", sock.display())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn socat");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = writer.join();
        let _ = child.wait();
        out
    })
}

#[test]
fn socat_connects_to_a_guest_port() {
    if !have_socat() {
        return;
    }
    let dir = tempdir("h2g");
    let sock = dir.join("v.sock");
    let host = VsockHost::unix(&sock).expect("listen");
    let mut g = Guest::new(Layout::Single, host, 3);
    g.listening.insert(5000);

    let payload = pattern(200_000, 11);
    let mut input = b"CONNECT 5000\n".to_vec();
    input.extend_from_slice(&payload);
    let client = socat_client(&sock, input);

    let key = g
        .accept(5000, T)
        .expect("socat's CONNECT reached the guest");
    let got = g.read_to_end(key, T);
    assert_eq!(got, payload, "bytes after the CONNECT line reach the guest");
    let reply: Vec<u8> = got.iter().rev().copied().collect();
    g.write(key, &reply);
    g.shutdown(key, SHUT_SEND | SHUT_RCV);
    assert!(g.wait_reset(key, T));

    let out = client.join().expect("socat thread");
    let want_ok = format!("OK {}\n", key.1);
    assert!(
        out.starts_with(want_ok.as_bytes()),
        "reply starts {:?}",
        String::from_utf8_lossy(&out[..out.len().min(20)])
    );
    assert_eq!(key.1, 1 << 30, "first host port is 2^30");
    assert_eq!(&out[want_ok.len()..], &reply[..], "guest bytes reach socat");

    // Nobody listens on 5001: socat gets EOF and no OK line.
    let out = socat_client(&sock, b"CONNECT 5001\n".to_vec());
    g.run_until(Duration::from_millis(500), |_| false);
    assert_eq!(
        out.join().expect("socat"),
        b"",
        "refused connection is closed without OK"
    );
    // Garbage instead of CONNECT is dropped too.
    let out = socat_client(&sock, b"HELLO\n".to_vec());
    assert_eq!(out.join().expect("socat"), b"");
    drop(g);
}

#[test]
fn guest_connects_to_a_socat_listener() {
    if !have_socat() {
        return;
    }
    let dir = tempdir("g2h");
    let sock = dir.join("v.sock");
    let listen_path = dir.join("v.sock_6000");
    let out_path = dir.join("received");
    // socat accepts one connection on PATH_6000, stores what it receives
    // and answers with a fixed message.
    let mut server = Command::new("socat")
        .args([
            "-t",
            "10",
            &format!("UNIX-LISTEN:{}", listen_path.display()),
            &format!(
                "SYSTEM:cat > {} && printf answer-from-socat",
                out_path.display()
            ),
        ])
        .spawn()
        .map(Reap)
        .expect("spawn socat listener");
    let start = Instant::now();
    // The socket file appears at bind(), before listen(): wait until the
    // kernel lists it as listening, or a connect in between is refused.
    while !unix_listening(&listen_path) {
        assert!(
            start.elapsed() < T,
            "socat did not listen on {}",
            listen_path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let host = VsockHost::unix(&sock).expect("listen");
    let mut g = Guest::new(Layout::Split, host, 3);
    assert!(g.connect(6001).is_none(), "no socket at PATH_6001: RST");
    let key = g.connect(6000).expect("socat listener accepts");
    let payload = pattern(300_000, 12);
    g.write(key, &payload);
    g.shutdown(key, SHUT_SEND);
    let answer = g.read_to_end(key, T);
    assert_eq!(answer, b"answer-from-socat");
    assert!(g.wait_reset(key, T));
    let _ = server.0.wait();
    assert_eq!(
        std::fs::read(&out_path).expect("socat output"),
        payload,
        "guest bytes reached socat"
    );
    drop(g);
}
