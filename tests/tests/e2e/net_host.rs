//! The host's side of the network cases: a UDP echo, a tiny DNS server for
//! one name, a probe of the host's own resolver, bulk TCP source and sink,
//! and the UDP tool the container runs (`tests/guest-tools/udp_echo.rs`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The name [`dns_server`] answers, and its address.
pub const SERVED_NAME: &str = "krypton-e2e.test";
pub const SERVED_ADDR: Ipv4Addr = Ipv4Addr::new(10, 11, 12, 13);

/// Builds the container's UDP tool into `dir` (static, std only).
pub fn udp_tool(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-tools/udp_echo.rs");
    let out = dir.join("udp_echo");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let st = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=1",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("running rustc")?;
    if !st.success() {
        bail!("rustc {} failed: {st}", src.display());
    }
    Ok(out)
}

/// Answers every datagram on 127.0.0.1 with `echo:` and its payload.
pub fn udp_echo() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let port = s.local_addr()?.port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut answer = b"echo:".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&answer, from);
        }
    });
    Ok(port)
}

/// Sends `msg` to 127.0.0.1:`port` (again every second) until an answer
/// comes, at most `tries` times.
pub fn udp_ask(port: u16, msg: &[u8], tries: u32) -> Result<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..tries {
        s.send(msg)?;
        if let Ok(n) = s.recv(&mut buf) {
            return Ok(buf[..n].to_vec());
        }
    }
    bail!("no UDP answer through 127.0.0.1:{port} after {tries} tries")
}

/// The question's name (dotted) and the offset after its type and class.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).into_owned());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    Some((labels.join("."), qtype, i + 5))
}

/// A DNS server on 127.0.0.1 (UDP) that knows one name: an A record for
/// [`SERVED_NAME`], no other records for it, NXDOMAIN for other names.
pub fn dns_server() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let port = s.local_addr()?.port();
    std::thread::spawn(move || {
        let mut q = vec![0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut q) {
            let Some((name, qtype, end)) = question(&q[..n]) else {
                continue;
            };
            let known = name.eq_ignore_ascii_case(SERVED_NAME);
            let answer = known && qtype == 1;
            let mut r = q[..2].to_vec();
            r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]);
            r.extend_from_slice(&[0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            if answer {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&SERVED_ADDR.octets());
            }
            let _ = s.send_to(&r, from);
        }
    });
    Ok(port)
}

/// The first IPv4 nameserver of the host's /etc/resolv.conf and its
/// answer code for an A query of `name` (3: NXDOMAIN), if it answers
/// within 3 s.
pub fn host_resolver_rcode(name: &str) -> Option<(Ipv4Addr, u8)> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let ns: Ipv4Addr = conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse().ok())
            .flatten()
    })?;
    let mut q = vec![0x4b, 0x52, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).ok()?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.send_to(&q, SocketAddr::from((ns, 53))).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    (n >= 4 && buf[..2] == q[..2]).then_some((ns, buf[3] & 0xf))
}

/// Accepts one connection on 127.0.0.1 and checks that it carries exactly
/// `want` repeated `times` times; the verdict arrives on the channel.
pub fn bulk_sink(want: Vec<u8>, times: usize) -> Result<(u16, mpsc::Receiver<Result<()>>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let check = || -> Result<()> {
            let (mut s, _) = l.accept()?;
            let total = want.len() * times;
            let (mut got, mut buf) = (0usize, vec![0u8; 1 << 16]);
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                for (i, b) in buf[..n].iter().enumerate() {
                    let at = got + i;
                    if at >= total || *b != want[at % want.len()] {
                        bail!("the stream differs at byte {at} (of {total})");
                    }
                }
                got += n;
            }
            if got != total {
                bail!("the stream ended after {got} of {total} bytes");
            }
            Ok(())
        };
        let _ = tx.send(check());
    });
    Ok((port, rx))
}

/// Serves `len` bytes of noise to one connection on 127.0.0.1; returns the
/// port and the data's sha256 (hex).
pub fn bulk_source(len: usize) -> Result<(u16, String)> {
    let data = crate::support::noise(len, 0x2545_f491_4f6c_dd1d);
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("sha256sum")?;
    c.stdin.take().context("stdin")?.write_all(&data)?;
    let out = c.wait_with_output()?;
    let hash = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(&data);
        }
    });
    Ok((port, hash))
}
