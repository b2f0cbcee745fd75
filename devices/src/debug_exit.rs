//! QEMU isa-debug-exit compatible port (iobase 0xf4) for test guests.
//!
//! A write of `v` (1, 2 or 4 bytes, little-endian) requests
//! [`GuestExit::DebugExit`]`(v)`; the VMM turns it into process status
//! `(v << 1) | 1`, as QEMU does. Reads return 0.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};
use crate::warn_ratelimited;

/// The device.
#[derive(Debug)]
pub struct DebugExit {
    exit: Arc<ExitSignal>,
}

impl DebugExit {
    /// A debug-exit port reporting through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> DebugExit {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match (offset, data) {
            (0, [a]) => u32::from(*a),
            (0, [a, b]) => u32::from(u16::from_le_bytes([*a, *b])),
            (0, [a, b, c, d]) => u32::from_le_bytes([*a, *b, *c, *d]),
            _ => {
                warn_ratelimited!("debug-exit: bad write at {offset:#x} size {}", data.len());
                return;
            }
        };
        self.exit.request(GuestExit::DebugExit(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(data: &[u8]) -> Option<GuestExit> {
        let exit = Arc::new(ExitSignal::new());
        DebugExit::new(Arc::clone(&exit)).write(0, data);
        exit.get()
    }

    #[test]
    fn every_size_is_little_endian() {
        assert_eq!(write(&[0x21]), Some(GuestExit::DebugExit(0x21)));
        assert_eq!(write(&[0x34, 0x12]), Some(GuestExit::DebugExit(0x1234)));
        assert_eq!(
            write(&[0x78, 0x56, 0x34, 0x12]),
            Some(GuestExit::DebugExit(0x1234_5678))
        );
    }

    #[test]
    fn odd_sizes_and_offsets_are_ignored() {
        assert_eq!(write(&[1, 2, 3]), None);
        assert_eq!(write(&[1, 2, 3, 4, 5, 6, 7, 8]), None);
        let exit = Arc::new(ExitSignal::new());
        DebugExit::new(Arc::clone(&exit)).write(1, &[1]);
        assert_eq!(exit.get(), None);
    }
}
