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

/// A minimal ELF64 executable: one PT_LOAD at 1 MiB
/// (`layout::HIMEM_START`) holding `code`, no
/// PVH note, so it is entered in long mode there.
pub fn elf64(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = krypton_boot::layout::HIMEM_START;
    let mut e = vec![0u8; 0x78];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little-endian
    e[6] = 1; // EV_CURRENT
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&LOAD.to_le_bytes()); // e_entry
    e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = &mut e[0x40..0x78];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&0x78u64.to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    ph[24..32].copy_from_slice(&LOAD.to_le_bytes()); // p_paddr
    let len = (code.len() as u64).to_le_bytes();
    ph[32..40].copy_from_slice(&len); // p_filesz
    ph[40..48].copy_from_slice(&len); // p_memsz
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(code);
    e
}
