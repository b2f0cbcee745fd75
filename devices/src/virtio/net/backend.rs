//! Where the device's frames go: the [`NetBackend`] trait and
//! [`StreamBackend`], QEMU's stream protocol over a connected socket (TCP
//! everywhere, Unix sockets on Unix; on Windows only TCP for now, since std
//! has no AF_UNIX there).
//!
//! A stream backend runs two threads. The reader decodes frames from the
//! socket into a bounded queue toward the device (when the guest posts no
//! RX buffers the queue fills, the reader blocks and the peer's socket
//! buffer fills: backpressure, no spinning). The writer takes frames from a
//! bounded queue fed by the device and writes them, batched, with their
//! length prefix. Any I/O or framing error takes the link down (logged
//! once) and shuts the socket; the device keeps running and drops frames
//! the guest sends while the link is down.

use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use super::frame::{FrameDecoder, MAX_FRAME, encode_prefix};
use crate::event::Event;

/// Frames queued toward the host, and toward the guest, per backend.
pub const QUEUE_FRAMES: usize = 256;
/// Bytes the writer batches before a flush.
const WRITE_BUF: usize = 256 * 1024;
/// Bytes per socket read.
const READ_BUF: usize = 64 * 1024;

/// Errors setting up a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connecting to the peer failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The peer's address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Duplicating the socket or starting a thread failed.
    #[error("setting up the network backend")]
    Setup(#[source] io::Error),
}

/// What [`NetBackend::send`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued toward the host (or dropped because the link is down).
    Taken,
    /// The backend is full: the device keeps the frame and retries after
    /// the backend signals its wake event.
    Full(Vec<u8>),
}

/// A host-side network peer of the device.
pub trait NetBackend: Send + std::fmt::Debug {
    /// Hands one Ethernet frame (no virtio header) to the host.
    fn send(&mut self, frame: Vec<u8>) -> SendOutcome;
    /// The next frame from the host, if one is waiting.
    fn recv(&mut self) -> Option<Vec<u8>>;
    /// Link state, shared with the device's configuration space.
    fn link(&self) -> Arc<AtomicBool>;
    /// The event to signal when a frame arrives, room frees up or the link
    /// changes (`None`: the device is inactive).
    fn set_wake(&mut self, wake: Option<Arc<Event>>);
}

/// A connected byte stream a [`StreamBackend`] can run over.
pub trait StreamSocket: Read + Write + Send + 'static {
    /// A second handle to the same socket (for the other thread).
    fn try_clone_socket(&self) -> io::Result<Box<dyn StreamSocket>>;
    /// Shuts both directions, waking a blocked reader or writer.
    fn shutdown_both(&self);
}

impl StreamSocket for TcpStream {
    fn try_clone_socket(&self) -> io::Result<Box<dyn StreamSocket>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

#[cfg(unix)]
impl StreamSocket for std::os::unix::net::UnixStream {
    fn try_clone_socket(&self) -> io::Result<Box<dyn StreamSocket>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

type Wake = Arc<Mutex<Option<Arc<Event>>>>;

/// State shared by the backend and its two threads.
#[derive(Debug)]
struct Shared {
    link: Arc<AtomicBool>,
    wake: Wake,
    /// The device holds a frame it could not queue.
    tx_blocked: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        let w = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ev) = w.as_ref() {
            ev.signal();
        }
    }

    /// Takes the link down once, logging why.
    fn link_down(&self, why: &str, socket: &dyn StreamSocket) {
        if self.link.swap(false, Ordering::AcqRel) {
            log::warn!("network backend: link down: {why}");
        }
        socket.shutdown_both();
        self.wake();
    }
}

/// QEMU's stream protocol over a connected socket.
pub struct StreamBackend {
    shared: Arc<Shared>,
    to_host: SyncSender<Vec<u8>>,
    from_host: Receiver<Vec<u8>>,
    socket: Box<dyn StreamSocket>,
}

impl std::fmt::Debug for StreamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBackend")
            .field("link", &self.shared.link.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl StreamBackend {
    /// Connects to `addr` (`HOST:PORT`) over TCP.
    pub fn connect_tcp(addr: &str) -> Result<Self, BackendError> {
        let s = TcpStream::connect(addr).map_err(|source| BackendError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
        let _ = s.set_nodelay(true);
        Self::new(Box::new(s))
    }

    /// Connects to the Unix socket at `path`.
    #[cfg(unix)]
    pub fn connect_unix(path: &std::path::Path) -> Result<Self, BackendError> {
        let s = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
            BackendError::Connect {
                addr: path.display().to_string(),
                source,
            }
        })?;
        Self::new(Box::new(s))
    }

    /// Runs the protocol over an already connected socket.
    pub fn new(socket: Box<dyn StreamSocket>) -> Result<Self, BackendError> {
        let shared = Arc::new(Shared {
            link: Arc::new(AtomicBool::new(true)),
            wake: Arc::new(Mutex::new(None)),
            tx_blocked: AtomicBool::new(false),
        });
        let (to_host, host_rx) = mpsc::sync_channel(QUEUE_FRAMES);
        let (guest_tx, from_host) = mpsc::sync_channel(QUEUE_FRAMES);
        let rsock = socket.try_clone_socket().map_err(BackendError::Setup)?;
        let wsock = socket.try_clone_socket().map_err(BackendError::Setup)?;
        let sh = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("net-rx".into())
            .spawn(move || reader(rsock, &guest_tx, &sh))
            .map_err(BackendError::Setup)?;
        let sh = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("net-tx".into())
            .spawn(move || writer(wsock, &host_rx, &sh))
            .map_err(BackendError::Setup)?;
        Ok(Self {
            shared,
            to_host,
            from_host,
            socket,
        })
    }
}

impl NetBackend for StreamBackend {
    fn send(&mut self, frame: Vec<u8>) -> SendOutcome {
        if !self.shared.link.load(Ordering::Acquire) {
            return SendOutcome::Taken;
        }
        self.shared.tx_blocked.store(false, Ordering::SeqCst);
        match self.to_host.try_send(frame) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => SendOutcome::Taken,
            Err(TrySendError::Full(frame)) => {
                self.shared.tx_blocked.store(true, Ordering::SeqCst);
                // The writer may have drained the queue in between.
                match self.to_host.try_send(frame) {
                    Ok(()) | Err(TrySendError::Disconnected(_)) => SendOutcome::Taken,
                    Err(TrySendError::Full(frame)) => SendOutcome::Full(frame),
                }
            }
        }
    }

    fn recv(&mut self) -> Option<Vec<u8>> {
        self.from_host.try_recv().ok()
    }

    fn link(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.link)
    }

    fn set_wake(&mut self, wake: Option<Arc<Event>>) {
        *self
            .shared
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = wake;
        self.shared.wake();
    }
}

impl Drop for StreamBackend {
    fn drop(&mut self) {
        // Wakes both threads; they exit on the error or closed queue.
        self.shared.link.store(false, Ordering::Release);
        self.socket.shutdown_both();
    }
}

/// Reads frames from the peer until EOF, an error or a bad length.
fn reader(mut socket: Box<dyn StreamSocket>, to_guest: &SyncSender<Vec<u8>>, sh: &Shared) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match socket.read(&mut buf) {
            Ok(0) => {
                let why = match dec.finish() {
                    Ok(()) => "peer closed the connection".to_owned(),
                    Err(e) => format!("peer closed the connection: {e}"),
                };
                return sh.link_down(&why, socket.as_ref());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return sh.link_down(&format!("read: {e}"), socket.as_ref()),
        };
        let mut input = buf.get(..n).unwrap_or(&[]);
        while !input.is_empty() {
            match dec.decode(&mut input) {
                Ok(Some(frame)) => {
                    // Blocks while the guest is not taking frames.
                    if to_guest.send(frame).is_err() {
                        return; // the backend is gone
                    }
                    sh.wake();
                }
                Ok(None) => {}
                Err(e) => return sh.link_down(&e.to_string(), socket.as_ref()),
            }
        }
    }
}

/// Writes queued frames with their length prefix, flushing when the queue
/// runs empty.
fn writer(socket: Box<dyn StreamSocket>, from_guest: &Receiver<Vec<u8>>, sh: &Shared) {
    let mut out = BufWriter::with_capacity(WRITE_BUF, socket);
    let mut next = from_guest.recv().ok();
    while let Some(frame) = next {
        if sh.tx_blocked.swap(false, Ordering::SeqCst) {
            sh.wake();
        }
        let Some(prefix) = encode_prefix(frame.len()) else {
            log::warn!(
                "network backend: dropping a {}-byte frame (limit {MAX_FRAME})",
                frame.len()
            );
            next = from_guest.recv().ok();
            continue;
        };
        if let Err(e) = out.write_all(&prefix).and_then(|()| out.write_all(&frame)) {
            return sh.link_down(&format!("write: {e}"), out.get_ref().as_ref());
        }
        next = match from_guest.try_recv() {
            Ok(f) => Some(f),
            Err(TryRecvError::Empty) => {
                if let Err(e) = out.flush() {
                    return sh.link_down(&format!("write: {e}"), out.get_ref().as_ref());
                }
                from_guest.recv().ok()
            }
            Err(TryRecvError::Disconnected) => None,
        };
    }
    let _ = out.flush();
}
