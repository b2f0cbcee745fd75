//! The vsock device driven through its queues like Linux's virtio_vsock
//! driver, with each descriptor layout Linux has used, against in-process
//! host endpoints.

mod vsock_driver;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use krypton_devices::virtio::VirtioDevice;
use krypton_devices::virtio::vsock::{FIRST_LOCAL_PORT, Vsock, VsockHost};
use vsock_driver::{CState, Guest, Layout, SHUT_RCV, SHUT_SEND, pattern};

const LAYOUTS: [Layout; 3] = [Layout::Split, Layout::Single, Layout::Scattered];
const T: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn identity_and_config() {
    let host = VsockHost::in_process().expect("host");
    for bad in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(
            Vsock::new(bad, host.clone()).is_err(),
            "CID {bad} must be rejected"
        );
    }
    let dev = Vsock::new(0x1234_5678, host).expect("device");
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_ne!(dev.device_features() & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0u8; 2];
    dev.read_config(2, &mut hi);
    assert_eq!(hi, [0x34, 0x12]);
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0, 0]);
}

/// Host connects in process to a guest listener; data both ways; clean close.
#[test]
fn host_initiated_stream_every_layout() {
    let rt = runtime();
    for layout in LAYOUTS {
        let host = VsockHost::in_process().expect("host");
        let mut g = Guest::new(layout, host.clone(), 3);
        g.listening.insert(1234);
        let down = pattern(300_000, 1);
        let up = pattern(200_000, 2);
        let (h, d) = (host.clone(), down.clone());
        let task = rt.spawn(async move {
            let mut s = h.connect_in_process(1234).await.expect("guest accepts");
            s.write_all(&d).await.expect("host write");
            s.shutdown().await.expect("host shutdown");
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.expect("host read");
            back
        });
        let key = g.accept(1234, T).expect("REQUEST reached the guest");
        assert!(
            key.1 >= FIRST_LOCAL_PORT,
            "host ports are allocated from 2^30"
        );
        assert_eq!(
            g.read_to_end(key, T),
            down,
            "{layout:?}: host to guest bytes"
        );
        g.write(key, &up);
        g.shutdown(key, SHUT_RCV | SHUT_SEND);
        assert!(
            g.wait_reset(key, T),
            "{layout:?}: device answers a full shutdown with RST"
        );
        assert_eq!(
            rt.block_on(task).expect("host task"),
            up,
            "{layout:?}: guest to host bytes"
        );
        assert!(
            !g.conn(key).credit_violation,
            "{layout:?}: device respected guest credit"
        );
    }
}

/// Guest connects to an in-process host listener; half-close both ways.
#[test]
fn guest_initiated_stream_every_layout() {
    let rt = runtime();
    for layout in LAYOUTS {
        let host = VsockHost::in_process().expect("host");
        let mut listener = host.listen_in_process(7000);
        let mut g = Guest::new(layout, host.clone(), 42);
        let up = pattern(500_000, 3);
        let down = pattern(123_457, 4);
        let d = down.clone();
        let task = rt.spawn(async move {
            let mut s = listener.accept().await.expect("guest connection");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("host read");
            s.write_all(&d).await.expect("host write");
            got
        });
        assert!(g.connect(7001).is_none(), "no listener on 7001: RST");
        let key = g.connect(7000).expect("host listener accepts");
        g.write(key, &up);
        g.shutdown(key, SHUT_SEND);
        assert_eq!(
            g.read_to_end(key, T),
            down,
            "{layout:?}: host to guest bytes"
        );
        assert_eq!(
            rt.block_on(task).expect("host task"),
            up,
            "{layout:?}: guest to host bytes"
        );
        assert!(g.wait_reset(key, T), "{layout:?}: both sides closed: RST");
    }
}

/// Resets for unknown connections, wrong CIDs and types; drops spoofed sources.
#[test]
fn resets_and_addressing() {
    let host = VsockHost::in_process().expect("host");
    let mut g = Guest::new(Layout::Single, host, 5);
    let mut h = g.hdr((40, 41), vsock_driver::OP_RW);
    g.send_pkt(h, b"data for nobody");
    assert!(g.run_until(T, |g| !g.log.is_empty()));
    let r = g.log[0];
    assert_eq!(
        (r.op, r.src_port, r.dst_port, r.src_cid),
        (vsock_driver::OP_RST, 41, 40, 2)
    );

    h.src_cid = 99;
    g.send_pkt(h, b"spoofed");
    h.src_cid = 5;
    h.dst_cid = 7;
    g.send_pkt(h, b"to another VM");
    assert!(g.run_until(T, |g| g.log.len() >= 2));
    assert_eq!((g.log[1].op, g.log[1].src_cid), (vsock_driver::OP_RST, 7));
    h.dst_cid = 2;
    h.type_ = 2;
    g.send_pkt(h, b"seqpacket");
    assert!(g.run_until(T, |g| g.log.len() >= 3));
    assert_eq!(g.log[2].op, vsock_driver::OP_RST);
    h.op = vsock_driver::OP_RST;
    h.type_ = 1;
    g.send_pkt(h, &[]);
    g.run_until(Duration::from_millis(200), |_| false);
    assert_eq!(g.log.len(), 3, "no reply to a spoofed source or to an RST");
}

/// The guest stops reading: the device stays within its credit, stops
/// reading the host, and the host writer blocks; nothing is lost after.
#[test]
fn slow_guest_reader_backpressures_host() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut g = Guest::new(Layout::Split, host.clone(), 3);
    g.listening.insert(80);
    g.buf_alloc = 64 * 1024;
    let total = 4 << 20;
    let data = pattern(total, 5);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, d, w) = (host.clone(), data.clone(), written.clone());
    let task = rt.spawn(async move {
        let mut s = h.connect_in_process(80).await.expect("accepted");
        for chunk in d.chunks(8192) {
            s.write_all(chunk).await.expect("write");
            w.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    let key = g.accept(80, T).expect("accepted");
    // The application reads nothing: wait until the host writer stalls.
    assert!(
        g.run_until(T, |g| g.conn(key).recv.len() >= 64 * 1024),
        "guest credit filled"
    );
    let load = |w: &std::sync::atomic::AtomicUsize| w.load(std::sync::atomic::Ordering::SeqCst);
    let mut stalled = load(&written);
    let deadline = std::time::Instant::now() + T;
    loop {
        g.run_until(Duration::from_millis(300), |_| false);
        let now = load(&written);
        if now == stalled {
            break;
        }
        stalled = now;
        assert!(
            std::time::Instant::now() < deadline,
            "host writer never blocked"
        );
    }
    assert_eq!(
        g.conn(key).recv.len(),
        64 * 1024,
        "device sent exactly the guest's credit"
    );
    assert!(!g.conn(key).credit_violation);
    // Guest buffer + device buffer (256 KiB) + duplex pipe (64 KiB) + one chunk.
    assert!(
        stalled <= (64 + 256 + 64 + 8) * 1024,
        "host writer not backpressured: {stalled}"
    );
    assert!(stalled < total, "writer must not finish");

    // Now the guest stops giving RX buffers too, then reads what it has.
    g.rx_enabled = false;
    let first = g.take(key, usize::MAX);
    g.run_until(Duration::from_millis(300), |_| false);
    assert!(g.conn(key).recv.len() <= 256 * 1024);
    g.rx_enabled = true;
    let mut got = first;
    got.extend(g.read_exact(key, total - got.len(), Duration::from_secs(30)));
    assert_eq!(got, data, "every byte arrives in order after the stall");
    rt.block_on(task).expect("host task");
}

/// The host stops reading: the device acknowledges only what the host took,
/// the guest runs out of credit, and everything arrives once the host reads.
#[test]
fn slow_host_reader_backpressures_guest() {
    let rt = runtime();
    for layout in LAYOUTS {
        let host = VsockHost::in_process().expect("host");
        let mut listener = host.listen_in_process(9);
        let mut g = Guest::new(layout, host.clone(), 3);
        let data = pattern(2 << 20, 6);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(async move {
            let mut s = listener.accept().await.expect("conn");
            let _ = rx.await;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let key = g.connect(9).expect("connected");
        let sent = g
            .try_write(key, &data, Duration::from_millis(500))
            .expect_err("host reads nothing");
        let acked = g.log.iter().map(|h| h.fwd_cnt).max().unwrap_or(0) as usize;
        assert!(
            sent >= 256 * 1024,
            "{layout:?}: guest could use the advertised credit ({sent})"
        );
        assert!(
            sent <= (256 + 64) * 1024,
            "{layout:?}: device buffered beyond its bound ({sent})"
        );
        assert!(
            acked <= 64 * 1024,
            "{layout:?}: acked {acked} bytes the host never took"
        );
        tx.send(()).expect("release host");
        g.write(key, &data[sent..]);
        let updates = g
            .log
            .iter()
            .filter(|h| h.op == vsock_driver::OP_CREDIT_UPDATE)
            .count();
        assert!(
            updates > 0,
            "{layout:?}: credit came back through proactive CREDIT_UPDATEs"
        );
        g.shutdown(key, SHUT_SEND | SHUT_RCV);
        assert!(g.wait_reset(key, T));
        assert_eq!(
            rt.block_on(task).expect("host"),
            data,
            "{layout:?}: bytes intact"
        );
    }
}

/// CREDIT_REQUEST is answered with the device's current credit.
#[test]
fn credit_request_is_answered() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut listener = host.listen_in_process(13);
    let mut g = Guest::new(Layout::Split, host.clone(), 3);
    let task = rt.spawn(async move {
        let mut s = listener.accept().await.expect("conn");
        let mut buf = vec![0u8; 1000];
        s.read_exact(&mut buf).await.expect("read");
        (s, buf)
    });
    let key = g.connect(13).expect("connected");
    g.write(key, &pattern(1000, 3));
    let (_s, got) = rt.block_on(task).expect("host");
    assert_eq!(got, pattern(1000, 3));
    // The device learns what the in-process reader took a moment after the
    // reader has it, so an early answer may still count 0: ask again until
    // an answer counts all 1000 bytes (the host may also send updates of
    // its own meanwhile).
    let answered =
        |h: &&vsock_driver::Hdr| h.op == vsock_driver::OP_CREDIT_UPDATE && h.fwd_cnt == 1000;
    let before = g.log.len();
    let deadline = std::time::Instant::now() + T;
    while !g.log[before..].iter().any(|h| answered(&h)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no credit update counting the 1000 bytes: {:?}",
            &g.log[before..]
        );
        let mark = g.log.len();
        let h = g.hdr(key, vsock_driver::OP_CREDIT_REQUEST);
        g.send_pkt(h, &[]);
        g.run_until(Duration::from_millis(200), |g| {
            g.log[mark..]
                .iter()
                .any(|h| h.op == vsock_driver::OP_CREDIT_UPDATE)
        });
    }
    let upd = g.log[before..]
        .iter()
        .find(answered)
        .copied()
        .expect("update");
    assert_eq!(
        (upd.buf_alloc, upd.fwd_cnt),
        (256 * 1024, 1000),
        "credit reflects bytes the host took"
    );
    assert_eq!((upd.src_port, upd.dst_port), (13, key.0));
}

/// A guest that ignores credit is reset; the data it was credited arrives.
#[test]
fn credit_overrun_resets() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut listener = host.listen_in_process(10);
    let mut g = Guest::new(Layout::Single, host.clone(), 3);
    let task = rt.spawn(async move {
        let mut s = listener.accept().await.expect("conn");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    });
    let key = g.connect(10).expect("connected");
    let data = pattern(64 * 1024, 7);
    for _ in 0..7 {
        let mut h = g.hdr(key, vsock_driver::OP_RW);
        h.len = data.len() as u32;
        g.send_pkt(h, &data);
    }
    assert!(g.wait_reset(key, T), "overrun answered with RST");
    let got = rt.block_on(task).expect("host");
    assert!(
        got.len() >= 256 * 1024 && got.len() < 7 * 64 * 1024,
        "got {}",
        got.len()
    );
    assert!(
        got.chunks(data.len()).all(|c| c == &data[..c.len()]),
        "no corrupted bytes"
    );
}

/// The host peer vanishes mid-stream: the guest sees a reset, the device
/// keeps working.
#[test]
fn host_vanishing_mid_stream_resets_visibly() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut listener = host.listen_in_process(11);
    let mut g = Guest::new(Layout::Scattered, host.clone(), 3);
    let task = rt.spawn(async move {
        let mut s = listener.accept().await.expect("conn");
        let mut buf = vec![0u8; 100_000];
        s.read_exact(&mut buf).await.expect("read");
        drop(s);
        let mut again = listener.accept().await.expect("second conn");
        let mut got = Vec::new();
        again.read_to_end(&mut got).await.expect("read");
        got
    });
    let key = g.connect(11).expect("connected");
    let data = pattern(4 << 20, 8);
    let res = g.try_write(key, &data, Duration::from_secs(10));
    assert!(res.is_err(), "write must fail visibly");
    assert!(g.wait_reset(key, T), "RST after the host vanished");
    let key2 = g.connect(11).expect("device still serves");
    g.write(key2, b"still alive");
    g.shutdown(key2, SHUT_SEND | SHUT_RCV);
    assert_eq!(rt.block_on(task).expect("host"), b"still alive");
    assert_eq!(g.dev.guest_cid(), 3);
}

/// Host connection to a port nobody listens on is refused; device reset
/// drops live connections.
#[test]
fn refused_and_reset() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut g = Guest::new(Layout::Single, host.clone(), 3);
    g.listening.insert(5);
    let h = host.clone();
    let refused = rt.spawn(async move { h.connect_in_process(6).await.map(|_| ()) });
    assert!(g.run_until(T, |_| refused.is_finished()));
    let err = rt
        .block_on(refused)
        .expect("task")
        .expect_err("nobody listens on 6");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    let h = host.clone();
    let live = rt.spawn(async move {
        let mut s = h.connect_in_process(5).await.expect("accepted");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map(|_| buf)
    });
    let key = g.accept(5, T).expect("accepted");
    g.write(key, b"before reset");
    g.run_until(Duration::from_millis(100), |_| false);
    g.dev.reset();
    let res = rt.block_on(live).expect("task");
    assert_eq!(res.expect("EOF on reset"), b"before reset");
    assert_eq!(g.conn(key).state, CState::Connected);
}

/// The connection cap: connection 1025 is refused, others keep working.
#[test]
fn connection_cap() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut listener = host.listen_in_process(12);
    let mut g = Guest::new(Layout::Single, host.clone(), 3);
    let held = rt.spawn(async move {
        let mut all = Vec::new();
        while let Some(s) = listener.accept().await {
            all.push(s);
            if all.len() == 1024 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        all.len()
    });
    let keys: Vec<_> = (0..1024)
        .map(|i| g.connect(12).unwrap_or_else(|| panic!("conn {i}")))
        .collect();
    assert!(g.connect(12).is_none(), "connection 1025 refused");
    g.write(keys[17], b"x");
    assert_eq!(rt.block_on(held).expect("host"), 1024);
}

/// An in-process listener that stops accepting: its queue fills, then
/// further guest connections are refused after the connect timeout.
#[test]
fn unaccepting_listener_refuses_after_timeout() {
    let host = VsockHost::in_process().expect("host");
    let _listener = host.listen_in_process(14);
    let mut g = Guest::new(Layout::Single, host.clone(), 3);
    let queued: Vec<_> = (0..16).map(|_| g.connect(14)).collect();
    assert!(
        queued.iter().all(Option::is_some),
        "listener queue holds 16 connections"
    );
    let start = std::time::Instant::now();
    assert!(g.connect(14).is_none(), "17th connection refused");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "refused only after the timeout"
    );
}

/// A host connection made just before the driver activates the device is
/// served once it does.
#[test]
fn host_connection_before_activation() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let h = host.clone();
    let early = rt.spawn(async move { h.connect_in_process(77).await.map(|_| ()) });
    std::thread::sleep(Duration::from_millis(200));
    let mut g = Guest::new(Layout::Split, host, 3);
    g.listening.insert(77);
    assert!(
        g.accept(77, T).is_some(),
        "queued request delivered after activation"
    );
    assert!(g.run_until(T, |_| early.is_finished()));
    assert!(rt.block_on(early).expect("task").is_ok());
}
