//! Where the agent listens: `vsock:PORT` in the VM, `unix:PATH` on a host.

use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use anyhow::{Context, Result, bail};

use crate::sys::check;

/// A parsed `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// AF_VSOCK on any CID, this port.
    Vsock(u32),
    /// A Unix socket path.
    Unix(String),
}

impl std::str::FromStr for Address {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(p) = s.strip_prefix("vsock:") {
            return Ok(Address::Vsock(p.parse().context("vsock port")?));
        }
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                bail!("empty unix socket path");
            }
            return Ok(Address::Unix(p.to_owned()));
        }
        bail!("listen address must be vsock:PORT or unix:PATH, got {s:?}")
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// Unix socket.
    Unix(UnixListener),
    /// vsock socket, wrapped as a Unix listener for the generic socket
    /// calls (accept, read, write, shutdown) that do not care about the
    /// address family.
    Vsock(UnixListener),
}

/// Binds `addr`.
pub fn bind(addr: &Address) -> Result<Listener> {
    match addr {
        Address::Unix(p) => {
            let _ = std::fs::remove_file(p);
            Ok(Listener::Unix(
                UnixListener::bind(p).with_context(|| format!("bind {p}"))?,
            ))
        }
        Address::Vsock(port) => {
            // SAFETY: plain socket creation.
            let fd = check(unsafe {
                libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
            })
            .context("vsock socket")?;
            // SAFETY: fd is fresh and owned by the listener from here.
            let l = unsafe { UnixListener::from_raw_fd(fd) };
            // SAFETY: sockaddr_vm is plain data.
            let mut sa: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            sa.svm_port = *port;
            sa.svm_cid = libc::VMADDR_CID_ANY;
            let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
            use std::os::fd::AsRawFd;
            // SAFETY: sa is a valid sockaddr_vm of `len` bytes.
            check(unsafe {
                libc::bind(l.as_raw_fd(), (&sa as *const libc::sockaddr_vm).cast(), len)
            })
            .with_context(|| format!("bind vsock port {port}"))?;
            // SAFETY: listen on our socket.
            check(unsafe { libc::listen(l.as_raw_fd(), 16) }).context("listen vsock")?;
            Ok(Listener::Vsock(l))
        }
    }
}

impl Listener {
    /// Accepts one connection.
    pub fn accept(&self) -> Result<UnixStream> {
        use std::os::fd::AsRawFd;
        match self {
            Listener::Unix(l) => Ok(l.accept().context("accept")?.0),
            Listener::Vsock(l) => {
                // SAFETY: accept4 with null address pointers.
                let fd = check(unsafe {
                    libc::accept4(
                        l.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                })
                .context("accept vsock")?;
                // SAFETY: fresh descriptor owned by the stream.
                Ok(unsafe { UnixStream::from_raw_fd(fd) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Address;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "vsock:1024".parse::<Address>().ok(),
            Some(Address::Vsock(1024))
        );
        assert_eq!(
            "unix:/run/a.sock".parse::<Address>().ok(),
            Some(Address::Unix("/run/a.sock".into()))
        );
        for bad in ["vsock:", "vsock:x", "unix:", "tcp:1", "", "1024"] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }
}
