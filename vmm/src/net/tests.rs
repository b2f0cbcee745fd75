//! `--net` / `-p` parsing, the host-port check and (where installed) passt.

use super::*;

#[test]
fn net_modes_parse() {
    assert_eq!(parse_net("none"), Ok(NetMode::None));
    assert_eq!(parse_net("passt"), Ok(NetMode::Passt));
    assert_eq!(
        parse_net("stream:unix:/run/x.sock"),
        Ok(NetMode::StreamUnix("/run/x.sock".into()))
    );
    assert_eq!(
        parse_net("stream:tcp:127.0.0.1:1234"),
        Ok(NetMode::StreamTcp("127.0.0.1:1234".into()))
    );
    assert_eq!(
        parse_net("stream:tcp:[::1]:1234"),
        Ok(NetMode::StreamTcp("[::1]:1234".into()))
    );
    for bad in [
        "",
        "tap0",
        "stream",
        "stream:",
        "stream:unix:",
        "stream:tcp:host",
        "stream:tcp::80",
        "stream:tcp:h:0",
        "stream:tcp:h:70000",
        "stream:udp:h:1",
    ] {
        let e = parse_net(bad).expect_err(bad);
        assert!(!e.contains('\n') && e.contains("expected"), "{e}");
    }
}

#[test]
fn guest_addressing_with_passt_only() {
    assert_eq!(
        guest_cmdline(&NetMode::Passt).as_deref(),
        Some("krypton.net=10.0.2.15/24,10.0.2.2,10.0.2.3")
    );
    assert_eq!(guest_cmdline(&NetMode::None), None);
    assert_eq!(guest_cmdline(&NetMode::StreamTcp("h:1".into())), None);
}

#[test]
fn published_ports_parse() {
    assert_eq!(
        parse_publish("8080:80"),
        Ok(PortMap {
            host: 8080,
            guest: 80,
            proto: Proto::Tcp
        })
    );
    assert_eq!(
        parse_publish("5353:53/udp"),
        Ok(PortMap {
            host: 5353,
            guest: 53,
            proto: Proto::Udp
        })
    );
    assert_eq!(parse_publish("1:2/tcp").map(|p| p.proto), Ok(Proto::Tcp));
    for bad in [
        "80",
        "0:80",
        "80:0",
        "a:80",
        "80:b",
        "80:80/sctp",
        "70000:1",
        ":",
    ] {
        assert!(parse_publish(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_taken_host_port_is_reported_in_one_line() {
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let taken = PortMap {
        host: port,
        guest: 80,
        proto: Proto::Tcp,
    };
    let e = check_host_ports(&[taken]).expect_err("in use");
    assert!(
        e.contains(&format!("host port {port}/tcp")) && !e.contains('\n'),
        "{e}"
    );
    drop(l);
    assert_eq!(check_host_ports(&[taken]), Ok(()));
    let twice = check_host_ports(&[taken, taken]).expect_err("twice");
    assert!(twice.contains("twice"), "{twice}");
    // The same number over UDP is another port.
    let udp = PortMap {
        proto: Proto::Udp,
        ..taken
    };
    assert_eq!(check_host_ports(&[taken, udp]), Ok(()));
}

#[test]
fn ports_need_passt() {
    let p = parse_publish("8080:80").expect("port");
    let e = connect(&NetMode::None, &[p]).expect_err("no passt");
    assert!(e.contains("--net passt"), "{e}");
    assert!(connect(&NetMode::None, &[]).expect("none").is_none());
}

#[test]
fn stream_tcp_connects_or_fails_in_one_line() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let setup = connect(&NetMode::StreamTcp(addr.clone()), &[])
        .expect("connect")
        .expect("a backend");
    assert_eq!(setup.mtu, ETHERNET_MTU);
    drop(setup);
    drop(l);
    let e = connect(&NetMode::StreamTcp(addr), &[]).expect_err("refused");
    assert!(
        e.starts_with("--net: cannot connect to") && !e.contains('\n'),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn passt_missing_is_one_line() {
    let e = passt::Passt::start_program(std::path::Path::new("/nonexistent/passt"), &[])
        .expect_err("missing");
    assert_eq!(
        e.to_string(),
        "passt not installed (Debian/Ubuntu: apt-get install passt)"
    );
}

#[cfg(unix)]
#[test]
fn passt_args() {
    let ports = [
        parse_publish("8080:80").expect("p"),
        parse_publish("5353:53/udp").expect("p"),
    ];
    assert_eq!(passt::port_args(&ports), ["-t", "8080:80", "-u", "5353:53"]);
}

/// Starts the real passt when installed: socket connected, the published
/// port listening on the host, everything gone after drop.
#[cfg(target_os = "linux")]
#[test]
fn passt_starts_forwards_and_stops() {
    let installed = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("passt").is_file()));
    if !installed {
        eprintln!("passt not installed: skipped");
        return;
    }
    let free = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let map = parse_publish(&format!("{port}:80")).expect("p");
    let (p, _sock) = passt::Passt::start(&[map]).expect("passt starts");
    let pid = p.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        !p.socket_dir().exists(),
        "the socket dir is removed once connected"
    );
    // passt listens on the published port for the guest.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("forwarded port listens");
    let e = check_host_ports(&[map]).expect_err("taken by passt");
    assert!(e.contains("not available"), "{e}");
    drop(p);
    // Reaped: no such process (or a recycled pid that is not passt).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(!comm.starts_with("passt"), "passt still running: {comm}");
}

/// `krypton run`'s default follows an executable `passt` on PATH; `-p`
/// always asks for passt.
#[cfg(unix)]
#[test]
fn passt_is_found_on_path_only_when_executable() {
    use std::os::unix::fs::PermissionsExt;
    let d = std::env::temp_dir().join(format!("krypton-net-path-{}", std::process::id()));
    let (a, b) = (d.join("a"), d.join("b"));
    std::fs::create_dir_all(&a).expect("dir");
    std::fs::create_dir_all(&b).expect("dir");
    let path = std::env::join_paths([&a, &b]).expect("PATH");
    assert_eq!(passt::find_on_path(Some(&path)), None);
    assert_eq!(passt::find_on_path(None), None);
    // A non-executable file and a directory named passt do not count.
    std::fs::write(a.join("passt"), "#!/bin/sh\n").expect("file");
    std::fs::create_dir(b.join("passt")).expect("dir");
    assert_eq!(passt::find_on_path(Some(&path)), None);
    std::fs::set_permissions(a.join("passt"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    assert_eq!(passt::find_on_path(Some(&path)), Some(a.join("passt")));
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(run_default(true), NetMode::Passt);
    let want = if passt_installed() {
        NetMode::Passt
    } else {
        NetMode::None
    };
    assert_eq!(run_default(false), want);
}
