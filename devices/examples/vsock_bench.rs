//! Device-level vsock throughput through the hybrid Unix-socket protocol,
//! each direction, against raw Unix-socket throughput measured in the same
//! run. The guest is the simulated Linux driver from the tests (4 KiB RX
//! buffers, 64 KiB TX packets, as Linux uses).
//!
//! `cargo run --release -p krypton-devices --example vsock_bench [MiB]`
#![allow(clippy::print_stdout)]

#[cfg(unix)]
#[path = "../tests/vsock_driver/mod.rs"]
mod vsock_driver;

#[cfg(not(unix))]
fn main() {
    eprintln!("vsock_bench needs Unix sockets");
}

#[cfg(unix)]
fn main() {
    bench::main();
}

#[cfg(unix)]
mod bench {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::{Duration, Instant};

    use krypton_devices::virtio::vsock::VsockHost;

    use super::vsock_driver::{Guest, Layout, SHUT_RCV, SHUT_SEND};

    const CHUNK: usize = 64 * 1024;

    fn gbit(bytes: usize, d: Duration) -> f64 {
        bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
    }

    /// Raw socketpair throughput: one thread writes, this one reads.
    fn raw_unix(total: usize) -> Duration {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let start = Instant::now();
        let w = std::thread::spawn(move || {
            let buf = vec![0x5au8; CHUNK];
            let mut left = total;
            while left > 0 {
                let n = left.min(CHUNK);
                a.write_all(&buf[..n]).expect("write");
                left -= n;
            }
        });
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        while got < total {
            got += b.read(&mut buf).expect("read");
        }
        w.join().expect("writer");
        start.elapsed()
    }

    /// Host program → UDS → device → guest.
    fn host_to_guest(total: usize, dir: &std::path::Path) -> Duration {
        let sock = dir.join("h2g.sock");
        let host = VsockHost::unix(&sock).expect("listen");
        let mut g = Guest::new(Layout::Single, host, 3);
        g.listening.insert(1000);
        let writer = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&sock).expect("connect");
            s.write_all(b"CONNECT 1000\n").expect("connect line");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            r.read_line(&mut line).expect("OK line");
            assert!(line.starts_with("OK "), "{line}");
            let start = Instant::now();
            let buf = vec![0xa5u8; CHUNK];
            let mut left = total;
            while left > 0 {
                let n = left.min(CHUNK);
                s.write_all(&buf[..n]).expect("write");
                left -= n;
            }
            start
        });
        let key = g.accept(1000, Duration::from_secs(10)).expect("accepted");
        let mut got = 0;
        g.run_until(Duration::from_secs(600), |g| {
            got += g.take(key, usize::MAX).len();
            got >= total
        });
        let end = Instant::now();
        let start = writer.join().expect("writer");
        assert_eq!(got, total, "guest received everything");
        g.shutdown(key, SHUT_SEND | SHUT_RCV);
        end - start
    }

    /// Guest → device → UDS `PATH_P` → host program.
    fn guest_to_host(total: usize, dir: &std::path::Path) -> Duration {
        let sock = dir.join("g2h.sock");
        let listen = UnixListener::bind(dir.join("g2h.sock_2000")).expect("bind PATH_P");
        let host = VsockHost::unix(&sock).expect("listen");
        let mut g = Guest::new(Layout::Single, host, 3);
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listen.accept().expect("accept");
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0;
            while got < total {
                let n = s.read(&mut buf).expect("read");
                assert_ne!(n, 0, "EOF after {got}");
                got += n;
            }
            Instant::now()
        });
        let key = g.connect(2000).expect("connected");
        let data = vec![0x3cu8; 4 << 20];
        let start = Instant::now();
        let mut left = total;
        while left > 0 {
            let n = left.min(data.len());
            g.write(key, &data[..n]);
            left -= n;
        }
        let end = reader.join().expect("reader");
        g.shutdown(key, SHUT_SEND | SHUT_RCV);
        end - start
    }

    pub fn main() {
        let mib: usize = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(256);
        let total = mib << 20;
        let dir = std::env::temp_dir().join(format!("krypton-vsock-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let raw = raw_unix(total);
        let h2g = host_to_guest(total, &dir);
        let g2h = guest_to_host(total, &dir);
        let raw2 = raw_unix(total);
        let raw = raw.min(raw2);
        let (r, h, g) = (gbit(total, raw), gbit(total, h2g), gbit(total, g2h));
        println!("vsock_bench: {mib} MiB per direction");
        println!("  raw Unix socket      {r:8.2} Gbit/s");
        println!("  host->guest (UDS)    {h:8.2} Gbit/s  ratio {:.3}", h / r);
        println!("  guest->host (UDS)    {g:8.2} Gbit/s  ratio {:.3}", g / r);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
