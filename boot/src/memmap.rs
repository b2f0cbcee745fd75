//! The guest physical memory map given to a kernel (e820 in the zero page,
//! the PVH memmap), derived from the RAM regions.

use crate::BootError;
use crate::layout::{EBDA_START, HIMEM_START, LEGACY_HOLE_END};

/// Smallest first RAM region accepted: 1 MiB of legacy space plus 1 MiB.
pub const MIN_LOW_RAM: u64 = 2 << 20;
/// Most entries the zero page's e820 table holds.
pub const E820_MAX_ENTRIES: usize = 128;

/// Memory types, numbered as in e820 and the PVH memmap (they agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemType {
    /// Usable RAM (E820_TYPE_RAM / XEN_HVM_MEMMAP_TYPE_RAM = 1).
    Ram = 1,
    /// Reserved (E820_TYPE_RESERVED / XEN_HVM_MEMMAP_TYPE_RESERVED = 2).
    Reserved = 2,
}

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemmapEntry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type.
    pub kind: MemType,
}

/// Builds the memory map for RAM `regions` ((start, size), sorted, the first
/// starting at 0): RAM below the EBDA, the EBDA and legacy hole reserved
/// (the MP table lives there), RAM from 1 MiB, then any further regions.
pub fn memory_map(regions: &[(u64, u64)]) -> Result<Vec<MemmapEntry>, BootError> {
    let Some(&(0, low)) = regions.first() else {
        return Err(BootError::BadRamLayout { min: MIN_LOW_RAM });
    };
    if low < MIN_LOW_RAM {
        return Err(BootError::BadRamLayout { min: MIN_LOW_RAM });
    }
    let mut map = vec![
        MemmapEntry {
            addr: 0,
            size: EBDA_START,
            kind: MemType::Ram,
        },
        MemmapEntry {
            addr: EBDA_START,
            size: LEGACY_HOLE_END - EBDA_START,
            kind: MemType::Reserved,
        },
        MemmapEntry {
            addr: HIMEM_START,
            size: low - HIMEM_START,
            kind: MemType::Ram,
        },
    ];
    let mut prev_end = low;
    for &(addr, size) in &regions[1..] {
        let end = addr
            .checked_add(size)
            .ok_or(BootError::BadRamLayout { min: MIN_LOW_RAM })?;
        if addr < prev_end || size == 0 {
            return Err(BootError::BadRamLayout { min: MIN_LOW_RAM });
        }
        map.push(MemmapEntry {
            addr,
            size,
            kind: MemType::Ram,
        });
        prev_end = end;
    }
    if map.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyMemmapEntries(map.len()));
    }
    Ok(map)
}

/// The RAM regions of `mem`, as (start, size).
pub fn regions_of(mem: &vm_memory::GuestMemoryMmap) -> Vec<(u64, u64)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut v: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START, ram_regions};

    #[test]
    fn map_reserves_ebda_and_legacy_hole() {
        let map = memory_map(&ram_regions(128 << 20)).expect("map");
        assert_eq!(
            map,
            vec![
                MemmapEntry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: MemType::Ram
                },
                MemmapEntry {
                    addr: 0x9_fc00,
                    size: 0x6_0400,
                    kind: MemType::Reserved
                },
                MemmapEntry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: MemType::Ram
                },
            ]
        );
    }

    #[test]
    fn map_skips_the_mmio_hole() {
        let map = memory_map(&ram_regions(6 << 30)).expect("map");
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            MemmapEntry {
                addr: 0x10_0000,
                size: MMIO_HOLE_START - 0x10_0000,
                kind: MemType::Ram
            }
        );
        assert_eq!(
            map[3],
            MemmapEntry {
                addr: MMIO_HOLE_END,
                size: (6 << 30) - MMIO_HOLE_START,
                kind: MemType::Ram
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemType::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (6 << 30) - (0x10_0000 - 0x9_fc00));
    }

    #[test]
    fn bad_layouts_are_errors() {
        for bad in [
            vec![],
            vec![(0x1000, 64 << 20)],
            vec![(0, 1 << 20)],
            vec![(0, 64 << 20), (32 << 20, 4096)],
            vec![(0, 64 << 20), (u64::MAX - 1, 16)],
        ] {
            assert!(memory_map(&bad).is_err(), "{bad:x?}");
        }
    }
}
