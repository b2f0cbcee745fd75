//! A driver-side split virtqueue in plain guest memory, laid out and used
//! the way Linux's virtio_ring does (free descriptor list, avail ring
//! published with a barrier, used ring polled).

use std::sync::atomic::{Ordering, fence};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use krypton_devices::GuestMem;

/// Descriptor continues in `next`.
pub const F_NEXT: u16 = 1;
/// Device-writable descriptor.
pub const F_WRITE: u16 = 2;

/// One split ring.
#[derive(Debug)]
pub struct Ring {
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    /// A ring of `size` entries whose structures start at `base`.
    pub fn new(mem: &GuestMem, base: u64, size: u16) -> Ring {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let end = used + 6 + 8 * u64::from(size);
        let zero = vec![0u8; (end - base) as usize];
        mem.write_slice(&zero, GuestAddress(base))
            .expect("clear ring");
        Ring {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The device-side queue for this ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Free descriptors.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Descriptor slot numbers for a chain of `n` (None if the ring is full).
    pub fn alloc(&mut self, n: usize) -> Option<Vec<u16>> {
        if self.free.len() < n || n == 0 {
            return None;
        }
        Some(
            (0..n)
                .map(|_| self.free.pop().expect("free desc"))
                .collect(),
        )
    }

    /// Writes a chain over `ids` with (addr, len, writable) buffers and
    /// makes it available. Returns the head index.
    pub fn publish(&mut self, mem: &GuestMem, ids: &[u16], bufs: &[(u64, u32, bool)]) -> u16 {
        for (i, (&id, &(addr, len, w))) in ids.iter().zip(bufs).enumerate() {
            let mut flags = if w { F_WRITE } else { 0 };
            let next = ids.get(i + 1).copied().unwrap_or(0);
            if i + 1 < ids.len() {
                flags |= F_NEXT;
            }
            self.write_desc(mem, id, addr, len, flags, next);
        }
        self.push_avail(mem, ids[0]);
        ids[0]
    }

    /// Writes one raw descriptor.
    pub fn write_desc(&self, mem: &GuestMem, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = self.desc + 16 * u64::from(id);
        mem.write_obj(addr, GuestAddress(a)).expect("desc");
        mem.write_obj(len, GuestAddress(a + 8)).expect("desc");
        mem.write_obj(flags, GuestAddress(a + 12)).expect("desc");
        mem.write_obj(next, GuestAddress(a + 14)).expect("desc");
    }

    /// Puts `head` in the avail ring and publishes the new index.
    pub fn push_avail(&mut self, mem: &GuestMem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail");
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
        fence(Ordering::SeqCst);
    }

    /// The next used element (head, len), if any. The caller frees the chain.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Option<(u16, u32)> {
        fence(Ordering::SeqCst);
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).expect("used idx");
        if idx == self.used_seen {
            return None;
        }
        fence(Ordering::SeqCst);
        let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(e)).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).expect("used len");
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Returns descriptors to the free list.
    pub fn free(&mut self, ids: &[u16]) {
        self.free.extend_from_slice(ids);
    }
}
