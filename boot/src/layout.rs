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

/// Guest RAM regions for `mem_size` bytes: (start, size) pairs, low then high.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, mem_size - MMIO_HOLE_START)]
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
        assert_eq!(r, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)]);
        assert_eq!(r.iter().map(|(_, s)| s).sum::<u64>(), 4 << 30);
    }
}
