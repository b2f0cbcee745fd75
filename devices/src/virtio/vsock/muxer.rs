//! The device's packet engine: guest packets in (TX), host events, and
//! packets out to the guest (RX), over a map of connections.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};

use super::conn::{Conn, State, pending};
use super::host::handshake_ok_line;
use super::host::io::{CONN_BUF, HostIo};
use super::host::{CONNECT_TIMEOUT, ConnectDone, HostRequest, Reply, VsockHost};
use super::packet::{self, HDR_LEN, Hdr, MAX_PKT_PAYLOAD, TYPE_STREAM, op};
use super::{HOST_CID, MAX_CONNECTIONS, RX_QUEUE, TX_QUEUE};
use crate::GuestMem;
use crate::warn_ratelimited;

/// First host port handed to host-initiated connections (Firecracker's 2^30).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Most control packets (resets) queued for connections that no longer exist.
const MAX_CTRL: usize = 2 * MAX_CONNECTIONS;

/// Connection key: (host port, guest port).
pub type Key = (u32, u32);

/// What one pass over the queues did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    /// Guest packets consumed from the TX queue.
    pub tx_used: usize,
    /// Packets written to the RX queue.
    pub rx_used: usize,
}

/// Connections and pending packets of one activated device.
#[derive(Debug)]
pub struct Muxer {
    cid: u64,
    host: VsockHost,
    conns: HashMap<Key, Conn>,
    ctrl: VecDeque<Hdr>,
    ready: VecDeque<Key>,
    next_port: u32,
    scratch: Vec<u8>,
    detached: bool,
}

impl Muxer {
    /// An empty muxer for guest `cid` whose host side is `host`.
    pub fn new(cid: u64, host: VsockHost) -> Self {
        Self {
            cid,
            host,
            conns: HashMap::new(),
            ctrl: VecDeque::new(),
            ready: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            scratch: Vec::with_capacity(MAX_PKT_PAYLOAD),
            detached: false,
        }
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Runs host events, the TX queue, connection upkeep and the RX queue once.
    pub fn process(&mut self, mem: &GuestMem, queues: &mut [Queue]) -> Pass {
        let mut pass = Pass::default();
        self.host_events();
        if let Some(txq) = queues.get_mut(TX_QUEUE) {
            pass.tx_used = self.drain_tx(mem, txq);
        }
        self.upkeep();
        if let Some(rxq) = queues.get_mut(RX_QUEUE) {
            pass.rx_used = self.fill_rx(mem, rxq);
        }
        pass
    }

    fn push_ctrl(&mut self, hdr: Hdr) {
        if self.ctrl.len() >= MAX_CTRL {
            warn_ratelimited!(
                "vsock: control queue full, dropping a reset (guest gives no RX buffers)"
            );
            self.ctrl.pop_front();
        }
        self.ctrl.push_back(hdr);
    }

    /// Removes `key` and tells the guest with a reset.
    fn reset(&mut self, key: Key) {
        if self.conns.remove(&key).is_some() {
            let hdr = Hdr {
                src_cid: HOST_CID,
                dst_cid: self.cid,
                src_port: key.0,
                dst_port: key.1,
                type_: TYPE_STREAM,
                op: op::RST,
                buf_alloc: CONN_BUF as u32,
                ..Hdr::default()
            };
            self.push_ctrl(hdr);
        }
    }

    fn mark_ready(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key)
            && !c.queued
        {
            c.queued = true;
            self.ready.push_back(key);
        }
    }

    fn alloc_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_port;
            self.next_port = if p >= u32::MAX >> 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    fn host_events(&mut self) {
        let (requests, done) = self.host.take_pending();
        for req in requests {
            self.host_request(req);
        }
        for d in done {
            self.connect_done(d);
        }
    }

    fn connect_done(&mut self, d: ConnectDone) {
        let Some(c) = self.conns.get_mut(&d.key) else {
            return;
        };
        if c.state != State::PeerInit || !Arc::ptr_eq(&c.io, &d.io) {
            return;
        }
        if d.ok {
            c.state = State::Established;
            c.pending |= pending::RESPONSE;
            c.io.lock().established = true;
            c.io.wake_tasks();
            self.mark_ready(d.key);
        } else {
            self.reset(d.key);
        }
    }

    /// Fuzzing: host connections without I/O tasks. Guest connection
    /// requests succeed at once; the buffers are driven by the caller.
    pub fn set_detached(&mut self, detached: bool) {
        self.detached = detached;
    }

    /// Fuzzing: a host program asks for guest port `port` (no I/O task).
    pub fn open_detached(&mut self, port: u32) {
        let io = self.host.new_io();
        self.host_request(HostRequest {
            port,
            io,
            reply: Reply::Preamble,
            deadline: Instant::now() + CONNECT_TIMEOUT,
        });
    }

    /// Fuzzing: the host side of every connection does `sel` with `data`.
    pub fn host_step(&mut self, sel: u8, data: &[u8]) {
        for c in self.conns.values() {
            let mut st = c.io.lock();
            match sel % 4 {
                0 => {
                    let room = CONN_BUF.saturating_sub(st.to_guest.len()).min(data.len());
                    st.to_guest.extend(&data[..room]);
                }
                1 => {
                    let n = st.to_host.len().min(data.len() * 1024);
                    st.to_host.drain(..n);
                    st.delivered = st.delivered.wrapping_add(n as u32);
                }
                2 => st.host_eof = true,
                _ => st.failed = data.first().is_some_and(|b| b & 1 == 1),
            }
        }
    }

    fn host_request(&mut self, req: HostRequest) {
        let HostRequest {
            port,
            io,
            reply,
            deadline,
        } = req;
        let reject = |io: Arc<HostIo>, reply: Reply| {
            if let Reply::Notify(tx) = reply {
                let _ = tx.send(false);
            }
            io.close();
        };
        if Instant::now() > deadline {
            return reject(io, reply);
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            warn_ratelimited!(
                "vsock: connection limit reached, refusing a host connection to port {port}"
            );
            return reject(io, reply);
        }
        let Some(local) = self.alloc_port(port) else {
            return reject(io, reply);
        };
        let mut c = Conn::new(State::LocalInit, io);
        c.reply = Some(reply);
        c.deadline = Some(deadline);
        c.pending = pending::REQUEST;
        self.conns.insert((local, port), c);
        self.mark_ready((local, port));
    }

    fn drain_tx(&mut self, mem: &GuestMem, txq: &mut Queue) -> usize {
        let mut used = 0;
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(chain) = txq.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match packet::read_tx(mem, chain, &mut scratch) {
                Ok(hdr) => self.guest_packet(&hdr, &scratch),
                Err(e) => warn_ratelimited!("vsock: dropping a malformed TX packet: {e}"),
            }
            if let Err(e) = txq.add_used(mem, head, 0) {
                warn_ratelimited!("vsock: TX used ring: {e}");
            }
            used += 1;
        }
        self.scratch = scratch;
        used
    }

    /// Handles one packet from the guest.
    pub fn guest_packet(&mut self, hdr: &Hdr, data: &[u8]) {
        if hdr.src_cid != self.cid {
            warn_ratelimited!(
                "vsock: dropping a packet from CID {} (guest is {})",
                hdr.src_cid,
                self.cid
            );
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                warn_ratelimited!(
                    "vsock: resetting a packet to CID {} type {}",
                    hdr.dst_cid,
                    hdr.type_
                );
                self.push_ctrl(hdr.reply(op::RST));
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == op::REQUEST {
            return self.guest_request(key, hdr);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != op::RST {
                self.push_ctrl(hdr.reply(op::RST));
            }
            return;
        };
        c.update_peer_credit(hdr);
        match (hdr.op, c.state) {
            (op::RST, _) => {
                self.conns.remove(&key);
            }
            (op::RESPONSE, State::LocalInit) => {
                c.state = State::Established;
                c.deadline = None;
                {
                    let mut st = c.io.lock();
                    st.established = true;
                    match c.reply.take() {
                        Some(Reply::Preamble) => st.preamble = handshake_ok_line(key.0),
                        Some(Reply::Notify(tx)) => {
                            let _ = tx.send(true);
                        }
                        None => {}
                    }
                }
                c.io.wake_tasks();
                self.mark_ready(key);
            }
            (op::RW, State::Established) if c.guest_shut & packet::SHUTDOWN_SEND == 0 => {
                let mut st = c.io.lock();
                if st.to_host.len() + data.len() > CONN_BUF {
                    drop(st);
                    warn_ratelimited!("vsock: guest port {} overran its credit, resetting", key.1);
                    return self.reset(key);
                }
                st.to_host.extend(data);
                drop(st);
                c.tx_cnt = c.tx_cnt.wrapping_add(data.len() as u32);
                c.io.wake_tasks();
            }
            // Credit is recorded above whatever the state.
            (op::CREDIT_UPDATE, _) => self.mark_ready(key),
            (op::CREDIT_REQUEST, State::Established) => {
                c.pending |= pending::CREDIT;
                self.mark_ready(key);
            }
            (op::CREDIT_REQUEST, _) => {}
            (op::SHUTDOWN, State::Established) => {
                c.guest_shut |= hdr.flags & (packet::SHUTDOWN_RCV | packet::SHUTDOWN_SEND);
                if c.guest_shut & packet::SHUTDOWN_SEND != 0 {
                    c.io.lock().guest_eof = true;
                    c.io.wake_tasks();
                }
            }
            _ => {
                warn_ratelimited!(
                    "vsock: unexpected op {} from guest port {}, resetting",
                    hdr.op,
                    key.1
                );
                self.reset(key);
            }
        }
    }

    fn guest_request(&mut self, key: Key, hdr: &Hdr) {
        if self.conns.contains_key(&key) {
            warn_ratelimited!(
                "vsock: duplicate REQUEST from guest port {}, resetting",
                key.1
            );
            self.reset(key);
            self.push_ctrl(hdr.reply(op::RST));
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            warn_ratelimited!(
                "vsock: connection limit reached, refusing guest port {}",
                key.1
            );
            self.push_ctrl(hdr.reply(op::RST));
            return;
        }
        let io = self.host.new_io();
        let mut c = Conn::new(State::PeerInit, Arc::clone(&io));
        c.update_peer_credit(hdr);
        self.conns.insert(key, c);
        if self.detached {
            self.connect_done(ConnectDone { key, io, ok: true });
        } else {
            self.host.connect_host(key, io);
        }
    }

    /// Applies host-side changes to every connection.
    fn upkeep(&mut self) {
        let now = Instant::now();
        let mut reset = Vec::new();
        let mut ready = Vec::new();
        for (key, c) in &mut self.conns {
            let io = Arc::clone(&c.io);
            let st = io.lock();
            if st.failed || c.deadline.is_some_and(|d| now > d) {
                drop(st);
                reset.push(*key);
                continue;
            }
            if c.finished(&st) {
                drop(st);
                reset.push(*key);
                continue;
            }
            c.refresh(&st);
            if !c.queued && c.wants_rx(&st) {
                ready.push(*key);
            }
        }
        for key in reset {
            self.reset(key);
        }
        for key in ready {
            self.mark_ready(key);
        }
    }

    fn fill_rx(&mut self, mem: &GuestMem, rxq: &mut Queue) -> usize {
        let mut used = 0;
        while self.has_rx() {
            let Some(chain) = rxq.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match packet::rx_writer(mem, chain) {
                Ok(mut w) => self.write_one(&mut w),
                Err(e) => {
                    warn_ratelimited!("vsock: unusable RX buffer: {e}");
                    Ok(0)
                }
            };
            let len = len.unwrap_or_else(|e| {
                warn_ratelimited!("vsock: writing an RX packet: {e}");
                0
            });
            if let Err(e) = rxq.add_used(mem, head, len) {
                warn_ratelimited!("vsock: RX used ring: {e}");
            }
            used += 1;
        }
        used
    }

    /// Whether a packet is waiting for the guest; drops stale ready entries.
    fn has_rx(&mut self) -> bool {
        if !self.ctrl.is_empty() {
            return true;
        }
        while let Some(&key) = self.ready.front() {
            if let Some(c) = self.conns.get_mut(&key) {
                if c.wants_rx(&c.io.lock()) {
                    return true;
                }
                c.queued = false;
            }
            self.ready.pop_front();
        }
        false
    }

    /// Writes the next packet through `w` (which has room for a header).
    fn write_one(&mut self, w: &mut virtio_queue::Writer<'_>) -> Result<u32, packet::PacketError> {
        let cap = w.available_bytes();
        if let Some(hdr) = self.ctrl.pop_front() {
            return packet::write_rx(w, &hdr, &[], &[]);
        }
        while let Some(key) = self.ready.pop_front() {
            let cid = self.cid;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            let io = Arc::clone(&c.io);
            let mut st = io.lock();
            let (hdr, n) = if c.pending & pending::REQUEST != 0 {
                c.pending &= !pending::REQUEST;
                (c.header(key, cid, op::REQUEST, &st), 0)
            } else if c.pending & pending::RESPONSE != 0 {
                c.pending &= !pending::RESPONSE;
                (c.header(key, cid, op::RESPONSE, &st), 0)
            } else if c.data_ready(&st) > 0 {
                let n = c.data_ready(&st).min(cap - HDR_LEN).min(MAX_PKT_PAYLOAD);
                c.pending &= !pending::CREDIT;
                let mut h = c.header(key, cid, op::RW, &st);
                h.len = n as u32;
                (h, n)
            } else if c.pending & pending::CREDIT != 0 {
                c.pending &= !pending::CREDIT;
                (c.header(key, cid, op::CREDIT_UPDATE, &st), 0)
            } else if c.pending & pending::SHUTDOWN != 0 {
                c.pending &= !pending::SHUTDOWN;
                c.shutdown_sent = true;
                let mut h = c.header(key, cid, op::SHUTDOWN, &st);
                h.flags = packet::SHUTDOWN_SEND;
                (h, 0)
            } else {
                continue;
            };
            let (a, b) = st.to_guest.as_slices();
            let na = a.len().min(n);
            let res = packet::write_rx(w, &hdr, &a[..na], &b[..n - na]);
            if res.is_ok() && n > 0 {
                st.to_guest.drain(..n);
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
            }
            let again = c.wants_rx(&st);
            drop(st);
            if n > 0 {
                c.io.wake_tasks();
            }
            if again {
                self.mark_ready(key);
            }
            return res;
        }
        // Nothing to send after all: hand the buffer back empty.
        Ok(0)
    }
}
