//! A hostile or odd driver: malformed and oversized TX chains, unusual but
//! valid layouts, unusable RX buffers. Every chain is returned, nothing
//! crashes, and the device keeps serving.

mod vsock_driver;

use std::time::Duration;

use tokio::io::AsyncReadExt;

use krypton_devices::virtio::vsock::VsockHost;
use vsock_driver::{Guest, HDR, Layout, OP_REQUEST, OP_RW, SHUT_RCV, SHUT_SEND, pattern};

const T: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until the device has consumed every TX chain.
fn all_tx_returned(g: &mut Guest) {
    assert!(
        g.run_until(T, |g| g.tx_free() == 256),
        "device kept TX chains"
    );
}

#[test]
fn malformed_tx_chains_are_dropped() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut listener = host.listen_in_process(20);
    let mut g = Guest::new(Layout::Split, host.clone(), 3);
    let task = rt.spawn(async move {
        let mut s = listener.accept().await.expect("conn");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        got
    });
    let key = g.connect(20).expect("connected");

    let mut h = g.hdr(key, OP_RW);
    // Header shorter than 44 bytes.
    g.send_chain(&[(&h.to_bytes()[..20], false)]);
    // len larger than the chain.
    h.len = 1000;
    g.send_chain(&[(&h.to_bytes(), false), (&[1u8; 100], false)]);
    // Oversized payload (above 64 KiB) even though the bytes are there.
    h.len = 100_000;
    let big = vec![2u8; 60_000];
    g.send_chain(&[(&h.to_bytes(), false), (&big, false), (&big, false)]);
    // Header in a device-writable descriptor.
    h.len = 0;
    g.send_chain(&[(&h.to_bytes(), true)]);
    // Descriptor outside guest memory.
    g.post_tx_descs(&[(1 << 40, 64, 0, 0)]);
    // A descriptor loop: next points back to itself.
    g.post_tx_descs(&[(0x1e0_0000, 44, vsock_driver::ring::F_NEXT, 0)]);
    // A chain that wraps into guest memory's end.
    g.post_tx_descs(&[((32 << 20) - 20, 44, 0, 0)]);
    all_tx_returned(&mut g);
    g.run_until(Duration::from_millis(300), |_| false);

    // The connection still works and none of the junk reached the host.
    g.write(key, b"good bytes");
    g.shutdown(key, SHUT_SEND | SHUT_RCV);
    assert!(g.wait_reset(key, T));
    assert_eq!(rt.block_on(task).expect("host"), b"good bytes");
}

#[test]
fn unusual_valid_layouts_are_accepted() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut listener = host.listen_in_process(21);
    let mut g = Guest::new(Layout::Single, host.clone(), 3);
    let task = rt.spawn(async move {
        let mut s = listener.accept().await.expect("conn");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        got
    });
    // REQUEST with the header split over two descriptors.
    let key = (60_000, 21);
    g.conns.insert(key, vsock_driver_conn());
    let req = g.hdr(key, OP_REQUEST).to_bytes();
    g.send_chain(&[(&req[..10], false), (&req[10..], false)]);
    assert!(g.run_until(T, |g| g.conn(key).state == vsock_driver::CState::Connected));
    // RW: header plus the start of the payload in one descriptor, the rest
    // in three more of odd sizes.
    let data = pattern(30_000, 9);
    let mut h = g.hdr(key, OP_RW);
    h.len = data.len() as u32;
    let mut first = h.to_bytes().to_vec();
    first.extend_from_slice(&data[..7]);
    g.send_chain(&[
        (&first, false),
        (&data[7..4000], false),
        (&data[4000..4001], false),
        (&data[4001..], false),
    ]);
    // Trailing bytes beyond `len` are ignored.
    let mut h2 = g.hdr(key, OP_RW);
    h2.len = 3;
    let mut tail = h2.to_bytes().to_vec();
    tail.extend_from_slice(b"endXXXX");
    g.send_chain(&[(&tail, false)]);
    all_tx_returned(&mut g);
    g.shutdown(key, SHUT_SEND | SHUT_RCV);
    let mut want = data.clone();
    want.extend_from_slice(b"end");
    assert_eq!(rt.block_on(task).expect("host"), want);
}

#[test]
fn rx_buffers_of_any_shape() {
    let rt = runtime();
    let host = VsockHost::in_process().expect("host");
    let mut g = Guest::with_rx(Layout::Single, host.clone(), 3, false);
    g.listening.insert(30);
    // Too small for a header: returned empty. Then a header split over
    // three descriptors with room for 100 payload bytes.
    g.post_rx_raw(&[(0x1f0_0000, 16)]);
    g.post_rx_raw(&[(0x1f0_1000, 10), (0x1f0_2000, 30), (0x1f0_3000, 4 + 100)]);
    let h = host.clone();
    let task = rt.spawn(async move {
        let mut s = h.connect_in_process(30).await.expect("accepted");
        tokio::io::AsyncWriteExt::write_all(&mut s, &pattern(1000, 1))
            .await
            .expect("write");
        s
    });
    let key = g
        .accept(30, T)
        .expect("REQUEST delivered through the split buffer");
    assert_eq!(g.rx_dropped, 1, "the 16-byte buffer came back empty");
    // The RESPONSE went out; data arrives in whatever buffers are posted.
    let _s = rt.block_on(task).expect("task");
    for i in 0..4u64 {
        g.post_rx_raw(&[(0x1f1_0000 + i * 0x1000, (HDR + 300) as u32)]);
    }
    g.post_rx_raw(&[(0x1f2_0000, 50), (0x1f2_1000, 200)]);
    g.post_rx_raw(&[
        (0x1f3_0000, HDR as u32),
        (0x1f3_1000, 1),
        (0x1f3_2000, 4096),
    ]);
    let got = g.read_exact(key, 1000, T);
    assert_eq!(got, pattern(1000, 1));
    assert!(!g.conn(key).credit_violation);
}

fn vsock_driver_conn() -> vsock_driver::GConn {
    vsock_driver::GConn {
        state: vsock_driver::CState::Connecting,
        recv: Vec::new(),
        fwd_cnt: 0,
        last_fwd_sent: 0,
        rx_total: 0,
        tx_cnt: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        peer_shut: 0,
        credit_violation: false,
    }
}
