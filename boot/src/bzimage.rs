//! bzImage parsing (Documentation/arch/x86/boot.rst): the real-mode setup
//! header, the protected-mode payload, and the checks for the 64-bit entry.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Offset of the setup header in the image (and in `boot_params`).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Oldest boot protocol accepted: 2.12 (`xloadflags`, 64-bit entry flag).
pub const MIN_PROTOCOL: u16 = 0x020c;
/// `xloadflags` bit: the kernel has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `loadflags` bit: protected-mode code loads at 1 MiB.
pub const LOADED_HIGH: u8 = 1 << 0;
/// Offset of the 64-bit entry from the protected-mode load address.
pub const ENTRY_64_OFFSET: u64 = 0x200;

const HEADER_SIZE: usize = std::mem::size_of::<setup_header>();

/// Why a bzImage was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BzImageError {
    /// Shorter than its header says.
    #[error("image truncated: {what} needs {need} bytes, image has {have}")]
    Truncated {
        /// What does not fit.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// Missing 0xaa55 boot flag or "HdrS" magic.
    #[error("no Linux setup header (boot flag {boot_flag:#x}, magic {magic:#x})")]
    BadMagic {
        /// Value at 0x1fe.
        boot_flag: u16,
        /// Value at 0x202.
        magic: u32,
    },
    /// Boot protocol older than 2.12.
    #[error("boot protocol {}.{} is too old (need 2.12)", .0 >> 8, .0 & 0xff)]
    OldProtocol(u16),
    /// The kernel has no 64-bit entry point or cannot load high.
    #[error("kernel lacks {0}")]
    MissingFeature(&'static str),
}

/// A validated bzImage.
#[derive(Debug, Clone, Copy)]
pub struct BzImage {
    /// The setup header as found in the image.
    pub header: setup_header,
    /// Offset of the protected-mode payload in the image.
    pub payload_offset: usize,
    /// Length of the protected-mode payload.
    pub payload_len: usize,
}

impl BzImage {
    /// Memory the kernel needs from its load address while decompressing
    /// (`init_size`), at least the payload itself.
    pub fn memory_needed(&self) -> u64 {
        u64::from(self.header.init_size).max(self.payload_len as u64)
    }
}

/// True if `bytes` carries a Linux setup header signature.
pub fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(0x202..0x206) == Some(b"HdrS")
}

/// Parses and validates a bzImage.
pub fn parse(bytes: &[u8]) -> Result<BzImage, BzImageError> {
    let have = bytes.len() as u64;
    let raw = bytes
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + HEADER_SIZE)
        .ok_or(BzImageError::Truncated {
            what: "setup header",
            need: (SETUP_HEADER_OFFSET + HEADER_SIZE) as u64,
            have,
        })?;
    let mut header = setup_header::default();
    header.as_mut_slice().copy_from_slice(raw);
    let (boot_flag, magic, version) = (header.boot_flag, header.header, header.version);
    if boot_flag != 0xaa55 || magic != 0x5372_6448 {
        return Err(BzImageError::BadMagic { boot_flag, magic });
    }
    if version < MIN_PROTOCOL {
        return Err(BzImageError::OldProtocol(version));
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::MissingFeature(
            "the 64-bit entry point (XLF_KERNEL_64)",
        ));
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(BzImageError::MissingFeature("LOADED_HIGH"));
    }
    let setup_sects = if header.setup_sects == 0 {
        4
    } else {
        usize::from(header.setup_sects)
    };
    let payload_offset = (setup_sects + 1) * 512;
    let payload_len = (header.syssize as usize).saturating_mul(16);
    let need = payload_offset as u64 + payload_len as u64;
    if payload_len == 0 || need > have {
        return Err(BzImageError::Truncated {
            what: "protected-mode kernel (syssize)",
            need,
            have,
        });
    }
    Ok(BzImage {
        header,
        payload_offset,
        payload_len,
    })
}
