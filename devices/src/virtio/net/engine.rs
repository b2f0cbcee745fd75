//! One pass of the device: guest TX chains to the backend, backend frames
//! into guest RX chains. Synchronous, so the worker thread, the unit tests
//! and the fuzzer all drive the same code.

use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::backend::{NetBackend, SendOutcome};
use super::chain::{self, ChainError, MIN_FRAME};
use crate::GuestMem;
use crate::warn_ratelimited;

/// The driver corrupted a queue: the device stops using it until reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the driver corrupted the queue")]
pub struct QueueBroken;

/// Chains handled per queue per pass, so one busy direction cannot starve
/// the other.
const BUDGET: usize = 256;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// TX chains returned to the guest.
    pub tx_used: usize,
    /// RX chains returned to the guest.
    pub rx_used: usize,
    /// The link state changed since the last pass.
    pub link_changed: bool,
    /// A queue has work left over (budget used up).
    pub more: bool,
}

/// The device's data path over one backend.
#[derive(Debug)]
pub struct Engine {
    backend: Box<dyn NetBackend>,
    link: Arc<AtomicBool>,
    link_seen: bool,
    /// A frame from the host waiting for an RX buffer.
    rx_pending: Option<Vec<u8>>,
    /// A frame from the guest the backend had no room for.
    tx_pending: Option<Vec<u8>>,
    rx_broken: bool,
    tx_broken: bool,
}

impl Engine {
    /// An engine over `backend`.
    pub fn new(backend: Box<dyn NetBackend>) -> Self {
        let link = backend.link();
        let link_seen = link.load(Ordering::Acquire);
        Self {
            backend,
            link,
            link_seen,
            rx_pending: None,
            tx_pending: None,
            rx_broken: false,
            tx_broken: false,
        }
    }

    /// Starts over on fresh queues (the driver reset the device): queues
    /// found broken before are usable again. Frames held either way stay.
    pub fn restart(&mut self) {
        self.rx_broken = false;
        self.tx_broken = false;
    }

    /// Tells the backend which event to signal (`None`: device inactive).
    pub fn set_wake(&mut self, wake: Option<Arc<crate::event::Event>>) {
        self.backend.set_wake(wake);
    }

    /// Gives the backend back (frames pending in the engine are dropped,
    /// as a reset device would).
    pub fn into_backend(self) -> Box<dyn NetBackend> {
        self.backend
    }

    /// Runs the TX queue, then the RX queue, once.
    pub fn process(&mut self, mem: &GuestMem, rxq: &mut Queue, txq: &mut Queue) -> Pass {
        let mut pass = Pass::default();
        let link = self.link.load(Ordering::Acquire);
        if link != self.link_seen {
            self.link_seen = link;
            pass.link_changed = true;
        }
        if !self.tx_broken {
            match self.tx(mem, txq, &mut pass) {
                Ok(more) => pass.more |= more,
                Err(QueueBroken) => self.tx_broken = true,
            }
        }
        if !self.rx_broken {
            match self.rx(mem, rxq, &mut pass) {
                Ok(more) => pass.more |= more,
                Err(QueueBroken) => self.rx_broken = true,
            }
        }
        pass
    }

    /// Returns whether work is left (budget used up).
    fn tx(&mut self, mem: &GuestMem, q: &mut Queue, pass: &mut Pass) -> Result<bool, QueueBroken> {
        for _ in 0..BUDGET {
            if let Some(frame) = self.tx_pending.take()
                && let SendOutcome::Full(frame) = self.backend.send(frame)
            {
                // The backend wakes us when it has room again.
                self.tx_pending = Some(frame);
                return Ok(false);
            }
            let Some(chain) = next_chain(mem, q)? else {
                return Ok(false);
            };
            let head = chain.head_index();
            match chain::read_tx(mem, chain) {
                Ok(frame) => self.tx_pending = Some(frame),
                Err(e) => warn_ratelimited!("virtio-net: TX chain dropped: {e}"),
            }
            used(mem, q, head, 0)?;
            pass.tx_used += 1;
        }
        Ok(true)
    }

    fn rx(&mut self, mem: &GuestMem, q: &mut Queue, pass: &mut Pass) -> Result<bool, QueueBroken> {
        for _ in 0..BUDGET {
            let Some(frame) = self.rx_pending.take().or_else(|| self.backend.recv()) else {
                return Ok(false);
            };
            if frame.len() < MIN_FRAME {
                warn_ratelimited!(
                    "virtio-net: dropping a {}-byte frame from the host",
                    frame.len()
                );
                continue;
            }
            let Some(chain) = next_chain(mem, q)? else {
                // No buffer: keep the frame; the guest kicks when it posts one.
                self.rx_pending = Some(frame);
                return Ok(false);
            };
            let head = chain.head_index();
            match chain::write_rx(mem, chain, &frame) {
                Ok(len) => {
                    used(mem, q, head, len)?;
                    pass.rx_used += 1;
                }
                Err(e @ ChainError::NoRoom { .. }) => {
                    // The buffer is fine, the frame is too big for it: keep
                    // the buffer for the next frame.
                    warn_ratelimited!("virtio-net: RX frame dropped: {e}");
                    q.go_to_previous_position();
                }
                Err(e) => {
                    warn_ratelimited!("virtio-net: RX chain returned unused: {e}");
                    used(mem, q, head, 0)?;
                    pass.rx_used += 1;
                    self.rx_pending = Some(frame);
                }
            }
        }
        Ok(true)
    }
}

/// The next available chain, arming notifications when there is none (and
/// looking again, so a chain posted meanwhile is not missed). `Err` means
/// the driver corrupted the ring: the queue is not used until reset.
fn next_chain<'m>(
    mem: &'m GuestMem,
    q: &mut Queue,
) -> Result<Option<DescriptorChain<&'m GuestMem>>, QueueBroken> {
    loop {
        check_avail(mem, q)?;
        let chain = match q.iter(mem) {
            Ok(mut it) => it.next(),
            Err(e) => {
                warn_ratelimited!("virtio-net: queue: {e}");
                return Err(QueueBroken);
            }
        };
        if chain.is_some() {
            return Ok(chain);
        }
        match q.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => return Ok(None),
            Err(e) => {
                warn_ratelimited!("virtio-net: enabling notifications: {e}");
                return Err(QueueBroken);
            }
        }
    }
}

/// A driver that moves avail.idx more than a ring ahead is broken.
fn check_avail(mem: &GuestMem, q: &Queue) -> Result<(), QueueBroken> {
    match q.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) if (idx - Wrapping(q.next_avail())).0 <= q.size() => Ok(()),
        Ok(idx) => {
            warn_ratelimited!(
                "virtio-net: avail idx {} is more than {} ahead of {}",
                idx.0,
                q.size(),
                q.next_avail()
            );
            Err(QueueBroken)
        }
        Err(e) => {
            warn_ratelimited!("virtio-net: reading avail idx: {e}");
            Err(QueueBroken)
        }
    }
}

fn used(mem: &GuestMem, q: &mut Queue, head: u16, len: u32) -> Result<(), QueueBroken> {
    q.add_used(mem, head, len).map_err(|e| {
        warn_ratelimited!("virtio-net: add_used: {e}");
        QueueBroken
    })
}
