//! virtio-fs: host directories served to the guest's virtiofs driver with
//! FUSE over virtqueues, in the VMM process (no external daemon).
//!
//! Queue 0 is the high-priority queue (FORGET, BATCH_FORGET), queue 1 the
//! one request queue. Each descriptor chain carries one FUSE request in its
//! device-readable part and room for the reply in its device-writable part.
//! The worker gathers at most [`server::MAX_REQUEST`] readable bytes,
//! decodes them ([`request`]), calls the [`Filesystem`] backend
//! ([`server`]) and scatters the reply. The configuration space is the
//! mount tag (36 bytes, NUL padded) and the number of request queues.
//!
//! Backends: [`passthrough`] (Linux) serves a host directory with O_PATH
//! handles and `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`;
//! [`portable`] (Windows, also built and tested on Linux) serves one on
//! `std::fs` with checked single-component names and no link followed.

pub mod abi;
pub mod filesystem;
#[doc(hidden)]
pub mod fuzz;
mod handles;
#[cfg(target_os = "linux")]
pub mod passthrough;
pub mod portable;
pub mod request;
pub mod server;

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::worker::{QueueState, Worker, drain_queue};
use super::{ActivateContext, ActivateError, VirtioDevice};
use crate::GuestMem;
use crate::warn_ratelimited;
pub use filesystem::Filesystem;
pub use server::Server;

/// Virtio device ID of a filesystem device.
pub const FS_DEVICE_ID: u32 = 26;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Longest mount tag (the config space's `tag` field).
pub const TAG_LEN: usize = 36;
/// Descriptors per chain the device follows; longer chains are refused.
pub const MAX_SEGMENTS: usize = 1024;
/// Configuration space: tag, then num_request_queues (u32 LE).
const CONFIG_LEN: usize = TAG_LEN + 4;

/// Errors creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, longer than 36 bytes or contains a NUL.
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes without NUL")]
    BadTag(String),
}

/// A virtio-fs device.
#[derive(Debug)]
pub struct VirtioFs {
    config: [u8; CONFIG_LEN],
    server: Arc<Server>,
    worker: Option<Worker>,
}

impl VirtioFs {
    /// A device announcing mount tag `tag`, served by `fs`.
    pub fn new(tag: &str, fs: Box<dyn Filesystem>) -> Result<VirtioFs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::BadTag(tag.to_owned()));
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(VirtioFs {
            config,
            server: Arc::new(Server::new(fs)),
            worker: None,
        })
    }
}

/// One descriptor, flattened.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: u64,
    len: usize,
}

fn in_memory(mem: &GuestMem, seg: Segment) -> bool {
    seg.len == 0 || mem.check_range(GuestAddress(seg.addr), seg.len)
}

/// Handles one chain: returns the bytes written to it. Malformed chains
/// (readable after writable, outside guest memory, too long) are returned
/// unanswered with length 0.
pub fn process_chain(server: &Server, mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> u32 {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for (count, desc) in chain.enumerate() {
        let seg = Segment {
            addr: desc.addr().0,
            len: desc.len() as usize,
        };
        if count >= MAX_SEGMENTS || !in_memory(mem, seg) {
            warn_ratelimited!("virtio-fs: chain too long or outside guest memory");
            return 0;
        }
        if desc.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            warn_ratelimited!("virtio-fs: device-readable descriptor after a writable one");
            return 0;
        }
    }
    let in_len: usize = readable.iter().map(|s| s.len).sum();
    if in_len > server::MAX_REQUEST {
        warn_ratelimited!("virtio-fs: request of {in_len} bytes is too long");
        return 0;
    }
    let mut input = vec![0u8; in_len];
    let mut done = 0;
    for seg in &readable {
        let Some(dst) = input.get_mut(done..done + seg.len) else {
            return 0;
        };
        if mem.read_slice(dst, GuestAddress(seg.addr)).is_err() {
            warn_ratelimited!("virtio-fs: request outside guest memory");
            return 0;
        }
        done += seg.len;
    }
    let out_cap: usize = writable.iter().map(|s| s.len).sum();
    let Some(reply) = server.handle(&input, out_cap) else {
        return 0;
    };
    if reply.len() > out_cap {
        warn_ratelimited!(
            "virtio-fs: reply of {} bytes does not fit the guest's {out_cap}",
            reply.len()
        );
        return 0;
    }
    let mut done = 0;
    for seg in &writable {
        if done == reply.len() {
            break;
        }
        let n = seg.len.min(reply.len() - done);
        let Some(src) = reply.get(done..done + n) else {
            return 0;
        };
        if mem.write_slice(src, GuestAddress(seg.addr)).is_err() {
            return 0;
        }
        done += n;
    }
    u32::try_from(done).unwrap_or(u32::MAX)
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        FS_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|a| self.config.get(a)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.reset();
        let ActivateContext {
            mem,
            interrupt,
            queues,
            notify,
            ..
        } = ctx;
        let got = queues.len();
        let Ok(queues) = <[_; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let server = Arc::clone(&self.server);
        let mut queues = queues.map(|q| (q, false));
        let body = move || {
            for (queue, broken) in &mut queues {
                if !*broken {
                    let state = drain_queue(queue, &mem, interrupt.as_ref(), |chain| {
                        process_chain(&server, &mem, chain)
                    });
                    *broken = state == QueueState::Broken;
                }
            }
        };
        self.worker =
            Some(Worker::spawn("virtio-fs", notify, body).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        self.server.reset();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests;
