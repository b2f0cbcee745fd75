//! The recording test device behind the PIO, MMIO and interrupt cases.
//!
//! Reads return a fixed byte pattern derived from the offset, so the guest
//! can check what it read; every access is recorded so the host can check
//! what the guest wrote, at which offset and with which size. A write to
//! [`IRQ_REG`] pulses the device's interrupt line after the written number
//! of milliseconds.

use krypton_devices::bus::BusDevice;
use krypton_devices::interrupt::IrqLine;
use std::sync::Arc;
use std::time::Duration;

/// Offset of the "raise my IRQ after N ms" register (MMIO instances).
pub const IRQ_REG: u64 = 0xf00;
/// Offset of the "set my IRQ line to this level" register (nonzero = high).
pub const IRQ_LEVEL_REG: u64 = 0xf04;
/// Longest delay honoured by [`IRQ_REG`].
const MAX_IRQ_DELAY_MS: u32 = 1000;
/// Most accesses kept; later ones are counted in `dropped`.
const MAX_LOG: usize = 4096;

/// The byte a read at `offset` returns.
pub fn pattern(offset: u64) -> u8 {
    (offset as u8).wrapping_mul(0x1d) ^ 0xa5
}

/// `n` pattern bytes starting at `offset`, as a little-endian integer.
pub fn pattern_value(offset: u64, n: u64) -> u64 {
    (0..n)
        .rev()
        .fold(0, |v, i| (v << 8) | u64::from(pattern(offset + i)))
}

/// Direction of a recorded access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The guest read.
    Read,
    /// The guest wrote.
    Write,
}

/// One recorded access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Read or write.
    pub dir: Dir,
    /// Offset from the device base.
    pub offset: u64,
    /// Bytes written, or returned to the guest.
    pub data: Vec<u8>,
}

impl Access {
    /// A write access with `data`.
    pub fn write(offset: u64, data: &[u8]) -> Self {
        Access {
            dir: Dir::Write,
            offset,
            data: data.to_vec(),
        }
    }
    /// A read access of `n` bytes (with the pattern as data).
    pub fn read(offset: u64, n: u64) -> Self {
        Access {
            dir: Dir::Read,
            offset,
            data: (0..n).map(|i| pattern(offset + i)).collect(),
        }
    }
}

/// The recording device.
#[derive(Default)]
pub struct TestDevice {
    log: Vec<Access>,
    dropped: usize,
    irq: Option<Arc<dyn IrqLine>>,
}

impl std::fmt::Debug for TestDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDevice")
            .field("log", &self.log.len())
            .finish_non_exhaustive()
    }
}

impl TestDevice {
    /// A device with an empty log and no interrupt line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the interrupt line pulsed through [`IRQ_REG`].
    pub fn set_irq(&mut self, irq: Arc<dyn IrqLine>) {
        self.irq = Some(irq);
    }

    /// Accesses recorded so far.
    pub fn log(&self) -> &[Access] {
        &self.log
    }

    /// Accesses not recorded because the log was full.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    fn record(&mut self, a: Access) {
        if self.log.len() < MAX_LOG {
            self.log.push(a);
        } else {
            self.dropped += 1;
        }
    }

    fn raise_irq(&self, data: &[u8]) {
        let Some(irq) = self.irq.clone() else {
            krypton_devices::warn_ratelimited!("selftest device: IRQ requested but none wired");
            return;
        };
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let ms = u32::from_le_bytes(b).min(MAX_IRQ_DELAY_MS);
        if ms == 0 {
            irq.pulse();
            return;
        }
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(u64::from(ms)));
            irq.pulse();
        });
    }
}

impl BusDevice for TestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = pattern(offset.wrapping_add(i as u64));
        }
        self.record(Access {
            dir: Dir::Read,
            offset,
            data: data.to_vec(),
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.record(Access::write(offset, data));
        if offset == IRQ_REG {
            self.raise_irq(data);
        } else if offset == IRQ_LEVEL_REG {
            match &self.irq {
                Some(irq) => irq.set_level(data.iter().any(|b| *b != 0)),
                None => krypton_devices::warn_ratelimited!(
                    "selftest device: IRQ level set but none wired"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct CountingLine(AtomicU32);
    impl IrqLine for CountingLine {
        fn set_level(&self, asserted: bool) {
            if asserted {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn reads_return_the_pattern_and_are_recorded() {
        let mut d = TestDevice::new();
        let mut buf = [0u8; 4];
        d.read(6, &mut buf);
        assert_eq!(u32::from_le_bytes(buf) as u64, pattern_value(6, 4));
        assert_eq!(buf[0], pattern(6));
        assert_eq!(buf[3], pattern(9));
        assert_eq!(d.log(), &[Access::read(6, 4)]);
    }

    #[test]
    fn pattern_bytes_differ_and_some_are_negative() {
        let bytes: Vec<u8> = (0..16).map(pattern).collect();
        let mut sorted = bytes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            16,
            "byte order would be invisible: {bytes:x?}"
        );
        assert!(bytes.iter().any(|b| *b >= 0x80) && bytes.iter().any(|b| *b < 0x80));
    }

    #[test]
    fn writes_are_recorded_and_the_log_is_bounded() {
        let mut d = TestDevice::new();
        d.write(2, &[0x34, 0x12]);
        assert_eq!(d.log(), &[Access::write(2, &[0x34, 0x12])]);
        for _ in 0..MAX_LOG + 10 {
            d.write(0, &[1]);
        }
        assert_eq!(d.log().len(), MAX_LOG);
        assert_eq!(d.dropped(), 11);
    }

    #[test]
    fn irq_register_pulses_the_line_now_or_later() {
        let line = Arc::new(CountingLine::default());
        let mut d = TestDevice::new();
        d.write(IRQ_REG, &0u32.to_le_bytes()); // no line: logged, ignored
        d.set_irq(line.clone());
        d.write(IRQ_REG, &0u32.to_le_bytes());
        assert_eq!(line.0.load(Ordering::SeqCst), 1);
        d.write(IRQ_REG, &20u32.to_le_bytes());
        assert_eq!(line.0.load(Ordering::SeqCst), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while line.0.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(line.0.load(Ordering::SeqCst), 2);
        d.write(IRQ_LEVEL_REG, &[1, 0, 0, 0]);
        assert_eq!(line.0.load(Ordering::SeqCst), 3);
    }
}
