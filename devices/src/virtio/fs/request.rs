//! FUSE request decoder: the device-readable bytes of one descriptor chain
//! in, a typed [`Request`] out. The guest is hostile: every length is
//! checked against the bytes actually present, names are checked, and
//! nothing here can panic or allocate more than the input.

use super::abi::{self, InHeader, Reader, Truncated, opcode, setattr_valid};
use super::filesystem::{SetAttr, SetTime};

/// Longest name accepted (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target or xattr name accepted (Linux PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// Largest xattr value accepted (Linux XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 65536;
/// Most entries in one BATCH_FORGET that are honoured.
pub const MAX_BATCH_FORGET: usize = 4096;

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header.
    #[error("request shorter than the 40-byte header ({0} bytes)")]
    NoHeader(usize),
    /// The header's length disagrees with the chain.
    #[error("header says {header} bytes, chain holds {chain}")]
    Length {
        /// `fuse_in_header.len`.
        header: u32,
        /// Device-readable bytes in the chain.
        chain: usize,
    },
    /// The body is shorter than the opcode's arguments.
    #[error("opcode {opcode}: {source}")]
    Body {
        /// The opcode.
        opcode: u32,
        /// What was missing.
        #[source]
        source: Truncated,
    },
    /// A name is empty, too long or contains '/'.
    #[error("opcode {0}: bad name")]
    BadName(u32),
    /// A size field disagrees with the bytes that follow.
    #[error("opcode {0}: size field does not match the data")]
    BadSize(u32),
}

impl DecodeError {
    /// The errno a decodable header gets back.
    pub fn errno(&self) -> super::filesystem::Errno {
        use super::filesystem::errno;
        match self {
            DecodeError::BadName(_) => errno::EINVAL,
            _ => errno::EIO,
        }
    }
}

/// One decoded request; names and data borrow from the request bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
    },
    Destroy,
    Lookup {
        name: &'a [u8],
    },
    Forget {
        nlookup: u64,
    },
    /// (node, count) pairs, at most [`MAX_BATCH_FORGET`].
    BatchForget {
        forgets: Vec<(u64, u64)>,
    },
    Getattr {
        fh: Option<u64>,
    },
    Setattr(SetAttr),
    Readlink,
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        name: &'a [u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: &'a [u8],
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    Rename {
        new_dir: u64,
        flags: u32,
        name: &'a [u8],
        new_name: &'a [u8],
    },
    Link {
        old_node: u64,
        name: &'a [u8],
    },
    Open {
        flags: u32,
    },
    Opendir {
        flags: u32,
    },
    Create {
        name: &'a [u8],
        mode: u32,
        flags: u32,
        umask: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Statfs,
    Release {
        fh: u64,
    },
    Releasedir {
        fh: u64,
    },
    Flush {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Fsyncdir {
        fh: u64,
        datasync: bool,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    },
    Lseek {
        fh: u64,
        offset: u64,
        whence: u32,
    },
    Getxattr {
        name: &'a [u8],
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Setxattr {
        name: &'a [u8],
        value: &'a [u8],
        flags: u32,
    },
    Removexattr {
        name: &'a [u8],
    },
    /// An opcode we do not implement (answered ENOSYS).
    Unsupported(u32),
}

/// Parses the header alone: what an error reply needs.
pub fn decode_header(buf: &[u8]) -> Result<InHeader, DecodeError> {
    InHeader::parse(&mut Reader::new(buf)).map_err(|_| DecodeError::NoHeader(buf.len()))
}

/// Decodes a whole request (header and body).
pub fn decode(buf: &[u8]) -> Result<(InHeader, Request<'_>), DecodeError> {
    let mut r = Reader::new(buf);
    let h = InHeader::parse(&mut r).map_err(|_| DecodeError::NoHeader(buf.len()))?;
    if usize::try_from(h.len).ok() != Some(buf.len()) {
        return Err(DecodeError::Length {
            header: h.len,
            chain: buf.len(),
        });
    }
    let op = h.opcode;
    let req = decode_body(op, &mut r).map_err(|e| match e {
        BodyError::Truncated(source) => DecodeError::Body { opcode: op, source },
        BodyError::Name => DecodeError::BadName(op),
        BodyError::Size => DecodeError::BadSize(op),
    })?;
    Ok((h, req))
}

enum BodyError {
    Truncated(Truncated),
    Name,
    Size,
}

impl From<Truncated> for BodyError {
    fn from(t: Truncated) -> Self {
        BodyError::Truncated(t)
    }
}

/// A file name: NUL-terminated, non-empty, at most NAME_MAX, no '/'.
fn name<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], BodyError> {
    let n = r.cstr()?;
    if n.is_empty() || n.len() > NAME_MAX || n.contains(&b'/') {
        return Err(BodyError::Name);
    }
    Ok(n)
}

/// An xattr name: NUL-terminated, non-empty, at most 255 bytes.
fn xattr_name<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], BodyError> {
    let n = r.cstr()?;
    if n.is_empty() || n.len() > NAME_MAX {
        return Err(BodyError::Name);
    }
    Ok(n)
}

fn time(secs: u64, nsec: u32, set: bool, now: bool) -> Option<SetTime> {
    match (set, now) {
        (_, true) => Some(SetTime::Now),
        (true, false) => Some(SetTime::At(secs, nsec.min(999_999_999))),
        (false, false) => None,
    }
}

fn decode_body<'a>(op: u32, r: &mut Reader<'a>) -> Result<Request<'a>, BodyError> {
    use Request as R;
    Ok(match op {
        opcode::INIT => {
            // 7.36+ clients send 48 more bytes (flags2, unused); ignored.
            let (major, minor, max_readahead, flags) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            R::Init {
                major,
                minor,
                max_readahead,
                flags,
            }
        }
        opcode::DESTROY => R::Destroy,
        opcode::LOOKUP => R::Lookup { name: name(r)? },
        opcode::FORGET => R::Forget { nlookup: r.u64()? },
        opcode::BATCH_FORGET => {
            let count = r.u32()? as usize;
            r.u32()?;
            if count.checked_mul(16) != Some(r.remaining()) {
                return Err(BodyError::Size);
            }
            let mut forgets = Vec::with_capacity(count.min(MAX_BATCH_FORGET));
            for _ in 0..count.min(MAX_BATCH_FORGET) {
                forgets.push((r.u64()?, r.u64()?));
            }
            R::BatchForget { forgets }
        }
        opcode::GETATTR => {
            let flags = r.u32()?;
            r.u32()?;
            let fh = r.u64()?;
            R::Getattr {
                fh: (flags & abi::GETATTR_FH != 0).then_some(fh),
            }
        }
        opcode::SETATTR => {
            let valid = r.u32()?;
            r.u32()?;
            let fh = r.u64()?;
            let size = r.u64()?;
            let _lock_owner = r.u64()?;
            let (atime, mtime, _ctime) = (r.u64()?, r.u64()?, r.u64()?);
            let (atime_ns, mtime_ns, _ctime_ns) = (r.u32()?, r.u32()?, r.u32()?);
            let mode = r.u32()?;
            r.u32()?;
            let (uid, gid) = (r.u32()?, r.u32()?);
            r.u32()?;
            let has = |bit: u32| valid & bit != 0;
            R::Setattr(SetAttr {
                mode: has(setattr_valid::MODE).then_some(mode),
                uid: has(setattr_valid::UID).then_some(uid),
                gid: has(setattr_valid::GID).then_some(gid),
                size: has(setattr_valid::SIZE).then_some(size),
                atime: time(
                    atime,
                    atime_ns,
                    has(setattr_valid::ATIME),
                    has(setattr_valid::ATIME_NOW),
                ),
                mtime: time(
                    mtime,
                    mtime_ns,
                    has(setattr_valid::MTIME),
                    has(setattr_valid::MTIME_NOW),
                ),
                handle: has(setattr_valid::FH).then_some(fh),
            })
        }
        opcode::READLINK => R::Readlink,
        opcode::SYMLINK => {
            let name = name(r)?;
            let target = r.cstr()?;
            if target.is_empty() || target.len() >= PATH_MAX {
                return Err(BodyError::Name);
            }
            R::Symlink { name, target }
        }
        opcode::MKNOD => {
            let (mode, rdev, umask) = (r.u32()?, r.u32()?, r.u32()?);
            r.u32()?;
            R::Mknod {
                name: name(r)?,
                mode,
                rdev,
                umask,
            }
        }
        opcode::MKDIR => {
            let (mode, umask) = (r.u32()?, r.u32()?);
            R::Mkdir {
                name: name(r)?,
                mode,
                umask,
            }
        }
        opcode::UNLINK => R::Unlink { name: name(r)? },
        opcode::RMDIR => R::Rmdir { name: name(r)? },
        opcode::RENAME | opcode::RENAME2 => {
            let new_dir = r.u64()?;
            let flags = if op == opcode::RENAME2 {
                let f = r.u32()?;
                r.u32()?;
                f
            } else {
                0
            };
            R::Rename {
                new_dir,
                flags,
                name: name(r)?,
                new_name: name(r)?,
            }
        }
        opcode::LINK => R::Link {
            old_node: r.u64()?,
            name: name(r)?,
        },
        opcode::OPEN | opcode::OPENDIR => {
            let flags = r.u32()?;
            r.u32()?;
            if op == opcode::OPEN {
                R::Open { flags }
            } else {
                R::Opendir { flags }
            }
        }
        opcode::CREATE => {
            let (flags, mode, umask) = (r.u32()?, r.u32()?, r.u32()?);
            r.u32()?;
            R::Create {
                name: name(r)?,
                mode,
                flags,
                umask,
            }
        }
        opcode::READ | opcode::READDIR | opcode::READDIRPLUS => {
            let (fh, offset, size) = (r.u64()?, r.u64()?, r.u32()?);
            r.bytes(20)?; // read_flags, lock_owner, flags, padding
            if op == opcode::READ {
                R::Read { fh, offset, size }
            } else {
                R::Readdir {
                    fh,
                    offset,
                    size,
                    plus: op == opcode::READDIRPLUS,
                }
            }
        }
        opcode::WRITE => {
            let (fh, offset, size) = (r.u64()?, r.u64()?, r.u32()?);
            r.bytes(20)?; // write_flags, lock_owner, flags, padding
            if size as usize != r.remaining() {
                return Err(BodyError::Size);
            }
            R::Write {
                fh,
                offset,
                data: r.rest(),
            }
        }
        opcode::STATFS => R::Statfs,
        opcode::RELEASE | opcode::RELEASEDIR | opcode::FLUSH => {
            let fh = r.u64()?;
            r.bytes(16)?;
            match op {
                opcode::RELEASE => R::Release { fh },
                opcode::RELEASEDIR => R::Releasedir { fh },
                _ => R::Flush { fh },
            }
        }
        opcode::FSYNC | opcode::FSYNCDIR => {
            let (fh, flags) = (r.u64()?, r.u32()?);
            r.u32()?;
            let datasync = flags & abi::FSYNC_FDATASYNC != 0;
            if op == opcode::FSYNC {
                R::Fsync { fh, datasync }
            } else {
                R::Fsyncdir { fh, datasync }
            }
        }
        opcode::FALLOCATE => {
            let (fh, offset, length, mode) = (r.u64()?, r.u64()?, r.u64()?, r.u32()?);
            r.u32()?;
            R::Fallocate {
                fh,
                offset,
                length,
                mode,
            }
        }
        opcode::LSEEK => {
            let (fh, offset, whence) = (r.u64()?, r.u64()?, r.u32()?);
            r.u32()?;
            R::Lseek { fh, offset, whence }
        }
        opcode::GETXATTR | opcode::LISTXATTR => {
            let size = r.u32()?;
            r.u32()?;
            if op == opcode::GETXATTR {
                R::Getxattr {
                    name: xattr_name(r)?,
                    size,
                }
            } else {
                R::Listxattr { size }
            }
        }
        opcode::SETXATTR => {
            let (size, flags) = (r.u32()?, r.u32()?);
            let name = xattr_name(r)?;
            let size = size as usize;
            if size > XATTR_SIZE_MAX || size != r.remaining() {
                return Err(BodyError::Size);
            }
            R::Setxattr {
                name,
                value: r.rest(),
                flags,
            }
        }
        opcode::REMOVEXATTR => R::Removexattr {
            name: xattr_name(r)?,
        },
        other => R::Unsupported(other),
    })
}

#[cfg(test)]
mod tests;
