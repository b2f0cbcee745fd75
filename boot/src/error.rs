//! The crate's top-level error: everything a loader can refuse.

use std::path::PathBuf;

use crate::bzimage::BzImageError;
use crate::elf::ElfError;
use crate::mptable::MptableError;

/// Why a guest image could not be loaded or its entry state built.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the kernel or initrd file failed.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel or initrd path is not a regular file.
    #[error("{what} {} is not a regular file", path.display())]
    NotAFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The kernel or initrd is larger than guest RAM below the MMIO hole.
    #[error("{what} of {size} bytes is larger than low guest RAM ({max} bytes)")]
    TooLarge {
        /// "kernel" or "initrd".
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The image is neither an ELF nor a bzImage.
    #[error("kernel image is neither ELF nor bzImage (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    /// The ELF image is malformed.
    #[error("bad ELF kernel image")]
    Elf(#[source] ElfError),
    /// The bzImage is malformed or unsupported.
    #[error("bad bzImage kernel")]
    BzImage(#[source] BzImageError),
    /// The MP table could not be built.
    #[error("cannot build the MP table")]
    Mptable(#[source] MptableError),
    /// A range to write lies (partly) outside guest RAM.
    #[error("{what} at {addr:#x}..{end:#x} is outside guest RAM", end = addr.saturating_add(*len))]
    OutOfGuestMemory {
        /// What was being written.
        what: &'static str,
        /// Guest physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A loadable segment would overwrite the low boot structures.
    #[error("{what} at {addr:#x} is below 1 MiB, where the boot structures live")]
    BelowHighMemory {
        /// What was being loaded.
        what: &'static str,
        /// Its guest physical start.
        addr: u64,
    },
    /// Writing guest memory failed.
    #[error("cannot write {what} to guest memory at {addr:#x}")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// Guest physical address.
        addr: u64,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error(
        "initrd of {size} bytes does not fit in guest RAM ({available} bytes free below {limit:#x})"
    )]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// Bytes available for it.
        available: u64,
        /// Highest address the initrd may reach.
        limit: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Length of the full command line (without NUL).
        len: usize,
        /// Most bytes the kernel accepts (without NUL).
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// No guest RAM regions were given, or the first does not start at 0.
    #[error("guest RAM must start at address 0 and be at least {min} bytes")]
    BadRamLayout {
        /// Minimum size of the first region.
        min: u64,
    },
    /// Too many memory map entries.
    #[error("too many memory map entries ({0})")]
    TooManyMemmapEntries(usize),
    /// The vCPU count is out of range.
    #[error("{0} vCPUs requested; 1 to 254 are supported")]
    BadCpuCount(usize),
    /// The ELF entry point is not a 32-bit address (protected-mode entry).
    #[error("entry point {0:#x} is not reachable from 32-bit protected mode")]
    EntryAbove4G(u64),
}
