//! Guest RAM mapped copy-on-write from a snapshot file.

use krypton_devices::GuestMem;

use super::{Snapshot, SnapshotError};

/// Maps the snapshot's guest memory at `ranges` (guest address, size), in
/// order, `MAP_PRIVATE` from the file: untouched pages are never read and
/// the guest's writes never reach the file.
#[cfg(target_os = "linux")]
pub fn map_guest_memory(snap: &Snapshot, ranges: &[(u64, u64)]) -> Result<GuestMem, SnapshotError> {
    use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
    use vm_memory::{FileOffset, GuestAddress};

    let err = |why: String| SnapshotError::Map {
        path: snap.path.clone(),
        why,
    };
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    if total != snap.header.mem_len {
        return Err(err(format!(
            "{total} bytes of RAM wanted, the snapshot has {}",
            snap.header.mem_len
        )));
    }
    let mut offset = snap.header.mem_offset;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(start, size) in ranges {
        let file = snap.file.try_clone().map_err(|e| err(e.to_string()))?;
        let region = MmapRegionBuilder::new(size as usize)
            .with_file_offset(FileOffset::new(file, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| err("bad region".into()))?;
        regions.push(region);
        offset += size;
    }
    GuestMem::from_regions(regions).map_err(|e| err(e.to_string()))
}

/// Maps the snapshot's guest memory at `ranges` (guest address, size), in
/// order, as copy-on-write views of the file (`CreateFileMapping` with
/// `PAGE_WRITECOPY`, `MapViewOfFile(FILE_MAP_COPY)`): untouched pages are
/// never read and the guest's writes never reach the file. View offsets
/// must be multiples of the 64 KiB allocation granularity; the format
/// aligns guest memory to that, and RAM regions are MiB-sized.
#[cfg(windows)]
pub fn map_guest_memory(snap: &Snapshot, ranges: &[(u64, u64)]) -> Result<GuestMem, SnapshotError> {
    use super::MEM_ALIGN;
    use vm_memory::mmap::{GuestRegionMmap, MmapRegion};
    use vm_memory::{FileOffset, GuestAddress};

    let err = |why: String| SnapshotError::Map {
        path: snap.path.clone(),
        why,
    };
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    if total != snap.header.mem_len {
        return Err(err(format!(
            "{total} bytes of RAM wanted, the snapshot has {}",
            snap.header.mem_len
        )));
    }
    let mut offset = snap.header.mem_offset;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(start, size) in ranges {
        if !offset.is_multiple_of(MEM_ALIGN) {
            return Err(err(format!(
                "RAM at file offset {offset:#x} is not 64 KiB-aligned"
            )));
        }
        let file = snap.file.try_clone().map_err(|e| err(e.to_string()))?;
        let region =
            MmapRegion::<()>::from_file_copy_on_write(FileOffset::new(file, offset), size as usize)
                .map_err(|e| err(format!("MapViewOfFile(FILE_MAP_COPY): {e}")))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| err("bad region".into()))?;
        regions.push(region);
        offset += size;
    }
    GuestMem::from_regions(regions).map_err(|e| err(e.to_string()))
}

/// Other OSes have no backend that restores snapshots.
#[cfg(not(any(target_os = "linux", windows)))]
pub fn map_guest_memory(
    snap: &Snapshot,
    _ranges: &[(u64, u64)],
) -> Result<GuestMem, SnapshotError> {
    Err(SnapshotError::Map {
        path: snap.path.clone(),
        why: "copy-on-write file mappings are not implemented on this OS".into(),
    })
}
