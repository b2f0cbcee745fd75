//! The backend interface of the virtio-fs device: what the FUSE server
//! asks of a host filesystem, in backend-neutral types. Errors are Linux
//! errno values (the guest sees them as such whatever the host is).

use std::time::Duration;

/// A node ID the guest holds (the root is [`super::abi::ROOT_ID`]).
pub type Inode = u64;
/// An open file or directory handle the guest holds.
pub type Handle = u64;

/// A Linux errno value: the error of every backend operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("errno {0}")]
pub struct Errno(pub i32);

/// Linux errno values the server and backends use (the same numbers on
/// every host: they are what the guest sees).
#[allow(missing_docs)]
pub mod errno {
    use super::Errno;
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const EIO: Errno = Errno(5);
    pub const EBADF: Errno = Errno(9);
    pub const ENOMEM: Errno = Errno(12);
    pub const EACCES: Errno = Errno(13);
    pub const EBUSY: Errno = Errno(16);
    pub const EEXIST: Errno = Errno(17);
    pub const EXDEV: Errno = Errno(18);
    pub const ENOTDIR: Errno = Errno(20);
    pub const EISDIR: Errno = Errno(21);
    pub const EINVAL: Errno = Errno(22);
    pub const ENFILE: Errno = Errno(23);
    pub const EMFILE: Errno = Errno(24);
    pub const EFBIG: Errno = Errno(27);
    pub const ENOSPC: Errno = Errno(28);
    pub const EROFS: Errno = Errno(30);
    pub const EMLINK: Errno = Errno(31);
    pub const ERANGE: Errno = Errno(34);
    pub const ENAMETOOLONG: Errno = Errno(36);
    pub const ENOSYS: Errno = Errno(38);
    pub const ENOTEMPTY: Errno = Errno(39);
    pub const ELOOP: Errno = Errno(40);
    pub const ENODATA: Errno = Errno(61);
    pub const EPROTO: Errno = Errno(71);
    pub const EOVERFLOW: Errno = Errno(75);
    pub const EOPNOTSUPP: Errno = Errno(95);
}

/// Result of a backend operation.
pub type FsResult<T> = Result<T, Errno>;

/// Who asks (from the request header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// Caller's uid in the guest.
    pub uid: u32,
    /// Caller's gid in the guest.
    pub gid: u32,
    /// Caller's pid in the guest.
    pub pid: u32,
}

/// File attributes as FUSE's `fuse_attr` carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atime_nsec: u32,
    pub mtime_nsec: u32,
    pub ctime_nsec: u32,
    /// Linux `st_mode` (type and permission bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// A looked-up node: the guest now holds one more reference to `inode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Node ID.
    pub inode: Inode,
    /// Generation (node IDs are not reused while the guest holds them).
    pub generation: u64,
    /// Attributes.
    pub attr: Attr,
    /// How long the guest may cache the attributes.
    pub attr_timeout: Duration,
    /// How long the guest may cache the name.
    pub entry_timeout: Duration,
}

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// The host's current time.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(u64, u32),
}

/// What SETATTR changes (None: unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The handle the change is made through, when the guest gave one.
    pub handle: Option<Handle>,
}

impl SetAttr {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Host inode number (informational).
    pub ino: u64,
    /// Offset of the entry after this one (what the next READDIR passes).
    pub offset: u64,
    /// `DT_*` type.
    pub kind: u32,
    /// Name (no NUL, no '/').
    pub name: Vec<u8>,
}

/// Filesystem statistics (`fuse_kstatfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Answer to GETXATTR and LISTXATTR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrReply {
    /// The guest asked for the size only (size 0).
    Size(u32),
    /// The value or the NUL-separated name list.
    Data(Vec<u8>),
}

/// A host filesystem served to the guest. Every method is called from the
/// device's worker thread with guest-chosen arguments: implementations must
/// treat all of them as hostile. Names are never empty and never contain
/// '/' or NUL (the server checks), but may be "." or "..".
#[allow(missing_docs)]
pub trait Filesystem: Send + Sync {
    /// The guest's INIT; called again after a reset.
    fn init(&self) -> FsResult<()> {
        Ok(())
    }
    /// The guest's DESTROY (or a reset): drop every node and handle.
    fn destroy(&self) {}
    fn lookup(&self, ctx: Context, parent: Inode, name: &[u8]) -> FsResult<Entry>;
    /// Drops `count` references; unknown nodes are ignored.
    fn forget(&self, inode: Inode, count: u64);
    fn getattr(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> FsResult<(Attr, Duration)>;
    fn setattr(&self, ctx: Context, inode: Inode, set: &SetAttr) -> FsResult<(Attr, Duration)>;
    fn readlink(&self, ctx: Context, inode: Inode) -> FsResult<Vec<u8>>;
    fn symlink(&self, ctx: Context, parent: Inode, name: &[u8], target: &[u8]) -> FsResult<Entry>;
    fn mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> FsResult<Entry>;
    fn mkdir(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry>;
    fn unlink(&self, ctx: Context, parent: Inode, name: &[u8]) -> FsResult<()>;
    fn rmdir(&self, ctx: Context, parent: Inode, name: &[u8]) -> FsResult<()>;
    fn rename(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        new_parent: Inode,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()>;
    fn link(
        &self,
        ctx: Context,
        inode: Inode,
        new_parent: Inode,
        new_name: &[u8],
    ) -> FsResult<Entry>;
    /// Opens a regular file; returns the handle and FOPEN_* flags.
    fn open(&self, ctx: Context, inode: Inode, flags: u32) -> FsResult<(Handle, u32)>;
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        flags: u32,
        umask: u32,
    ) -> FsResult<(Entry, Handle, u32)>;
    fn read(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>>;
    fn write(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32>;
    fn flush(&self, ctx: Context, inode: Inode, handle: Handle) -> FsResult<()>;
    fn fsync(&self, ctx: Context, inode: Inode, handle: Handle, datasync: bool) -> FsResult<()>;
    fn release(&self, ctx: Context, inode: Inode, handle: Handle) -> FsResult<()>;
    fn statfs(&self, ctx: Context, inode: Inode) -> FsResult<StatFs>;
    fn opendir(&self, ctx: Context, inode: Inode, flags: u32) -> FsResult<Handle>;
    /// Entries from `offset` (0: the start); at most about `size` bytes'
    /// worth are wanted, more are dropped by the server.
    fn readdir(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<DirEntry>>;
    fn releasedir(&self, ctx: Context, inode: Inode, handle: Handle) -> FsResult<()>;
    fn fsyncdir(&self, ctx: Context, inode: Inode, handle: Handle, datasync: bool) -> FsResult<()>;
    fn fallocate(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> FsResult<()>;
    fn lseek(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> FsResult<u64>;
    fn getxattr(&self, ctx: Context, inode: Inode, name: &[u8], size: u32) -> FsResult<XattrReply>;
    fn listxattr(&self, ctx: Context, inode: Inode, size: u32) -> FsResult<XattrReply>;
    fn setxattr(
        &self,
        ctx: Context,
        inode: Inode,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()>;
    fn removexattr(&self, ctx: Context, inode: Inode, name: &[u8]) -> FsResult<()>;
}
