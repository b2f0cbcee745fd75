//! Thin wrappers over the libc calls the agent needs.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use anyhow::{Context, Result};

/// Converts a path or string to a C string.
pub fn cstr(s: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(s.as_ref().to_vec()).context("string contains NUL")
}

/// `-1` → the current errno as an `io::Error`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mount(2)`.
pub fn mount(
    src: &str,
    target: impl AsRef<Path>,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let target = target.as_ref();
    let (s, t, f, d) = (
        cstr(src)?,
        cstr(target.as_os_str().as_encoded_bytes())?,
        cstr(fstype)?,
        cstr(data)?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                f.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    check(r).with_context(|| format!("mount {src} ({fstype}) on {}", target.display()))?;
    Ok(())
}

/// `umount2(2)`.
pub fn umount2(target: impl AsRef<Path>, flags: libc::c_int) -> Result<()> {
    let t = cstr(target.as_ref().as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), flags) })
        .with_context(|| format!("umount {}", target.as_ref().display()))?;
    Ok(())
}

/// A pipe with both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned a fresh read descriptor that we now own.
    let r = unsafe { File::from_raw_fd(fds[0]) };
    // SAFETY: likewise for the write descriptor.
    let w = unsafe { File::from_raw_fd(fds[1]) };
    Ok((r, w))
}

/// Sets `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number has no memory effects.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(|_| ())
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).context("sethostname")?;
    Ok(())
}

/// Brings the loopback interface up in the current network namespace.
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain socket creation.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
            .context("socket for lo")?;
    // SAFETY: fd was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: ifr is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })
        .context("SIOCGIFFLAGS lo")?;
    // SAFETY: reading the flags member written by the kernel above.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) })
        .context("SIOCSIFFLAGS lo")?;
    Ok(())
}

/// Decodes a raw wait status.
pub fn wait_status(raw: libc::c_int) -> krypton_protocol::ExitStatus {
    if libc::WIFSIGNALED(raw) {
        krypton_protocol::ExitStatus::Signal(libc::WTERMSIG(raw))
    } else {
        krypton_protocol::ExitStatus::Code(libc::WEXITSTATUS(raw))
    }
}

/// `statfs(2)` filesystem magic of `path`.
pub fn fs_magic(path: &Path) -> Option<i64> {
    let p = cstr(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain data.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let r = unsafe { libc::statfs(p.as_ptr(), &mut st) };
    (r == 0).then_some(st.f_type as i64)
}

/// `kill`-style signal delivery through a pidfd (immune to pid reuse).
pub fn pidfd_signal(pidfd: RawFd, signo: i32) -> io::Result<()> {
    // SAFETY: the syscall takes an fd, signal number, null siginfo, flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signo,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Null-terminated pointer array over C strings (for execve).
pub fn ptr_array(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}
