//! The hybrid vsock handshake over Windows named pipes.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeServer, ServerOptions};

use super::io::HostIo;
use super::{CONNECT_TIMEOUT, ConnectDone, WeakHost};

/// Windows' ERROR_PIPE_BUSY: every instance of the pipe is in use.
const ERROR_PIPE_BUSY: i32 = 231;

/// Creates the first instance of the device's pipe (fails if it exists).
pub(super) fn first_instance(name: &str) -> std::io::Result<NamedPipeServer> {
    ServerOptions::new()
        .first_pipe_instance(true)
        .reject_remote_clients(true)
        .create(name)
}

/// Serves host connections on the pipe, keeping one instance pending.
pub(super) async fn accept_loop(name: String, mut server: NamedPipeServer, host: WeakHost) {
    loop {
        if let Err(e) = server.connect().await {
            crate::warn_ratelimited!("vsock: named pipe connect failed: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let next = match ServerOptions::new()
            .reject_remote_clients(true)
            .create(&name)
        {
            Ok(s) => s,
            Err(e) => {
                log::error!("vsock: creating the next pipe instance: {e}");
                return;
            }
        };
        let connected = std::mem::replace(&mut server, next);
        if host.0.strong_count() == 0 {
            return;
        }
        tokio::spawn(super::serve_host_stream(connected, host.clone()));
    }
}

/// Connects guest connection `key` to the pipe `<base>_<port>`.
pub(super) async fn connect(base: String, key: (u32, u32), io: Arc<HostIo>, host: WeakHost) {
    let name = format!("{base}_{}", key.0);
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let client = loop {
        match ClientOptions::new().open(&name) {
            Ok(c) => break Some(c),
            Err(e)
                if e.raw_os_error() == Some(ERROR_PIPE_BUSY)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                log::debug!("vsock: opening {name}: {e}");
                break None;
            }
        }
    };
    match client {
        Some(pipe) => {
            host.done(ConnectDone {
                key,
                io: Arc::clone(&io),
                ok: true,
            });
            io.pump(pipe).await;
        }
        None => host.done(ConnectDone { key, io, ok: false }),
    }
}
