//! Firecracker's hybrid vsock over Unix sockets.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};

use super::io::HostIo;
use super::{CONNECT_TIMEOUT, ConnectDone, WeakHost};

/// Accepts host connections on the device's socket until the host is dropped.
pub(super) async fn accept_loop(listener: UnixListener, host: WeakHost) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::warn_ratelimited!("vsock: accept on the host socket failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if host.0.strong_count() == 0 {
            return;
        }
        tokio::spawn(super::serve_host_stream(stream, host.clone()));
    }
}

/// Connects guest connection `key` to the socket `<base>_<port>`.
pub(super) async fn connect(base: PathBuf, key: (u32, u32), io: Arc<HostIo>, host: WeakHost) {
    let mut path = base.into_os_string();
    path.push(format!("_{}", key.0));
    let res = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&path)).await;
    match res {
        Ok(Ok(stream)) => {
            host.done(ConnectDone {
                key,
                io: Arc::clone(&io),
                ok: true,
            });
            io.pump(stream).await;
        }
        Ok(Err(e)) => {
            log::debug!(
                "vsock: connecting to {}: {e}",
                PathBuf::from(path).display()
            );
            host.done(ConnectDone { key, io, ok: false });
        }
        Err(_) => host.done(ConnectDone { key, io, ok: false }),
    }
}
