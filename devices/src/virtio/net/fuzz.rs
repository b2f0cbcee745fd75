//! The frame path under fuzzing, and an in-memory backend for tests. An
//! input is a script: guest TX chains in arbitrary descriptor layouts, raw
//! descriptors, RX buffers of arbitrary shapes, host stream bytes run
//! through the [`FrameDecoder`], backend full/link toggles, and passes of
//! the [`Engine`]. Used by `fuzz/fuzz_targets/fuzz_net.rs` and a smoke
//! test; not part of the device's API.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::{NetBackend, SendOutcome};
use super::chain::HDR_LEN;
use super::engine::Engine;
use super::frame::{FrameDecoder, MAX_FRAME};
use crate::event::Event;
use crate::virtio::vsock::fuzz::{Input, QSIZE, Ring};

/// Frames held each way by a [`MemBackend`].
pub const MEM_BACKEND_FRAMES: usize = 64;

/// Both directions of a [`MemBackend`], shared with the test.
#[derive(Debug, Default)]
pub struct MemQueues {
    /// Frames the host will deliver to the guest.
    pub to_guest: VecDeque<Vec<u8>>,
    /// Frames the guest sent.
    pub from_guest: VecDeque<Vec<u8>>,
    /// Refuse frames from the guest (as a full backend does).
    pub full: bool,
}

/// A backend whose "host" is a pair of in-memory queues.
#[derive(Debug, Clone)]
pub struct MemBackend {
    /// The queues.
    pub q: Arc<Mutex<MemQueues>>,
    /// Link state.
    pub link: Arc<AtomicBool>,
    wake: Arc<Mutex<Option<Arc<Event>>>>,
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemBackend {
    /// Link up, queues empty.
    pub fn new() -> Self {
        Self {
            q: Arc::default(),
            link: Arc::new(AtomicBool::new(true)),
            wake: Arc::default(),
        }
    }

    /// The queues, locked.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, MemQueues> {
        self.q.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signals the device as a real backend does after a change.
    pub fn wake(&self) {
        let w = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ev) = w.as_ref() {
            ev.signal();
        }
    }
}

impl NetBackend for MemBackend {
    fn send(&mut self, frame: Vec<u8>) -> SendOutcome {
        let mut q = self.lock();
        if q.full {
            return SendOutcome::Full(frame);
        }
        if q.from_guest.len() >= MEM_BACKEND_FRAMES {
            q.from_guest.pop_front();
        }
        q.from_guest.push_back(frame);
        SendOutcome::Taken
    }

    fn recv(&mut self) -> Option<Vec<u8>> {
        self.lock().to_guest.pop_front()
    }

    fn link(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.link)
    }

    fn set_wake(&mut self, wake: Option<Arc<Event>>) {
        *self.wake.lock().unwrap_or_else(PoisonError::into_inner) = wake;
    }
}

const MEM: u64 = 1 << 20;
const BUF_BASE: u64 = 0x1_0000;

/// Runs one input. Returns the number of chains the device used.
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
    let (mut rxq, mut txq) = (rx.queue(), tx.queue());
    let backend = MemBackend::new();
    let mut engine = Engine::new(Box::new(backend.clone()));
    let mut dec = FrameDecoder::new();
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
                // A TX chain: header, frame, split into descriptors.
                let flags = input.byte().unwrap_or(0);
                let len = usize::from(input.u16().unwrap_or(0)) << (flags & 1);
                let mut bytes = vec![0u8; len.min(MAX_FRAME + HDR_LEN + 16)];
                let raw = input.take(bytes.len());
                bytes[..raw.len()].copy_from_slice(raw);
                if flags & 2 != 0 && bytes.len() >= 2 {
                    bytes[0] = 0;
                    bytes[1] = 0;
                }
                let pieces = usize::from(flags >> 4) + 1;
                let step = bytes.len().div_ceil(pieces).max(1);
                let descs: Vec<_> = bytes
                    .chunks(step)
                    .map(|c| {
                        let a = alloc(c.len() as u64);
                        let _ = mem.write_slice(c, GuestAddress(a));
                        (a, c.len() as u32, u16::from(flags & 4 != 0) * 2)
                    })
                    .collect();
                tx.post(&mem, &descs, None);
            }
            1 => {
                let n = input.byte().unwrap_or(1) % 8 + 1;
                for _ in 0..n {
                    let size = u64::from(input.u16().unwrap_or(1526)) << 1;
                    let parts = u64::from(input.byte().unwrap_or(0) % 20) + 1;
                    let descs: Vec<_> = (0..parts)
                        .map(|_| (alloc(size / parts), (size / parts) as u32, 2))
                        .collect();
                    rx.post(&mem, &descs, None);
                }
            }
            2 => {
                // Host stream bytes; a framing error resets the "connection".
                let len = usize::from(input.u16().unwrap_or(0));
                let mut bytes = input.take(len);
                while !bytes.is_empty() {
                    match dec.decode(&mut bytes) {
                        Ok(Some(f)) => {
                            let mut q = backend.lock();
                            if q.to_guest.len() < MEM_BACKEND_FRAMES {
                                q.to_guest.push_back(f);
                            }
                        }
                        Ok(None) => {}
                        Err(_) => {
                            dec = FrameDecoder::new();
                            break;
                        }
                    }
                }
            }
            3 => {
                let p = engine.process(&mem, &mut rxq, &mut txq);
                done += p.tx_used + p.rx_used;
            }
            4 => {
                let b = input.byte().unwrap_or(0);
                backend.lock().full = b & 1 != 0;
                backend.link.store(b & 2 != 0, Ordering::Release);
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
    backend.lock().full = false;
    for _ in 0..2 {
        let p = engine.process(&mem, &mut rxq, &mut txq);
        done += p.tx_used + p.rx_used;
    }
    let q = backend.lock();
    assert!(
        q.from_guest
            .iter()
            .all(|f| (super::chain::MIN_FRAME..=MAX_FRAME).contains(&f.len())),
        "only well-sized frames reach the host"
    );
    done
}
