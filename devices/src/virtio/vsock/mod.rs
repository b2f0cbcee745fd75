//! virtio-vsock (device type 19): stream sockets between the guest and host
//! programs.
//!
//! The device bridges guest connections to a [`VsockHost`]: Firecracker's
//! hybrid Unix-socket protocol, Windows named pipes, or in-process duplex
//! streams. A worker thread waits on the transport's notify [`Event`], which
//! the host I/O tasks also signal when host data arrives.
//!
//! Flow control is the virtio credit scheme both ways: the device advertises
//! [`CONN_BUF`] bytes per connection and acknowledges (`fwd_cnt`) only bytes
//! written to the host peer; host data is read only as fast as the guest
//! grants credit and RX buffers, so a slow reader on either side
//! backpressures the writer instead of growing a buffer.

mod conn;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};

use super::{ActivateContext, ActivateError, InterruptKind, VirtioDevice};
use crate::GuestMem;
use crate::event::Event;

pub use host::io::CONN_BUF;
pub use host::{InProcessListener, VsockHost, VsockHostError};
pub use muxer::FIRST_LOCAL_PORT;

/// Virtio device ID of vsock.
pub const DEVICE_TYPE: u32 = 19;
/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive (device to driver) queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit (driver to device) queue.
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// How often the worker looks at timeouts when nothing happens.
const TICK: Duration = Duration::from_millis(100);

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 and 2^32-1 are reserved.
    #[error("invalid guest CID {0}")]
    InvalidCid(u64),
}

#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    notify: Arc<Event>,
    thread: JoinHandle<()>,
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    host: VsockHost,
    worker: Option<Worker>,
}

impl Vsock {
    /// A device giving the guest context ID `guest_cid`, bridged to `host`.
    pub fn new(guest_cid: u64, host: VsockHost) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        Ok(Self {
            cid: guest_cid,
            host,
            worker: None,
        })
    }

    /// The host side, for in-process connections.
    pub fn host(&self) -> &VsockHost {
        &self.host
    }

    /// The guest's context ID.
    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.store(true, Ordering::Release);
            w.notify.signal();
            if w.thread.join().is_err() {
                log::error!("vsock: worker thread panicked");
            }
            self.host.set_device_event(None);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| cfg.get(at)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: ctx.queues.len(),
            });
        }
        self.stop_worker();
        let stop = Arc::new(AtomicBool::new(false));
        self.host.set_device_event(Some(Arc::clone(&ctx.notify)));
        let mux = muxer::Muxer::new(self.cid, self.host.clone());
        let notify = Arc::clone(&ctx.notify);
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || run(mux, ctx, &stop2))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(Worker {
            stop,
            notify,
            thread,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

fn run(mut mux: muxer::Muxer, mut ctx: ActivateContext, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let pass = mux.process(&ctx.mem, &mut ctx.queues);
        let mut raise = false;
        if pass.tx_used > 0 {
            raise |= needs_irq(&ctx.mem, &mut ctx.queues[TX_QUEUE]);
        }
        if pass.rx_used > 0 {
            raise |= needs_irq(&ctx.mem, &mut ctx.queues[RX_QUEUE]);
        }
        if raise {
            ctx.interrupt.trigger(InterruptKind::Queue);
        }
        if pass.tx_used == 0 && pass.rx_used == 0 {
            ctx.notify.wait_timeout(TICK);
        }
    }
}

fn needs_irq(mem: &GuestMem, q: &mut Queue) -> bool {
    q.needs_notification(mem).unwrap_or(true)
}
