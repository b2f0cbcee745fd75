//! Helpers shared by the VM-level test files (each uses a subset).
#![allow(dead_code)]

use krypton::hv::{Backend, Hypervisor};
use krypton_devices::bus::BusDevice;

/// The host's hypervisor, or `None` after printing why the test is skipped.
pub fn hypervisor() -> Option<Box<dyn Hypervisor>> {
    match krypton::hv::new(Backend::host_default()) {
        Ok(hv) => Some(hv),
        Err(e) => {
            eprintln!("skipped: no usable hypervisor: {e}");
            None
        }
    }
}

/// An MMIO scratch device: reads return what was last written at the same
/// offset (modulo its size).
pub struct Scratch(Vec<u8>);

impl Scratch {
    /// A zeroed device of `size` bytes.
    pub fn new(size: usize) -> Self {
        Scratch(vec![0; size])
    }
}

impl BusDevice for Scratch {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let n = self.0.len();
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.0[(offset as usize + i) % n];
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let n = self.0.len();
        for (i, b) in data.iter().enumerate() {
            self.0[(offset as usize + i) % n] = *b;
        }
    }
}
