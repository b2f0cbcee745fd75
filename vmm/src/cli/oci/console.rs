//! `--console-socket`: a host PTY whose master goes to the engine over the
//! Unix socket it named (SCM_RIGHTS, runc's protocol), and whose slave is
//! the monitor's stdio, relayed to the guest's PTY (resizes arrive as
//! SIGWINCH on the slave, the monitor's controlling terminal).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A new PTY pair (master, slave), both close-on-exec.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: out pointers are valid; name, termios and winsize may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned a fresh master that we now own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: likewise the slave.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    let pair = (master, slave);
    for fd in [&pair.0, &pair.1] {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(pair)
}

/// Sends `master` over the socket at `path` with SCM_RIGHTS.
#[expect(
    clippy::multiple_unsafe_ops_per_block,
    reason = "filling one control message header"
)]
pub fn send_master(path: &Path, master: &OwnedFd) -> io::Result<()> {
    let sock = UnixStream::connect(path)?;
    let name = b"/dev/ptmx";
    let mut iov = libc::iovec {
        iov_base: name.as_ptr().cast_mut().cast(),
        iov_len: name.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes, enough for one header.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::other("no room for the control message"));
    }
    // SAFETY: cmsg points into cbuf, sized by CMSG_SPACE for one int.
    unsafe {
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(
            libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
            master.as_raw_fd(),
        );
    }
    // SAFETY: msg is fully initialised and its buffers outlive the call.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
