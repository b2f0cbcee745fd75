//! What every simple virtio device's worker does: a thread that waits on the
//! transport's notify [`Event`], drains a queue and interrupts the driver as
//! EVENT_IDX allows.

use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{InterruptKind, VirtioInterrupt};
use crate::GuestMem;
use crate::event::Event;
use crate::warn_ratelimited;

/// A device thread: runs `body` once, then again after every notify, until
/// stopped. Stopping (or dropping) joins the thread.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    notify: Arc<Event>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts thread `name` running `body` on every notification.
    pub fn spawn(
        name: &str,
        notify: Arc<Event>,
        mut body: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, notify2) = (Arc::clone(&stop), Arc::clone(&notify));
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    body();
                    notify2.wait();
                }
            })?;
        Ok(Worker {
            stop,
            notify,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.notify.signal();
        if let Some(Err(_)) = self.handle.take().map(JoinHandle::join) {
            log::error!("virtio worker thread panicked");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the worker of a one-queue device: after every notify it drains
/// the queue with `handle` (chain in, bytes written out), and stops using a
/// queue the driver corrupted until the device is reset.
pub fn spawn_single_queue<F>(
    name: &str,
    ctx: super::ActivateContext,
    mut handle: F,
) -> Result<Worker, super::ActivateError>
where
    F: FnMut(&GuestMem, DescriptorChain<&GuestMem>) -> u32 + Send + 'static,
{
    let super::ActivateContext {
        mem,
        interrupt,
        queues,
        notify,
        ..
    } = ctx;
    let got = queues.len();
    let Ok([mut queue]) = <[_; 1]>::try_from(queues) else {
        return Err(super::ActivateError::QueueCount { expected: 1, got });
    };
    let mut broken = false;
    let body = move || {
        if !broken {
            let state = drain_queue(&mut queue, &mem, interrupt.as_ref(), |chain| {
                handle(&mem, chain)
            });
            broken = state == QueueState::Broken;
        }
    };
    Worker::spawn(name, notify, body).map_err(super::ActivateError::Worker)
}

/// Outcome of [`drain_queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// Every available chain was processed.
    Idle,
    /// The driver corrupted the ring; the device must stop using it until
    /// reset.
    Broken,
}

/// Processes every available chain of `queue` with `handle` (which returns
/// the number of bytes it wrote to the chain), puts it in the used ring and
/// interrupts the driver when EVENT_IDX (or its absence) says so.
pub fn drain_queue<F>(
    queue: &mut Queue,
    mem: &GuestMem,
    interrupt: &dyn VirtioInterrupt,
    mut handle: F,
) -> QueueState
where
    F: FnMut(DescriptorChain<&GuestMem>) -> u32,
{
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            warn_ratelimited!("virtio queue: disabling notifications: {e}");
            return QueueState::Broken;
        }
        // A driver that moves avail.idx more than a ring ahead is broken;
        // virtio-queue would yield nothing and we would spin forever.
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) if (idx - Wrapping(queue.next_avail())).0 <= queue.size() => {}
            Ok(idx) => {
                warn_ratelimited!(
                    "virtio queue: avail idx {} is more than {} ahead of {}",
                    idx.0,
                    queue.size(),
                    queue.next_avail()
                );
                return QueueState::Broken;
            }
            Err(e) => {
                warn_ratelimited!("virtio queue: reading avail idx: {e}");
                return QueueState::Broken;
            }
        }
        let mut used_any = false;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    warn_ratelimited!("virtio queue: {e}");
                    return QueueState::Broken;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = handle(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                warn_ratelimited!("virtio queue: add_used: {e}");
                return QueueState::Broken;
            }
            used_any = true;
        }
        if used_any && queue.needs_notification(mem).unwrap_or(true) {
            interrupt.trigger(InterruptKind::Queue);
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => return QueueState::Idle,
            Err(e) => {
                warn_ratelimited!("virtio queue: enabling notifications: {e}");
                return QueueState::Broken;
            }
        }
    }
}
