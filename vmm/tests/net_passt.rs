//! The virtio-net data path against a real passt, without a VM: a
//! simulated guest driver sends frames through the device and the stream
//! backend to passt and reads passt's answers from its RX queue. Checks the
//! framing against passt itself, the fixed guest addressing, and passt's
//! gateway mapping (a TCP SYN to 10.0.2.2:PORT reaches 127.0.0.1:PORT on
//! the host). Skipped where passt is not installed.
#![cfg(target_os = "linux")]

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use krypton::net::passt::Passt;
use krypton::net::{PortMap, parse_publish};
use krypton_devices::GuestMem;
use krypton_devices::virtio::net::{Net, PASST_MTU, StreamBackend};
use krypton_devices::virtio::testing::{Driver, F_WRITE, Ring, driver_for};
use vm_memory::{Bytes, GuestAddress};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const HDR: usize = 12;
const RX_BUF: u64 = 0x10_0000;
const RX_SIZE: u32 = 0x1_2000;
const TX_BUF: u64 = 0xe0_0000;

fn passt_installed() -> bool {
    let ok = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join("passt").is_file()));
    if !ok {
        eprintln!("skipped: passt is not installed");
    }
    ok
}

struct Guest {
    d: Driver,
    mem: GuestMem,
    rx: Ring,
    tx: Ring,
    /// RX buffer address of each posted head.
    posted: Vec<(u16, u64)>,
    _passt: Passt,
}

impl Guest {
    fn new() -> Guest {
        Guest::with_ports(&[])
    }

    fn with_ports(ports: &[PortMap]) -> Guest {
        let (passt, sock) = Passt::start(ports).expect("passt starts");
        let backend = StreamBackend::new(Box::new(sock)).expect("backend");
        let (mut d, mem, _irq) = driver_for(Box::new(Net::new(MAC, PASST_MTU, Box::new(backend))));
        let rx = Ring::new(&mem, 0x1_0000, 16);
        let tx = Ring::new(&mem, 0x2_0000, 16);
        d.negotiate(u64::MAX);
        d.setup_queue(0, &rx);
        d.setup_queue(1, &tx);
        d.driver_ok();
        let mut g = Guest {
            d,
            mem,
            rx,
            tx,
            posted: Vec::new(),
            _passt: passt,
        };
        for i in 0..8 {
            g.post(RX_BUF + u64::from(RX_SIZE) * i);
        }
        g
    }

    fn post(&mut self, at: u64) {
        let head = self.rx.add_chain(&self.mem, &[(at, RX_SIZE, F_WRITE)]);
        self.posted.push((head, at));
        self.d.notify(0);
    }

    fn send(&mut self, frame: &[u8]) {
        let mut bytes = vec![0u8; HDR];
        bytes.extend_from_slice(frame);
        self.mem
            .write_slice(&bytes, GuestAddress(TX_BUF))
            .expect("tx");
        self.tx
            .add_chain(&self.mem, &[(TX_BUF, bytes.len() as u32, 0)]);
        self.d.notify(1);
        assert!(self.tx.wait_used(&self.mem).is_some(), "TX used");
    }

    /// Frames from passt until `pred` matches one (10 s at most).
    fn receive_until(&mut self, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no matching frame from passt");
            let Some((id, len)) = self.rx.pop_used(&self.mem) else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let at = self
                .posted
                .iter()
                .find(|(h, _)| u32::from(*h) == id)
                .map(|p| p.1)
                .expect("a posted head");
            let mut all = vec![0u8; len as usize];
            self.mem.read_slice(&mut all, GuestAddress(at)).expect("rx");
            self.posted.retain(|(h, _)| u32::from(*h) != id);
            self.post(at);
            let frame = all.split_off(HDR);
            assert_eq!(all[10], 1, "num_buffers");
            if pred(&frame) {
                return frame;
            }
        }
    }
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&GUEST.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GATEWAY.octets());
    f.resize(60, 0);
    f
}

fn tcp_syn(dst_mac: &[u8], port: u16) -> Vec<u8> {
    tcp_segment(dst_mac, port, 1, 0, 0x02, &[])
}

/// A TCP segment from 10.0.2.15:40000 to 10.0.2.2:`port`.
fn tcp_segment(dst_mac: &[u8], port: u16, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp.extend_from_slice(data);
    let tlen = tcp.len() as u16;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST.octets());
    pseudo.extend_from_slice(&GATEWAY.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&tlen.to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo, 0);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + tlen).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&GUEST.octets());
    ip.extend_from_slice(&GATEWAY.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

fn udp(dst_mac: &[u8], port: u16, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut udp = Vec::with_capacity(ulen);
    udp.extend_from_slice(&40001u16.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum (IPv4)
    udp.extend_from_slice(payload);
    let total = (20 + ulen) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 2, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&GUEST.octets());
    ip.extend_from_slice(&GATEWAY.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

fn gateway_mac(g: &mut Guest) -> Vec<u8> {
    g.send(&arp_request());
    let reply = g.receive_until(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06]);
    reply[22..28].to_vec()
}

/// UDP both ways through the gateway mapping, with datagrams up to what
/// the 65520-byte MTU carries unfragmented.
#[test]
fn udp_echo_through_passt_with_large_datagrams() {
    if !passt_installed() {
        return;
    }
    let mut g = Guest::new();
    let gw = gateway_mac(&mut g);
    let host = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let port = host.local_addr().expect("addr").port();
    for size in [1, 1400, 9000, 60000] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        g.send(&udp(&gw, port, &payload));
        let mut buf = vec![0u8; 65536];
        let (n, from) = host.recv_from(&mut buf).expect("datagram from the guest");
        assert_eq!(&buf[..n], &payload[..], "guest to host, {size} bytes");
        let answer: Vec<u8> = payload.iter().rev().copied().collect();
        host.send_to(&answer, from).expect("answer");
        let f = g.receive_until(|f| {
            f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && f[34..36] == port.to_be_bytes()
        });
        assert_eq!(f[30..34], GUEST.octets());
        assert_eq!(&f[42..], &answer[..], "host to guest, {size} bytes");
    }
}

/// `-p HOST:8080` (passt's `-t`): a host connection to 127.0.0.1:HOST
/// arrives in the guest as a SYN to 10.0.2.15:8080.
#[test]
fn published_ports_reach_the_guest() {
    if !passt_installed() {
        return;
    }
    let port = TcpListener::bind("0.0.0.0:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let map = parse_publish(&format!("{port}:8080")).expect("map");
    let mut g = Guest::with_ports(&[map]);
    // passt learns the guest's MAC from its first frame.
    gateway_mac(&mut g);
    let _c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to passt");
    let syn = g.receive_until(|f| {
        f.len() >= 54
            && f[12..14] == [0x08, 0x00]
            && f[23] == 6
            && f[36..38] == 8080u16.to_be_bytes()
    });
    assert_eq!(syn[30..34], GUEST.octets(), "to the guest's address");
    assert_eq!(syn[47] & 0x12, 0x02, "a SYN");
}

/// A TCP connection through the gateway mapping carries a 30000-byte
/// segment each way in single frames (MTU 65520).
#[test]
fn tcp_data_both_ways_through_passt() {
    if !passt_installed() {
        return;
    }
    let mut g = Guest::new();
    let gw = gateway_mac(&mut g);
    let l = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = l.local_addr().expect("addr").port();
    let is_ours = move |f: &[u8]| {
        f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[23] == 6 && f[34..36] == port.to_be_bytes()
    };
    g.send(&tcp_syn(&gw, port));
    let synack = g.receive_until(is_ours);
    let their_seq = u32::from_be_bytes([synack[38], synack[39], synack[40], synack[41]]);
    let (mut host, _) = l.accept().expect("passt connects");
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut ack = their_seq.wrapping_add(1);
    g.send(&tcp_segment(&gw, port, 2, ack, 0x10, &[]));
    // Guest to host.
    let up: Vec<u8> = (0..30000u32).map(|i| (i * 13) as u8).collect();
    g.send(&tcp_segment(&gw, port, 2, ack, 0x18, &up));
    let mut got = vec![0u8; up.len()];
    std::io::Read::read_exact(&mut host, &mut got).expect("host reads the segment");
    assert!(got == up, "guest to host bytes differ");
    // Host to guest.
    let down: Vec<u8> = (0..30000u32).map(|i| (i * 7 + 1) as u8).collect();
    std::io::Write::write_all(&mut host, &down).expect("host writes");
    let mut received = Vec::new();
    while received.len() < down.len() {
        let f = g.receive_until(move |f| is_ours(f) && f.len() > 54);
        let ihl = usize::from(f[14] & 0xf) * 4;
        let doff = usize::from(f[14 + ihl + 12] >> 4) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        received.extend_from_slice(&f[14 + ihl + doff..14 + total]);
        ack = ack.wrapping_add((total - ihl - doff) as u32);
        g.send(&tcp_segment(&gw, port, 2 + up.len() as u32, ack, 0x10, &[]));
    }
    assert!(received == down, "host to guest bytes differ");
}

#[test]
fn passt_answers_arp_and_maps_the_gateway_to_host_loopback() {
    if !passt_installed() {
        return;
    }
    let mut g = Guest::new();
    assert_eq!(g.d.config_bytes(6, 2), [1, 0], "link up");
    g.send(&arp_request());
    let reply = g.receive_until(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06]);
    assert_eq!(&reply[0..6], &MAC, "to us");
    assert_eq!(reply[20..22], [0, 2], "ARP reply");
    assert_eq!(reply[28..32], GATEWAY.octets(), "for the gateway");
    let gw_mac = reply[22..28].to_vec();

    let l = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = l.local_addr().expect("addr").port();
    g.send(&tcp_syn(&gw_mac, port));
    let synack = g.receive_until(|f| {
        f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[23] == 6 && f[34..36] == port.to_be_bytes()
    });
    assert_eq!(synack[47] & 0x12, 0x12, "SYN+ACK");
    assert_eq!(synack[30..34], GUEST.octets());
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match l.accept() {
            Ok((_, peer)) => {
                assert!(peer.ip().is_loopback(), "{peer}");
                break;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("passt never connected to the host port: {e}"),
        }
    }
}
