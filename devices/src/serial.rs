//! The 8250/16550A UART on COM1, built on vm-superio's `Serial`, plus
//! [`PanicWatch`], an output filter that notices a guest kernel panic.
//!
//! The UART interrupt is an ISA edge interrupt: every time vm-superio raises
//! an interrupt condition, the line is pulsed through the [`IrqLine`].

use std::io::{self, Write};
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};
use crate::interrupt::IrqLine;
use crate::warn_ratelimited;

pub use vm_superio::serial::SerialState;

/// Number of I/O ports the UART occupies.
pub const SERIAL_PORTS: u64 = 8;

/// Errors restoring the UART.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The saved receive FIFO does not fit the UART.
    #[error("saved serial state has more input than the UART's FIFO holds")]
    BadState,
}

/// Adapts an [`IrqLine`] to vm-superio's `Trigger`: one pulse per trigger.
struct IrqTrigger(Arc<dyn IrqLine>);

impl vm_superio::Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.pulse();
        Ok(())
    }
}

type Uart = vm_superio::Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// COM1. Register it on the bus for [`SERIAL_PORTS`] ports at
/// `layout::COM1_PORT`.
pub struct Serial {
    uart: Uart,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART raising `irq` and writing guest output to `out`. vm-superio
    /// flushes `out` after every byte, so nothing is held back on exit.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Serial {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Saves the UART registers and the receive FIFO.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Restores saved registers, keeping this UART's output and IRQ line.
    /// A FIFO longer than the UART's is refused.
    pub fn restore(&mut self, state: &SerialState) -> Result<(), SerialError> {
        // vm-superio's FIFO size: checked here so a bad state never costs
        // the output writer.
        if state.in_buffer.len() > 64 {
            return Err(SerialError::BadState);
        }
        let irq = self.uart.interrupt_evt().0.clone();
        let placeholder =
            vm_superio::Serial::new(IrqTrigger(irq.clone()), Box::new(io::sink()) as _);
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        let uart = Uart::from_state(state, IrqTrigger(irq), vm_superio::serial::NoEvents, out);
        self.uart = uart.map_err(|_| SerialError::BadState)?;
        Ok(())
    }

    /// Queues host input for the guest. Returns how many bytes fitted in the
    /// receive FIFO (the rest is for the caller to retry later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                warn_ratelimited!("serial: queueing input: {e}");
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Flushes the output writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match (u8::try_from(offset), data.first_mut()) {
            (Ok(off), Some(b)) if data_len_ok(offset, 1) => *b = self.uart.read(off),
            _ => warn_ratelimited!("serial: bad read at {offset:#x} size {}", data.len()),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [value]) if data_len_ok(offset, 1) => {
                if let Err(e) = self.uart.write(off, *value) {
                    warn_ratelimited!("serial: write at {offset:#x}: {e}");
                }
            }
            _ => warn_ratelimited!("serial: bad write at {offset:#x} size {}", data.len()),
        }
    }
}

fn data_len_ok(offset: u64, len: u64) -> bool {
    offset + len <= SERIAL_PORTS
}

/// The line Linux prints when it panics.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Bytes of the current line kept for matching; output itself is never held.
pub const LINE_BUFFER: usize = 256;

/// Passes bytes through to `W` and requests [`GuestExit::Panic`] when a line
/// containing [`PANIC_MARKER`] is completed (or fills the line buffer).
///
/// Memory is bounded: at most [`LINE_BUFFER`] bytes of the current line are
/// kept, however long the guest's lines are.
pub struct PanicWatch<W: Write> {
    inner: W,
    exit: Arc<ExitSignal>,
    line: Vec<u8>,
    seen: bool,
}

impl<W: Write> std::fmt::Debug for PanicWatch<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanicWatch")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<W: Write> PanicWatch<W> {
    /// Wraps `inner`; a panic line requests an exit through `exit`.
    pub fn new(inner: W, exit: Arc<ExitSignal>) -> Self {
        PanicWatch {
            inner,
            exit,
            line: Vec::with_capacity(LINE_BUFFER),
            seen: false,
        }
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn line_has_marker(&self) -> bool {
        self.line
            .windows(PANIC_MARKER.len())
            .any(|w| w == PANIC_MARKER)
    }

    fn scan(&mut self, bytes: &[u8]) {
        if self.seen {
            // Keep exit requests idempotent and skip the scanning work.
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                if self.line_has_marker() {
                    self.seen = true;
                    self.exit.request(GuestExit::Panic);
                    return;
                }
                self.line.clear();
                continue;
            }
            if self.line.len() == LINE_BUFFER {
                if self.line_has_marker() {
                    self.seen = true;
                    self.exit.request(GuestExit::Panic);
                    return;
                }
                // Keep a tail long enough to match a marker split here.
                let keep = PANIC_MARKER.len() - 1;
                self.line.drain(..LINE_BUFFER - keep);
            }
            self.line.push(b);
        }
    }
}

impl<W: Write> Write for PanicWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Scan only what was actually passed on, so retries are not rescanned.
        self.scan(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for PanicWatch<W> {
    fn drop(&mut self) {
        // Best effort: the VMM may be exiting.
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests;
