//! Drives the device as Linux's virtio_mmio + virtio_net would, over plain
//! guest memory: well-formed traffic both ways, malicious chains,
//! backpressure, link changes, and the stream backend over real sockets.

#[cfg(unix)]
use std::io::Write;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::chain::{HDR_LEN, MAX_SEGMENTS};
use super::frame::{LEN_PREFIX, MAX_FRAME, encode_prefix};
use super::fuzz::MemBackend;
use super::*;
use crate::virtio::mmio::reg;
use crate::virtio::testing::{Driver, F_INDIRECT, F_NEXT, F_WRITE, Ring, driver_for};

const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];
const RX_BUF: u64 = 0x10_0000;
const TX_BUF: u64 = 0x40_0000;

struct Harness {
    d: Driver,
    mem: GuestMem,
    rx: Ring,
    tx: Ring,
}

fn harness(backend: Box<dyn NetBackend>) -> Harness {
    let (mut d, mem, _irq) = driver_for(Box::new(Net::new(MAC, PASST_MTU, backend)));
    let rx = Ring::new(&mem, 0x1_0000, QUEUE_SIZE);
    let tx = Ring::new(&mem, 0x2_0000, QUEUE_SIZE);
    d.negotiate(u64::MAX);
    d.setup_queue(RX_QUEUE as u32, &rx);
    d.setup_queue(TX_QUEUE as u32, &tx);
    d.driver_ok();
    assert!(d.t.is_activated());
    Harness { d, mem, rx, tx }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Harness {
    /// Puts `hdr ++ frame` in guest memory as one readable descriptor.
    fn send(&mut self, f: &[u8]) -> u16 {
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(f);
        self.mem
            .write_slice(&bytes, GuestAddress(TX_BUF))
            .expect("tx buf");
        let head = self
            .tx
            .add_chain(&self.mem, &[(TX_BUF, bytes.len() as u32, 0)]);
        self.d.notify(TX_QUEUE as u32);
        head
    }

    fn post_rx(&mut self, at: u64, len: u32) -> u16 {
        let head = self.rx.add_chain(&self.mem, &[(at, len, F_WRITE)]);
        self.d.notify(RX_QUEUE as u32);
        head
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).expect("read");
        v
    }

    /// The header and frame the device wrote at `at` for used length `len`.
    fn received(&self, at: u64, len: u32) -> (Vec<u8>, Vec<u8>) {
        let all = self.read(at, len as usize);
        let (h, f) = all.split_at(HDR_LEN);
        (h.to_vec(), f.to_vec())
    }
}

fn expected_hdr() -> Vec<u8> {
    let mut h = vec![0u8; HDR_LEN];
    h[10] = 1; // num_buffers
    h
}

#[test]
fn config_space_and_features() {
    let mut h = harness(Box::new(MemBackend::new()));
    assert_eq!(h.d.read(reg::DEVICE_ID), NET_DEVICE_ID);
    let f = h.d.device_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MTU,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    // No offloads (CSUM 0, GUEST_CSUM 1, GSO/TSO 6..=15) and no MRG_RXBUF (15).
    assert_eq!(f & 0xffc3, 0, "features {f:#x}");
    assert_eq!(h.d.config_bytes(0, 6), MAC);
    assert_eq!(h.d.config_bytes(6, 2), [1, 0], "link up");
    assert_eq!(h.d.config_bytes(10, 2), PASST_MTU.to_le_bytes());
    assert_eq!(h.d.config_bytes(12, 4), [0; 4], "beyond the config");
}

#[test]
fn guest_frames_reach_the_host_without_header() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    let a = frame(60, 1);
    h.send(&a);
    assert_eq!(h.tx.wait_used(&h.mem), Some((0, 0)));
    // Header and frame split over three descriptors, the header itself split.
    let b = frame(9000, 2);
    let mut bytes = vec![0u8; HDR_LEN];
    bytes.extend_from_slice(&b);
    h.mem.write_slice(&bytes, GuestAddress(TX_BUF)).expect("tx");
    h.tx.add_chain(
        &h.mem,
        &[
            (TX_BUF, 5, 0),
            (TX_BUF + 5, 100, 0),
            (TX_BUF + 105, bytes.len() as u32 - 105, 0),
        ],
    );
    h.d.notify(TX_QUEUE as u32);
    assert!(h.tx.wait_used(&h.mem).is_some());
    wait_for("two frames", || backend.lock().from_guest.len() == 2);
    let q = backend.lock();
    assert_eq!(q.from_guest[0], a);
    assert_eq!(q.from_guest[1], b);
}

#[test]
fn host_frames_fill_rx_buffers_exactly() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    h.mem
        .write_slice(&[0xee; 4096], GuestAddress(RX_BUF))
        .expect("poison");
    h.post_rx(RX_BUF, 2048);
    // Linux's layout for big packets: the header alone, then the data.
    let head2 = h.rx.add_chain(
        &h.mem,
        &[
            (RX_BUF + 0x1_0000, HDR_LEN as u32, F_WRITE),
            (RX_BUF + 0x2_0000, 0x1_0000, F_WRITE),
            (RX_BUF + 0x3_0000, 0x1_0000, F_WRITE),
        ],
    );
    h.d.notify(RX_QUEUE as u32);
    let small = frame(1514, 3);
    let big = frame(MAX_FRAME, 4);
    backend.lock().to_guest.extend([small.clone(), big.clone()]);
    backend.wake();
    let used = h.rx.wait_used(&h.mem).expect("first used");
    assert_eq!(used, (0, (HDR_LEN + small.len()) as u32));
    assert_eq!(h.received(RX_BUF, used.1), (expected_hdr(), small.clone()));
    assert_eq!(
        h.read(RX_BUF + used.1 as u64, 4),
        [0xee; 4],
        "nothing beyond"
    );
    let used = h.rx.wait_used(&h.mem).expect("second used");
    assert_eq!(used, (u32::from(head2), (HDR_LEN + big.len()) as u32));
    assert_eq!(h.read(RX_BUF + 0x1_0000, HDR_LEN), expected_hdr());
    let mut got = h.read(RX_BUF + 0x2_0000, 0x1_0000);
    got.extend(h.read(RX_BUF + 0x3_0000, big.len() - 0x1_0000));
    assert_eq!(got, big);
    assert_ne!(h.d.ack_interrupt() & 1, 0, "queue interrupt");
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_queue_keeps_working() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    let mem = h.mem.clone();
    // Header only / frame shorter than an Ethernet header.
    h.tx.add_chain(&mem, &[(TX_BUF, HDR_LEN as u32, 0)]);
    h.tx.add_chain(&mem, &[(TX_BUF, (HDR_LEN + 13) as u32, 0)]);
    h.tx.add_chain(&mem, &[(TX_BUF, 8, 0)]);
    // Device-writable descriptors in a TX chain.
    h.tx.add_chain(&mem, &[(TX_BUF, 100, F_WRITE)]);
    h.tx.add_chain(&mem, &[(TX_BUF, 12, 0), (TX_BUF, 100, F_WRITE)]);
    // Oversized, also via a length of u32::MAX.
    h.tx.add_chain(&mem, &[(TX_BUF, (HDR_LEN + MAX_FRAME + 1) as u32, 0)]);
    h.tx.add_chain(&mem, &[(TX_BUF, 12, 0), (TX_BUF, u32::MAX, 0)]);
    // Outside guest memory.
    h.tx.add_chain(&mem, &[(15 << 20, 4 << 20, 0)]);
    // An offload the device did not offer (NEEDS_CSUM, GSO TCPv4).
    let mut bad = vec![0u8; 80];
    bad[0] = 1;
    mem.write_slice(&bad, GuestAddress(TX_BUF + 0x1000))
        .expect("hdr");
    h.tx.add_chain(&mem, &[(TX_BUF + 0x1000, 80, 0)]);
    bad[0] = 0;
    bad[1] = 1;
    mem.write_slice(&bad, GuestAddress(TX_BUF + 0x2000))
        .expect("hdr");
    h.tx.add_chain(&mem, &[(TX_BUF + 0x2000, 80, 0)]);
    h.d.notify(TX_QUEUE as u32);
    for _ in 0..10 {
        assert_eq!(h.tx.wait_used(&mem).map(|u| u.1), Some(0));
    }
    assert!(backend.lock().from_guest.is_empty(), "nothing sent");
    let good = frame(64, 9);
    h.send(&good);
    assert!(h.tx.wait_used(&mem).is_some());
    wait_for("the good frame", || backend.lock().from_guest.len() == 1);
    assert_eq!(backend.lock().from_guest[0], good);
}

#[test]
fn too_long_chains_are_refused() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    let mem = h.mem.clone();
    // An indirect table of MAX_SEGMENTS + 1 100-byte readable
    // descriptors: a well-sized frame, but too many pieces.
    let table = 0x30_0000u64;
    let n = MAX_SEGMENTS as u16 + 1;
    for i in 0..n {
        let at = table + 16 * u64::from(i);
        let last = i + 1 == n;
        mem.write_obj(TX_BUF + 100 * u64::from(i), GuestAddress(at))
            .expect("addr");
        mem.write_obj(100u32, GuestAddress(at + 8)).expect("len");
        mem.write_obj(if last { 0u16 } else { F_NEXT }, GuestAddress(at + 12))
            .expect("flags");
        mem.write_obj(i + 1, GuestAddress(at + 14)).expect("next");
    }
    h.tx.add_chain(&mem, &[(table, 16 * u32::from(n), F_INDIRECT)]);
    h.d.notify(TX_QUEUE as u32);
    assert_eq!(h.tx.wait_used(&mem).map(|u| u.1), Some(0));
    // One descriptor fewer is accepted.
    mem.write_obj(0u16, GuestAddress(table + 16 * u64::from(n - 2) + 12))
        .expect("flags");
    h.tx.add_chain(&mem, &[(table, 16 * u32::from(n - 1), F_INDIRECT)]);
    h.d.notify(TX_QUEUE as u32);
    assert!(h.tx.wait_used(&mem).is_some());
    wait_for("the frame of MAX_SEGMENTS pieces", || {
        backend.lock().from_guest.len() == 1
    });
    assert_eq!(
        backend.lock().from_guest[0].len(),
        100 * MAX_SEGMENTS - HDR_LEN
    );
}

#[test]
fn bad_rx_buffers_and_oversized_frames() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    let mem = h.mem.clone();
    // A readable descriptor in an RX chain: returned unused, the frame waits.
    let bad = h.rx.add_chain(&mem, &[(RX_BUF, 2048, 0)]);
    let small = h.post_rx(RX_BUF + 0x1000, 200);
    let big_frame = frame(1000, 5);
    let ok_frame = frame(150, 6);
    backend
        .lock()
        .to_guest
        .extend([big_frame, ok_frame.clone()]);
    backend.wake();
    assert_eq!(h.rx.wait_used(&mem), Some((u32::from(bad), 0)));
    // The 1000-byte frame does not fit the 200-byte buffer: dropped, and
    // the buffer takes the next frame.
    let used = h.rx.wait_used(&mem).expect("used");
    assert_eq!(used.0, u32::from(small));
    assert_eq!(h.received(RX_BUF + 0x1000, used.1).1, ok_frame);
    // Runt frames from the host are dropped too.
    backend.lock().to_guest.push_back(vec![1; 13]);
    backend.lock().to_guest.push_back(frame(60, 7));
    backend.wake();
    h.post_rx(RX_BUF + 0x2000, 2048);
    let used = h.rx.wait_used(&mem).expect("used");
    assert_eq!(h.received(RX_BUF + 0x2000, used.1).1, frame(60, 7));
}

#[test]
fn frames_wait_for_rx_buffers_and_tx_waits_for_the_backend() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    let frames: Vec<_> = (0..5).map(|i| frame(100 + i, i as u8)).collect();
    backend.lock().to_guest.extend(frames.iter().cloned());
    backend.wake();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.rx.used_idx(&h.mem), 0, "no buffers, nothing used");
    for (i, f) in frames.iter().enumerate() {
        let at = RX_BUF + 0x1000 * i as u64;
        h.post_rx(at, 2048);
        let used = h.rx.wait_used(&h.mem).expect("used");
        assert_eq!(h.received(at, used.1).1, *f, "frame {i} in order");
    }
    // A full backend: the chain is used, the frame is held until room frees.
    backend.lock().full = true;
    let f = frame(70, 8);
    h.send(&f);
    assert!(h.tx.wait_used(&h.mem).is_some());
    std::thread::sleep(Duration::from_millis(20));
    assert!(backend.lock().from_guest.is_empty());
    backend.lock().full = false;
    backend.wake();
    wait_for("the held frame", || backend.lock().from_guest.len() == 1);
    assert_eq!(backend.lock().from_guest[0], f);
}

#[test]
fn link_changes_raise_a_config_interrupt() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    h.d.ack_interrupt();
    backend.link.store(false, Ordering::Release);
    backend.wake();
    wait_for("config interrupt", || {
        h.d.read(reg::INTERRUPT_STATUS) & 2 != 0
    });
    assert_eq!(h.d.config_bytes(6, 2), [0, 0], "link down");
}

#[test]
fn reset_and_reactivate_keeps_the_backend() {
    let backend = MemBackend::new();
    let mut h = harness(Box::new(backend.clone()));
    // A driver that corrupts the TX ring gets that queue ignored ...
    let bogus = h.tx.avail_idx().wrapping_add(QUEUE_SIZE + 5);
    h.tx.set_avail_idx(&h.mem, bogus);
    h.d.notify(TX_QUEUE as u32);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.tx.used_idx(&h.mem), 0);
    // ... until it resets the device.
    h.d.write(reg::STATUS, 0);
    assert!(!h.d.t.is_activated());
    let mut h2 = {
        let rx = Ring::new(&h.mem, 0x1_0000, QUEUE_SIZE);
        let tx = Ring::new(&h.mem, 0x2_0000, QUEUE_SIZE);
        h.d.negotiate(u64::MAX);
        h.d.setup_queue(0, &rx);
        h.d.setup_queue(1, &tx);
        h.d.driver_ok();
        Harness {
            d: h.d,
            mem: h.mem,
            rx,
            tx,
        }
    };
    assert!(h2.d.t.is_activated());
    let f = frame(99, 1);
    h2.send(&f);
    wait_for("frame after reset", || backend.lock().from_guest.len() == 1);
}

/// Reads one length-prefixed frame.
fn read_frame(s: &mut impl std::io::Read) -> Vec<u8> {
    let mut p = [0u8; LEN_PREFIX];
    s.read_exact(&mut p).expect("prefix");
    let mut f = vec![0u8; u32::from_be_bytes(p) as usize];
    s.read_exact(&mut f).expect("frame");
    f
}

fn stream_traffic<S: std::io::Read + std::io::Write>(h: &mut Harness, peer: &mut S) {
    // Guest to host: exact framed bytes.
    let a = frame(1514, 1);
    h.send(&a);
    assert!(h.tx.wait_used(&h.mem).is_some());
    assert_eq!(read_frame(peer), a);
    // Host to guest, the prefix and the frame split across writes.
    let b = frame(4000, 2);
    let mut bytes = encode_prefix(b.len()).expect("len").to_vec();
    bytes.extend_from_slice(&b);
    h.post_rx(RX_BUF, 8192);
    for piece in [&bytes[..2], &bytes[2..7], &bytes[7..]] {
        peer.write_all(piece).expect("write");
        peer.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(5));
    }
    let used = h.rx.wait_used(&h.mem).expect("rx used");
    assert_eq!(h.received(RX_BUF, used.1), (expected_hdr(), b));
}

#[test]
fn stream_backend_over_tcp() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = l.local_addr().expect("addr").to_string();
    let backend = StreamBackend::connect_tcp(&addr).expect("connect");
    let (mut peer, _) = l.accept().expect("accept");
    let mut h = harness(Box::new(backend));
    stream_traffic(&mut h, &mut peer);
}

#[cfg(unix)]
#[test]
fn stream_backend_over_a_socketpair_and_peer_close() {
    use std::os::unix::net::UnixStream;
    let (ours, mut peer) = UnixStream::pair().expect("pair");
    let backend = StreamBackend::new(Box::new(ours)).expect("backend");
    let mut h = harness(Box::new(backend));
    stream_traffic(&mut h, &mut peer);
    // The peer goes away mid-frame: link down, a config interrupt, and
    // the device goes on using (dropping) TX chains.
    peer.write_all(&[0, 0, 1]).expect("partial prefix");
    drop(peer);
    wait_for("link down", || h.d.config_bytes(6, 2) == [0, 0]);
    wait_for("config interrupt", || {
        h.d.read(reg::INTERRUPT_STATUS) & 2 != 0
    });
    for _ in 0..3 {
        h.send(&frame(60, 3));
        assert_eq!(h.tx.wait_used(&h.mem).map(|u| u.1), Some(0));
    }
}

/// A peer that writes one byte at a time, with an empty frame and a runt
/// (shorter than an Ethernet header) before a real one: the runts are
/// dropped, the real frame arrives whole in the first RX buffer, and the
/// link stays up.
#[cfg(unix)]
#[test]
fn stream_backend_reassembles_dribbled_bytes_and_drops_runts() {
    use std::os::unix::net::UnixStream;
    let (ours, mut peer) = UnixStream::pair().expect("pair");
    let backend = StreamBackend::new(Box::new(ours)).expect("backend");
    let link = backend.link();
    let mut h = harness(Box::new(backend));
    h.post_rx(RX_BUF, 8192);
    let real = frame(1514, 9);
    let mut bytes = Vec::new();
    for f in [&[][..], &[1u8; 10][..], &real[..]] {
        bytes.extend_from_slice(&encode_prefix(f.len()).expect("len"));
        bytes.extend_from_slice(f);
    }
    for b in &bytes {
        peer.write_all(std::slice::from_ref(b)).expect("write");
    }
    let used = h.rx.wait_used(&h.mem).expect("rx used");
    assert_eq!(h.received(RX_BUF, used.1), (expected_hdr(), real));
    assert_eq!(h.rx.used_idx(&h.mem), 1, "only the real frame");
    assert!(link.load(Ordering::Acquire), "link still up");
}

#[cfg(unix)]
#[test]
fn stream_backend_drops_a_peer_announcing_an_oversized_frame() {
    use std::os::unix::net::UnixStream;
    let (ours, mut peer) = UnixStream::pair().expect("pair");
    let backend = StreamBackend::new(Box::new(ours)).expect("backend");
    let link = backend.link();
    let mut h = harness(Box::new(backend));
    h.post_rx(RX_BUF, 8192);
    peer.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
        .expect("write");
    wait_for("link down", || !link.load(Ordering::Acquire));
    // The socket was shut: the peer sees EOF.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut peer, &mut rest).expect("eof");
    assert_eq!(h.rx.used_idx(&h.mem), 0, "nothing delivered");
}

#[test]
fn stream_backend_tx_backpressure_keeps_every_frame_in_order() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = l.local_addr().expect("addr").to_string();
    let backend = StreamBackend::connect_tcp(&addr).expect("connect");
    let (mut peer, _) = l.accept().expect("accept");
    let mut h = harness(Box::new(backend));
    // More than the backend queue and the socket buffers hold while the
    // peer is not reading.
    let n = 600usize;
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        (0..n).map(|_| read_frame(&mut peer)).collect::<Vec<_>>()
    });
    for i in 0..n {
        let f = frame(60000, i as u8);
        let at = TX_BUF + (i as u64 % 4) * 0x1_0000;
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(&f);
        // Reuse a slot only after its chain came back.
        if i >= 4 {
            assert!(h.tx.wait_used(&h.mem).is_some(), "chain {} used", i - 4);
        }
        h.mem.write_slice(&bytes, GuestAddress(at)).expect("tx");
        h.tx.add_chain(&h.mem, &[(at, bytes.len() as u32, 0)]);
        h.d.notify(TX_QUEUE as u32);
    }
    let got = reader.join().expect("reader");
    assert_eq!(got.len(), n);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(*f, frame(60000, i as u8), "frame {i}");
    }
}

#[test]
fn fuzz_script_smoke() {
    // A TX frame over 3 descriptors, an RX buffer in 2 parts, one framed
    // host frame, then a pass.
    let mut s = vec![0, 0x22, 100, 0];
    s.extend_from_slice(&[0u8; 100]);
    s.extend_from_slice(&[1, 0, 0xe8, 0x03, 1]);
    s.extend_from_slice(&[2, 64, 0, 0, 0, 0, 60]);
    s.extend_from_slice(&[9u8; 60]);
    s.push(3);
    assert!(super::fuzz::run(&s) >= 2, "both chains were used");

    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..2000 {
        let len = (next() % 600) as usize;
        let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        super::fuzz::run(&input);
    }
}
