//! How a device asks the VMM to stop the VM (debug exit, i8042 reset).

use std::sync::{Mutex, PoisonError};

/// Why the guest asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// A write of `value` to the isa-debug-exit port; the process exit
    /// status is `(value << 1) | 1`, as with QEMU.
    DebugExit(u32),
    /// The guest reset the machine (i8042 0xfe, or `reboot=k`).
    Reset,
    /// The guest kernel panicked.
    Panic,
    /// The host (not the guest) ended the VM, e.g. `krypton run` after the
    /// command's exit status arrived.
    HostStop,
    /// The host stops the VM to save it in a snapshot.
    HostSnapshot,
}

type Waker = Box<dyn Fn() + Send + Sync>;

/// Records the first exit request and wakes the VMM. Later requests are
/// ignored: the first reason wins.
#[derive(Default)]
pub struct ExitSignal {
    reason: Mutex<Option<GuestExit>>,
    waker: Mutex<Option<Waker>>,
}

impl std::fmt::Debug for ExitSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitSignal")
            .field("reason", &self.get())
            .finish_non_exhaustive()
    }
}

impl ExitSignal {
    /// A signal with no exit requested.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the function called (once) when an exit is first requested; the
    /// VMM uses it to kick every vCPU.
    pub fn set_waker(&self, waker: Waker) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }

    /// Requests an exit. Only the first request is kept.
    pub fn request(&self, exit: GuestExit) {
        {
            let mut reason = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            if reason.is_some() {
                return;
            }
            *reason = Some(exit);
        }
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            w();
        }
    }

    /// The exit requested so far, if any.
    pub fn get(&self) -> Option<GuestExit> {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn first_request_wins_and_wakes_once() {
        let s = ExitSignal::new();
        let woken = Arc::new(AtomicU32::new(0));
        let w = Arc::clone(&woken);
        s.set_waker(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(s.get(), None);
        s.request(GuestExit::DebugExit(3));
        s.request(GuestExit::Reset);
        assert_eq!(s.get(), Some(GuestExit::DebugExit(3)));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }
}
