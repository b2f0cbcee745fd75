//! `config.json` → what the VM and the agent need: the shares (the root,
//! bind-mount sources), the exec request's OCI settings, the VM size.
//!
//! In a VM the isolation boundary is the VM itself, so some settings are
//! accepted and not applied (documented in the README): namespaces (the
//! guest agent always gives the container its own mount, pid, uts and ipc
//! namespaces; the network namespace is the VM's), seccomp, AppArmor and
//! SELinux labels, masked and read-only paths, cgroup device rules, the
//! OOM score. What would change the workload's behaviour and cannot be
//! honoured is refused: user namespaces with ID mappings, hooks, devices,
//! unknown mount types.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use krypton_protocol::Limits;
use krypton_protocol::oci::{Bind, Capabilities, GuestMount, OciSettings, Rlimit};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::cli::devices::ShareArg;

/// Why a bundle cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json is missing or malformed.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// The parser's reason.
        reason: String,
    },
    /// A setting that cannot be honoured.
    #[error("{0}")]
    Unsupported(String),
    /// A setting with a bad value.
    #[error("{0}")]
    Invalid(String),
}

/// Share counts a plan is padded to, so that containers with a few more
/// or fewer bind mounts still restore the same template snapshot.
const SHARE_SLOTS: &[usize] = &[4, 8, 16, 32];

/// What one container needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// virtio-fs shares, the root first; padded to a slot count.
    pub shares: Vec<ShareArg>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User and group.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// `process.terminal`.
    pub terminal: bool,
    /// Container hostname.
    pub hostname: String,
    /// Guest cgroup limits.
    pub limits: Limits,
    /// VM memory in MiB when the config limits memory.
    pub vm_mem_mib: Option<u64>,
    /// The agent's settings.
    pub settings: OciSettings,
    /// Annotations, reported by `state`.
    pub annotations: HashMap<String, String>,
}

/// The virtio-fs tag of share `i`.
pub fn tag(i: usize) -> String {
    format!("krypton-v{i}")
}

/// Loads `bundle/config.json` and maps it; `pad` is an empty directory
/// that fills the unused share slots.
pub fn load(bundle: &Path, pad: &Path) -> Result<Plan, SpecError> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| SpecError::Load {
        path: path.display().to_string(),
        reason: e.to_string().replace('\n', " "),
    })?;
    plan(&spec, bundle, pad)
}

/// Parses `config.json` text and maps it (the fuzz target's entry).
pub fn plan_from_json(json: &[u8], bundle: &Path, pad: &Path) -> Result<Plan, SpecError> {
    let spec: Spec = serde_json::from_slice(json).map_err(|e| SpecError::Load {
        path: "config.json".into(),
        reason: e.to_string(),
    })?;
    plan(&spec, bundle, pad)
}

/// Maps a parsed spec (see the module docs for what is not applied).
pub fn plan(spec: &Spec, bundle: &Path, pad: &Path) -> Result<Plan, SpecError> {
    let unsupported = |s: String| Err(SpecError::Unsupported(s));
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| SpecError::Invalid("config.json has no root".into()))?;
    let root_dir = bundle.join(root.path());
    if !root_dir.is_dir() {
        return Err(SpecError::Invalid(format!(
            "root.path {} is not a directory",
            root_dir.display()
        )));
    }
    let mut shares = Shares::default();
    shares.dir(&root_dir);
    let mut settings = OciSettings {
        root_tag: tag(0),
        root_readonly: root.readonly().unwrap_or(false),
        ..OciSettings::default()
    };
    if let Some(h) = spec.hooks()
        && (h.prestart().is_some()
            || h.create_runtime().is_some()
            || h.create_container().is_some()
            || h.start_container().is_some()
            || h.poststart().is_some()
            || h.poststop().is_some())
    {
        return unsupported("OCI hooks are not supported".into());
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        map_mount(m, &mut shares, &mut settings)?;
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::Invalid("config.json has no process".into()))?;
    let pp = map_process(process, &mut settings)?;
    let mut limits = Limits::default();
    let mut vm_mem_mib = None;
    if let Some(linux) = spec.linux() {
        for ns in linux.namespaces().as_deref().unwrap_or_default() {
            if ns.typ() == LinuxNamespaceType::User {
                return unsupported(
                    "user namespaces (rootless or --userns) are not supported: run as root".into(),
                );
            }
        }
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("uid mappings are not supported".into());
        }
        if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return unsupported("linux.devices (device nodes) are not supported".into());
        }
        if let Some(res) = linux.resources() {
            if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit())
                && limit > 0
            {
                let bytes = limit as u64;
                limits.memory_bytes = Some(bytes);
                vm_mem_mib = Some((bytes >> 20).saturating_add(128).max(256));
            }
            if let Some(cpu) = res.cpu()
                && let Some(quota) = cpu.quota()
                && quota > 0
            {
                let period = cpu.period().unwrap_or(100_000);
                let q = u32::try_from(quota).map_err(|_| {
                    SpecError::Invalid(format!("cpu quota {quota} is out of range"))
                })?;
                let p = u32::try_from(period).map_err(|_| {
                    SpecError::Invalid(format!("cpu period {period} is out of range"))
                })?;
                limits.cpu = Some((q, p));
            }
            if let Some(p) = res.pids()
                && p.limit() > 0
            {
                limits.pids = Some(u32::try_from(p.limit()).unwrap_or(u32::MAX));
            }
        }
    }
    let shares = shares.finish(pad)?;
    settings
        .check()
        .map_err(|e| SpecError::Invalid(format!("config.json: {e}")))?;
    Ok(Plan {
        shares,
        argv: pp.argv,
        env: pp.env,
        cwd: pp.cwd,
        uid: pp.uid,
        gid: pp.gid,
        terminal: pp.terminal,
        hostname: spec.hostname().clone().unwrap_or_default(),
        limits,
        vm_mem_mib,
        settings,
        annotations: spec.annotations().clone().unwrap_or_default(),
    })
}

/// The process part of a config (or of `exec --process`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessPlan {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Allocate a PTY.
    pub terminal: bool,
}

/// Maps `process`; groups, rlimits, capabilities and no_new_privileges go
/// into `settings`.
pub fn map_process(
    process: &oci_spec::runtime::Process,
    settings: &mut OciSettings,
) -> Result<ProcessPlan, SpecError> {
    let argv = process.args().clone().unwrap_or_default();
    if argv.is_empty() {
        return Err(SpecError::Invalid("process.args is empty".into()));
    }
    let cwd = process.cwd().display().to_string();
    if !cwd.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "process.cwd {cwd} is not absolute"
        )));
    }
    let user = process.user();
    settings.additional_gids = user.additional_gids().clone().unwrap_or_default();
    settings.no_new_privileges = process.no_new_privileges().unwrap_or(false);
    for r in process.rlimits().as_deref().unwrap_or_default() {
        let name = r.typ().to_string();
        let resource = rlimit_number(&name)
            .ok_or_else(|| SpecError::Unsupported(format!("rlimit {name} is not supported")))?;
        settings.rlimits.push(Rlimit {
            resource,
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    if let Some(c) = process.capabilities() {
        let mask = |set: &Option<oci_spec::runtime::Capabilities>| -> Result<u64, SpecError> {
            let mut m = 0u64;
            for cap in set.iter().flatten() {
                let name = cap.to_string();
                let n = cap_number(&name).ok_or_else(|| {
                    SpecError::Unsupported(format!("capability CAP_{name} is unknown"))
                })?;
                m |= 1 << n;
            }
            Ok(m)
        };
        settings.caps = Some(Capabilities {
            bounding: mask(c.bounding())?,
            effective: mask(c.effective())?,
            permitted: mask(c.permitted())?,
            inheritable: mask(c.inheritable())?,
            ambient: mask(c.ambient())?,
        });
    }
    Ok(ProcessPlan {
        argv,
        env: process.env().clone().unwrap_or_default(),
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        terminal: process.terminal().unwrap_or(false),
    })
}

/// Host directories shared with the guest, one tag each.
#[derive(Default)]
struct Shares(Vec<PathBuf>);

impl Shares {
    fn dir(&mut self, d: &Path) -> String {
        let i = match self.0.iter().position(|x| x == d) {
            Some(i) => i,
            None => {
                self.0.push(d.to_path_buf());
                self.0.len() - 1
            }
        };
        tag(i)
    }

    fn finish(self, pad: &Path) -> Result<Vec<ShareArg>, SpecError> {
        let n = self.0.len();
        let Some(&slots) = SHARE_SLOTS.iter().find(|&&s| s >= n) else {
            return Err(SpecError::Unsupported(format!(
                "{n} shared directories (the root and bind-mount sources); at most {}",
                SHARE_SLOTS[SHARE_SLOTS.len() - 1]
            )));
        };
        let mut dirs = self.0;
        dirs.resize(slots, pad.to_path_buf());
        // All read-write: the mode is part of the template identity, so
        // read-only binds and roots are enforced by the guest's mounts.
        Ok(dirs
            .into_iter()
            .enumerate()
            .map(|(i, dir)| ShareArg {
                tag: tag(i),
                dir,
                read_only: false,
            })
            .collect())
    }
}

/// Mount options that are flags; the rest are filesystem data.
fn flag_of(opt: &str) -> Option<u64> {
    Some(match opt {
        "ro" => libc::MS_RDONLY,
        "nosuid" => libc::MS_NOSUID,
        "nodev" => libc::MS_NODEV,
        "noexec" => libc::MS_NOEXEC,
        "relatime" => libc::MS_RELATIME,
        "strictatime" => libc::MS_STRICTATIME,
        "noatime" => libc::MS_NOATIME,
        "sync" => libc::MS_SYNCHRONOUS,
        "rw" | "suid" | "dev" | "exec" | "async" | "bind" | "rbind" | "private" | "rprivate"
        | "slave" | "rslave" | "shared" | "rshared" | "unbindable" | "runbindable"
        | "tmpcopyup" | "notmpcopyup" | "copy-symlink" | "idmap" | "nocopyup" | "copyup" | "z"
        | "Z" => 0,
        _ => return None,
    })
}

/// The standard set-up the agent makes for every container.
const MADE_BY_AGENT: &[&str] = &["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"];

fn map_mount(m: &Mount, shares: &mut Shares, s: &mut OciSettings) -> Result<(), SpecError> {
    let dest = m.destination().display().to_string();
    let dest = dest.trim_end_matches('/').to_string();
    let opts = m.options().clone().unwrap_or_default();
    let typ = m.typ().clone().unwrap_or_default();
    let is_bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
    if !krypton_protocol::oci::check_target(&dest) {
        return Err(SpecError::Invalid(format!(
            "mount destination {dest:?} must be absolute, not /, without .."
        )));
    }
    if MADE_BY_AGENT.contains(&dest.as_str()) {
        // proc, sysfs, /dev (tmpfs with the standard nodes), devpts and
        // /dev/shm (a guest tmpfs even where the host binds its own).
        return Ok(());
    }
    let mut flags = 0;
    let mut data = Vec::new();
    for o in &opts {
        match flag_of(o) {
            Some(f) => flags |= f,
            None => data.push(o.clone()),
        }
    }
    if is_bind {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| SpecError::Invalid(format!("bind mount at {dest} has no source")))?;
        let meta = std::fs::metadata(src)
            .map_err(|e| SpecError::Invalid(format!("bind mount source {}: {e}", src.display())))?;
        let (tag, source) = if meta.is_dir() {
            (shares.dir(src), String::new())
        } else {
            let (Some(parent), Some(name)) = (src.parent(), src.file_name()) else {
                return Err(SpecError::Invalid(format!(
                    "bind mount source {} has no parent directory",
                    src.display()
                )));
            };
            (shares.dir(parent), name.to_string_lossy().into_owned())
        };
        s.binds.push(Bind {
            tag,
            source,
            target: dest,
            read_only: flags & libc::MS_RDONLY != 0,
        });
        return Ok(());
    }
    let fstype = match typ.as_str() {
        "tmpfs" | "mqueue" => typ.clone(),
        "cgroup" | "cgroup2" => "cgroup2".into(),
        "proc" | "sysfs" | "devpts" => typ.clone(),
        other => {
            return Err(SpecError::Unsupported(format!(
                "mount type {other:?} at {dest} is not supported (bind, tmpfs, proc, sysfs, devpts, mqueue, cgroup are)"
            )));
        }
    };
    // Filesystem options the guest takes as they are; cgroup takes none.
    let data = if fstype == "cgroup2" {
        String::new()
    } else {
        data.join(",")
    };
    s.guest_mounts.push(GuestMount {
        fstype,
        target: dest,
        data,
        flags,
    });
    Ok(())
}

const CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Capability names (`CHOWN`), in kernel number order.
pub fn cap_names() -> impl Iterator<Item = &'static str> {
    CAPS.iter().copied()
}

/// Kernel number of a capability named as oci-spec prints it (`CHOWN`).
fn cap_number(name: &str) -> Option<u32> {
    let name = name.strip_prefix("CAP_").unwrap_or(name);
    CAPS.iter().position(|c| *c == name).map(|i| i as u32)
}

const RLIMITS: &[&str] = &[
    "CPU",
    "FSIZE",
    "DATA",
    "STACK",
    "CORE",
    "RSS",
    "NPROC",
    "NOFILE",
    "MEMLOCK",
    "AS",
    "LOCKS",
    "SIGPENDING",
    "MSGQUEUE",
    "NICE",
    "RTPRIO",
    "RTTIME",
];

/// Kernel number of `RLIMIT_NOFILE` and friends.
fn rlimit_number(name: &str) -> Option<u32> {
    let name = name.strip_prefix("RLIMIT_").unwrap_or(name);
    RLIMITS.iter().position(|c| *c == name).map(|i| i as u32)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
