//! Loading the project's own test guests: flat binaries (the caller picks
//! the entry mode) and ELF executables (the entry mode follows the image).

use vm_memory::GuestMemoryMmap;

use crate::cpu::CpuState;
use crate::elf::{self, ElfClass, ElfImage};
pub use crate::entry::{long_mode_state, protected_mode_state, real_mode_state};
use crate::layout::HIMEM_START;
use crate::memmap::{memory_map, regions_of};
use crate::{BootError, memory, pvh, zeropage};

/// Copies `bytes` into guest memory at `load_addr`. Returns one past the
/// last byte written.
pub fn load_flat(mem: &GuestMemoryMmap, bytes: &[u8], load_addr: u64) -> Result<u64, BootError> {
    memory::write(mem, "flat image", load_addr, bytes)?;
    Ok(load_addr + bytes.len() as u64)
}

/// Copies every PT_LOAD segment of `image` (parsed from `bytes`) to its
/// physical address, zero-filling the BSS part. Segments must lie at or
/// above 1 MiB, clear of the boot structures.
pub(crate) fn load_segments(
    mem: &GuestMemoryMmap,
    image: &ElfImage,
    bytes: &[u8],
) -> Result<(), BootError> {
    for seg in &image.segments {
        if seg.paddr < HIMEM_START {
            return Err(BootError::BelowHighMemory {
                what: "ELF segment",
                addr: seg.paddr,
            });
        }
        memory::check(mem, "ELF segment", seg.paddr, seg.memsz)?;
        // parse() checked offset + filesz <= bytes.len().
        let data = &bytes[seg.offset as usize..(seg.offset + seg.filesz) as usize];
        memory::write(mem, "ELF segment", seg.paddr, data)?;
        memory::zero(
            mem,
            "ELF bss",
            seg.paddr + seg.filesz,
            seg.memsz - seg.filesz,
        )?;
    }
    Ok(())
}

/// Loads an ELF test guest and returns its entry state:
/// - with a PVH note: 32-bit protected mode at the note's entry, EBX =
///   `hvm_start_info` (memmap of `mem`, no command line, no modules);
/// - ELF64 otherwise: long mode at `e_entry`, RSI = a zero page with the e820 map;
/// - ELF32 otherwise: 32-bit protected mode at `e_entry`, EBX = 0.
pub fn load_elf(mem: &GuestMemoryMmap, bytes: &[u8]) -> Result<CpuState, BootError> {
    let image = elf::parse(bytes).map_err(BootError::Elf)?;
    load_segments(mem, &image, bytes)?;
    if let Some(entry) = image.pvh_entry {
        let map = memory_map(&regions_of(mem))?;
        let info = pvh::write_start_info(mem, &map, None, None)?;
        return protected_mode_state(mem, entry, info as u32);
    }
    match image.class {
        ElfClass::Elf64 => {
            let map = memory_map(&regions_of(mem))?;
            let zp = zeropage::ZeroPage {
                header: None,
                memmap: &map,
                cmdline: None,
                initrd: None,
            };
            let rsi = zeropage::write(mem, &zp)?;
            long_mode_state(mem, image.entry, rsi)
        }
        ElfClass::Elf32 => {
            let entry =
                u32::try_from(image.entry).map_err(|_| BootError::EntryAbove4G(image.entry))?;
            protected_mode_state(mem, entry, 0)
        }
    }
}

#[cfg(test)]
mod tests;
