//! Network cases (issue 14). They run by default where passt is installed
//! (`cargo xtask` installs it); KRYPTON_E2E_NET=0 leaves them out. When they
//! cannot run they are reported ignored, with the reason.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::net_host;
use crate::support::{Live, Scratch, run};

/// Why the network cases cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if std::env::var_os("KRYPTON_E2E_NET").is_some_and(|v| v == "0") {
        return Some("KRYPTON_E2E_NET=0".into());
    }
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v passt"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!found).then(|| "passt is not installed (apt-get install passt)".into())
}

/// Serves one fixed HTTP answer to every connection on 127.0.0.1.
fn host_http(body: &'static str) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("0.0.0.0:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("0.0.0.0:0")?.local_addr()?.port())
}

/// `krypton run` without `--net` (passt, where installed): eth0 has the
/// fixed address, the container's resolv.conf points at passt's forwarder,
/// the container fetches a page from a host server on 127.0.0.1 through
/// the gateway 10.0.2.2, and the host fetches a page from busybox httpd in
/// the container through `-p`.
pub fn passt_outbound_and_published_port() -> Result<()> {
    let http = host_http("hello-from-host")?;
    let published = free_port()?;
    let map = format!("{published}:8080");
    let script = format!(
        "ip -4 addr show; cat /etc/resolv.conf; wget -qO- http://10.0.2.2:{http}/; echo; \
         mkdir -p /tmp/www && echo hello-from-container > /tmp/www/index.html && \
         httpd -p 8080 -h /tmp/www && echo serving; sleep 120"
    );
    let mut live = Live::start(&["run", "-p", &map, "--", "sh", "-c", &script])?;
    live.expect_line("serving", Duration::from_secs(400))?;
    // Everything the script printed before "serving".
    let seen = live.seen.join("\n");
    let mut s = TcpStream::connect(("127.0.0.1", published)).context("published port")?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    live.signal(libc::SIGTERM)?;
    let (_, err) = live.finish(Duration::from_secs(120))?;
    ensure!(
        answer.contains("hello-from-container"),
        "host fetch through -p: {answer:?} (krypton stderr: {err})"
    );
    ensure!(seen.contains("10.0.2.15/24"), "no guest address in {seen}");
    ensure!(
        seen.contains("nameserver 10.0.2.3"),
        "no resolv.conf in {seen}"
    );
    ensure!(seen.contains("hello-from-host"), "no host page in {seen}");
    Ok(())
}

/// UDP both ways and DNS through passt, in one run (the container's UDP
/// tool, `tests/guest-tools/udp_echo.rs`, comes in through `-v`):
/// - out: a datagram to a host echo on 127.0.0.1 through the gateway
///   10.0.2.2, and its answer back;
/// - in: a datagram to a published `/udp` port reaches an echo in the
///   container, and its answer comes back;
/// - DNS: a name only the test's DNS server (on the host's loopback,
///   reached through the gateway) knows resolves; a query to passt's
///   forwarder 10.0.2.3 gets the host resolver's answer (NXDOMAIN for a
///   `.invalid` name), checked where the host's resolver answers.
pub fn passt_udp_and_dns() -> Result<()> {
    let tools = Scratch::new("net-tools")?;
    net_host::udp_tool(&tools.0)?;
    let udp = net_host::udp_echo()?;
    let dns = net_host::dns_server()?;
    let published = free_udp_port()?;
    let map = format!("{published}:9000/udp");
    let share = format!("{}:/tools:ro", tools.0.display());
    let name = net_host::SERVED_NAME;
    let script = format!(
        "/tools/udp_echo ask 10.0.2.2:{udp} from-container; \
         nslookup {name} 10.0.2.2:{dns}; nslookup krypton-e2e.invalid; \
         /tools/udp_echo serve 9000 1 & sleep 120"
    );
    let mut live = Live::start(&["run", "-p", &map, "-v", &share, "--", "sh", "-c", &script])?;
    live.expect_line("udp serving 9000", Duration::from_secs(400))?;
    // Everything the script printed before the UDP echo was listening.
    let seen = live.seen.join("\n");
    let udp_in = net_host::udp_ask(published, b"from-host", 30);
    live.signal(libc::SIGTERM)?;
    let (_, err) = live.finish(Duration::from_secs(120))?;
    let udp_in = udp_in.with_context(|| format!("krypton's stderr: {err}"))?;
    ensure!(
        udp_in == b"echo:from-host",
        "UDP through -p .../udp: {:?}",
        String::from_utf8_lossy(&udp_in)
    );
    ensure!(
        seen.contains("echo:from-container"),
        "no UDP answer from the host in {seen}"
    );
    let served = format!("Address: {}", net_host::SERVED_ADDR);
    ensure!(seen.contains(&served), "{name} did not resolve: {seen}");
    match net_host::host_resolver_rcode("krypton-e2e.invalid") {
        Some((ns, 3)) => ensure!(
            seen.contains("can't find krypton-e2e.invalid: NXDOMAIN"),
            "passt's forwarder did not pass on {ns}'s NXDOMAIN: {seen}"
        ),
        Some((ns, rcode)) => {
            eprintln!("net: DNS forwarder check skipped: {ns} answers rcode {rcode}, not NXDOMAIN")
        }
        None => eprintln!(
            "net: DNS forwarder check skipped: the host's resolver (/etc/resolv.conf) does not answer"
        ),
    }
    Ok(())
}

/// Why the bulk case does not run by default (None: KRYPTON_E2E_NET_BULK=1
/// asks for it).
pub fn bulk_unavailable() -> Option<String> {
    if std::env::var_os("KRYPTON_E2E_NET_BULK").is_some_and(|v| v == "1") {
        return None;
    }
    Some(
        "opt-in (KRYPTON_E2E_NET_BULK=1): on this kvm_pvm host the emulated guest moves 0.1-0.3 MB/s \
         and Debian 12's passt resets some of its connections after 0.3-1.3 MB (seen in its --pcap \
         capture; `cargo xtask bench --net-only` shows the same resets with QEMU's guest)"
            .into(),
    )
}

/// The size of each bulk transfer: KRYPTON_E2E_NET_MIB (default 100).
fn bulk_mib() -> usize {
    std::env::var("KRYPTON_E2E_NET_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// Bulk TCP both ways through passt, checked byte for byte: the container
/// sends busybox's bytes over and over (about KRYPTON_E2E_NET_MIB MiB) to
/// a host sink that compares every byte; a host source sends as much
/// noise, whose sha256 the container computes.
pub fn passt_bulk_transfers() -> Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("host busybox (the rootfs has a copy)")?;
    let times = (bulk_mib() << 20).div_ceil(busybox.len()).max(1);
    let (sink, verdict) = net_host::bulk_sink(busybox, times)?;
    let (source, hash) = net_host::bulk_source(bulk_mib() << 20)?;
    let script = format!(
        "i=0; while [ $i -lt {times} ]; do cat /bin/busybox; i=$((i+1)); done | nc 10.0.2.2 {sink}; \
         echo sent; nc 10.0.2.2 {source} | sha256sum"
    );
    let t = std::time::Instant::now();
    let o = run(&["run", "--", "sh", "-c", &script], None, &[])?;
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    eprintln!(
        "net: {} MiB each way in {:.0} s (both transfers and the container's start)",
        bulk_mib(),
        t.elapsed().as_secs_f64()
    );
    ensure!(o.status.success(), "status {:?}: {out} {err}", o.status);
    verdict
        .recv_timeout(Duration::from_secs(10))
        .context("the host sink did not finish")?
        .context("container to host")?;
    ensure!(
        out.contains(&hash),
        "host to container: sha256 {out:?}, want {hash}"
    );
    Ok(())
}

/// With `--net none` the VM has only `lo` (without `--net`, `krypton run`
/// uses passt where it is installed).
pub fn none_has_only_lo() -> Result<()> {
    let o = run(
        &["run", "--net", "none", "--", "ls", "/sys/class/net"],
        None,
        &[],
    )?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    ensure!(o.status.success(), "status {:?}", o.status);
    ensure!(out.split_whitespace().eq(["lo"]), "interfaces: {out:?}");
    Ok(())
}
