//! FUSE wire format (kernel protocol 7.31, the subset a Linux virtiofs
//! client uses), little-endian as on every virtio-fs transport.
//!
//! Only facts from the Linux `include/uapi/linux/fuse.h` ABI are used; the
//! code is our own. Parsing goes through [`Reader`], which never reads past
//! the buffer it was given.

/// Protocol major version.
pub const KERNEL_VERSION: u32 = 7;
/// Protocol minor version we speak.
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// Node ID of the root directory.
pub const ROOT_ID: u64 = 1;

/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// Size of `fuse_attr`.
pub const ATTR_LEN: usize = 88;
/// Size of `fuse_entry_out`.
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// Size of `fuse_attr_out`.
pub const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
/// Size of `fuse_dirent` without its name.
pub const DIRENT_LEN: usize = 24;
/// Size of `fuse_init_out` (7.31 layout, unused words zero).
pub const INIT_OUT_LEN: usize = 64;

/// `fuse_opcode` values.
#[allow(missing_docs)]
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// `fuse_init_in.flags` / `fuse_init_out.flags` bits we know.
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
}

/// `fuse_setattr_in.valid` bits.
#[allow(missing_docs)]
pub mod setattr_valid {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
}

/// `fuse_getattr_in.getattr_flags`: `fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `fuse_open_out.open_flags`: keep the page cache on open.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `fuse_fsync_in.fsync_flags`: data only (fdatasync).
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

/// A parse error: the buffer ended before the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request truncated: needed {needed} more bytes, {left} left")]
pub struct Truncated {
    /// Bytes the field needed.
    pub needed: usize,
    /// Bytes that were left.
    pub left: usize,
}

/// A bounds-checked little-endian cursor over a request body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if n > self.buf.len() {
            return Err(Truncated {
                needed: n,
                left: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// A `u16`.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    /// A NUL-terminated string (the NUL is consumed, not returned).
    pub fn cstr(&mut self) -> Result<&'a [u8], Truncated> {
        match self.buf.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = self.bytes(i)?;
                self.bytes(1)?;
                Ok(s)
            }
            None => Err(Truncated {
                needed: self.buf.len() + 1,
                left: self.buf.len(),
            }),
        }
    }
}

/// `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InHeader {
    /// Total request length, header included.
    pub len: u32,
    /// The operation.
    pub opcode: u32,
    /// Request ID, echoed in the reply.
    pub unique: u64,
    /// Node the operation is on.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
}

impl InHeader {
    /// Parses the 40-byte header.
    pub fn parse(r: &mut Reader<'_>) -> Result<InHeader, Truncated> {
        let h = InHeader {
            len: r.u32()?,
            opcode: r.u32()?,
            unique: r.u64()?,
            nodeid: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
            pid: r.u32()?,
        };
        r.u32()?; // padding (total_extlen in 7.36+; we do not negotiate extensions)
        Ok(h)
    }

    /// Serialises the header (for tests and fuzzing).
    pub fn to_bytes(&self) -> [u8; IN_HEADER_LEN] {
        let mut w = Writer::default();
        w.u32(self.len)
            .u32(self.opcode)
            .u64(self.unique)
            .u64(self.nodeid)
            .u32(self.uid)
            .u32(self.gid)
            .u32(self.pid)
            .u32(0);
        let mut a = [0u8; IN_HEADER_LEN];
        a.copy_from_slice(&w.0);
        a
    }
}

/// A little-endian byte builder for replies.
#[derive(Debug, Default, Clone)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Writer {
        self.0.extend_from_slice(v);
        self
    }
    /// Appends zero bytes up to a multiple of 8.
    pub fn pad8(&mut self) -> &mut Writer {
        while !self.0.len().is_multiple_of(8) {
            self.0.push(0);
        }
        self
    }
}

/// `fuse_out_header` for a reply of `body_len` bytes.
pub fn out_header(unique: u64, error: i32, body_len: usize) -> [u8; OUT_HEADER_LEN] {
    let len = u32::try_from(OUT_HEADER_LEN + body_len).unwrap_or(u32::MAX);
    let mut a = [0u8; OUT_HEADER_LEN];
    a[0..4].copy_from_slice(&len.to_le_bytes());
    a[4..8].copy_from_slice(&error.to_le_bytes());
    a[8..16].copy_from_slice(&unique.to_le_bytes());
    a
}

/// Length of a `fuse_dirent` with a name of `namelen` bytes, padded to 8.
pub fn dirent_size(namelen: usize) -> usize {
    (DIRENT_LEN + namelen + 7) & !7
}

/// Parses a `fuse_out_header` (tests and the fuzz harness).
pub fn parse_out_header(buf: &[u8]) -> Option<(u32, i32, u64)> {
    let mut r = Reader::new(buf);
    let len = r.u32().ok()?;
    let err = r.u32().ok()?;
    let unique = r.u64().ok()?;
    Some((len, err as i32, unique))
}
