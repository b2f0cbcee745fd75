//! The PVH boot ABI: `hvm_start_info` (version 1, with memmap), the module
//! list carrying the initrd, and the command-line pointer. Structures come
//! from linux-loader (`xen/include/public/arch-x86/hvm/start_info.h`).

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::ByteValued;
use vm_memory::GuestMemoryMmap;

use crate::layout::{PVH_INFO_START, PVH_MEMMAP_MAX, PVH_MEMMAP_START, PVH_MODLIST_START};
use crate::memmap::MemmapEntry;
use crate::{BootError, memory};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Start-info version written (1 = has memmap fields).
pub const PVH_VERSION: u32 = 1;

/// Writes `hvm_start_info` at [`PVH_INFO_START`], the memmap at
/// [`PVH_MEMMAP_START`] and, with an initrd `(addr, size)`, one module at
/// [`PVH_MODLIST_START`]. `cmdline` is the command line's guest address.
/// Returns the start-info address (EBX at entry).
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    memmap: &[MemmapEntry],
    cmdline: Option<u64>,
    initrd: Option<(u64, u64)>,
) -> Result<u64, BootError> {
    if memmap.len() > PVH_MEMMAP_MAX {
        return Err(BootError::TooManyMemmapEntries(memmap.len()));
    }
    let mut table = Vec::with_capacity(memmap.len() * 24);
    for e in memmap {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        table.extend_from_slice(entry.as_slice());
    }
    memory::write(mem, "PVH memmap", PVH_MEMMAP_START, &table)?;

    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: PVH_VERSION,
        cmdline_paddr: cmdline.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        memory::write(mem, "PVH module list", PVH_MODLIST_START, module.as_slice())?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    memory::write(mem, "PVH start info", PVH_INFO_START, info.as_slice())?;
    Ok(PVH_INFO_START)
}
