//! virtio-blk over a raw image file.
//!
//! One request queue, processed by a worker thread. Every descriptor chain
//! is treated as scatter-gather (see [`request`]): the 16-byte header may be
//! split, data may be in any number of segments, and the status byte is the
//! last byte of the last device-writable descriptor. Writes go straight to
//! the file with positioned I/O (no host-side cache in the VMM) and FLUSH is
//! `File::sync_data` (fdatasync).
//!
//! Writable images take an exclusive advisory lock and read-only images a
//! shared one, so two VMs cannot open one image for writing.

pub mod backing;
pub mod request;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::worker::{Worker, spawn_single_queue};
use super::{ActivateContext, ActivateError, VirtioDevice};
use backing::{Backing, Placed};
use request::Disk;

/// Virtio device ID of a block device.
pub const BLOCK_DEVICE_ID: u32 = 2;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Maximum data segments per request we advertise (SEG_MAX).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the configuration space we expose (through `writeback`).
const CONFIG_LEN: usize = 64;
/// Size of a layer disk ([`Block::layers`]): fixed, so that a VM saved
/// with no layers on it (a template snapshot) fits every image.
pub const LAYER_DISK_BYTES: u64 = 1 << 40;
/// Where the first layer starts: the first MiB stays zero, as the guest
/// may have read it (partition scan) before any layer was there.
pub const LAYER_DISK_BASE: u64 = 1 << 20;
/// Alignment of layers on the layer disk.
pub const LAYER_ALIGN: u64 = 4096;

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// The image could not be opened.
    #[error("cannot open disk image {}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds a conflicting lock.
    #[error("disk image {} is in use by another VM", path.display())]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// Taking the lock failed for another reason.
    #[error("cannot lock disk image {}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The layers do not fit on the layer disk.
    #[error("the image layers need {0} bytes, more than a layer disk holds")]
    LayersTooLarge(u64),
    /// The image is not a regular file of at least one sector.
    #[error("disk image {} is not a regular file of at least 512 bytes", path.display())]
    NotAnImage {
        /// The image.
        path: PathBuf,
    },
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: Arc<Disk>,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
}

impl Block {
    /// Opens the raw image at `path`, read-only or read-write, and locks it.
    pub fn new(path: &Path, read_only: bool) -> Result<Block, BlkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlkError::Open {
                path: path.to_owned(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| BlkError::Open {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() || meta.len() < SECTOR_SIZE {
            return Err(BlkError::NotAnImage {
                path: path.to_owned(),
            });
        }
        lock(&file, read_only, path)?;
        if meta.len() & (SECTOR_SIZE - 1) != 0 {
            log::warn!(
                "disk image {}: size is not a multiple of 512; the tail is not visible",
                path.display()
            );
        }
        let capacity = meta.len() / SECTOR_SIZE;
        let id = disk_id(path, &meta);
        let disk = Disk::new(Backing::File(file), capacity, read_only, id);
        Ok(Block {
            config: build_config(capacity),
            disk: Arc::new(disk),
            worker: None,
        })
    }

    /// A read-only disk of [`LAYER_DISK_BYTES`] with `files` placed one
    /// after another from [`LAYER_DISK_BASE`], each at a [`LAYER_ALIGN`]
    /// boundary; the rest reads as zeros. Returns the device and each
    /// file's offset and length rounded up to [`LAYER_ALIGN`].
    pub fn layers(files: &[PathBuf]) -> Result<(Block, Vec<(u64, u64)>), BlkError> {
        let mut opened = Vec::with_capacity(files.len());
        for path in files {
            let open_err = |source| BlkError::Open {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(open_err)?;
            let meta = file.metadata().map_err(open_err)?;
            if !meta.is_file() || meta.len() == 0 {
                return Err(BlkError::NotAnImage { path: path.clone() });
            }
            lock(&file, true, path)?;
            opened.push((file, meta.len()));
        }
        let lens: Vec<u64> = opened.iter().map(|f| f.1).collect();
        let placed = layer_placements(&lens)?;
        let parts = opened
            .into_iter()
            .zip(&placed)
            .map(|((file, len), &(start, _))| Placed { start, len, file })
            .collect();
        let capacity = LAYER_DISK_BYTES / SECTOR_SIZE;
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"krlayers");
        let disk = Disk::new(Backing::Placed(parts), capacity, true, id);
        Ok((
            Block {
                config: build_config(capacity),
                disk: Arc::new(disk),
                worker: None,
            },
            placed,
        ))
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// The 20-byte serial GET_ID returns.
    pub fn id(&self) -> [u8; 20] {
        self.disk.id()
    }
}

/// Where [`Block::layers`] puts files of these lengths: (offset, length
/// rounded up to [`LAYER_ALIGN`]) each, one after another from
/// [`LAYER_DISK_BASE`].
pub fn layer_placements(lens: &[u64]) -> Result<Vec<(u64, u64)>, BlkError> {
    let mut at = LAYER_DISK_BASE;
    let mut out = Vec::with_capacity(lens.len());
    for &len in lens {
        let span = len
            .checked_next_multiple_of(LAYER_ALIGN)
            .ok_or(BlkError::LayersTooLarge(u64::MAX))?;
        let end = at
            .checked_add(span)
            .filter(|&e| e <= LAYER_DISK_BYTES)
            .ok_or(BlkError::LayersTooLarge(at.saturating_add(span)))?;
        out.push((at, span));
        at = end;
    }
    Ok(out)
}

/// Takes the advisory lock: shared for read-only, exclusive otherwise.
fn lock(file: &File, read_only: bool, path: &Path) -> Result<(), BlkError> {
    let res = if read_only {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match res {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(BlkError::Locked {
            path: path.to_owned(),
        }),
        Err(TryLockError::Error(source)) => Err(BlkError::Lock {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A 20-byte id unique to the image file: device and inode on Unix, a hash
/// of the canonical path elsewhere. Zero-padded, like Linux expects.
fn disk_id(path: &Path, meta: &std::fs::Metadata) -> [u8; 20] {
    let s = id_string(path, meta);
    let mut id = [0u8; 20];
    for (d, s) in id.iter_mut().zip(s.bytes()) {
        *d = s;
    }
    id
}

#[cfg(unix)]
fn id_string(_path: &Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("kr{:x}-{:x}", meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn id_string(path: &Path, _meta: &std::fs::Metadata) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_owned())
        .hash(&mut h);
    format!("kr{:016x}", h.finish())
}

/// virtio_blk_config: capacity, seg_max and blk_size are meaningful.
fn build_config(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        BLOCK_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let mut f = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|a| self.config.get(a)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.reset();
        let disk = Arc::clone(&self.disk);
        let worker = spawn_single_queue("virtio-blk", ctx, move |mem, chain| {
            disk.process(mem, chain)
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests;
