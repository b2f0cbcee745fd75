//! Per-container cgroups: cgroup v2 when the hierarchy has the memory,
//! pids and cpu controllers, otherwise the v1 controllers (hybrid hosts).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use krypton_protocol::Limits;

const CGROUP2_MAGIC: i64 = 0x6367_7270;
const CGROUP1_MAGIC: i64 = 0x0027_e0eb;
const PARENT: &str = "krypton";

/// Which cgroup hierarchy the agent drives.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// Unified hierarchy rooted here.
    V2(PathBuf),
    /// v1 controller mounts (memory, pids, cpu); any may be missing.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// No usable hierarchy; the reason.
    None(String),
}

/// One container's cgroup directories.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}

impl Cgroups {
    /// Detects the hierarchy under `root` (normally /sys/fs/cgroup) and
    /// prepares the `krypton` parent group.
    pub fn detect(root: &Path) -> Cgroups {
        match crate::sys::fs_magic(root) {
            Some(CGROUP2_MAGIC) => match Self::setup_v2(root) {
                Ok(c) => c,
                Err(e) => Cgroups::None(format!("{e:#}")),
            },
            Some(_) => {
                let v1 = |c: &str| {
                    let p = root.join(c);
                    (crate::sys::fs_magic(&p) == Some(CGROUP1_MAGIC)).then(|| p.join(PARENT))
                };
                let (memory, pids, cpu) = (v1("memory"), v1("pids"), v1("cpu"));
                if memory.is_none() && pids.is_none() && cpu.is_none() {
                    return Cgroups::None(format!("no cgroup hierarchy at {}", root.display()));
                }
                for d in [&memory, &pids, &cpu].into_iter().flatten() {
                    if let Err(e) = fs::create_dir_all(d) {
                        return Cgroups::None(format!("create {}: {e}", d.display()));
                    }
                }
                Cgroups::V1 { memory, pids, cpu }
            }
            None => Cgroups::None(format!("{} is not mounted", root.display())),
        }
    }

    fn setup_v2(root: &Path) -> Result<Cgroups> {
        let have = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids", "cpu"] {
            if !have.split_whitespace().any(|h| h == c) {
                bail!(
                    "cgroup2 at {} lacks the {c} controller (bound to v1?)",
                    root.display()
                );
            }
        }
        let parent = root.join(PARENT);
        fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
        for dir in [root, parent.as_path()] {
            for c in ["+memory", "+pids", "+cpu"] {
                write(&dir.join("cgroup.subtree_control"), c)?;
            }
        }
        Ok(Cgroups::V2(parent))
    }

    /// Whether limits can be applied.
    pub fn usable(&self) -> bool {
        !matches!(self, Cgroups::None(_))
    }

    /// Creates a cgroup for one container and applies `limits`.
    pub fn create(&self, limits: &Limits) -> Result<Option<Cgroup>> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let cg = match self {
            Cgroups::None(why) => {
                if *limits != Limits::default() {
                    bail!("cgroup limits requested but unavailable: {why}");
                }
                return Ok(None);
            }
            Cgroups::V2(parent) => {
                let cg = v2_dir(parent, &name)?;
                cg.apply(limits)?;
                cg
            }
            Cgroups::V1 { memory, pids, cpu } => {
                let mut cg = Cgroup { dirs: Vec::new() };
                let mut mk =
                    |base: &Option<PathBuf>, what: &str, needed: bool| -> Result<Option<PathBuf>> {
                        match base {
                            // v1 migration (memory in particular) is slow:
                            // join only the controllers that carry a limit.
                            Some(_) if !needed => Ok(None),
                            Some(b) => {
                                let d = b.join(&name);
                                fs::create_dir(&d)
                                    .with_context(|| format!("create {}", d.display()))?;
                                cg.dirs.push(d.clone());
                                Ok(Some(d))
                            }
                            None if needed => {
                                bail!("{what} limit requested but no v1 {what} controller")
                            }
                            None => Ok(None),
                        }
                    };
                let m = mk(memory, "memory", limits.memory_bytes.is_some())?;
                let p = mk(pids, "pids", limits.pids.is_some())?;
                let c = mk(cpu, "cpu", limits.cpu.is_some())?;
                if let (Some(d), Some(v)) = (m, limits.memory_bytes) {
                    write(&d.join("memory.limit_in_bytes"), &v.to_string())?;
                    let _ = write(&d.join("memory.memsw.limit_in_bytes"), &v.to_string());
                }
                if let (Some(d), Some(v)) = (p, limits.pids) {
                    write(&d.join("pids.max"), &v.to_string())?;
                }
                if let (Some(d), Some((q, per))) = (c, limits.cpu) {
                    write(&d.join("cpu.cfs_period_us"), &per.to_string())?;
                    write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                cg
            }
        };
        Ok(Some(cg))
    }
}

fn v2_dir(parent: &Path, name: &str) -> Result<Cgroup> {
    let dir = parent.join(name);
    fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(Cgroup { dirs: vec![dir] })
}

impl Cgroups {
    /// An empty cgroup made ahead of time for the next container (cgroup v2
    /// only: creating one costs seconds of emulated kernel work on kvm_pvm
    /// hosts); [`Cgroup::apply`] sets its limits later.
    pub fn spare(&self) -> Option<Cgroup> {
        let Cgroups::V2(parent) = self else {
            return None;
        };
        let name = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        match v2_dir(parent, &name) {
            Ok(cg) => Some(cg),
            Err(e) => {
                log::warn!("{e:#}");
                None
            }
        }
    }
}

impl Cgroup {
    /// Writes `limits` into a cgroup v2 directory (nothing to write for
    /// none).
    pub fn apply(&self, limits: &Limits) -> Result<()> {
        let Some(dir) = self.dirs.first() else {
            return Ok(());
        };
        if let Some(m) = limits.memory_bytes {
            write(&dir.join("memory.max"), &m.to_string())?;
            let _ = write(&dir.join("memory.swap.max"), "0");
            write(&dir.join("memory.oom.group"), "1")?;
        }
        if let Some(p) = limits.pids {
            write(&dir.join("pids.max"), &p.to_string())?;
        }
        if let Some((q, p)) = limits.cpu {
            write(&dir.join("cpu.max"), &format!("{q} {p}"))?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a new process must join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Kills whatever is left and removes the directories.
    pub fn remove(self) {
        for dir in &self.dirs {
            for attempt in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                if attempt == 0 && fs::write(dir.join("cgroup.kill"), "1").is_err() {
                    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        // SAFETY: kill has no memory effects.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if dir.exists() {
                log::warn!("could not remove cgroup {}", dir.display());
            }
        }
    }
}
