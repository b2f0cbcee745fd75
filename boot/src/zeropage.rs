//! The Linux 64-bit boot protocol's zero page (`struct boot_params`,
//! arch/x86/include/uapi/asm/bootparam.h, via linux-loader's bindings).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, GuestMemoryMmap};

use crate::layout::ZERO_PAGE_START;
use crate::memmap::{E820_MAX_ENTRIES, MemmapEntry};
use crate::{BootError, memory};

/// `boot_flag` value (0x1fe).
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header` value: "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` given to an ELF kernel (16 MiB, its link address).
pub const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What goes into the zero page.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPage<'a> {
    /// The bzImage's setup header, or `None` for an ELF kernel (a minimal
    /// header is synthesised).
    pub header: Option<setup_header>,
    /// The memory map (becomes the e820 table).
    pub memmap: &'a [MemmapEntry],
    /// Command line address and length (without NUL).
    pub cmdline: Option<(u64, u32)>,
    /// Initrd address and size.
    pub initrd: Option<(u32, u32)>,
}

/// Builds the `boot_params` for `zp`.
pub fn build(zp: &ZeroPage<'_>) -> Result<boot_params, BootError> {
    if zp.memmap.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyMemmapEntries(zp.memmap.len()));
    }
    let mut params = boot_params::default();
    match zp.header {
        Some(h) => params.hdr = h,
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    if let Some((addr, _len)) = zp.cmdline {
        params.hdr.cmd_line_ptr = addr as u32;
        params.ext_cmd_line_ptr = (addr >> 32) as u32;
    }
    if let Some((addr, size)) = zp.initrd {
        params.hdr.ramdisk_image = addr;
        params.hdr.ramdisk_size = size;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(zp.memmap) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = zp.memmap.len() as u8;
    Ok(params)
}

/// Builds the zero page and writes it at [`ZERO_PAGE_START`]; returns that
/// address (RSI at entry).
pub fn write(mem: &GuestMemoryMmap, zp: &ZeroPage<'_>) -> Result<u64, BootError> {
    let params = build(zp)?;
    memory::write(mem, "zero page", ZERO_PAGE_START, params.as_slice())?;
    Ok(ZERO_PAGE_START)
}
