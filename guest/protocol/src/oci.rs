//! Container settings from an OCI bundle (`krypton create`), carried in
//! [`crate::ExecRequest::oci`].

use crate::{MAX_MOUNTS, MAX_TAG, ProtocolError};

/// Most supplementary groups.
pub const MAX_GROUPS: usize = 64;
/// Most bind mounts (each served from a share).
pub const MAX_BINDS: usize = 2 * MAX_MOUNTS;
/// Most guest-made mounts (tmpfs, mqueue, ...).
pub const MAX_GUEST_MOUNTS: usize = 64;
/// Most rlimits (Linux has 16 resources).
pub const MAX_RLIMITS: usize = 16;
/// Filesystem types the agent makes in the guest for a guest mount.
pub const GUEST_FSTYPES: &[&str] = &["tmpfs", "mqueue", "cgroup2", "proc", "sysfs", "devpts"];

/// What an OCI bundle adds to an exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OciSettings {
    /// virtio-fs tag of the share holding the container's root (replaces
    /// `rootfs` and `image`); empty with `join`.
    pub root_tag: String,
    /// Remount the root read-only once its mount points exist.
    pub root_readonly: bool,
    /// Supplementary group ids of the process.
    pub additional_gids: Vec<u32>,
    /// Files and directories from shares bound into the container.
    pub binds: Vec<Bind>,
    /// Filesystems made in the guest (tmpfs, mqueue, cgroup2, ...).
    pub guest_mounts: Vec<GuestMount>,
    /// `setrlimit` calls before the exec.
    pub rlimits: Vec<Rlimit>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// Capability sets; `None` keeps root's full set.
    pub caps: Option<Capabilities>,
    /// Agent-side pid of a running container whose namespaces and root
    /// this process joins (`krypton exec`); 0: a new container.
    pub join: u32,
}

/// A path in a share bound at a target in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bind {
    /// The share's tag.
    pub tag: String,
    /// Relative path inside the share (empty: the share itself).
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Read-only bind.
    pub read_only: bool,
}

/// A filesystem made by the guest kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestMount {
    /// One of [`GUEST_FSTYPES`].
    pub fstype: String,
    /// Absolute path in the container.
    pub target: String,
    /// Filesystem options (`mode=755,size=65536k`).
    pub data: String,
    /// Mount flags as `mount(2)` takes them (MS_RDONLY, MS_NOSUID, ...).
    pub flags: u64,
}

/// One resource limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*` number (below 16).
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Capability sets as bit masks (bit N is capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

/// An absolute container path without `..` components, not `/`.
pub fn check_target(t: &str) -> bool {
    t.starts_with('/') && t != "/" && !t.contains('\0') && !t.split('/').any(|c| c == "..")
}

impl OciSettings {
    /// Checks counts, tags, paths and filesystem types.
    pub fn check(&self) -> Result<(), ProtocolError> {
        let bad = |field: &'static str, value: usize| ProtocolError::OutOfBounds {
            field,
            value: value as u64,
        };
        let tag_ok = |t: &str| !t.is_empty() && t.len() <= MAX_TAG;
        if self.root_tag.len() > MAX_TAG || (self.root_tag.is_empty() && self.join == 0) {
            return Err(bad("root tag", self.root_tag.len()));
        }
        if self.additional_gids.len() > MAX_GROUPS {
            return Err(bad("groups", self.additional_gids.len()));
        }
        if self.binds.len() > MAX_BINDS {
            return Err(bad("binds", self.binds.len()));
        }
        for b in &self.binds {
            let src_ok = !b.source.starts_with('/') && !b.source.split('/').any(|c| c == "..");
            if !tag_ok(&b.tag) || !src_ok || !check_target(&b.target) {
                return Err(bad("bind", b.target.len()));
            }
        }
        if self.guest_mounts.len() > MAX_GUEST_MOUNTS {
            return Err(bad("guest mounts", self.guest_mounts.len()));
        }
        for m in &self.guest_mounts {
            if !GUEST_FSTYPES.contains(&m.fstype.as_str()) || !check_target(&m.target) {
                return Err(bad("guest mount", m.target.len()));
            }
        }
        if self.rlimits.len() > MAX_RLIMITS {
            return Err(bad("rlimits", self.rlimits.len()));
        }
        if let Some(r) = self.rlimits.iter().find(|r| r.resource >= 16) {
            return Err(bad("rlimit resource", r.resource as usize));
        }
        Ok(())
    }
}
