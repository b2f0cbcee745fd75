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

/// Sends `data` with `fds` attached (SCM_RIGHTS) on a Unix stream socket.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let space = cmsg_space(fds.len());
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control has room for one header with `fds` (cmsg_space).
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::other("no room for SCM_RIGHTS"));
    }
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_LEN only computes a size.
    let len = unsafe { libc::CMSG_LEN(bytes as u32) };
    let hdr = libc::cmsghdr {
        cmsg_len: len as _,
        cmsg_level: libc::SOL_SOCKET,
        cmsg_type: libc::SCM_RIGHTS,
    };
    // SAFETY: `cmsg` points into `control`, sized by CMSG_SPACE(bytes).
    unsafe { cmsg.write_unaligned(hdr) };
    // SAFETY: CMSG_DATA of that header has `bytes` bytes of room.
    let dst = unsafe { libc::CMSG_DATA(cmsg) };
    // SAFETY: copies `bytes` bytes from `fds` into the control buffer.
    unsafe { std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), dst, bytes) };
    let mut sent = 0;
    while sent < data.len() {
        // SAFETY: `msg` describes live buffers; after the first send the
        // descriptors are not sent again.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
        iov.iov_base = data[sent..].as_ptr().cast_mut().cast();
        iov.iov_len = data.len() - sent;
        msg.msg_iov = &mut iov;
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
    }
    Ok(())
}

/// Receives bytes and up to `max_fds` descriptors (SCM_RIGHTS) into `buf`;
/// returns the byte count and the descriptors, now owned by the caller.
pub fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let space = cmsg_space(max_fds);
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` describes live, writable buffers.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `msg`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside `control`.
        let hdr = unsafe { cmsg.read_unaligned() };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is the header size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = hdr.cmsg_len.saturating_sub(header) / std::mem::size_of::<RawFd>();
            // SAFETY: the data area of this SCM_RIGHTS header holds `count` fds.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                let at = data.wrapping_add(i);
                // SAFETY: `at` is the i-th received descriptor (read unaligned).
                let fd = unsafe { at.read_unaligned() };
                // SAFETY: the kernel installed `fd` for us; we own it now.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: advancing within the control buffer the kernel filled.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((n, fds))
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

#[cfg(test)]
mod fd_passing_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let (mut r, w) = pipe().expect("pipe");
        let (_r2, w2) = pipe().expect("pipe");
        send_with_fds(a.as_raw_fd(), b"config", &[w.as_raw_fd(), w2.as_raw_fd()]).expect("send");
        drop(w);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf, 3).expect("recv");
        assert_eq!(&buf[..n], b"config");
        assert_eq!(fds.len(), 2);
        let mut out = File::from(fds.into_iter().next().expect("fd"));
        out.write_all(b"through the passed fd").expect("write");
        drop(out);
        let mut got = String::new();
        r.read_to_string(&mut got).expect("read");
        assert_eq!(got, "through the passed fd");
    }
}
