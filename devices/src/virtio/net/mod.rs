//! virtio-net (device type 1) over a user-mode network backend.
//!
//! Queue 0 is RX, queue 1 is TX; no control queue, one queue pair. The
//! configuration space holds the MAC (VIRTIO_NET_F_MAC), the link status
//! (VIRTIO_NET_F_STATUS: up while the backend is connected) and the MTU
//! (VIRTIO_NET_F_MTU). Headers are `virtio_net_hdr_v1` (12 bytes).
//!
//! No checksum or segmentation offloads are offered: the stream backends
//! (passt, gvproxy) carry plain Ethernet frames, so offloads would need the
//! VMM to finish checksums and segment on their behalf. Nor MRG_RXBUF: each
//! RX chain must hold a whole frame (Linux posts big buffers when the MTU
//! is above 1500); frames that do not fit are dropped, logged rate-limited.
//!
//! A worker thread runs the [`engine`]: it wakes on the transport's notify
//! [`Event`], which the backend also signals when a frame arrives, room
//! frees up or the link changes.

pub mod backend;
pub mod chain;
pub mod engine;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};

use super::{ActivateContext, ActivateError, InterruptKind, VirtioDevice};
use crate::GuestMem;
use crate::event::Event;
pub use backend::{NetBackend, StreamBackend};
use engine::Engine;

/// Virtio device ID of a network device.
pub const NET_DEVICE_ID: u32 = 1;
/// Size of each queue. Linux fills the whole RX ring; with a 65520-byte
/// MTU each RX buffer is 17 pages (one ring slot, through an indirect
/// table), so 128 buffers already pin about 8.5 MiB of guest RAM.
pub const QUEUE_SIZE: u16 = 128;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// The guest MTU passt uses by default.
pub const PASST_MTU: u16 = 65520;
/// The usual Ethernet MTU (gvproxy's default).
pub const ETHERNET_MTU: u16 = 1500;
/// Safety net: the worker looks at the backend this often when idle.
const TICK: Duration = Duration::from_millis(100);
/// virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    notify: Arc<Event>,
    thread: JoinHandle<Engine>,
}

/// A virtio-net device.
#[derive(Debug)]
pub struct Net {
    mac: [u8; 6],
    mtu: u16,
    link: Arc<AtomicBool>,
    /// The data path; taken by the worker while the device is active.
    engine: Option<Engine>,
    worker: Option<Worker>,
}

impl Net {
    /// A device with address `mac` and MTU `mtu` (68..) over `backend`.
    pub fn new(mac: [u8; 6], mtu: u16, backend: Box<dyn NetBackend>) -> Net {
        Net {
            mac,
            mtu: mtu.max(68),
            link: backend.link(),
            engine: Some(Engine::new(backend)),
            worker: None,
        }
    }

    /// A locally administered unicast MAC derived from `seed` (52:54:00 is
    /// QEMU's prefix; the rest comes from the seed).
    pub fn mac_from_seed(seed: u64) -> [u8; 6] {
        let b = seed.to_le_bytes();
        [0x52, 0x54, 0x00, b[0] ^ b[3], b[1] ^ b[4], b[2] ^ b[5]]
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.link.load(Ordering::Acquire) {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.store(true, Ordering::Release);
            w.notify.signal();
            match w.thread.join() {
                Ok(mut engine) => {
                    engine.set_wake(None);
                    self.engine = Some(engine);
                }
                Err(_) => log::error!("virtio-net: worker thread panicked; network is gone"),
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        NET_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn device_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MTU)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|a| cfg.get(a)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_worker();
        let got = ctx.queues.len();
        let Ok([rxq, txq]) = <[Queue; 2]>::try_from(ctx.queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let Some(mut engine) = self.engine.take() else {
            return Err(ActivateError::Worker(std::io::Error::other(
                "the network backend was lost",
            )));
        };
        engine.restart();
        engine.set_wake(Some(Arc::clone(&ctx.notify)));
        let stop = Arc::new(AtomicBool::new(false));
        let run = Run {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            notify: Arc::clone(&ctx.notify),
            rxq,
            txq,
        };
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || run.run(engine, &stop2))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(Worker {
            stop,
            notify: ctx.notify,
            thread,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// What the worker thread owns.
struct Run {
    mem: GuestMem,
    interrupt: Arc<dyn super::VirtioInterrupt>,
    notify: Arc<Event>,
    rxq: Queue,
    txq: Queue,
}

impl Run {
    fn run(mut self, mut engine: Engine, stop: &AtomicBool) -> Engine {
        while !stop.load(Ordering::Acquire) {
            let pass = engine.process(&self.mem, &mut self.rxq, &mut self.txq);
            if pass.link_changed {
                self.interrupt.trigger(InterruptKind::Config);
            }
            let mut raise = false;
            if pass.tx_used > 0 {
                raise |= needs_irq(&self.mem, &mut self.txq);
            }
            if pass.rx_used > 0 {
                raise |= needs_irq(&self.mem, &mut self.rxq);
            }
            if raise {
                self.interrupt.trigger(InterruptKind::Queue);
            }
            if !pass.more {
                self.notify.wait_timeout(TICK);
            }
        }
        engine
    }
}

fn needs_irq(mem: &GuestMem, q: &mut Queue) -> bool {
    q.needs_notification(mem).unwrap_or(true)
}
