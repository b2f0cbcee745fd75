//! The packet path under fuzzing: an input is a script of guest actions
//! (TX packets in arbitrary descriptor layouts, raw descriptors, RX buffers
//! of arbitrary shapes) and host actions, run synchronously against the
//! device's engine. Used by `fuzz/fuzz_targets/fuzz_vsock.rs` and by a
//! smoke test; not part of the device's API.

use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::Muxer;
use super::packet::HDR_LEN;
use super::{MAX_CONNECTIONS, VsockHost};
use crate::GuestMem;

/// Guest CID used by the fuzzer.
pub const CID: u64 = 3;
pub(crate) const QSIZE: u16 = 64;
const MEM: u64 = 1 << 20;
const BUF_BASE: u64 = 0x1_0000;

/// A driver-side ring with free-running descriptor slots.
pub(crate) struct Ring {
    pub(crate) base: u64,
    pub(crate) next_desc: u16,
    pub(crate) avail_idx: u16,
}

impl Ring {
    fn desc_addr(&self, i: u16) -> u64 {
        self.base + 16 * u64::from(i % QSIZE)
    }

    pub(crate) fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap_or_else(|_| unreachable!("valid size"));
        let avail = self.base + 16 * u64::from(QSIZE);
        let used = self.base + 0x800;
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Writes a chain of (addr, len, flags) and makes it available.
    pub(crate) fn post(
        &mut self,
        mem: &GuestMem,
        descs: &[(u64, u32, u16)],
        raw_next: Option<u16>,
    ) {
        if descs.is_empty() {
            return;
        }
        let head = self.next_desc % QSIZE;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let id = self.next_desc % QSIZE;
            self.next_desc = self.next_desc.wrapping_add(1);
            let last = i + 1 == descs.len();
            let next = raw_next.unwrap_or(self.next_desc % QSIZE);
            let flags = if last && raw_next.is_none() {
                flags & !1
            } else {
                flags | 1
            };
            let a = self.desc_addr(id);
            let _ = mem.write_obj(addr, GuestAddress(a));
            let _ = mem.write_obj(len, GuestAddress(a + 8));
            let _ = mem.write_obj(flags, GuestAddress(a + 12));
            let _ = mem.write_obj(next, GuestAddress(a + 14));
        }
        let avail = self.base + 16 * u64::from(QSIZE);
        let _ = mem.write_obj(
            head,
            GuestAddress(avail + 4 + 2 * u64::from(self.avail_idx % QSIZE)),
        );
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(avail + 2));
    }
}

/// Reads the input front to back.
pub(crate) struct Input<'a>(pub(crate) &'a [u8]);

impl Input<'_> {
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    pub(crate) fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn host() -> VsockHost {
    static HOST: OnceLock<VsockHost> = OnceLock::new();
    HOST.get_or_init(|| VsockHost::in_process().unwrap_or_else(|e| panic!("fuzz host: {e}")))
        .clone()
}

/// Runs one input. Returns the number of chains the device consumed or used.
pub fn run(data: &[u8]) -> usize {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]) else {
        return 0;
    };
    let mut rx = Ring {
        base: 0,
        next_desc: 0,
        avail_idx: 0,
    };
    let mut tx = Ring {
        base: 0x2000,
        next_desc: 0,
        avail_idx: 0,
    };
    let ev = Ring {
        base: 0x4000,
        next_desc: 0,
        avail_idx: 0,
    };
    let mut queues = [rx.queue(), tx.queue(), ev.queue()];
    let mut mux = Muxer::new(CID, host());
    mux.set_detached(true);
    let mut input = Input(data);
    let mut buf_at = BUF_BASE;
    let mut alloc = |len: u64| {
        if buf_at + len > MEM {
            buf_at = BUF_BASE;
        }
        let a = buf_at;
        buf_at += len;
        a
    };
    let mut done = 0;
    while let Some(cmd) = input.byte() {
        match cmd % 6 {
            0 => {
                // A TX packet: header (optionally made well-addressed),
                // payload, split into descriptors at input-chosen points.
                let flags = input.byte().unwrap_or(0);
                let mut hdr = [0u8; HDR_LEN];
                let raw = input.take(HDR_LEN);
                hdr[..raw.len()].copy_from_slice(raw);
                if flags & 1 != 0 {
                    hdr[0..8].copy_from_slice(&CID.to_le_bytes());
                    hdr[8..16].copy_from_slice(&2u64.to_le_bytes());
                    hdr[28..30].copy_from_slice(&1u16.to_le_bytes());
                    hdr[30] %= 8;
                    hdr[31] = 0;
                }
                let plen = usize::from(input.u16().unwrap_or(0)) % 0x2000;
                if flags & 2 != 0 {
                    hdr[24..28].copy_from_slice(&(plen as u32).to_le_bytes());
                }
                let mut bytes = hdr.to_vec();
                bytes.extend_from_slice(input.take(plen));
                let pieces = usize::from(flags >> 4) + 1;
                let mut descs = Vec::new();
                let step = bytes.len().div_ceil(pieces).max(1);
                for chunk in bytes.chunks(step) {
                    let a = alloc(chunk.len() as u64);
                    let _ = mem.write_slice(chunk, GuestAddress(a));
                    descs.push((a, chunk.len() as u32, u16::from(flags & 4 != 0) * 2));
                }
                tx.post(&mem, &descs, None);
            }
            1 => {
                // RX buffers: count, then per buffer a split of its size.
                let n = input.byte().unwrap_or(1) % 8 + 1;
                for _ in 0..n {
                    let size = u64::from(input.u16().unwrap_or(4140)) % 0x3000;
                    let parts = u64::from(input.byte().unwrap_or(0) % 4) + 1;
                    let descs: Vec<_> = (0..parts)
                        .map(|_| (alloc(size / parts), (size / parts) as u32, 2))
                        .collect();
                    rx.post(&mem, &descs, None);
                }
            }
            2 => {
                let sel = input.byte().unwrap_or(0);
                let len = usize::from(input.byte().unwrap_or(0)) * 64;
                let d = input.take(len).to_vec();
                mux.host_step(sel, &d);
            }
            3 => {
                let port = u32::from(input.u16().unwrap_or(0));
                mux.open_detached(port);
            }
            4 => {
                let p = mux.process(&mem, &mut queues);
                done += p.tx_used + p.rx_used;
            }
            _ => {
                // A raw descriptor with input-chosen fields (loops, holes).
                let addr = u64::from(input.u16().unwrap_or(0)) << (input.byte().unwrap_or(0) % 48);
                let len = u32::from(input.u16().unwrap_or(0)) << 4;
                let flags = u16::from(input.byte().unwrap_or(0) & 7);
                let next = input.byte().map(|b| u16::from(b) % QSIZE);
                let q = if flags & 2 != 0 { &mut rx } else { &mut tx };
                q.post(&mem, &[(addr, len, flags)], next);
            }
        }
    }
    for _ in 0..2 {
        let p = mux.process(&mem, &mut queues);
        done += p.tx_used + p.rx_used;
    }
    assert!(
        mux.connections() <= MAX_CONNECTIONS,
        "connection cap exceeded"
    );
    done
}
