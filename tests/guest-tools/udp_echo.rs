//! A UDP echo for the network e2e cases, run inside the container (the
//! default rootfs's busybox `nc` has no UDP). Built by the e2e harness with
//! `rustc -C target-feature=+crt-static` (std only, no crates) and shared
//! into the container read-only.
//!
//! - `udp_echo serve PORT COUNT`: answers COUNT datagrams with `echo:` and
//!   their payload, then exits; prints `udp serving PORT` once bound.
//! - `udp_echo ask HOST:PORT MESSAGE`: sends MESSAGE (again every second,
//!   at most 20 times) until an answer comes and prints the answer.

use std::net::UdpSocket;
use std::process::ExitCode;
use std::time::Duration;

fn serve(port: &str, count: &str) -> std::io::Result<()> {
    let count: usize = count.parse().unwrap_or(1);
    let sock = UdpSocket::bind(("0.0.0.0", port.parse().unwrap_or(0)))?;
    println!("udp serving {}", sock.local_addr()?.port());
    let mut buf = vec![0u8; 65536];
    for _ in 0..count {
        let (n, from) = sock.recv_from(&mut buf)?;
        let mut answer = b"echo:".to_vec();
        answer.extend_from_slice(&buf[..n]);
        sock.send_to(&answer, from)?;
    }
    Ok(())
}

fn ask(to: &str, message: &str) -> std::io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(to)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..20 {
        sock.send(message.as_bytes())?;
        if let Ok(n) = sock.recv(&mut buf) {
            println!("{}", String::from_utf8_lossy(&buf[..n]));
            return Ok(());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from {to}"),
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", port, count] => serve(port, count),
        ["ask", to, message] => ask(to, message),
        _ => {
            eprintln!("usage: udp_echo serve PORT COUNT | ask HOST:PORT MESSAGE");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_echo: {e}");
            ExitCode::FAILURE
        }
    }
}
