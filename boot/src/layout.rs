//! The guest physical address map. One place, shared by the loaders, the
//! VM builder and the tests.
//!
//! ```text
//! 0x0000_0000  low RAM: real-mode IVT, boot structures below 0x10_0000
//! 0x0010_0000  kernel (bzImage protected-mode part), test guests
//! ...          RAM up to min(mem, MMIO_HOLE_START)
//! 0xc000_0000  MMIO hole: test devices, virtio-mmio slots
//! 0xd000_0000  virtio-mmio slot 0, then one 4 KiB slot per device
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  local APIC
//! 0x1_0000_0000 RAM above the hole, if mem > MMIO_HOLE_START
//! ```

/// Start of the 32-bit MMIO hole; RAM never overlaps it.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole (exclusive): 4 GiB.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IOAPIC pin used for virtio-mmio devices (0-4 are legacy ISA).
pub const VIRTIO_IRQ_BASE: u8 = 5;
/// Base of the IOAPIC register window.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the IOAPIC register window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Base of the local APIC (handled by the hypervisor).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Start of "high memory", where kernels and test guests load.
pub const HIMEM_START: u64 = 0x10_0000;
/// Serial port COM1 I/O base and IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IOAPIC pin.
pub const COM1_IRQ: u8 = 4;
/// QEMU-compatible isa-debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// i8042 data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port; writing 0xfe resets the machine.
pub const I8042_CMD_PORT: u16 = 0x64;
/// Number of IOAPIC pins.
pub const IOAPIC_PINS: u8 = 24;

/// Boot structures in low RAM (all below [`EBDA_START`], none touching 0x7c00
/// so that a real-mode boot-sector style test guest can load there):
///
/// ```text
/// 0x0500  GDT (6 entries: null, code32 0x08, code64 0x10, data 0x18, TSS 0x20/0x28)
/// 0x0530  IDT (one zero entry, limit 7)
/// 0x1000  PVH hvm_start_info, 0x1040 modlist, 0x1100..0x2000 memmap
/// 0x2000  zero page (Linux boot_params, 4 KiB)
/// 0x3000  kernel command line (up to 0x4000 bytes, NUL included)
/// 0x8ff0  initial stack pointer for long-mode entry (grows down)
/// 0x9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories
/// 0x9fc00 MP floating pointer + configuration table (EBDA, reserved in e820)
/// ```
pub const GDT_START: u64 = 0x500;
/// Number of 8-byte GDT slots written by the loaders.
pub const GDT_ENTRIES: usize = 6;
/// IDT base (one zero descriptor).
pub const IDT_START: u64 = 0x530;
/// PVH `hvm_start_info` (RBX/EBX at PVH entry).
pub const PVH_INFO_START: u64 = 0x1000;
/// PVH module list (initrd).
pub const PVH_MODLIST_START: u64 = 0x1040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x1100;
/// Most PVH memmap entries that fit before [`ZERO_PAGE_START`].
pub const PVH_MEMMAP_MAX: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux zero page (`boot_params`, RSI at 64-bit entry).
pub const ZERO_PAGE_START: u64 = 0x2000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x3000;
/// Space reserved for the command line, NUL included.
pub const CMDLINE_MAX_SIZE: u64 = 0x4000;
/// Initial RSP/RBP for long-mode entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Long-mode PML4 (CR3).
pub const PML4_START: u64 = 0x9000;
/// Long-mode page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages, identity map of 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Start of the reserved EBDA / last KiB of base memory; holds the MP table.
pub const EBDA_START: u64 = 0x9_fc00;
/// End of the legacy hole (VGA, option ROMs, BIOS): reserved up to here.
pub const LEGACY_HOLE_END: u64 = HIMEM_START;

/// Guest RAM regions for `mem_size` bytes: (start, size) pairs, low then high.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)
            ]
        );
        assert_eq!(r.iter().map(|(_, s)| s).sum::<u64>(), 4 << 30);
    }
}
