//! The single `waitpid(-1)` loop: reaps every child of the agent (and, as
//! PID 1, every orphan in the VM) and hands statuses to whoever registered
//! the pid.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Pid → status channel.
#[derive(Debug, Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<libc::pid_t, Sender<libc::c_int>>>,
    wake: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The process-wide reaper; starts its thread on first use.
pub fn get() -> &'static Reaper {
    let mut started = false;
    let r = REAPER.get_or_init(|| {
        started = true;
        Reaper::default()
    });
    if started {
        let spawn = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| r.run());
        if let Err(e) = spawn {
            log::error!("cannot start reaper thread: {e}");
        }
    }
    r
}

/// Held while spawning: the reaper cannot look a pid up before it is
/// registered, so a child that exits at once is not lost.
#[derive(Debug)]
pub struct SpawnGuard<'a> {
    reaper: &'a Reaper,
    map: MutexGuard<'a, HashMap<libc::pid_t, Sender<libc::c_int>>>,
}

impl SpawnGuard<'_> {
    /// Registers `pid`; its raw wait status arrives on the receiver.
    pub fn register(mut self, pid: libc::pid_t) -> Receiver<libc::c_int> {
        let (tx, rx) = channel();
        self.map.insert(pid, tx);
        drop(self.map);
        self.reaper.wake.notify_all();
        rx
    }
}

impl Reaper {
    /// Locks the registry for a spawn.
    pub fn lock(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            reaper: self,
            map: self.waiting.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn run(&self) {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
            if pid > 0 {
                let mut map = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                match map.remove(&pid) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => log::debug!("reaped orphan {pid} (status {status:#x})"),
                }
                continue;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: nothing to wait for; sleep until a spawn or timeout
            // (as PID 1, orphans may be reparented to us at any time).
            let map = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if !map.is_empty() {
                // A child was registered after waitpid gave up: retry.
                continue;
            }
            let _ = self.wake.wait_timeout(map, Duration::from_millis(500));
        }
    }
}
