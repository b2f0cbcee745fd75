//! Linux passthrough backend: serves one host directory.
//!
//! Every node the guest holds is an `O_PATH` fd of a descendant of the
//! shared root, found with `openat2(parent, name, O_PATH | O_NOFOLLOW,
//! RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: `..` cannot leave the share,
//! a symlink is never followed (it is a node of its own; READLINK returns
//! its text and the guest resolves it in its own namespace), and /proc
//! magic links are refused. Every operation is a `*at` syscall relative to
//! such an fd with a single checked name; no host path is ever built from
//! guest names. Files and directories are opened for I/O by reopening the
//! node's own fd through the backend's `/proc/self/fd` directory, only for
//! regular files (OPEN) and directories (OPENDIR): device nodes and FIFOs
//! are never opened on the host.
//!
//! `read_only` is enforced here: every mutating operation gets EROFS.
//! The node and handle tables are bounded ([`MAX_INODES`] → ENFILE,
//! [`MAX_HANDLES`] → EMFILE, lowered to fit the process's fd limit). New
//! nodes get the caller's uid and gid when the VMM runs as root (the gid of
//! a setgid parent is kept).
//!
//! Limits of the model: a host process that moves a directory out of the
//! share while the guest holds it lets the guest follow it; a guest running
//! as root can create setuid files and set `security.*`/`trusted.*` xattrs
//! in the share, as with any root-squash-less passthrough. Device nodes
//! other than overlayfs whiteouts (char 0:0) cannot be created.

mod ops;
mod sys;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::abi::ROOT_ID;
use super::filesystem::{Attr, Entry, Errno, FsResult, Handle, Inode, errno};
pub(super) use super::handles::lock;
use super::handles::{HandleTable, OnNode};

/// Default bound of the node table.
pub const MAX_INODES: usize = 1 << 16;
/// Default bound of the open-handle table.
pub const MAX_HANDLES: usize = 1024;
/// File descriptors kept free for the rest of the VMM.
pub const FD_RESERVE: usize = 256;
/// Default attribute and entry cache time given to the guest.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Errors opening a share.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
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
    /// /proc/self/fd is not available.
    #[error("cannot open /proc/self/fd (is /proc mounted?)")]
    Proc(#[source] std::io::Error),
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

/// A node the guest holds.
#[derive(Debug)]
struct Node {
    fd: Arc<OwnedFd>,
    key: (u64, u64),
    refs: u64,
}

#[derive(Debug, Default)]
struct Nodes {
    map: HashMap<Inode, Node>,
    by_key: HashMap<(u64, u64), Inode>,
    next: Inode,
}

/// An open file or directory.
#[derive(Debug)]
struct OpenFile {
    inode: Inode,
    file: File,
    /// Serialises seek + getdents on directories.
    dir: Mutex<()>,
}

impl OnNode for OpenFile {
    fn inode(&self) -> Inode {
        self.inode
    }
}

/// The passthrough backend.
#[derive(Debug)]
pub struct Passthrough {
    root: Arc<OwnedFd>,
    root_key: (u64, u64),
    proc_fd: OwnedFd,
    cfg: Config,
    nodes: Mutex<Nodes>,
    handles: Mutex<HandleTable<OpenFile>>,
}

fn key(st: &libc::stat64) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Host `stat64` to FUSE attributes.
fn attr(st: &libc::stat64) -> Attr {
    let rdev = {
        let (maj, min) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        (min & 0xff) | (maj << 8) | ((min & !0xff) << 12)
    };
    Attr {
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: u64::try_from(st.st_atime).unwrap_or(0),
        mtime: u64::try_from(st.st_mtime).unwrap_or(0),
        ctime: u64::try_from(st.st_ctime).unwrap_or(0),
        atime_nsec: u32::try_from(st.st_atime_nsec).unwrap_or(0),
        mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        ctime_nsec: u32::try_from(st.st_ctime_nsec).unwrap_or(0),
        mode: st.st_mode,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev,
        blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
    }
}

/// Rejects "." and "..", which no mutating operation may name.
fn plain_name(name: &[u8]) -> FsResult<CString> {
    if name == b"." || name == b".." || name.is_empty() || name.contains(&b'/') {
        return Err(errno::EINVAL);
    }
    sys::cstr(name)
}

impl Passthrough {
    /// Shares the directory `path`. Raises the process's soft fd limit to
    /// the hard one, and lowers `cfg`'s table bounds to fit what it allows
    /// (less [`FD_RESERVE`]), so a guest cannot take every fd of the VMM.
    pub fn new(path: &Path, mut cfg: Config) -> Result<Passthrough, PassthroughError> {
        let fds = usize::try_from(sys::raise_nofile_limit()).unwrap_or(usize::MAX);
        let budget = fds.saturating_sub(FD_RESERVE).max(64);
        if cfg.max_inodes.saturating_add(cfg.max_handles) > budget {
            cfg.max_handles = cfg.max_handles.min(budget / 4);
            cfg.max_inodes = cfg.max_inodes.min(budget - cfg.max_handles);
            log::warn!(
                "virtio-fs {}: fd limit {fds}: at most {} nodes and {} open files (raise ulimit -n for more)",
                path.display(),
                cfg.max_inodes,
                cfg.max_handles
            );
        }
        use std::os::unix::fs::OpenOptionsExt;
        let open = |p: &Path, flags| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(p)
        };
        let root = open(path, libc::O_PATH | libc::O_DIRECTORY).map_err(|source| {
            PassthroughError::Open {
                path: path.to_owned(),
                source,
            }
        })?;
        let root = OwnedFd::from(root);
        let st = sys::stat_fd(root.as_fd()).map_err(|e| PassthroughError::Open {
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(e.0),
        })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(PassthroughError::NotADirectory {
                path: path.to_owned(),
            });
        }
        let proc_fd = open(Path::new("/proc/self/fd"), libc::O_PATH | libc::O_DIRECTORY)
            .map_err(PassthroughError::Proc)?;
        Ok(Passthrough {
            root: Arc::new(root),
            root_key: key(&st),
            proc_fd: OwnedFd::from(proc_fd),
            cfg,
            nodes: Mutex::new(Nodes {
                next: ROOT_ID + 1,
                ..Nodes::default()
            }),
            handles: Mutex::new(HandleTable::new(cfg.max_handles)),
        })
    }

    /// Nodes the guest holds, the root included (for tests).
    pub fn node_count(&self) -> usize {
        lock(&self.nodes).map.len() + 1
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

    /// The O_PATH fd of `inode`.
    fn node_fd(&self, inode: Inode) -> FsResult<Arc<OwnedFd>> {
        if inode == ROOT_ID {
            return Ok(Arc::clone(&self.root));
        }
        lock(&self.nodes)
            .map
            .get(&inode)
            .map(|n| Arc::clone(&n.fd))
            .ok_or(errno::ENOENT)
    }

    /// The handle `fh`, which must belong to `inode`.
    fn handle(&self, inode: Inode, fh: Handle) -> FsResult<Arc<OpenFile>> {
        lock(&self.handles).get(inode, fh)
    }

    fn add_handle(&self, inode: Inode, file: File) -> FsResult<Handle> {
        lock(&self.handles).insert(OpenFile {
            inode,
            file,
            dir: Mutex::new(()),
        })
    }

    fn handles_full(&self) -> bool {
        lock(&self.handles).is_full()
    }

    /// "/proc/self/fd/N" names for `fd` relative to `proc_fd`.
    fn proc_name(fd: BorrowedFd<'_>) -> FsResult<CString> {
        use std::os::fd::AsRawFd;
        sys::cstr(fd.as_raw_fd().to_string().as_bytes())
    }

    /// Reopens a node for I/O through /proc/self/fd.
    fn reopen(&self, fd: BorrowedFd<'_>, flags: libc::c_int) -> FsResult<File> {
        let name = Self::proc_name(fd)?;
        sys::openat(self.proc_fd.as_fd(), &name, flags).map(File::from)
    }

    /// Looks `name` up below `parent` and takes a reference on the node.
    fn do_lookup(&self, parent: Inode, name: &[u8]) -> FsResult<Entry> {
        let name = plain_name(name).map_err(|_| errno::ENOENT)?;
        let dir = self.node_fd(parent)?;
        let fd = sys::openat2(
            dir.as_fd(),
            &name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        let st = sys::stat_fd(fd.as_fd())?;
        let inode = self.insert_node(fd, key(&st))?;
        Ok(Entry {
            inode,
            generation: 0,
            attr: attr(&st),
            attr_timeout: self.cfg.timeout,
            entry_timeout: self.cfg.timeout,
        })
    }

    fn insert_node(&self, fd: OwnedFd, k: (u64, u64)) -> FsResult<Inode> {
        if k == self.root_key {
            return Ok(ROOT_ID);
        }
        let mut nodes = lock(&self.nodes);
        if let Some(&inode) = nodes.by_key.get(&k)
            && let Some(n) = nodes.map.get_mut(&inode)
        {
            n.refs = n.refs.saturating_add(1);
            return Ok(inode);
        }
        if nodes.map.len() + 1 >= self.cfg.max_inodes {
            return Err(errno::ENFILE);
        }
        let inode = nodes.next;
        nodes.next += 1;
        nodes.by_key.insert(k, inode);
        nodes.map.insert(
            inode,
            Node {
                fd: Arc::new(fd),
                key: k,
                refs: 1,
            },
        );
        Ok(inode)
    }

    fn do_forget(&self, inode: Inode, count: u64) {
        let mut nodes = lock(&self.nodes);
        let Some(n) = nodes.map.get_mut(&inode) else {
            return;
        };
        n.refs = n.refs.saturating_sub(count);
        if n.refs == 0 {
            let k = n.key;
            nodes.map.remove(&inode);
            nodes.by_key.remove(&k);
        }
    }

    fn stat_attr(&self, fd: BorrowedFd<'_>) -> FsResult<(Attr, Duration)> {
        sys::stat_fd(fd).map(|st| (attr(&st), self.cfg.timeout))
    }

    /// Gives a new node `name` in `dir` the caller's ids (root only).
    fn set_owner(&self, dir: BorrowedFd<'_>, name: &CString, uid: u32, gid: u32) -> FsResult<()> {
        if sys::geteuid() != 0 {
            return Ok(());
        }
        let parent = sys::stat_fd(dir)?;
        let gid = if parent.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            gid
        };
        sys::fchownat(dir, name, uid, gid, libc::AT_SYMLINK_NOFOLLOW)
    }

    fn file_type(fd: BorrowedFd<'_>) -> FsResult<u32> {
        sys::stat_fd(fd).map(|st| st.st_mode & libc::S_IFMT)
    }

    fn xattr_path(&self, inode: Inode) -> FsResult<(Arc<OwnedFd>, CString)> {
        let fd = self.node_fd(inode)?;
        let t = Self::file_type(fd.as_fd())?;
        if t != libc::S_IFREG && t != libc::S_IFDIR {
            return Err(errno::EOPNOTSUPP);
        }
        use std::os::fd::AsRawFd;
        let path = sys::cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        Ok((fd, path))
    }
}

/// An errno from an io::Error.
fn io_err(e: std::io::Error) -> Errno {
    sys::from_io(&e)
}

#[cfg(test)]
mod escape_tests;
#[cfg(test)]
mod tests;
