//! A minimal i8042 keyboard controller: enough for Linux's `reboot=k`.
//!
//! Registered on ports 0x60..=0x64: offset 0 is the data port (0x60),
//! offset 4 the command/status port (0x64). The status register always
//! reads 0 (no input or output buffer full), so the kernel's reboot path
//! never waits; command 0xfe (pulse reset line) requests
//! [`GuestExit::Reset`]. Everything else reads 0 and is ignored.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};
use crate::warn_ratelimited;

/// Number of ports covered (0x60..=0x64).
pub const I8042_PORTS: u64 = 5;
/// Offset of the command/status port within the range.
pub const COMMAND_OFFSET: u64 = 4;
/// Command: pulse the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// The controller.
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller that turns a CPU reset into `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> I8042 {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (COMMAND_OFFSET, [CMD_RESET_CPU]) => {
                log::info!("i8042: guest requested a CPU reset");
                self.exit.request(GuestExit::Reset);
            }
            (0..I8042_PORTS, [_]) => {}
            _ => warn_ratelimited!("i8042: bad write at {offset:#x} size {}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_zero_and_0xfe_resets() {
        let exit = Arc::new(ExitSignal::new());
        let mut dev = I8042::new(Arc::clone(&exit));
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b[0], 0);
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(exit.get(), Some(GuestExit::Reset));
    }

    #[test]
    fn other_writes_are_harmless() {
        let exit = Arc::new(ExitSignal::new());
        let mut dev = I8042::new(Arc::clone(&exit));
        dev.write(COMMAND_OFFSET, &[0x20]);
        dev.write(0, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0]);
        dev.write(99, &[0xfe]);
        let mut b = [0xffu8; 4];
        dev.read(0, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(exit.get(), None);
    }
}
