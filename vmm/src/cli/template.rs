//! The template `krypton run` starts containers from: a utility VM booted
//! once until its agent listens, saved, then restored copy-on-write for
//! every run. Made on first use in `$KRYPTON_CACHE/snapshots`, one per VM
//! identity (see `snapshot::identity_key`); written under a temporary
//! name and renamed, so concurrent runs never see half a template.

use std::path::{Path, PathBuf};
use std::time::Duration;

use krypton_devices::exit::GuestExit;

use super::boot::{PreparedVm, VmSpec, prepare};
use super::console::ConsoleTail;
use super::one_line;
use super::snapshot::{identity_key, template_dir};
use crate::machine::{Outcome, SerialOut};
use crate::run::Timeline;
use crate::snapshot::{Snapshot, SnapshotError};

/// Templates kept; older ones (other kernels, images, builds) are removed
/// when a new one is made.
const KEEP: usize = 4;

/// How long the guest must have been quiet after "listening" before the
/// template is saved.
const SETTLE: Duration = Duration::from_millis(300);

/// Builds the VM's spec with the given console.
pub(super) type SpecFn<'a> = dyn Fn(SerialOut) -> VmSpec<'a> + 'a;

/// The template for this VM: opened if it exists and fits, else made now.
/// `None` (after a notice) when snapshots cannot be used, so the caller
/// boots cold.
pub(super) fn template_for(
    spec: &SpecFn<'_>,
    boot_timeout: Duration,
    echo: bool,
) -> Result<Option<Snapshot>, String> {
    if cfg!(not(target_os = "linux")) {
        return Ok(None);
    }
    let probe = spec(SerialOut::Null);
    let (mem, cpus) = (probe.mem, probe.cpus);
    let key = identity_key(&probe)?;
    let dir = template_dir().ok_or("no cache directory for templates (set KRYPTON_CACHE)")?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("run-{key:016x}.snap"));
    if let Some(s) = open_fitting(&path, key, mem, cpus) {
        return Ok(Some(s));
    }
    // One maker per template: a concurrent run waits here, then finds it.
    let lock_path = dir.join(format!("run-{key:016x}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    if let Some(s) = open_fitting(&path, key, mem, cpus) {
        return Ok(Some(s));
    }
    if let Err(e) = create(spec, key, &path, boot_timeout, echo) {
        notice(&format!(
            "could not make a VM template ({e}); booting without one"
        ));
        return Ok(None);
    }
    prune(&dir, &path);
    drop(lock);
    match Snapshot::open(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            notice(&format!("{}; booting without a template", one_line(&e)));
            Ok(None)
        }
    }
}

/// The template at `path` if it exists and was made for this VM; a notice
/// when one exists but cannot be used (it is then made again).
fn open_fitting(path: &Path, key: u64, mem: u64, cpus: u8) -> Option<Snapshot> {
    match Snapshot::open(path) {
        Ok(s) => match s.check_identity(crate::hv::Backend::host_default(), key, mem, cpus) {
            Ok(()) => Some(s),
            Err(e) => {
                notice(&format!("{}; making a new template", one_line(&e)));
                None
            }
        },
        Err(SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(e) => {
            notice(&format!("{}; making a new template", one_line(&e)));
            None
        }
    }
}

fn notice(msg: &str) {
    eprintln!("krypton: notice: {msg}");
}

/// Boots the VM until its agent says it listens, then saves it to `path`.
pub(super) fn create(
    spec: &SpecFn<'_>,
    key: u64,
    path: &Path,
    boot_timeout: Duration,
    echo: bool,
) -> Result<(), String> {
    let timeline = Timeline::default();
    let console = ConsoleTail::new(echo, timeline.clone());
    let mut vm = prepare(spec(SerialOut::Writer(Box::new(console.clone()))), None)?;
    vm.machine.snapshot_on_request(path.to_path_buf(), key);
    let exit = vm.machine.exit_signal();
    let watch_console = console.clone();
    std::thread::Builder::new()
        .name("template-watch".into())
        .spawn(move || {
            loop {
                if exit.get().is_some() {
                    return;
                }
                // Once the agent listens, wait for the console to be quiet
                // a moment: the agent is then blocked in accept() and the
                // guest idle, not in the middle of a user process.
                if let Some(at) = timeline.get("agent listening")
                    && at.elapsed() >= SETTLE
                    && watch_console.last_output().elapsed() >= SETTLE
                {
                    exit.request(GuestExit::HostSnapshot);
                    return;
                }
                if watch_console.last_output().elapsed() > boot_timeout {
                    exit.request(GuestExit::HostStop);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let _vsock = vm.vsock;
    match PreparedVm::run(vm.machine, vm.start, None) {
        Ok(Outcome::Snapshotted) => Ok(()),
        Ok(other) => Err(format!(
            "the VM ended ({other:?}) before its agent listened; last console line: {}",
            console.last_line()
        )),
        Err(e) => Err(one_line(&e)),
    }
}

/// Keeps the newest [`KEEP`] templates (and `keep` always).
fn prune(dir: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("run-") && n.ends_with(".snap"))
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in all.into_iter().skip(KEEP) {
        if p != keep {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(p.with_extension("lock"));
        }
    }
}
