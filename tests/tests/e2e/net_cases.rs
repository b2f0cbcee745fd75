//! Network cases (issue 14). They run by default where passt is installed
//! (`cargo xtask` installs it); KRYPTON_E2E_NET=0 leaves them out. When they
//! cannot run they are reported ignored, with the reason.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::support::{Live, run};

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

/// With `--net passt`: eth0 has the fixed address, the container's
/// resolv.conf points at passt's forwarder, the container fetches a page
/// from a host server on 127.0.0.1 through the gateway 10.0.2.2, and the
/// host fetches a page from busybox httpd in the container through `-p`.
pub fn passt_outbound_and_published_port() -> Result<()> {
    let http = host_http("hello-from-host")?;
    let published = free_port()?;
    let map = format!("{published}:8080");
    let script = format!(
        "ip -4 addr show; cat /etc/resolv.conf; wget -qO- http://10.0.2.2:{http}/; echo; \
         mkdir -p /tmp/www && echo hello-from-container > /tmp/www/index.html && \
         httpd -p 8080 -h /tmp/www && echo serving; sleep 120"
    );
    let mut live = Live::start(&[
        "run", "--net", "passt", "-p", &map, "--", "sh", "-c", &script,
    ])?;
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

/// Without `--net` the VM has only `lo`.
pub fn none_has_only_lo() -> Result<()> {
    let o = run(&["run", "--", "ls", "/sys/class/net"], None, &[])?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    ensure!(o.status.success(), "status {:?}", o.status);
    ensure!(out.split_whitespace().eq(["lo"]), "interfaces: {out:?}");
    Ok(())
}
