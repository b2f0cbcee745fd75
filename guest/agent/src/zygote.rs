//! A container init started ahead of time. In the utility VM (agent as
//! PID 1) one container init is always cloned and exec'd before it is
//! needed and waits, blocked on its config socket, for an `Exec`. The
//! template snapshot holds it too, so a container started from the
//! template skips clone and re-exec, seconds of emulated kernel work on
//! kvm_pvm hosts. An exec takes it: the agent moves it into the exec's
//! cgroup, sends the config and the stdio descriptors over the socket
//! (SCM_RIGHTS), and when that exec ends the keeper thread starts the
//! next one. While it waits, the init also mounts the default rootfs and
//! builds the container's overlay and /dev (container.rs `prestage`).
//!
//! The keeper thread clones every spare, and lives as long as the agent:
//! the container init's parent-death signal follows the thread that
//! cloned it.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

use crate::spawn::Spawned;

/// A waiting container init.
#[derive(Debug)]
pub struct Zygote {
    /// The init, with its pidfd.
    pub spawned: Spawned,
    /// Its raw wait status, from the reaper.
    pub exit_rx: Receiver<libc::c_int>,
    /// Config and descriptor channel (fd 3 in the init).
    pub config: UnixStream,
    /// Report pipe (fd 4 in the init).
    pub report: File,
    /// The cgroup it already sits in (made ahead of time), if any.
    pub cgroup: Option<crate::cgroup::Cgroup>,
}

impl Zygote {
    /// Hands the init its stdio and config, after moving it into the
    /// cgroups of `procs`. The config socket is then shut for writing, so
    /// the init reads to EOF.
    pub fn hand_over(
        &mut self,
        procs: &[std::path::PathBuf],
        stdio: [RawFd; 3],
        config: &[u8],
    ) -> Result<()> {
        for p in procs {
            std::fs::write(p, self.spawned.pid.to_string())
                .with_context(|| format!("moving the container init into {}", p.display()))?;
        }
        crate::sys::send_with_fds(self.config.as_raw_fd(), config, &stdio)
            .context("sending the container config")?;
        self.config
            .shutdown(std::net::Shutdown::Write)
            .context("closing the container config")?;
        Ok(())
    }
}

/// How long the agent waits for the first container init to get ready
/// (seconds of emulated kernel work on kvm_pvm hosts, milliseconds
/// elsewhere).
const FIRST_READY: std::time::Duration = std::time::Duration::from_secs(60);

struct Keeper {
    ready: Mutex<Option<Zygote>>,
    cgroups: crate::cgroup::Cgroups,
    /// Asks the keeper for a new spare.
    refill: SyncSender<()>,
}

static KEEPER: OnceLock<Keeper> = OnceLock::new();

/// Starts the keeper thread and clones the first spare before returning,
/// so it exists when the agent announces that it listens.
pub fn start(cgroups: crate::cgroup::Cgroups) {
    let (tx, rx) = sync_channel::<()>(1);
    if KEEPER
        .set(Keeper {
            ready: Mutex::new(None),
            cgroups,
            refill: tx,
        })
        .is_err()
    {
        return;
    }
    let (first_tx, first_rx) = sync_channel::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("zygote".into())
        .spawn(move || {
            make_spare();
            let _ = first_tx.send(());
            while rx.recv().is_ok() {
                make_spare();
            }
        });
    match spawned {
        Ok(_) => {
            // Never hold the agent back for good: a container init that
            // cannot get ready leaves execs to start their own.
            if first_rx.recv_timeout(FIRST_READY).is_err() {
                log::warn!("no container init ready after {FIRST_READY:?}; going on without");
            }
        }
        Err(e) => log::warn!("no container init kept ready: {e}"),
    }
}

fn make_spare() {
    let Some(k) = KEEPER.get() else { return };
    match spawn_one(&k.cgroups) {
        Ok(z) => {
            log::debug!("container init {} ready", z.spawned.pid);
            *k.ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(z);
        }
        Err(e) => log::warn!("cannot keep a container init ready: {e:#}"),
    }
}

fn spawn_one(cgroups: &crate::cgroup::Cgroups) -> Result<Zygote> {
    let (mine, theirs) = UnixStream::pair().context("socketpair")?;
    let (report_r, report_w) = crate::sys::pipe()?;
    let null: OwnedFd = File::open("/dev/null").context("/dev/null")?.into();
    let fd = null.as_raw_fd();
    let guard = crate::reaper::get().lock();
    let spawned = crate::spawn::spawn(
        [fd, fd, fd],
        theirs.as_raw_fd(),
        report_w.as_raw_fd(),
        &[],
        false,
        false,
    )?;
    let exit_rx = guard.register(spawned.pid);
    drop(report_w);
    // Wait until it has staged the rootfs and blocks on its config, so it
    // is asleep in the kernel when the agent says it listens.
    let mut report = report_r;
    let mut line = [0u8; 6];
    report
        .read_exact(&mut line)
        .context("the container init did not get ready")?;
    if &line != b"ready\n" {
        bail!(
            "the container init said {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    // Its cgroup too, so a container's start does not wait for one.
    let cgroup = cgroups.spare().and_then(|cg| {
        let joined = cg
            .procs_files()
            .iter()
            .try_for_each(|p| std::fs::write(p, spawned.pid.to_string()));
        match joined {
            Ok(()) => Some(cg),
            Err(e) => {
                log::warn!("cannot move the container init into its cgroup: {e}");
                cg.remove();
                None
            }
        }
    });
    Ok(Zygote {
        spawned,
        exit_rx,
        config: mine,
        report,
        cgroup,
    })
}

/// The waiting container init, if one is ready and alive. The next one is
/// made when an exec ends ([`refill`]), so cloning it never competes with
/// a container's start for the VM's CPU.
pub fn take() -> Option<Zygote> {
    let k = KEEPER.get()?;
    let z = k.ready.lock().unwrap_or_else(|e| e.into_inner()).take();
    let z = z?;
    match z.exit_rx.try_recv() {
        Err(TryRecvError::Empty) => Some(z),
        _ => {
            log::warn!("the waiting container init {} died", z.spawned.pid);
            if let Some(cg) = z.cgroup {
                cg.remove();
            }
            None
        }
    }
}

/// Asks the keeper for a new spare if none is waiting.
pub fn refill() {
    let Some(k) = KEEPER.get() else { return };
    if k.ready.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
        let _ = k.refill.try_send(());
    }
}

/// Fails unless `fds` is exactly the three stdio descriptors.
pub fn check_fds(fds: &[RawFd]) -> Result<[RawFd; 3]> {
    match fds {
        &[a, b, c] => Ok([a, b, c]),
        other => bail!("expected 3 stdio descriptors, got {}", other.len()),
    }
}
