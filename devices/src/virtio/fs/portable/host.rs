//! The host-specific corners of the portable backend: what a path is
//! (links and Windows reparse points included), opening without following
//! the last component, positional I/O and io::Error → Linux errno.

use std::fs::{File, Metadata, OpenOptions};
use std::io::ErrorKind;
use std::path::Path;

use super::super::filesystem::{Errno, FsResult, errno};

/// What a host path is, links never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A real directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink, junction or other reparse point: never traversed.
    Link,
    /// Anything else (FIFO, socket, device): never opened.
    Other,
}

#[cfg(windows)]
const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;
#[cfg(windows)]
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
#[cfg(windows)]
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
#[cfg(windows)]
const FILE_READ_ATTRIBUTES: u32 = 0x80;
#[cfg(windows)]
const FILE_WRITE_ATTRIBUTES: u32 = 0x100;

/// The kind of `m`, from `symlink_metadata` or an opened file.
pub fn kind(m: &Metadata) -> Kind {
    #[cfg(windows)]
    {
        use std::os::windows::fs::MetadataExt;
        if m.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return Kind::Link;
        }
    }
    let t = m.file_type();
    if t.is_symlink() {
        Kind::Link
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

/// The kind of `p`, its last component not followed.
pub fn kind_of(p: &Path) -> FsResult<Kind> {
    std::fs::symlink_metadata(p)
        .map(|m| kind(&m))
        .map_err(|e| from_io(&e))
}

/// How to open a regular file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    /// Read access.
    pub read: bool,
    /// Write access.
    pub write: bool,
    /// Truncate on open.
    pub truncate: bool,
    /// Create it; fail if it exists.
    pub create_new: bool,
    /// Create it if missing.
    pub create: bool,
}

#[cfg(target_os = "linux")]
fn no_follow(o: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
}

#[cfg(windows)]
fn no_follow(o: &mut OpenOptions) {
    use std::os::windows::fs::OpenOptionsExt;
    o.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
}

#[cfg(not(any(target_os = "linux", windows)))]
fn no_follow(_o: &mut OpenOptions) {}

/// Opens the regular file `p` without following a link in its last
/// component; anything but a regular file is refused (and closed).
pub fn open_file(p: &Path, a: Access) -> FsResult<File> {
    let mut o = OpenOptions::new();
    o.read(a.read || !a.write)
        .write(a.write)
        .truncate(a.truncate)
        .create(a.create)
        .create_new(a.create_new);
    no_follow(&mut o);
    let f = o.open(p).map_err(|e| from_io(&e))?;
    match f.metadata().map(|m| kind(&m)).map_err(|e| from_io(&e))? {
        Kind::File => Ok(f),
        Kind::Dir => Err(errno::EISDIR),
        Kind::Link | Kind::Other => Err(errno::EACCES),
    }
}

/// Opens `p` (a file or directory, not a link) to change its times.
pub fn open_for_times(p: &Path, k: Kind) -> FsResult<File> {
    let mut o = OpenOptions::new();
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        let _ = k;
        o.access_mode(FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_BACKUP_SEMANTICS);
    }
    #[cfg(not(windows))]
    {
        // Directories cannot be opened for writing; futimens needs none.
        o.read(true);
        if k == Kind::File {
            o.write(true);
        }
        no_follow(&mut o);
    }
    let f = o.open(p).map_err(|e| from_io(&e))?;
    match f.metadata().map(|m| kind(&m)).map_err(|e| from_io(&e))? {
        Kind::File | Kind::Dir => Ok(f),
        Kind::Link | Kind::Other => Err(errno::EACCES),
    }
}

/// Unlinks the non-directory `p` of kind `k`, as Linux would: a
/// directory symlink or junction is removed as a directory, and on
/// Windows a read-only file loses that attribute first.
pub fn remove(p: &Path, k: Kind) -> FsResult<()> {
    let r = std::fs::remove_file(p);
    #[cfg(windows)]
    let r = match r {
        Err(_) if k == Kind::Link => std::fs::remove_dir(p),
        Err(e) if k == Kind::File && e.kind() == ErrorKind::PermissionDenied => {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.permissions().readonly() && kind(&m) == Kind::File => {
                    let mut perm = m.permissions();
                    #[allow(clippy::permissions_set_readonly_false)]
                    perm.set_readonly(false);
                    std::fs::set_permissions(p, perm).and_then(|()| std::fs::remove_file(p))
                }
                _ => Err(e),
            }
        }
        r => r,
    };
    #[cfg(not(windows))]
    let _ = k;
    r.map_err(|e| from_io(&e))
}

/// Reads at `offset`; fewer bytes at the end of the file.
pub fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(f, buf, offset)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(f, buf, offset)
    }
}

/// Writes all of `data` at `offset`.
pub fn write_all_at(f: &File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::write_at(f, data, offset);
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_write(f, data, offset);
        match n {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = data.get(n..).unwrap_or_default();
                offset = offset.saturating_add(n as u64);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A Linux errno for `e`.
pub fn from_io(e: &std::io::Error) -> Errno {
    #[cfg(target_os = "linux")]
    if let Some(n) = e.raw_os_error() {
        return Errno(n);
    }
    #[cfg(windows)]
    if let Some(n) = e.raw_os_error() {
        // ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION, ERROR_FILE_EXISTS,
        // ERROR_ALREADY_EXISTS, ERROR_DIR_NOT_EMPTY, ERROR_INVALID_NAME,
        // ERROR_DISK_FULL, ERROR_NOT_SAME_DEVICE.
        match n {
            32 | 33 => return errno::EBUSY,
            80 | 183 => return errno::EEXIST,
            145 => return errno::ENOTEMPTY,
            123 => return errno::EINVAL,
            112 => return errno::ENOSPC,
            17 => return errno::EXDEV,
            _ => {}
        }
    }
    match e.kind() {
        ErrorKind::NotFound => errno::ENOENT,
        ErrorKind::PermissionDenied => errno::EACCES,
        ErrorKind::AlreadyExists => errno::EEXIST,
        ErrorKind::NotADirectory => errno::ENOTDIR,
        ErrorKind::IsADirectory => errno::EISDIR,
        ErrorKind::DirectoryNotEmpty => errno::ENOTEMPTY,
        ErrorKind::ReadOnlyFilesystem => errno::EROFS,
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => errno::ENOSPC,
        ErrorKind::FileTooLarge => errno::EFBIG,
        ErrorKind::ResourceBusy => errno::EBUSY,
        ErrorKind::CrossesDevices => errno::EXDEV,
        ErrorKind::TooManyLinks => errno::EMLINK,
        ErrorKind::InvalidFilename => errno::ENAMETOOLONG,
        ErrorKind::InvalidInput => errno::EINVAL,
        ErrorKind::Unsupported => errno::EOPNOTSUPP,
        ErrorKind::OutOfMemory => errno::ENOMEM,
        _ => errno::EIO,
    }
}
