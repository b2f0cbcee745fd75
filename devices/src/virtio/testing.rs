//! Test support shared by unit tests, the fuzz target and the benchmark: a
//! Linux-like virtio-mmio driver and a hand-built split ring over plain guest
//! memory. Not part of the VMM's device model; the helpers panic on misuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{MmioTransport, reg, status};
use crate::GuestMem;
use crate::bus::BusDevice;
use crate::interrupt::IrqLine;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
/// Device-writable descriptor.
pub const F_WRITE: u16 = 2;
/// Indirect descriptor table.
pub const F_INDIRECT: u16 = 4;

/// Counts rising edges.
#[derive(Debug, Default)]
pub struct PulseCounter {
    /// Rising edges seen.
    pub rising: AtomicU32,
    level: AtomicU32,
}

impl IrqLine for PulseCounter {
    fn set_level(&self, asserted: bool) {
        if asserted && self.level.swap(1, Ordering::SeqCst) == 0 {
            self.rising.fetch_add(1, Ordering::SeqCst);
        } else if !asserted {
            self.level.store(0, Ordering::SeqCst);
        }
    }
}

impl PulseCounter {
    pub fn count(&self) -> u32 {
        self.rising.load(Ordering::SeqCst)
    }
}

/// 16 MiB of guest RAM at 0.
pub fn guest_mem() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("guest memory")
}

/// A split virtqueue laid out by the "driver" in guest memory.
#[derive(Debug)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    /// A ring of `size` entries at `base` (needs about 20*size bytes).
    pub fn new(mem: &GuestMem, base: u64, size: u16) -> Ring {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let zero = vec![0u8; (used + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zero, GuestAddress(base))
            .expect("clear ring");
        Ring {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes descriptor `idx` raw.
    pub fn write_desc(&self, mem: &GuestMem, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = GuestAddress(self.desc + 16 * u64::from(idx));
        mem.write_obj(addr, a).expect("desc addr");
        mem.write_obj(len, GuestAddress(a.0 + 8)).expect("desc len");
        mem.write_obj(flags, GuestAddress(a.0 + 12))
            .expect("desc flags");
        mem.write_obj(next, GuestAddress(a.0 + 14))
            .expect("desc next");
    }

    /// Writes a chain of (addr, len, flags) linked with NEXT; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMem, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            self.write_desc(mem, idx, addr, len, flags, (idx + 1) % self.size);
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, mem: &GuestMem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail slot");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// Puts several heads in the available ring, bumping its index once.
    pub fn publish_batch(&mut self, mem: &GuestMem, heads: &[u16]) {
        for &head in heads {
            let slot = u64::from(self.avail_idx % self.size);
            mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
                .expect("avail slot");
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// The driver's current avail index.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Sets the avail ring's raw index (for malicious tests).
    pub fn set_avail_idx(&mut self, mem: &GuestMem, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// Writes `used_event` (EVENT_IDX).
    pub fn set_used_event(&self, mem: &GuestMem, v: u16) {
        let a = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(v, GuestAddress(a)).expect("used_event");
    }

    /// The device's `avail_event` (EVENT_IDX).
    pub fn avail_event(&self, mem: &GuestMem) -> u16 {
        let a = self.used + 4 + 8 * u64::from(self.size);
        mem.read_obj(GuestAddress(a)).expect("avail_event")
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMem) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).expect("used idx")
    }

    /// Next (id, len) from the used ring, if any.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let slot = u64::from(self.used_seen % self.size);
        let a = self.used + 4 + 8 * slot;
        let id = mem.read_obj(GuestAddress(a)).expect("used id");
        let len = mem.read_obj(GuestAddress(a + 4)).expect("used len");
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id, len))
    }

    /// Waits up to 5 s for the next used entry.
    pub fn wait_used(&mut self, mem: &GuestMem) -> Option<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(u) = self.pop_used(mem) {
                return Some(u);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Drives a transport as Linux's virtio_mmio does.
#[derive(Debug)]
pub struct Driver {
    pub t: MmioTransport,
}

impl Driver {
    pub fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    pub fn device_features(&mut self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(self.read(reg::DEVICE_FEATURES));
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        (hi << 32) | u64::from(self.read(reg::DEVICE_FEATURES))
    }

    /// Reset, ACK, DRIVER, negotiate `wanted & offered`, FEATURES_OK.
    /// Returns the negotiated features (panics if FEATURES_OK is refused).
    pub fn negotiate(&mut self, wanted: u64) -> u64 {
        assert_eq!(self.read(reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.read(reg::VERSION), 2);
        self.write(reg::STATUS, 0);
        self.write(reg::STATUS, status::ACKNOWLEDGE);
        self.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let features = self.device_features() & wanted;
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write(reg::STATUS, s);
        assert_eq!(self.read(reg::STATUS), s, "FEATURES_OK accepted");
        features
    }

    /// Sets up queue `idx` on `ring`, as vm_setup_vq does.
    pub fn setup_queue(&mut self, idx: u32, ring: &Ring) {
        self.write(reg::QUEUE_SEL, idx);
        assert_eq!(self.read(reg::QUEUE_READY), 0);
        let max = self.read(reg::QUEUE_NUM_MAX);
        assert!(max >= u32::from(ring.size), "queue max {max}");
        self.write(reg::QUEUE_NUM, u32::from(ring.size));
        for (lo, v) in [
            (reg::QUEUE_DESC_LOW, ring.desc),
            (reg::QUEUE_DRIVER_LOW, ring.avail),
            (reg::QUEUE_DEVICE_LOW, ring.used),
        ] {
            self.write(lo, v as u32);
            self.write(lo + 4, (v >> 32) as u32);
        }
        self.write(reg::QUEUE_READY, 1);
        assert_eq!(self.read(reg::QUEUE_READY), 1);
    }

    pub fn driver_ok(&mut self) {
        let s = self.read(reg::STATUS);
        self.write(reg::STATUS, s | status::DRIVER_OK);
    }

    pub fn notify(&mut self, queue: u32) {
        self.write(reg::QUEUE_NOTIFY, queue);
    }

    /// vm_interrupt: read InterruptStatus and acknowledge it.
    pub fn ack_interrupt(&mut self) -> u32 {
        let s = self.read(reg::INTERRUPT_STATUS);
        self.write(reg::INTERRUPT_ACK, s);
        s
    }

    pub fn config_bytes(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.t.read(reg::CONFIG + offset, &mut v);
        v
    }
}

/// A transport + driver for `device` over fresh guest memory.
pub fn driver_for(device: Box<dyn super::VirtioDevice>) -> (Driver, GuestMem, Arc<PulseCounter>) {
    let mem = guest_mem();
    let irq = Arc::new(PulseCounter::default());
    let t = MmioTransport::new(device, mem.clone(), Arc::clone(&irq) as Arc<dyn IrqLine>);
    (Driver { t }, mem, irq)
}
