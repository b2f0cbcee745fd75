//! Thin safe wrappers over the Linux `*at` syscalls the passthrough
//! backend uses. Every path argument is a single name relative to a
//! directory fd (or "" with AT_EMPTY_PATH); none is ever a host path built
//! from guest input.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::super::filesystem::{Errno, errno};

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The last OS error as an errno.
pub fn last_errno() -> Errno {
    from_io(&io::Error::last_os_error())
}

/// An io::Error as an errno (EIO when it carries none).
pub fn from_io(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(errno::EIO, Errno)
}

fn check(ret: libc::c_int) -> Result<(), Errno> {
    if ret < 0 { Err(last_errno()) } else { Ok(()) }
}

/// A name as a C string (names never hold NUL; if one did, EINVAL).
pub fn cstr(name: &[u8]) -> Result<CString, Errno> {
    CString::new(name).map_err(|_| errno::EINVAL)
}

/// openat2(2) of `name` below `dir`.
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow {
        flags: u64::from(flags as u32),
        mode: u64::from(mode),
        resolve,
    };
    // SAFETY: `name` is NUL-terminated, `how` is a valid open_how of the
    // size passed; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret < 0 {
        return Err(last_errno());
    }
    let fd = libc::c_int::try_from(ret).map_err(|_| errno::EIO)?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// openat(2) of `name` in `dir`, following symlinks (used only on the
/// backend's own /proc/self/fd directory).
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: `name` is NUL-terminated; the kernel only reads it.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW).
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<libc::stat64, Errno> {
    let mut st = MaybeUninit::<libc::stat64>::uninit();
    // SAFETY: the path is an empty C string, `st` has room for a stat64.
    let ret = unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(ret)?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// fstatfs(2), which O_PATH fds allow.
pub fn statfs_fd(fd: BorrowedFd<'_>) -> Result<libc::statfs64, Errno> {
    let mut st = MaybeUninit::<libc::statfs64>::uninit();
    // SAFETY: `st` has room for a statfs64.
    check(unsafe { libc::fstatfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// readlinkat(fd, "") of an O_PATH symlink fd.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| last_errno())?;
    buf.truncate(n);
    Ok(buf)
}

/// mkdirat(2).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `name` is NUL-terminated; the kernel only reads it.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// mknodat(2) with device number 0.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `name` is NUL-terminated; the kernel only reads it.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

/// symlinkat(2).
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: both strings are NUL-terminated; the kernel only reads them.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// unlinkat(2).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: `name` is NUL-terminated; the kernel only reads it.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// renameat2(2).
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<(), Errno> {
    // SAFETY: both names are NUL-terminated; the kernel only reads them.
    let ret = unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    check(ret)
}

/// linkat(2).
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: both names are NUL-terminated; the kernel only reads them.
    let ret = unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    check(ret)
}

/// fchownat(2); `u32::MAX` leaves an id unchanged.
pub fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: `name` is NUL-terminated; the kernel only reads it.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) })
}

/// fchmodat(2) (follows the name, so only used via /proc/self/fd).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `name` is NUL-terminated; the kernel only reads it.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

/// utimensat(fd, "", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW).
pub fn utimens_fd(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> Result<(), Errno> {
    // SAFETY: the path is an empty C string, `times` holds two timespecs.
    let ret = unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(ret)
}

/// ftruncate(2).
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    let size = i64::try_from(size).map_err(|_| errno::EINVAL)?;
    // SAFETY: plain syscall on an fd we own.
    check(unsafe { libc::ftruncate64(fd.as_raw_fd(), size) })
}

/// fallocate(2).
pub fn fallocate(fd: BorrowedFd<'_>, mode: u32, offset: u64, len: u64) -> Result<(), Errno> {
    let offset = i64::try_from(offset).map_err(|_| errno::EINVAL)?;
    let len = i64::try_from(len).map_err(|_| errno::EINVAL)?;
    let mode = libc::c_int::try_from(mode).map_err(|_| errno::EINVAL)?;
    // SAFETY: plain syscall on an fd we own.
    check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) })
}

/// lseek(2).
pub fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: u32) -> Result<u64, Errno> {
    let offset = i64::try_from(offset).map_err(|_| errno::EINVAL)?;
    let whence = libc::c_int::try_from(whence).map_err(|_| errno::EINVAL)?;
    // SAFETY: plain syscall on an fd we own.
    let ret = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    u64::try_from(ret).map_err(|_| last_errno())
}

/// getdents64(2) into `buf`; returns the bytes filled.
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is writable for its length.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    usize::try_from(ret).map_err(|_| last_errno())
}

/// A size-returning xattr call: negative is an error.
fn xattr_ret(ret: isize) -> Result<usize, Errno> {
    usize::try_from(ret).map_err(|_| last_errno())
}

/// getxattr(2) on `path` (a /proc/self/fd path of ours); an empty `buf`
/// asks for the size.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: strings are NUL-terminated; `buf` is writable for its length.
    xattr_ret(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// listxattr(2) on `path`; an empty `buf` asks for the size.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `path` is NUL-terminated; `buf` is writable for its length.
    xattr_ret(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// setxattr(2) on `path`.
pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: strings are NUL-terminated; `value` is readable for its length.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    check(ret)
}

/// removexattr(2) on `path`.
pub fn removexattr(path: &CStr, name: &CStr) -> Result<(), Errno> {
    // SAFETY: strings are NUL-terminated; the kernel only reads them.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })
}

/// The effective uid of the VMM.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (every node the guest
/// holds is an fd); returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    r.rlim_cur
}
