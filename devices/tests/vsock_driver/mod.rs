//! A simulated Linux guest for the vsock device: the virtio_vsock driver's
//! queue handling (RX ring kept full, TX chains reclaimed, eight event
//! buffers) and a small AF_VSOCK stream layer on top (listen, connect,
//! credit-respecting writes, reads that return credit).
//!
//! Headers are encoded here by byte offset, independently of the device's
//! codec, following Linux's `struct virtio_vsock_hdr`.
#![allow(dead_code)]

pub mod ring;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use krypton_devices::GuestMem;
use krypton_devices::event::Event;
use krypton_devices::virtio::vsock::{Vsock, VsockHost};
use krypton_devices::virtio::{ActivateContext, InterruptKind, VirtioDevice, VirtioInterrupt};
use ring::Ring;

pub const HDR: usize = 44;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUT_RCV: u32 = 1;
pub const SHUT_SEND: u32 = 2;
/// Linux's VIRTIO_VSOCK_DEFAULT_RX_BUF_SIZE.
pub const RX_BUF: u32 = 4096;
/// Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE.
pub const MAX_PKT: usize = 64 * 1024;

const RX_BASE: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x2000;
const TX_BASE: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x1_2000;
const EV_BASE: u64 = 0x180_0000;

/// How the driver lays out buffers (Linux changed this over time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Linux <= 6.1: header and payload in separate descriptors.
    Split,
    /// Linux 6.2+: header and payload in one descriptor.
    Single,
    /// Linux 2025+: TX header, then the payload over several 4 KiB descriptors.
    Scattered,
}

/// A vsock packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    pub fn to_bytes(self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Hdr {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2"));
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Interrupt sink that wakes the driver.
#[derive(Debug, Default)]
pub struct Irq(pub Event);

impl VirtioInterrupt for Irq {
    fn trigger(&self, _kind: InterruptKind) {
        self.0.signal();
    }
}

/// Guest-side connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CState {
    Connecting,
    Connected,
    Reset,
}

/// One guest socket.
#[derive(Debug)]
pub struct GConn {
    pub state: CState,
    pub recv: Vec<u8>,
    /// Bytes the application consumed (our fwd_cnt).
    pub fwd_cnt: u32,
    pub last_fwd_sent: u32,
    pub rx_total: u32,
    pub tx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub peer_shut: u32,
    /// The device sent more than our advertised credit.
    pub credit_violation: bool,
}

/// The simulated guest with its device.
pub struct Guest {
    pub mem: GuestMem,
    pub cid: u64,
    pub layout: Layout,
    pub dev: Vsock,
    pub notify: Arc<Event>,
    pub irq: Arc<Irq>,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    rx_chains: HashMap<u16, Vec<(u16, u64, u32)>>,
    tx_chains: HashMap<u16, Vec<u16>>,
    /// Keep the RX ring full (a reader that stops reading sets this false).
    pub rx_enabled: bool,
    pub conns: HashMap<(u32, u32), GConn>,
    pub listening: HashSet<u32>,
    /// Every header received, in order.
    pub log: Vec<Hdr>,
    /// RX buffers the device returned without a packet.
    pub rx_dropped: usize,
    /// Our receive buffer size per connection.
    pub buf_alloc: u32,
    /// Largest payload per TX packet.
    pub max_pkt: usize,
    next_port: u32,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("cid", &self.cid)
            .field("layout", &self.layout)
            .finish()
    }
}

impl Guest {
    /// Boots the driver: rings, event buffers, RX ring filled, device activated.
    pub fn new(layout: Layout, host: VsockHost, cid: u64) -> Guest {
        Self::with_rx(layout, host, cid, true)
    }

    /// Like [`Guest::new`]; `fill` false posts no RX buffers (and keeps
    /// `rx_enabled` off) so a test can post its own.
    pub fn with_rx(layout: Layout, host: VsockHost, cid: u64, fill: bool) -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("mem");
        let rx = Ring::new(&mem, 0, 256);
        let tx = Ring::new(&mem, 0x1_0000, 256);
        let ev = Ring::new(&mem, 0x2_0000, 256);
        let dev = Vsock::new(cid, host).expect("device");
        let mut cfg = [0u8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(
            u64::from_le_bytes(cfg),
            cid,
            "config space holds the guest CID"
        );
        let notify = Arc::new(Event::new());
        let irq = Arc::new(Irq::default());
        let queues = vec![rx.queue(), tx.queue(), ev.queue()];
        let mut g = Guest {
            mem: mem.clone(),
            cid,
            layout,
            dev,
            notify: Arc::clone(&notify),
            irq: Arc::clone(&irq),
            rx,
            tx,
            ev,
            rx_chains: HashMap::new(),
            tx_chains: HashMap::new(),
            rx_enabled: true,
            conns: HashMap::new(),
            listening: HashSet::new(),
            log: Vec::new(),
            rx_dropped: 0,
            buf_alloc: 256 * 1024,
            max_pkt: MAX_PKT,
            next_port: 50_000,
        };
        for i in 0..8u16 {
            let ids = g.ev.alloc(1).expect("event desc");
            g.ev.publish(&g.mem, &ids, &[(EV_BASE + 8 * u64::from(i), 4, true)]);
        }
        g.rx_enabled = fill;
        if fill {
            g.fill_rx();
        }
        let ctx = ActivateContext {
            mem,
            interrupt: irq,
            queues,
            notify,
            acked_features: 1 << 32,
        };
        g.dev.activate(ctx).expect("activate");
        g.notify.signal();
        g
    }

    fn fill_rx(&mut self) {
        let per = if self.layout == Layout::Split { 2 } else { 1 };
        let mut added = false;
        while let Some(ids) = self.rx.alloc(per) {
            let slot = |id: u16| RX_BASE + RX_SLOT * u64::from(id);
            let bufs: Vec<(u64, u32, bool)> = if per == 2 {
                vec![
                    (slot(ids[0]), HDR as u32, true),
                    (slot(ids[1]), RX_BUF, true),
                ]
            } else {
                vec![(slot(ids[0]), RX_BUF + HDR as u32, true)]
            };
            let head = self.rx.publish(&self.mem, &ids, &bufs);
            let chain = ids
                .iter()
                .zip(&bufs)
                .map(|(&id, &(a, l, _))| (id, a, l))
                .collect();
            self.rx_chains.insert(head, chain);
            added = true;
        }
        if added {
            self.notify.signal();
        }
    }

    /// Posts one RX chain of raw (addr, len) writable buffers.
    pub fn post_rx_raw(&mut self, bufs: &[(u64, u32)]) {
        let ids = self.rx.alloc(bufs.len()).expect("free RX descriptors");
        let descs: Vec<(u64, u32, bool)> = bufs.iter().map(|&(a, l)| (a, l, true)).collect();
        let head = self.rx.publish(&self.mem, &ids, &descs);
        let chain = ids
            .iter()
            .zip(bufs)
            .map(|(&id, &(a, l))| (id, a, l))
            .collect();
        self.rx_chains.insert(head, chain);
        self.notify.signal();
    }

    /// Free TX descriptors (all of them once the device consumed every chain).
    pub fn tx_free(&self) -> usize {
        self.tx.free_count()
    }

    /// Posts hand-made TX descriptors (addr, len, flags, next as an index
    /// into `descs`); the first one is the head.
    pub fn post_tx_descs(&mut self, descs: &[(u64, u32, u16, usize)]) {
        let ids = self.tx.alloc(descs.len()).expect("free TX descriptors");
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            self.tx
                .write_desc(&self.mem, ids[i], addr, len, flags, ids[next]);
        }
        self.tx.push_avail(&self.mem, ids[0]);
        self.tx_chains.insert(ids[0], ids);
        self.notify.signal();
    }

    /// Posts a raw TX chain of (bytes, writable) buffers.
    pub fn send_chain(&mut self, bufs: &[(&[u8], bool)]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ids = loop {
            if let Some(ids) = self.tx.alloc(bufs.len()) {
                break ids;
            }
            assert!(Instant::now() < deadline, "TX ring stayed full");
            self.pump_wait();
        };
        let mut descs = Vec::new();
        for (&id, &(bytes, w)) in ids.iter().zip(bufs) {
            let addr = TX_BASE + TX_SLOT * u64::from(id);
            assert!(bytes.len() as u64 <= TX_SLOT);
            self.mem
                .write_slice(bytes, GuestAddress(addr))
                .expect("tx buf");
            descs.push((addr, bytes.len() as u32, w));
        }
        let head = self.tx.publish(&self.mem, &ids, &descs);
        self.tx_chains.insert(head, ids);
        self.notify.signal();
    }

    /// Sends one packet in the driver's layout.
    pub fn send_pkt(&mut self, mut h: Hdr, data: &[u8]) {
        h.len = data.len() as u32;
        let hb = h.to_bytes();
        match self.layout {
            Layout::Split if data.is_empty() => self.send_chain(&[(&hb, false)]),
            Layout::Split => self.send_chain(&[(&hb, false), (data, false)]),
            Layout::Single => {
                let mut v = hb.to_vec();
                v.extend_from_slice(data);
                self.send_chain(&[(&v, false)]);
            }
            Layout::Scattered => {
                let mut bufs: Vec<(&[u8], bool)> = vec![(&hb, false)];
                bufs.extend(data.chunks(4096).map(|c| (c, false)));
                self.send_chain(&bufs);
            }
        }
    }

    /// A header from guest port `key.0` to host port `key.1` with our credit.
    pub fn hdr(&self, key: (u32, u32), op: u16) -> Hdr {
        let fwd = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Hdr {
            src_cid: self.cid,
            dst_cid: 2,
            src_port: key.0,
            dst_port: key.1,
            type_: 1,
            op,
            buf_alloc: self.buf_alloc,
            fwd_cnt: fwd,
            ..Hdr::default()
        }
    }

    fn send_ctrl(&mut self, key: (u32, u32), op: u16, flags: u32) {
        let mut h = self.hdr(key, op);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&key) {
            c.last_fwd_sent = c.fwd_cnt;
        }
        self.send_pkt(h, &[]);
    }

    /// Handles used buffers and refills the RX ring.
    pub fn pump(&mut self) {
        while let Some((head, _)) = self.tx.pop_used(&self.mem) {
            let ids = self.tx_chains.remove(&head).expect("TX used id was posted");
            self.tx.free(&ids);
        }
        while let Some((head, len)) = self.rx.pop_used(&self.mem) {
            let chain = self.rx_chains.remove(&head).expect("RX used id was posted");
            let mut bytes = Vec::new();
            for &(_, addr, l) in &chain {
                let mut b = vec![0u8; l as usize];
                self.mem
                    .read_slice(&mut b, GuestAddress(addr))
                    .expect("rx buf");
                bytes.extend(b);
            }
            let ids: Vec<u16> = chain.iter().map(|c| c.0).collect();
            self.rx.free(&ids);
            assert!(len as usize <= bytes.len(), "used len beyond the buffer");
            bytes.truncate(len as usize);
            if bytes.len() < HDR {
                // Linux drops such buffers (the device returns unusable ones empty).
                self.rx_dropped += 1;
                continue;
            }
            let h = Hdr::from_bytes(&bytes[..HDR]);
            assert_eq!(
                bytes.len(),
                HDR + h.len as usize,
                "used len matches header len"
            );
            self.dispatch(h, &bytes[HDR..]);
        }
        if self.rx_enabled {
            self.fill_rx();
        }
    }

    fn pump_wait(&mut self) {
        self.pump();
        self.irq.0.wait_timeout(Duration::from_millis(2));
    }

    fn dispatch(&mut self, h: Hdr, data: &[u8]) {
        self.log.push(h);
        assert_eq!(h.dst_cid, self.cid, "addressing of {h:?}");
        if h.src_cid != 2 || h.type_ != 1 {
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.op == OP_REQUEST {
            if self.listening.contains(&h.dst_port) && !self.conns.contains_key(&key) {
                self.conns.insert(key, GConn::new(CState::Connected, &h));
                self.send_ctrl(key, OP_RESPONSE, 0);
            } else {
                self.send_ctrl(key, OP_RST, 0);
            }
            return;
        }
        let buf_alloc = self.buf_alloc;
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.send_ctrl(key, OP_RST, 0);
            }
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE if c.state == CState::Connecting => c.state = CState::Connected,
            OP_RST => c.state = CState::Reset,
            OP_SHUTDOWN => c.peer_shut |= h.flags,
            OP_RW => {
                c.recv.extend_from_slice(data);
                c.rx_total = c.rx_total.wrapping_add(data.len() as u32);
                if c.rx_total.wrapping_sub(c.fwd_cnt) > buf_alloc {
                    c.credit_violation = true;
                }
            }
            OP_CREDIT_REQUEST => self.send_ctrl(key, OP_CREDIT_UPDATE, 0),
            _ => {}
        }
    }

    /// Pumps until `f` holds or `timeout` passes.
    pub fn run_until(&mut self, timeout: Duration, mut f: impl FnMut(&mut Guest) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            if f(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            self.irq.0.wait_timeout(Duration::from_millis(2));
        }
    }

    pub fn conn(&self, key: (u32, u32)) -> &GConn {
        self.conns.get(&key).expect("connection")
    }

    /// Connects to host port `port`; `None` if reset.
    pub fn connect(&mut self, port: u32) -> Option<(u32, u32)> {
        self.next_port += 1;
        let key = (self.next_port, port);
        self.conns
            .insert(key, GConn::new(CState::Connecting, &Hdr::default()));
        self.send_ctrl(key, OP_REQUEST, 0);
        let done = self.run_until(Duration::from_secs(5), |g| {
            g.conn(key).state != CState::Connecting
        });
        assert!(done, "no answer to REQUEST");
        (self.conn(key).state == CState::Connected).then_some(key)
    }

    /// Waits for a connection to listening port `port` that is not in `seen`.
    pub fn accept(&mut self, port: u32, timeout: Duration) -> Option<(u32, u32)> {
        let before: HashSet<_> = self.conns.keys().copied().collect();
        let mut found = None;
        self.run_until(timeout, |g| {
            found = g
                .conns
                .keys()
                .copied()
                .find(|k| k.0 == port && !before.contains(k));
            found.is_some()
        });
        found
    }

    /// Writes all of `data`, waiting for credit like a blocking send().
    pub fn write(&mut self, key: (u32, u32), data: &[u8]) {
        let sent = self.try_write(key, data, Duration::from_secs(10));
        assert_eq!(sent, Ok(data.len()), "write on {key:?}");
    }

    /// Credit the device currently grants on `key`.
    pub fn credit(&self, key: (u32, u32)) -> usize {
        let c = self.conn(key);
        c.peer_buf_alloc
            .saturating_sub(c.tx_cnt.wrapping_sub(c.peer_fwd_cnt)) as usize
    }

    /// Writes `data` as credit allows. Err(sent) if the connection was reset
    /// or no credit came within `stall`.
    pub fn try_write(
        &mut self,
        key: (u32, u32),
        data: &[u8],
        stall: Duration,
    ) -> Result<usize, usize> {
        let mut off = 0;
        while off < data.len() {
            let mut credit = 0;
            let ok = self.run_until(stall, |g| {
                if g.conn(key).state == CState::Reset {
                    return true;
                }
                credit = g.credit(key);
                credit > 0
            });
            if !ok || self.conn(key).state == CState::Reset {
                return Err(off);
            }
            let n = credit.min(self.max_pkt).min(data.len() - off);
            let mut h = self.hdr(key, OP_RW);
            h.len = n as u32;
            self.send_pkt(h, &data[off..off + n]);
            let c = self.conns.get_mut(&key).expect("conn");
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            c.last_fwd_sent = c.fwd_cnt;
            off += n;
        }
        Ok(off)
    }

    /// Consumes whatever was received (up to `max`) and returns credit.
    pub fn take(&mut self, key: (u32, u32), max: usize) -> Vec<u8> {
        let c = self.conns.get_mut(&key).expect("conn");
        let n = c.recv.len().min(max);
        let out: Vec<u8> = c.recv.drain(..n).collect();
        c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
        // Like Linux: announce credit once the device's view of our free
        // space drops below one maximum packet.
        let device_view_free = self
            .buf_alloc
            .saturating_sub(c.rx_total.wrapping_sub(c.last_fwd_sent));
        if n > 0 && c.state == CState::Connected && device_view_free < MAX_PKT as u32 {
            self.send_ctrl(key, OP_CREDIT_UPDATE, 0);
        }
        out
    }

    /// Reads until the host shuts down or resets; returns the bytes.
    pub fn read_to_end(&mut self, key: (u32, u32), timeout: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            out.extend(self.take(key, usize::MAX));
            let c = self.conn(key);
            if (c.peer_shut & SHUT_SEND != 0 || c.state == CState::Reset) && c.recv.is_empty() {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "no EOF after {} bytes",
                out.len()
            );
            self.pump_wait();
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&mut self, key: (u32, u32), n: usize, timeout: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n {
            let want = n - out.len();
            out.extend(self.take(key, want));
            if out.len() == n {
                break;
            }
            assert!(Instant::now() < deadline, "read {} of {n} bytes", out.len());
            self.pump_wait();
        }
        out
    }

    pub fn shutdown(&mut self, key: (u32, u32), flags: u32) {
        self.send_ctrl(key, OP_SHUTDOWN, flags);
    }

    /// Waits for the connection to be reset (after a full shutdown).
    pub fn wait_reset(&mut self, key: (u32, u32), timeout: Duration) -> bool {
        self.run_until(timeout, |g| g.conn(key).state == CState::Reset)
    }
}

impl GConn {
    fn new(state: CState, h: &Hdr) -> GConn {
        GConn {
            state,
            recv: Vec::new(),
            fwd_cnt: 0,
            last_fwd_sent: 0,
            rx_total: 0,
            tx_cnt: 0,
            peer_buf_alloc: h.buf_alloc,
            peer_fwd_cnt: h.fwd_cnt,
            peer_shut: 0,
            credit_violation: false,
        }
    }
}

/// A deterministic test pattern.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}
