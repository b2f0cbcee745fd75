//! VM snapshots: one file holding a header, the machine state and guest
//! memory.
//!
//! ```text
//! 0       header (HEADER_LEN bytes): magic "KRYPSNAP", format version,
//!         backend, identity key, guest RAM size, vCPU count, state length
//!         and CRC32, memory offset and length, CRC32 of the header itself
//! 4096    machine state (codec.rs), state_len bytes
//! mem_off guest RAM, 64 KiB-aligned, regions back to back; all-zero pages
//!         are holes
//! ```
//!
//! The vCPU state is the backend's own (KVM's 1 KiB APIC page, standard
//! XSAVE and kvmclock; WHP's InterruptControllerState2 and compacted XSAVE),
//! so the header names the backend and a snapshot restores only on the
//! backend that made it.
//!
//! Restoring maps guest RAM from the file copy-on-write (`MAP_PRIVATE` on
//! Linux, a `PAGE_WRITECOPY` file mapping on Windows, whose view offsets
//! must be multiples of the 64 KiB allocation granularity): pages are read
//! only when the guest touches them and writes stay private to that VM.
//! Files are written to a temporary name and renamed, so a reader never
//! sees half a snapshot.

pub mod codec;
mod memory;
pub mod rss;
pub mod state;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use memory::map_guest_memory;
pub use state::MachineState;

use crate::hv::Backend;

/// First bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"KRYPSNAP";
/// Format version written and the only one read (2: backend tag, RAM
/// aligned to 64 KiB).
pub const VERSION: u32 = 2;
/// Size of the header block.
pub const HEADER_LEN: u64 = 4096;
/// Largest machine state accepted.
const MAX_STATE: u64 = 64 << 20;
/// Size of a page (the unit of holes).
const PAGE: u64 = 4096;
/// Alignment of guest memory in the file: Windows' allocation granularity,
/// the alignment `MapViewOfFile` needs for file offsets.
pub const MEM_ALIGN: u64 = 64 << 10;

/// Errors reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a Krypton snapshot.
    #[error("{0} is not a Krypton snapshot")]
    NotASnapshot(PathBuf),
    /// Written by another format version.
    #[error("{path} is snapshot format version {found}; this Krypton reads version {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// A checksum or size does not match.
    #[error("{path} is corrupt: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The snapshot was made for a different VM.
    #[error("{path} was made for a different VM ({what})")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// Guest memory could not be mapped from the file.
    #[error("mapping guest memory from {path}: {why}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The hypervisor whose vCPU state the snapshot holds.
    pub backend: Backend,
    /// Hash of everything that shapes the VM (see `key`).
    pub key: u64,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPU count.
    pub cpus: u8,
    /// Length of the encoded machine state.
    pub state_len: u64,
    /// CRC32 of the encoded machine state.
    pub state_crc: u32,
    /// Where guest memory starts in the file.
    pub mem_offset: u64,
    /// Bytes of guest memory.
    pub mem_len: u64,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut w = codec::Writer::new();
        MAGIC.iter().for_each(|&b| w.u8(b));
        w.u32(VERSION);
        w.u8(backend_tag(self.backend));
        w.u64(self.key);
        w.u64(self.mem_mib);
        w.u8(self.cpus);
        w.u64(self.state_len);
        w.u32(self.state_crc);
        w.u64(self.mem_offset);
        w.u64(self.mem_len);
        let mut b = w.into_bytes();
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(HEADER_LEN as usize, 0);
        b
    }

    /// Parses and checks a header block.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Header, SnapshotError> {
        let corrupt = |what: &str| SnapshotError::Corrupt {
            path: path.to_owned(),
            what: what.into(),
        };
        if b.len() < MAGIC.len() || b[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::NotASnapshot(path.to_owned()));
        }
        let mut r = codec::Reader::new(&b[MAGIC.len()..]);
        let short = |_| corrupt("header is truncated");
        let version = r.u32().map_err(short)?;
        if version != VERSION {
            return Err(SnapshotError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        let backend = r.u8().map_err(short)?;
        let h = Header {
            backend: backend_from_tag(backend)
                .ok_or_else(|| corrupt("unknown hypervisor backend"))?,
            key: r.u64().map_err(short)?,
            mem_mib: r.u64().map_err(short)?,
            cpus: r.u8().map_err(short)?,
            state_len: r.u64().map_err(short)?,
            state_crc: r.u32().map_err(short)?,
            mem_offset: r.u64().map_err(short)?,
            mem_len: r.u64().map_err(short)?,
        };
        let crc = r.u32().map_err(short)?;
        let covered = MAGIC.len() + 4 + 1 + 8 + 8 + 1 + 8 + 4 + 8 + 8;
        if crc32fast::hash(&b[..covered]) != crc {
            return Err(corrupt("header checksum mismatch"));
        }
        if h.state_len > MAX_STATE
            || !h.mem_offset.is_multiple_of(MEM_ALIGN)
            || h.mem_offset < HEADER_LEN + h.state_len
            || h.mem_len != h.mem_mib << 20
        {
            return Err(corrupt("header fields are inconsistent"));
        }
        Ok(h)
    }
}

/// A snapshot file, opened and checked; memory is mapped on restore.
#[derive(Debug)]
pub struct Snapshot {
    /// The file's path.
    pub path: PathBuf,
    /// Its header.
    pub header: Header,
    /// The machine state.
    pub state: MachineState,
    /// The open file (guest memory is mapped from it).
    pub file: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Snapshot {
    /// Opens `path` and checks its header, state checksum and size.
    pub fn open(path: &Path) -> Result<Snapshot, SnapshotError> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let mut head = vec![0u8; HEADER_LEN.min(len) as usize];
        file.read_exact(&mut head).map_err(io_err(path))?;
        let header = Header::decode(path, &head)?;
        let corrupt = |what: String| SnapshotError::Corrupt {
            path: path.to_owned(),
            what,
        };
        if len < header.mem_offset + header.mem_len {
            return Err(corrupt(format!(
                "file is {len} bytes, expected {}",
                header.mem_offset + header.mem_len
            )));
        }
        let mut state = vec![0u8; header.state_len as usize];
        file.read_exact(&mut state).map_err(io_err(path))?;
        if crc32fast::hash(&state) != header.state_crc {
            return Err(corrupt("machine state checksum mismatch".into()));
        }
        let state = MachineState::decode(&state).map_err(|e| corrupt(e.to_string()))?;
        if state.vcpus.len() != usize::from(header.cpus) {
            return Err(corrupt("vCPU count differs from the header".into()));
        }
        Ok(Snapshot {
            path: path.to_owned(),
            header,
            state,
            file,
        })
    }

    /// Fails unless the snapshot was made for a VM with this identity on
    /// this backend.
    pub fn check_identity(
        &self,
        backend: Backend,
        key: u64,
        mem_mib: u64,
        cpus: u8,
    ) -> Result<(), SnapshotError> {
        let what = if self.header.backend != backend {
            format!(
                "it holds {} vCPU state, this host runs {}",
                backend_name(self.header.backend),
                backend_name(backend)
            )
        } else if self.header.mem_mib != mem_mib {
            format!("{} MiB of RAM, not {mem_mib}", self.header.mem_mib)
        } else if self.header.cpus != cpus {
            format!("{} vCPUs, not {cpus}", self.header.cpus)
        } else if self.header.key != key {
            "kernel, initrd, command line, devices or Krypton version differ".into()
        } else {
            return Ok(());
        };
        Err(SnapshotError::Mismatch {
            path: self.path.clone(),
            what,
        })
    }
}

fn backend_tag(b: Backend) -> u8 {
    match b {
        Backend::Kvm => 1,
        Backend::Whp => 2,
    }
}

fn backend_from_tag(t: u8) -> Option<Backend> {
    match t {
        1 => Some(Backend::Kvm),
        2 => Some(Backend::Whp),
        _ => None,
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Kvm => "KVM",
        Backend::Whp => "Windows Hypervisor Platform",
    }
}

/// Writes a snapshot of `state` and `memory` (the guest RAM regions, in
/// order) made on `backend` to `path`, atomically.
pub fn write(
    path: &Path,
    backend: Backend,
    key: u64,
    state: &MachineState,
    memory: &[&[u8]],
) -> Result<(), SnapshotError> {
    let encoded = state.encode();
    let state_len = encoded.len() as u64;
    let mem_len: u64 = memory.iter().map(|m| m.len() as u64).sum();
    let header = Header {
        backend,
        key,
        mem_mib: mem_len >> 20,
        cpus: u8::try_from(state.vcpus.len()).unwrap_or(u8::MAX),
        state_len,
        state_crc: crc32fast::hash(&encoded),
        mem_offset: (HEADER_LEN + state_len).div_ceil(MEM_ALIGN) * MEM_ALIGN,
        mem_len,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = write_file(&tmp, &header, &encoded, memory)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_file(
    tmp: &Path,
    header: &Header,
    state: &[u8],
    memory: &[&[u8]],
) -> Result<(), SnapshotError> {
    let mut f = File::create(tmp).map_err(io_err(tmp))?;
    f.write_all(&header.encode()).map_err(io_err(tmp))?;
    f.write_all(state).map_err(io_err(tmp))?;
    let mut pos = header.mem_offset;
    for region in memory {
        // All-zero pages become holes: most of a fresh guest's RAM.
        for page in region.chunks(PAGE as usize) {
            if page.iter().any(|&b| b != 0) {
                f.seek(SeekFrom::Start(pos)).map_err(io_err(tmp))?;
                f.write_all(page).map_err(io_err(tmp))?;
            }
            pos += page.len() as u64;
        }
    }
    f.set_len(pos).map_err(io_err(tmp))?;
    f.sync_all().map_err(io_err(tmp))
}

#[cfg(test)]
mod tests;
