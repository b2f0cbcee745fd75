//! Containers from OCI bundles (`krypton create`): the root is a virtio-fs
//! share of the bundle's `root.path`, bind mounts come from shares (a file
//! from its parent directory's share), guest filesystems (tmpfs, mqueue,
//! cgroup2) are made here; the process gets supplementary groups,
//! rlimits, capabilities and no_new_privs. `join` runs a process in a
//! running container's namespaces (`krypton exec`).

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use krypton_protocol::oci::{Capabilities, OciSettings, Rlimit};

use crate::rootfs::mkdir;
use crate::sys::{check, mount};

/// Where shares holding bind sources are mounted, under the stage tmpfs.
const SHARES: &str = "shares";

/// Targets the standard set-up already makes (rootfs.rs `populate`).
const MADE: &[&str] = &["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"];

/// Builds the container root from `o` at `STAGE/root`, ready to pivot.
pub fn stage(o: &OciSettings) -> Result<()> {
    let stage = crate::rootfs::stage_tmpfs()?;
    let root = stage.join("root");
    mkdir(&root)?;
    mount(&o.root_tag, &root, "virtiofs", libc::MS_NODEV, "")
        .with_context(|| format!("root share {}", o.root_tag))?;
    crate::rootfs::populate(&root, false)?;
    for m in &o.guest_mounts {
        if MADE.contains(&m.target.trim_end_matches('/')) {
            continue;
        }
        let target = inside(&root, &m.target);
        mkdir(&target)?;
        let fstype = m.fstype.as_str();
        let r = mount(fstype, &target, fstype, m.flags as libc::c_ulong, &m.data);
        match (r, fstype) {
            (Ok(()), _) => {}
            // Optional kernel features: the container runs without them.
            (Err(e), "mqueue" | "cgroup2") => log::warn!("{e:#} (skipped)"),
            (Err(e), _) => return Err(e),
        }
    }
    let mut mounted = HashSet::new();
    for b in &o.binds {
        let share = stage.join(SHARES).join(&b.tag);
        if mounted.insert(b.tag.clone()) {
            mkdir(&share)?;
            mount(&b.tag, &share, "virtiofs", libc::MS_NODEV, "")
                .with_context(|| format!("share {}", b.tag))?;
        }
        let src = if b.source.is_empty() {
            share.clone()
        } else {
            share.join(&b.source)
        };
        let target = inside(&root, &b.target);
        let meta = fs::metadata(&src).with_context(|| format!("bind source {}", b.source))?;
        if meta.is_dir() {
            mkdir(&target)?;
        } else if !target.exists() {
            if let Some(parent) = target.parent() {
                mkdir(parent)?;
            }
            File::create(&target).with_context(|| format!("create {}", target.display()))?;
        }
        let src_s = src.to_string_lossy();
        mount(&src_s, &target, "", libc::MS_BIND | libc::MS_REC, "")?;
        if b.read_only {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            mount("", &target, "", flags, "")?;
        }
    }
    if o.root_readonly {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NODEV;
        mount("", &root, "", flags, "").context("read-only root")?;
    }
    Ok(())
}

/// `target` (absolute, checked to have no `..`) under `root`.
fn inside(root: &Path, target: &str) -> PathBuf {
    root.join(target.trim_start_matches('/'))
}

/// Enters the mount, uts, ipc and pid namespaces of the container whose
/// init has agent-side pid `pid`; children forked afterwards are in its
/// pid namespace, and the root is its root.
pub fn join(pid: u32) -> Result<()> {
    for ns in ["ipc", "uts", "pid", "mnt"] {
        let path = format!("/proc/{pid}/ns/{ns}");
        let f = File::open(&path).with_context(|| format!("container {pid} is gone ({path})"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a namespace fd we own.
        check(unsafe { libc::setns(f.as_raw_fd(), 0) }).with_context(|| format!("setns {ns}"))?;
    }
    std::env::set_current_dir("/").context("chdir /")?;
    Ok(())
}

/// What the forked workload applies, prepared before the fork.
#[derive(Debug, Default)]
pub struct Privileges {
    rlimits: Vec<Rlimit>,
    caps: Option<Capabilities>,
    last_cap: u32,
    no_new_privileges: bool,
}

impl Privileges {
    /// From the request's settings (none: nothing changes).
    pub fn new(o: Option<&OciSettings>) -> Privileges {
        let Some(o) = o else {
            return Privileges::default();
        };
        let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        Privileges {
            rlimits: o.rlimits.clone(),
            caps: o.caps,
            last_cap,
            no_new_privileges: o.no_new_privileges,
        }
    }

    /// Before the user switch: rlimits, the bounding set, keep caps
    /// across setuid.
    pub fn before_setuid(&self) -> Result<(), String> {
        for r in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            // SAFETY: lim is a valid rlimit.
            if unsafe { libc::setrlimit(r.resource as _, &lim) } < 0 {
                return Err(format!("setrlimit {}: {}", r.resource, last_err()));
            }
        }
        if let Some(c) = &self.caps {
            for cap in 0..=self.last_cap.min(63) {
                if c.bounding & (1 << cap) == 0 {
                    // SAFETY: prctl with integer arguments.
                    if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
                        return Err(format!("drop capability {cap}: {}", last_err()));
                    }
                }
            }
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        }
        Ok(())
    }

    /// After the user switch: the capability sets, ambient caps,
    /// no_new_privs.
    pub fn after_setuid(&self) -> Result<(), String> {
        if let Some(c) = &self.caps {
            capset(c)?;
            for cap in 0..=self.last_cap.min(63) {
                if c.ambient & (1 << cap) != 0 {
                    let (raise, cap) = (
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                    );
                    // SAFETY: prctl with integer arguments.
                    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, raise, cap, 0, 0) } < 0 {
                        return Err(format!("ambient capability {cap}: {}", last_err()));
                    }
                }
            }
        }
        if self.no_new_privileges {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
                return Err(format!("no_new_privs: {}", last_err()));
            }
        }
        Ok(())
    }
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `capset(2)` with version 3 (64-bit sets).
fn capset(c: &Capabilities) -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
    let data = [false, true].map(|hi| Data {
        effective: half(c.effective, hi),
        permitted: half(c.permitted, hi),
        inheritable: half(c.inheritable, hi),
    });
    // SAFETY: header and two data structs as capset(2) v3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
    if r < 0 {
        return Err(format!("capset: {}", last_err()));
    }
    Ok(())
}
