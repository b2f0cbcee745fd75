//! A portable wake-up event for device worker threads.
//!
//! Linux has eventfd and Windows has event objects; a mutex and condition
//! variable works on both and is enough for "the guest kicked a queue".

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// An auto-reset event: `signal` sets it, a successful `wait` clears it.
#[derive(Debug, Default)]
pub struct Event {
    set: Mutex<bool>,
    cond: Condvar,
}

impl Event {
    /// A new event in the clear state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the event and wakes one waiter.
    pub fn signal(&self) {
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        *set = true;
        self.cond.notify_one();
    }

    /// Blocks until the event is set, then clears it.
    pub fn wait(&self) {
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        while !*set {
            set = self.cond.wait(set).unwrap_or_else(PoisonError::into_inner);
        }
        *set = false;
    }

    /// Like [`Event::wait`] but gives up after `timeout`. Returns whether the
    /// event was set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut set, _) = self
            .cond
            .wait_timeout_while(set, timeout, |s| !*s)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *set, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn signal_before_wait_is_not_lost() {
        let e = Event::new();
        e.signal();
        assert!(e.wait_timeout(Duration::from_millis(1)));
        assert!(!e.wait_timeout(Duration::from_millis(1)), "auto-reset");
    }

    #[test]
    fn wakes_a_waiting_thread() {
        let e = Arc::new(Event::new());
        let e2 = Arc::clone(&e);
        let t = std::thread::spawn(move || e2.wait_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        e.signal();
        assert!(t.join().expect("waiter thread"));
    }
}
