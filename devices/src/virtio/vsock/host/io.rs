//! The byte buffers between one vsock connection and its host peer.
//!
//! The device worker and two host I/O tasks (reader, writer) share a
//! [`HostIo`]. Both directions are bounded: the reader stops reading the host
//! stream when `to_guest` is full (so a host writer is backpressured by its
//! socket), and the device never accepts more guest data than `to_host` can
//! hold (the guest is held back by credit).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::event::Event;

/// Per-direction buffer bound: the credit the device advertises to the guest,
/// and the most host data read ahead of the guest.
pub const CONN_BUF: usize = 256 * 1024;
/// Largest single read or write on the host stream.
const IO_CHUNK: usize = 64 * 1024;
/// How long a closed connection may take to flush buffered guest data.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared state of one connection's host side. Lock with [`HostIo::lock`].
#[derive(Debug, Default)]
pub struct IoState {
    /// Host bytes not yet sent to the guest.
    pub to_guest: VecDeque<u8>,
    /// The host closed its sending side (EOF).
    pub host_eof: bool,
    /// Bytes for the host before any guest data (the `OK <port>\n` reply).
    pub preamble: Vec<u8>,
    /// Whether the writer may start (the connection is established).
    pub established: bool,
    /// Guest bytes not yet written to the host.
    pub to_host: VecDeque<u8>,
    /// Guest bytes written to the host so far (the device's `fwd_cnt`).
    pub delivered: u32,
    /// The guest will send nothing more: shut the host stream's write side
    /// once `to_host` is flushed.
    pub guest_eof: bool,
    /// The host stream failed (reset, broken pipe): the device resets the
    /// connection.
    pub failed: bool,
    /// The device dropped the connection: stop reading, flush and close.
    pub closed: bool,
}

/// One connection's host side, shared by the device worker and the I/O tasks.
#[derive(Debug)]
pub struct HostIo {
    state: Mutex<IoState>,
    wake_reader: Notify,
    wake_writer: Notify,
    device: Arc<Mutex<Option<Arc<Event>>>>,
}

impl HostIo {
    /// A new, empty connection waking the device through `device`.
    pub fn new(device: Arc<Mutex<Option<Arc<Event>>>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(IoState::default()),
            wake_reader: Notify::new(),
            wake_writer: Notify::new(),
            device,
        })
    }

    /// Locks the shared state.
    pub fn lock(&self) -> MutexGuard<'_, IoState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes both I/O tasks (call after changing the state they wait on).
    pub fn wake_tasks(&self) {
        self.wake_reader.notify_one();
        self.wake_writer.notify_one();
    }

    /// Marks the connection dropped by the device and wakes the tasks.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake_tasks();
    }

    fn wake_device(&self) {
        let dev = self
            .device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(ev) = dev {
            ev.signal();
        }
    }

    /// Moves bytes between `stream` and the buffers until the connection ends.
    pub async fn pump<S>(self: Arc<Self>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        tokio::join!(Arc::clone(&self).read_side(r), self.write_side(w));
    }

    async fn read_side<R: AsyncRead + Unpin>(self: Arc<Self>, mut r: R) {
        let mut buf = vec![0u8; IO_CHUNK];
        loop {
            let room = {
                let st = self.lock();
                if st.closed || st.failed || st.host_eof {
                    return;
                }
                CONN_BUF.saturating_sub(st.to_guest.len()).min(IO_CHUNK)
            };
            if room == 0 {
                self.wake_reader.notified().await;
                continue;
            }
            let res = tokio::select! {
                res = r.read(&mut buf[..room]) => res,
                () = self.wake_reader.notified() => continue,
            };
            {
                let mut st = self.lock();
                match res {
                    Ok(0) => st.host_eof = true,
                    Ok(n) => st.to_guest.extend(&buf[..n]),
                    Err(e) => {
                        log::debug!("vsock: host stream read failed: {e}");
                        st.failed = true;
                    }
                }
            }
            self.wake_device();
        }
    }

    async fn write_side<W: AsyncWrite + Unpin>(self: Arc<Self>, mut w: W) {
        let mut chunk = Vec::with_capacity(IO_CHUNK);
        let mut deadline = None;
        let mut shut = false;
        loop {
            chunk.clear();
            let (is_preamble, eof, closed) = {
                let st = self.lock();
                if st.failed {
                    return;
                }
                let is_preamble = !st.preamble.is_empty();
                if is_preamble {
                    chunk.extend_from_slice(&st.preamble);
                } else if st.established {
                    let n = st.to_host.len().min(IO_CHUNK);
                    let (a, b) = st.to_host.as_slices();
                    let na = a.len().min(n);
                    chunk.extend_from_slice(&a[..na]);
                    chunk.extend_from_slice(&b[..n - na]);
                }
                (is_preamble, st.guest_eof, st.closed)
            };
            if closed && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + FLUSH_TIMEOUT);
            }
            if chunk.is_empty() {
                if (eof || closed) && !shut {
                    // Everything the guest sent is written: half-close or close.
                    let _ = w.shutdown().await;
                    shut = true;
                }
                if closed {
                    return;
                }
                self.wake_writer.notified().await;
                continue;
            }
            let timeout = deadline.unwrap_or_else(|| tokio::time::Instant::now() + FLUSH_TIMEOUT);
            let res = tokio::select! {
                res = w.write(&chunk) => res,
                () = self.wake_writer.notified() => continue,
                () = tokio::time::sleep_until(timeout), if closed => return,
            };
            {
                let mut st = self.lock();
                match res {
                    Ok(0) => st.failed = true,
                    Ok(n) if is_preamble => {
                        st.preamble.drain(..n);
                    }
                    Ok(n) => {
                        st.to_host.drain(..n);
                        st.delivered = st.delivered.wrapping_add(n as u32);
                    }
                    Err(e) => {
                        log::debug!("vsock: host stream write failed: {e}");
                        st.failed = true;
                    }
                }
            }
            self.wake_device();
        }
    }
}
