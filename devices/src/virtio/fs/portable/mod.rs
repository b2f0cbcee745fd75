//! Portable backend on `std::fs`: serves one host directory on hosts
//! without the Linux passthrough's `openat2` (Windows). It builds and is
//! unit-tested on Linux too; on Windows it is what `--share` uses.
//!
//! **Nodes are paths.** Every node the guest holds is a path relative to
//! the (canonicalized) share root, made only of names checked by
//! [`check_name`]: valid UTF-8, at most 255 bytes, not "." or "..", no
//! '/', '\\', NUL, ':' (alternate data streams), control characters or
//! `< > " | ? *`, no trailing '.' or ' ' (Win32 strips them), and no
//! Windows device name (CON, PRN, AUX, NUL, CONIN$, CONOUT$, COM0-9,
//! LPT0-9, also with an extension). Bad names get EINVAL, on every host.
//!
//! **Links are never followed.** Before a node's path is used, every
//! directory above it is checked with `symlink_metadata` to be a real
//! directory (not a symlink, junction or any other reparse point); a
//! symlink or reparse point is a node of its own (`S_IFLNK`) that cannot
//! be traversed, opened, truncated or linked. Files are opened without
//! following the last component (`O_NOFOLLOW` on Linux,
//! `FILE_FLAG_OPEN_REPARSE_POINT` on Windows) and refused when what was
//! opened is not a regular file. The guest cannot create links
//! (SYMLINK → EPERM; LINK only of regular files), so only a host process
//! racing the checks could slip a link in; that race is the limit of a
//! path-based backend.
//!
//! **Linux metadata.** Windows has no modes or owners, so: directories
//! are 0755, regular files 0755 (executable, so host-built test binaries
//! run, as on cifs and drvfs), symlinks 0777, all owned by uid 0 gid 0;
//! a host read-only attribute clears the write bits. CREATE, MKDIR and
//! MKNOD remember the guest's mode and the caller's uid/gid; chmod (by
//! root or the owner) and chown (by root) succeed and are remembered, in
//! an in-memory side store ([`MAX_META`] entries, then ENOSPC) keyed by
//! path: kept across renames, dropped on unlink, lost when the device is
//! reset. The host file is never changed by chmod/chown. Permission
//! checks are the host's (the VMM's rights), not the guest's modes. Times
//! come from `std::fs::Metadata` (ctime is the modification time), `nlink`
//! is 1 (2 for directories), `st_ino` is the node ID.
//!
//! **Operations.** READ/WRITE are positional on handles opened without
//! O_APPEND (the guest kernel sends the append offset). SETATTR size uses
//! `set_len`, times `File::set_times`. RENAME replaces an existing file
//! (RENAME_NOREPLACE is checked before, racily; RENAME_EXCHANGE →
//! EINVAL). LINK uses `std::fs::hard_link` inside the share (the new name
//! is a node of its own). SYMLINK → EPERM (needs a privilege on Windows);
//! READLINK returns a host symlink's text with '\\' as '/'. MKNOD makes
//! regular files only (else EPERM). FALLOCATE → EOPNOTSUPP, LSEEK →
//! ENOSYS (the guest falls back). STATFS gives fixed values ([`statfs`]).
//! Xattrs: GETXATTR → ENODATA, LISTXATTR → empty, SETXATTR/REMOVEXATTR →
//! EOPNOTSUPP. READDIR lists a snapshot taken when the guest reads from
//! offset 0; names the guest could not look up are left out.
//!
//! **Bounds and `ro`.** As the Linux backend: [`MAX_INODES`] nodes
//! (ENFILE), [`MAX_HANDLES`] open handles (EMFILE); a read-only share
//! answers EROFS to every mutating operation. On Windows, names are
//! case-insensitive, so "A" and "a" may be two nodes of one file.

mod host;
mod nodes;
mod ops;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::abi::ROOT_ID;
use super::filesystem::{Errno, FsResult, Handle, Inode, StatFs, errno};
pub(super) use super::handles::lock;
use super::handles::{HandleTable, OnNode};
pub use host::Kind;

/// Default bound of the node table (as the Linux backend).
pub const MAX_INODES: usize = 1 << 16;
/// Default bound of the open-handle table (as the Linux backend).
pub const MAX_HANDLES: usize = 1024;
/// Most remembered modes and owners.
pub const MAX_META: usize = 1 << 18;
/// Default attribute and entry cache time given to the guest.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Longest name.
pub const NAME_MAX: usize = 255;

/// Errors opening a share.
#[derive(Debug, thiserror::Error)]
pub enum PortableError {
    /// The shared directory cannot be opened.
    #[error("cannot open shared directory {}", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

/// Share settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Refuse every write with EROFS.
    pub read_only: bool,
    /// Most nodes the guest may hold (the root included).
    pub max_inodes: usize,
    /// Most files and directories the guest may hold open.
    pub max_handles: usize,
    /// Attribute and entry cache time.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            read_only: false,
            max_inodes: MAX_INODES,
            max_handles: MAX_HANDLES,
            timeout: TIMEOUT,
        }
    }
}

/// Windows device names (compared upper-cased, before any extension).
const RESERVED: [&str; 6] = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];

/// Whether `name` is a Windows device name, with or without extension.
fn is_reserved(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = base.to_ascii_uppercase();
    if RESERVED.contains(&upper.as_str()) {
        return true;
    }
    let mut chars = upper.chars();
    let prefix: String = chars.by_ref().take(3).collect();
    let rest: Vec<char> = chars.collect();
    (prefix == "COM" || prefix == "LPT")
        && rest.len() == 1
        && matches!(rest[0], '0'..='9' | '¹' | '²' | '³')
}

/// Checks one guest name (see the module docs); returns it as a str.
pub fn check_name(name: &[u8]) -> FsResult<&str> {
    if name.len() > NAME_MAX {
        return Err(errno::ENAMETOOLONG);
    }
    let s = std::str::from_utf8(name).map_err(|_| errno::EINVAL)?;
    let bad_char = |c: char| {
        c.is_control() || matches!(c, '/' | '\\' | ':' | '<' | '>' | '"' | '|' | '?' | '*')
    };
    if s.is_empty()
        || s == "."
        || s == ".."
        || s.contains(bad_char)
        || s.ends_with(['.', ' '])
        || is_reserved(s)
    {
        return Err(errno::EINVAL);
    }
    Ok(s)
}

/// Modes and owners the guest set (None: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (07777).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
}

/// A node the guest holds: its path, or None once unlinked or replaced.
#[derive(Debug)]
struct Node {
    path: Option<PathBuf>,
    refs: u64,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<Inode, Node>,
    by_path: HashMap<PathBuf, Inode>,
    meta: HashMap<PathBuf, Meta>,
    next: Inode,
}

impl State {
    /// Drops the name `rel` (unlinked or replaced): a node still held there
    /// goes stale, its remembered metadata goes.
    fn detach(&mut self, rel: &Path) {
        if let Some(inode) = self.by_path.remove(rel)
            && let Some(n) = self.nodes.get_mut(&inode)
        {
            n.path = None;
        }
        self.meta.remove(rel);
    }

    /// Moves every node and remembered entry at or below `from` to `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        let re = |p: &Path| p.strip_prefix(from).ok().map(|rest| to.join(rest));
        let nodes: Vec<(PathBuf, Inode)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, inode) in nodes {
            self.by_path.remove(&old);
            if let Some(new) = re(&old) {
                if let Some(n) = self.nodes.get_mut(&inode) {
                    n.path = Some(new.clone());
                }
                self.by_path.insert(new, inode);
            }
        }
        let metas: Vec<PathBuf> = self
            .meta
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in metas {
            if let (Some(m), Some(new)) = (self.meta.remove(&old), re(&old)) {
                self.meta.insert(new, m);
            }
        }
    }
}

/// An open file, or an open directory with its listing.
#[derive(Debug)]
struct OpenFile {
    inode: Inode,
    file: Option<std::fs::File>,
    writable: bool,
    /// The directory's entries, taken at offset 0.
    listing: Mutex<Option<Arc<Vec<super::filesystem::DirEntry>>>>,
}

impl OnNode for OpenFile {
    fn inode(&self) -> Inode {
        self.inode
    }
}

/// The portable backend.
#[derive(Debug)]
pub struct Portable {
    root: PathBuf,
    cfg: Config,
    state: Mutex<State>,
    handles: Mutex<HandleTable<OpenFile>>,
}

/// Fixed STATFS answer: free space is not reported by std.
pub fn statfs() -> StatFs {
    StatFs {
        blocks: 1 << 28,
        bfree: 1 << 27,
        bavail: 1 << 27,
        files: 1 << 24,
        ffree: 1 << 23,
        bsize: 4096,
        namelen: NAME_MAX as u32,
        frsize: 4096,
    }
}

impl Portable {
    /// Shares the directory `path` (canonicalized once, here).
    pub fn new(path: &Path, cfg: Config) -> Result<Portable, PortableError> {
        let open = |source| PortableError::Open {
            path: path.to_owned(),
            source,
        };
        let root = std::fs::canonicalize(path).map_err(open)?;
        let meta = std::fs::metadata(&root).map_err(open)?;
        if !meta.is_dir() {
            return Err(PortableError::NotADirectory {
                path: path.to_owned(),
            });
        }
        Ok(Portable {
            root,
            cfg,
            state: Mutex::new(State {
                next: ROOT_ID + 1,
                ..State::default()
            }),
            handles: Mutex::new(HandleTable::new(cfg.max_handles)),
        })
    }

    /// Nodes the guest holds, the root included (for tests).
    pub fn node_count(&self) -> usize {
        lock(&self.state).nodes.len() + 1
    }

    /// Open handles (for tests).
    pub fn handle_count(&self) -> usize {
        lock(&self.handles).len()
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// The relative path of `inode` (ENOENT if unknown or stale).
    fn rel(&self, inode: Inode) -> FsResult<PathBuf> {
        if inode == ROOT_ID {
            return Ok(PathBuf::new());
        }
        lock(&self.state)
            .nodes
            .get(&inode)
            .and_then(|n| n.path.clone())
            .ok_or(errno::ENOENT)
    }

    /// The host path of `rel`, after checking that every directory above
    /// it is a real directory (no link or reparse point on the way).
    fn host_path(&self, rel: &Path) -> FsResult<PathBuf> {
        let mut p = self.root.clone();
        let mut comps = rel.components().peekable();
        while let Some(c) = comps.next() {
            p.push(c);
            if comps.peek().is_some() && host::kind_of(&p)? != Kind::Dir {
                return Err(errno::ENOTDIR);
            }
        }
        Ok(p)
    }

    /// The relative and host paths of directory node `inode`.
    fn dir(&self, inode: Inode) -> FsResult<(PathBuf, PathBuf)> {
        let rel = self.rel(inode)?;
        let full = self.host_path(&rel)?;
        if host::kind_of(&full)? != Kind::Dir {
            return Err(errno::ENOTDIR);
        }
        Ok((rel, full))
    }

    /// `name` (checked) in directory node `parent`: relative, host paths.
    fn child(&self, parent: Inode, name: &[u8]) -> FsResult<(PathBuf, PathBuf)> {
        let name = check_name(name)?;
        let (rel, full) = self.dir(parent)?;
        Ok((rel.join(name), full.join(name)))
    }

    /// Takes a reference on the node at `rel`, adding it if new.
    fn insert_node(&self, rel: PathBuf) -> FsResult<Inode> {
        let mut st = lock(&self.state);
        if let Some(&inode) = st.by_path.get(&rel)
            && let Some(n) = st.nodes.get_mut(&inode)
        {
            n.refs = n.refs.saturating_add(1);
            return Ok(inode);
        }
        if st.nodes.len() + 1 >= self.cfg.max_inodes {
            return Err(errno::ENFILE);
        }
        let inode = st.next;
        st.next += 1;
        st.by_path.insert(rel.clone(), inode);
        st.nodes.insert(
            inode,
            Node {
                path: Some(rel),
                refs: 1,
            },
        );
        Ok(inode)
    }

    fn do_forget(&self, inode: Inode, count: u64) {
        let mut st = lock(&self.state);
        let Some(n) = st.nodes.get_mut(&inode) else {
            return;
        };
        n.refs = n.refs.saturating_sub(count);
        if n.refs == 0
            && let Some(node) = st.nodes.remove(&inode)
            && let Some(p) = node.path
            && st.by_path.get(&p) == Some(&inode)
        {
            st.by_path.remove(&p);
        }
    }

    fn meta(&self, rel: &Path) -> Meta {
        lock(&self.state).meta.get(rel).copied().unwrap_or_default()
    }

    /// Remembers `m` (merged over what is there) for `rel`.
    fn remember(&self, rel: &Path, m: Meta) -> FsResult<()> {
        let mut st = lock(&self.state);
        if !st.meta.contains_key(rel) && st.meta.len() >= MAX_META {
            return Err(errno::ENOSPC);
        }
        let e = st.meta.entry(rel.to_owned()).or_default();
        e.mode = m.mode.or(e.mode);
        e.uid = m.uid.or(e.uid);
        e.gid = m.gid.or(e.gid);
        Ok(())
    }

    /// The handle `fh`, which must belong to `inode`.
    fn handle(&self, inode: Inode, fh: Handle) -> FsResult<Arc<OpenFile>> {
        lock(&self.handles).get(inode, fh)
    }

    fn handles_full(&self) -> bool {
        lock(&self.handles).is_full()
    }

    fn add_handle(
        &self,
        inode: Inode,
        file: Option<std::fs::File>,
        writable: bool,
    ) -> FsResult<Handle> {
        lock(&self.handles).insert(OpenFile {
            inode,
            file,
            writable,
            listing: Mutex::new(None),
        })
    }
}

/// An errno from an io::Error.
fn io_err(e: std::io::Error) -> Errno {
    host::from_io(&e)
}

#[cfg(test)]
mod escape_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;
