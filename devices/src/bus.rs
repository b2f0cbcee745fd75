//! The one interface between the vCPU loop's bus and a device.

/// A device reachable through port I/O or MMIO.
///
/// `offset` is relative to the start of the range the device was registered
/// at. `data.len()` is the access size (1, 2, 4 or 8 bytes for a normal
/// access). Devices must tolerate any offset and size: the guest chooses them.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
