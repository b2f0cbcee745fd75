//! The host side of virtio-vsock: where guest connections end up and where
//! host connections come from.
//!
//! - Unix: Firecracker's hybrid protocol. Host programs connect to the Unix
//!   socket at `PATH` and send `CONNECT <port>\n`; once the guest accepts they
//!   read `OK <hostport>\n`. A guest connection to host port P connects to the
//!   Unix socket `PATH_P`.
//! - Windows: the same text handshake over the named pipe `NAME`; a guest
//!   connection to host port P opens the pipe `NAME_P`.
//! - In process: [`VsockHost::connect_in_process`] and
//!   [`VsockHost::listen_in_process`] give tokio duplex streams, no socket file.
//!
//! All host I/O runs on a small tokio runtime owned by the [`VsockHost`]; it
//! wakes the device worker through the device's notify [`Event`].

mod handshake;
pub(crate) mod io;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot};

use crate::event::Event;
use io::HostIo;

pub(crate) use handshake::ok_line as handshake_ok_line;
pub use handshake::{HandshakeError, parse_connect};

/// How long a host-initiated connection waits for the guest to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Capacity of each in-process duplex pipe.
const DUPLEX_CAPACITY: usize = 64 * 1024;

/// Errors of the vsock host side.
#[derive(Debug, thiserror::Error)]
pub enum VsockHostError {
    /// Creating the I/O runtime failed.
    #[error("starting the vsock I/O runtime")]
    Runtime(#[source] std::io::Error),
    /// Binding the listening socket or pipe failed.
    #[error("listening on {path}")]
    Listen {
        /// The socket path or pipe name.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How a host-initiated connection learns the guest's answer.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Hybrid protocol: write `OK <hostport>\n` before any data.
    Preamble,
    /// In-process: tell the waiting `connect_in_process` future.
    Notify(oneshot::Sender<bool>),
}

/// A host program wants a connection to guest port `port`.
#[derive(Debug)]
pub(crate) struct HostRequest {
    pub port: u32,
    pub io: Arc<HostIo>,
    pub reply: Reply,
    /// The guest must answer by then, else the connection is refused.
    pub deadline: Instant,
}

/// The outcome of connecting to the host for a guest-initiated connection.
#[derive(Debug)]
pub(crate) struct ConnectDone {
    pub key: (u32, u32),
    pub io: Arc<HostIo>,
    pub ok: bool,
}

#[derive(Debug, Default)]
struct Pending {
    requests: VecDeque<HostRequest>,
    done: VecDeque<ConnectDone>,
}

/// Where guest-initiated connections go.
#[derive(Debug, Clone)]
enum Target {
    None,
    #[cfg(unix)]
    Unix(std::path::PathBuf),
    #[cfg(windows)]
    Pipe(String),
}

#[derive(Debug)]
struct Inner {
    rt: Option<tokio::runtime::Runtime>,
    target: Target,
    device: Arc<Mutex<Option<Arc<Event>>>>,
    pending: Mutex<Pending>,
    listeners: Mutex<HashMap<u32, mpsc::Sender<DuplexStream>>>,
    cleanup: Option<std::path::PathBuf>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        if let Some(path) = &self.cleanup {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The host end of a vsock device. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct VsockHost {
    inner: Arc<Inner>,
}

/// Accepts guest connections to one host port inside this process.
#[derive(Debug)]
pub struct InProcessListener {
    rx: mpsc::Receiver<DuplexStream>,
}

impl InProcessListener {
    /// Waits for the next guest connection; `None` once the host is gone.
    pub async fn accept(&mut self) -> Option<DuplexStream> {
        self.rx.recv().await
    }
}

impl VsockHost {
    fn build(target: Target, cleanup: Option<std::path::PathBuf>) -> Result<Self, VsockHostError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vsock-host")
            .enable_io()
            .enable_time()
            .build()
            .map_err(VsockHostError::Runtime)?;
        Ok(Self {
            inner: Arc::new(Inner {
                rt: Some(rt),
                target,
                device: Arc::default(),
                pending: Mutex::default(),
                listeners: Mutex::default(),
                cleanup,
            }),
        })
    }

    /// A host with only in-process endpoints: guest connections to ports
    /// without an in-process listener are refused.
    pub fn in_process() -> Result<Self, VsockHostError> {
        Self::build(Target::None, None)
    }

    /// Firecracker's hybrid protocol on the Unix socket `path` (created now,
    /// removed when the last clone is dropped).
    #[cfg(unix)]
    pub fn unix(path: impl Into<std::path::PathBuf>) -> Result<Self, VsockHostError> {
        let path = path.into();
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|source| {
            VsockHostError::Listen {
                path: path.display().to_string(),
                source,
            }
        })?;
        let host = Self::build(Target::Unix(path.clone()), Some(path.clone()))?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockHostError::Listen {
                path: path.display().to_string(),
                source,
            })?;
        let h = host.clone_weak();
        host.runtime().spawn(async move {
            match tokio::net::UnixListener::from_std(listener) {
                Ok(l) => unix::accept_loop(l, h).await,
                Err(e) => log::error!("vsock: listening socket: {e}"),
            }
        });
        Ok(host)
    }

    /// The hybrid handshake over the Windows named pipe `name`
    /// (`\\.\pipe\...`); guest connections to port P open `name_P`.
    #[cfg(windows)]
    pub fn named_pipe(name: impl Into<String>) -> Result<Self, VsockHostError> {
        let name = name.into();
        let host = Self::build(Target::Pipe(name.clone()), None)?;
        let server = {
            let _guard = host.runtime().enter();
            windows::first_instance(&name).map_err(|source| VsockHostError::Listen {
                path: name.clone(),
                source,
            })?
        };
        let h = host.clone_weak();
        host.runtime().spawn(windows::accept_loop(name, server, h));
        Ok(host)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        // `rt` is only taken in Drop.
        self.inner
            .rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime taken before drop"))
    }

    fn clone_weak(&self) -> WeakHost {
        WeakHost(Arc::downgrade(&self.inner))
    }

    /// Opens a connection to guest port `port`, without a socket file.
    /// Resolves once the guest accepted; refused or timed out otherwise.
    pub async fn connect_in_process(&self, port: u32) -> std::io::Result<DuplexStream> {
        self.connect_in_process_within(port, CONNECT_TIMEOUT).await
    }

    /// [`VsockHost::connect_in_process`] giving the guest `timeout` to
    /// answer: a guest whose kernel is emulated (kvm_pvm) can take seconds.
    pub async fn connect_in_process_within(
        &self,
        port: u32,
        timeout: Duration,
    ) -> std::io::Result<DuplexStream> {
        let (mine, theirs) = tokio::io::duplex(DUPLEX_CAPACITY);
        let (tx, rx) = oneshot::channel();
        let io = HostIo::new(Arc::clone(&self.inner.device));
        self.runtime().spawn(Arc::clone(&io).pump(theirs));
        self.push_request(HostRequest {
            port,
            io: Arc::clone(&io),
            reply: Reply::Notify(tx),
            deadline: Instant::now() + timeout,
        });
        // Time out on our runtime, so callers need no tokio timer of their own.
        let waiter = self.runtime().spawn(tokio::time::timeout(timeout * 2, rx));
        match waiter.await {
            Ok(Ok(Ok(true))) => Ok(mine),
            Ok(Err(_)) => {
                io.close();
                Err(std::io::ErrorKind::TimedOut.into())
            }
            _ => {
                io.close();
                Err(std::io::ErrorKind::ConnectionRefused.into())
            }
        }
    }

    /// Accepts guest connections to host port `port` in process. Takes
    /// precedence over the socket or pipe for that port.
    pub fn listen_in_process(&self, port: u32) -> InProcessListener {
        let (tx, rx) = mpsc::channel(16);
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port, tx);
        InProcessListener { rx }
    }

    pub(crate) fn push_request(&self, req: HostRequest) {
        push_request(&self.inner, req);
    }

    /// Sets the event the device worker waits on (None when inactive).
    pub(crate) fn set_device_event(&self, ev: Option<Arc<Event>>) {
        *self
            .inner
            .device
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = ev;
    }

    /// A new host-side buffer set that wakes this host's device.
    pub(crate) fn new_io(&self) -> Arc<HostIo> {
        HostIo::new(Arc::clone(&self.inner.device))
    }

    /// Takes the queued host requests and connect results.
    pub(crate) fn take_pending(&self) -> (VecDeque<HostRequest>, VecDeque<ConnectDone>) {
        let mut p = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut p.requests), std::mem::take(&mut p.done))
    }

    /// Starts connecting guest connection `key` to host port `key.0`; the
    /// result arrives through [`VsockHost::take_pending`].
    pub(crate) fn connect_host(&self, key: (u32, u32), io: Arc<HostIo>) {
        let port = key.0;
        let listener = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&port)
            .cloned();
        let target = self.inner.target.clone();
        let weak = self.clone_weak();
        self.runtime().spawn(async move {
            if let Some(tx) = listener {
                let (mine, theirs) = tokio::io::duplex(DUPLEX_CAPACITY);
                // A listener that stops accepting must not hold the guest forever.
                let ok = matches!(
                    tokio::time::timeout(CONNECT_TIMEOUT, tx.send(theirs)).await,
                    Ok(Ok(()))
                );
                weak.done(ConnectDone {
                    key,
                    io: Arc::clone(&io),
                    ok,
                });
                if ok {
                    io.pump(mine).await;
                }
                return;
            }
            match target {
                Target::None => weak.done(ConnectDone { key, io, ok: false }),
                #[cfg(unix)]
                Target::Unix(base) => unix::connect(base, key, io, weak).await,
                #[cfg(windows)]
                Target::Pipe(base) => windows::connect(base, key, io, weak).await,
            }
        });
    }
}

fn push_request(inner: &Inner, req: HostRequest) {
    {
        let mut pending = inner.pending.lock().unwrap_or_else(PoisonError::into_inner);
        // Host programs cannot queue more than the device could ever accept.
        pending.requests.retain(|r| {
            let fresh = Instant::now() <= r.deadline;
            if !fresh {
                r.io.close();
            }
            fresh
        });
        if pending.requests.len() >= super::MAX_CONNECTIONS {
            drop(pending);
            crate::warn_ratelimited!("vsock: too many pending host connections, refusing one");
            req.io.close();
            return;
        }
        pending.requests.push_back(req);
    }
    wake(inner);
}

fn wake(inner: &Inner) {
    let dev = inner
        .device
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(ev) = dev {
        ev.signal();
    }
}

/// What the I/O tasks hold: they must not keep the runtime alive.
#[derive(Debug, Clone)]
pub(crate) struct WeakHost(std::sync::Weak<Inner>);

impl WeakHost {
    pub(crate) fn done(&self, d: ConnectDone) {
        if let Some(inner) = self.0.upgrade() {
            inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .done
                .push_back(d);
            wake(&inner);
        }
    }

    pub(crate) fn request(&self, port: u32, reply: Reply) -> Option<Arc<HostIo>> {
        let inner = self.0.upgrade()?;
        let io = HostIo::new(Arc::clone(&inner.device));
        push_request(
            &inner,
            HostRequest {
                port,
                io: Arc::clone(&io),
                reply,
                deadline: Instant::now() + CONNECT_TIMEOUT,
            },
        );
        Some(io)
    }
}

/// Serves one host-initiated connection on the device's socket or pipe:
/// reads `CONNECT <port>` (bounded in length and time), then bridges the
/// stream to the guest's port once it accepts.
pub(super) async fn serve_host_stream<S>(mut stream: S, host: WeakHost)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let port =
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake::read_connect(&mut stream)).await {
            Ok(Ok(port)) => port,
            Ok(Err(e)) => {
                crate::warn_ratelimited!("vsock: host connection rejected: {e}");
                return;
            }
            Err(_) => {
                crate::warn_ratelimited!("vsock: host connection sent no CONNECT line in time");
                return;
            }
        };
    if let Some(io) = host.request(port, Reply::Preamble) {
        io.pump(stream).await;
    }
}
