//! Address-range dispatch from an exit to a device: one `Bus` for port I/O
//! and one for MMIO. Built before the vCPUs start, read-only afterwards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use krypton_devices::bus::BusDevice;

use crate::hv::IoOp;
use krypton_devices::debug_ratelimited;

/// A device shared between the bus and whoever configured it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors while populating a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps a registered one.
    #[error("{kind} range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// "port" or "MMIO".
        kind: &'static str,
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// Zero-length or wrapping range.
    #[error("{kind} range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// "port" or "MMIO".
        kind: &'static str,
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// Devices keyed by the start of their range.
pub struct Bus {
    kind: &'static str,
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus")
            .field("kind", &self.kind)
            .field("ranges", &ranges)
            .finish()
    }
}

impl Bus {
    /// An empty bus; `kind` names it in messages ("port", "MMIO").
    pub fn new(kind: &'static str) -> Self {
        Bus {
            kind,
            ranges: BTreeMap::new(),
        }
    }

    /// Registers `dev` for `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let kind = self.kind;
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { kind, base, len })?;
        let before = self.ranges.range(..end).next_back();
        if before.is_some_and(|(b, e)| b + e.len > base) {
            return Err(BusError::Overlap { kind, base, len });
        }
        self.ranges.insert(base, Entry { len, dev });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, e) = self.ranges.range(..=addr).next_back()?;
        (addr - base < e.len).then_some((addr - base, e))
    }

    /// Reads `data.len()` bytes at `addr`. Unclaimed addresses read as 0xff
    /// (an absent device on a real bus) and are logged at debug level,
    /// rate-limited: kernels probe legacy ports (PIC, PIT, DMA) routinely.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, e)) => e
                .dev
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read(offset, data),
            None => {
                data.fill(0xff);
                debug_ratelimited!(
                    "unclaimed {} read at {addr:#x} ({} bytes)",
                    self.kind,
                    data.len()
                );
            }
        }
    }

    /// Performs one exit's access: a read fills the buffer, a write stores it.
    pub fn access(&self, addr: u64, op: IoOp<'_>) {
        match op {
            IoOp::Read(data) => self.read(addr, data),
            IoOp::Write(data) => self.write(addr, data),
        }
    }

    /// Writes `data` at `addr`. Unclaimed writes are dropped and logged.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some((offset, e)) => e
                .dev
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(offset, data),
            None => {
                debug_ratelimited!("unclaimed {} write at {addr:#x}: {data:02x?}", self.kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new("MMIO");
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x1000, 0x100, a.clone()).expect("insert");
        bus.write(0x1010, &[1, 2]);
        let mut buf = [0u8; 4];
        bus.read(0x10ff, &mut buf);
        assert_eq!(buf, [0xff; 4], "offset 0xff echoed");
        bus.read(0x1004, &mut buf);
        assert_eq!(buf, [4; 4]);
        assert_eq!(a.lock().expect("lock").writes, vec![(0x10, vec![1, 2])]);
    }

    #[test]
    fn unclaimed_reads_are_all_ones_and_writes_are_dropped() {
        let mut bus = Bus::new("port");
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x60, 1, a.clone()).expect("insert");
        let mut buf = [0u8; 2];
        bus.read(0x61, &mut buf);
        assert_eq!(buf, [0xff, 0xff]);
        bus.write(0x5f, &[1]);
        assert!(a.lock().expect("lock").writes.is_empty());
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new("MMIO");
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(0x1000, 0x1000, d()).expect("first");
        assert!(matches!(
            bus.insert(0x1800, 0x1000, d()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x0800, 0x1000, d()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x3000, 0, d()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, d()),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0x2000, 0x10, d()).expect("adjacent is fine");
        bus.insert(0x0, 0x1000, d())
            .expect("adjacent below is fine");
    }
}
