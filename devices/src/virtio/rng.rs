//! virtio-rng (entropy device) fed from the host OS RNG.
//!
//! One queue; each request is a chain of device-writable buffers which the
//! worker fills with random bytes, at most [`MAX_REQUEST`] bytes per
//! request. Device-readable descriptors are skipped; buffers outside guest
//! memory end the request.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use super::worker::{Worker, spawn_single_queue};
use super::{ActivateContext, ActivateError, VirtioDevice};
use crate::GuestMem;
use crate::warn_ratelimited;

/// Virtio device ID of an entropy device.
pub const RNG_DEVICE_ID: u32 = 4;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes supplied per request.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A virtio-rng device.
#[derive(Debug, Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    /// A new, inactive entropy device.
    pub fn new() -> Rng {
        Rng::default()
    }
}

/// Fills the writable buffers of `chain` with up to [`MAX_REQUEST`] random
/// bytes; returns how many were written.
pub fn fill_chain(mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> u32 {
    let mut buf = Vec::new();
    let mut written = 0usize;
    for desc in chain.writable() {
        let room = MAX_REQUEST - written;
        if room == 0 {
            break;
        }
        let len = (desc.len() as usize).min(room);
        buf.resize(len, 0);
        if let Err(e) = getrandom::fill(&mut buf) {
            warn_ratelimited!("virtio-rng: host RNG failed: {e}");
            break;
        }
        if mem.write_slice(&buf, GuestAddress(desc.addr().0)).is_err() {
            warn_ratelimited!("virtio-rng: buffer outside guest memory");
            break;
        }
        written += len;
    }
    u32::try_from(written).unwrap_or(u32::MAX)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        RNG_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.reset();
        self.worker = Some(spawn_single_queue("virtio-rng", ctx, fill_chain)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mmio::reg;
    use crate::virtio::testing::{F_WRITE, Ring, driver_for};

    const BUF: u64 = 0x20_0000;

    fn setup() -> (crate::virtio::testing::Driver, GuestMem, Ring) {
        let (mut d, mem, _irq) = driver_for(Box::new(Rng::new()));
        let ring = Ring::new(&mem, 0x10000, QUEUE_SIZE);
        d.negotiate(u64::MAX);
        d.setup_queue(0, &ring);
        d.driver_ok();
        assert!(d.t.is_activated());
        (d, mem, ring)
    }

    fn read(mem: &GuestMem, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
        v
    }

    #[test]
    fn fills_buffers_like_linux_virtio_rng_expects() {
        let (mut d, mem, mut ring) = setup();
        assert_eq!(d.read(reg::DEVICE_ID), RNG_DEVICE_ID);
        // Linux's virtio-rng posts one writable buffer (SMP_CACHE_BYTES or more).
        ring.add_chain(&mem, &[(BUF, 64, F_WRITE)]);
        d.notify(0);
        assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(64));
        let a = read(&mem, BUF, 64);
        assert_ne!(a, vec![0u8; 64], "random bytes arrived");
        ring.add_chain(&mem, &[(BUF, 32, F_WRITE), (BUF + 0x1000, 32, F_WRITE)]);
        d.notify(0);
        assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(64));
        assert_ne!(
            read(&mem, BUF, 32),
            a[..32].to_vec(),
            "fresh bytes each time"
        );
        assert_eq!(d.ack_interrupt() & 1, 1);
    }

    #[test]
    fn requests_are_capped_at_64_kib() {
        let (mut d, mem, mut ring) = setup();
        let canary = 0x20_0000 + MAX_REQUEST as u64;
        mem.write_slice(&[0u8; 4096], GuestAddress(canary))
            .expect("zero");
        ring.add_chain(&mem, &[(BUF, 2 * MAX_REQUEST as u32, F_WRITE)]);
        d.notify(0);
        assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(MAX_REQUEST as u32));
        assert_eq!(
            read(&mem, canary, 4096),
            vec![0u8; 4096],
            "nothing beyond 64 KiB"
        );
    }

    #[test]
    fn bad_buffers_are_skipped_or_cut_short() {
        let (mut d, mem, mut ring) = setup();
        mem.write_slice(&[0u8; 16], GuestAddress(BUF))
            .expect("zero");
        // Readable descriptor: skipped. Out-of-memory buffer: ends the request.
        ring.add_chain(
            &mem,
            &[
                (BUF, 16, 0),
                (16 << 20, 16, F_WRITE),
                (BUF + 16, 16, F_WRITE),
            ],
        );
        d.notify(0);
        assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(0));
        assert_eq!(read(&mem, BUF, 16), vec![0u8; 16]);
        ring.add_chain(&mem, &[(BUF, u32::MAX, F_WRITE)]);
        d.notify(0);
        assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(MAX_REQUEST as u32));
        ring.add_chain(&mem, &[(BUF, 8, F_WRITE)]);
        d.notify(0);
        assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(8), "still healthy");
    }

    #[test]
    fn a_restored_transport_continues_where_the_saved_one_stopped() {
        let (mut d, mem, mut ring) = setup();
        for _ in 0..2 {
            ring.add_chain(&mem, &[(BUF, 16, F_WRITE)]);
            d.notify(0);
            assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(16));
        }
        let saved = d.t.save_state();
        assert!(!d.t.is_activated(), "saving stops the device");
        assert_eq!(saved.device_type, RNG_DEVICE_ID);
        assert_eq!(saved.queues[0].progress, 2);
        // A chain the driver posts while the VM is saved is served after
        // the restore, by a new transport over the same memory.
        ring.add_chain(&mem, &[(BUF, 24, F_WRITE)]);
        let irq = std::sync::Arc::new(crate::virtio::testing::PulseCounter::default());
        let mut t = crate::virtio::mmio::MmioTransport::new(
            Box::new(Rng::new()),
            mem.clone(),
            irq.clone() as std::sync::Arc<dyn crate::interrupt::IrqLine>,
        );
        t.restore_state(&saved).expect("restore");
        assert!(t.is_activated());
        assert_eq!(ring.wait_used(&mem).map(|u| u.1), Some(24));
        assert_eq!(ring.used_idx(&mem), 3);
        // A different device in the slot is refused.
        let mut other = saved.clone();
        other.device_type = 2;
        let mut t2 = crate::virtio::mmio::MmioTransport::new(
            Box::new(Rng::new()),
            mem.clone(),
            irq as std::sync::Arc<dyn crate::interrupt::IrqLine>,
        );
        assert!(t2.restore_state(&other).is_err());
        assert!(!t2.is_activated());
    }
}
