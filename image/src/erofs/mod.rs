//! tar layer → EROFS image converter.
//!
//! Skeleton: the converter lands on the `erofs` branch; this file only
//! fixes the API the image store calls.

use std::io::{Read, Seek, Write};

/// Bounds against archive bombs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest image written, in bytes.
    pub max_image_bytes: u64,
    /// Most tar entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_image_bytes: 64 << 30, max_entries: 4 << 20 }
    }
}

/// What a conversion produced.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Tar entries read.
    pub entries: u64,
    /// Bytes of the image written.
    pub image_bytes: u64,
}

/// Conversion errors.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Not built yet.
    #[error("the EROFS converter is not built yet")]
    NotBuilt,
}

/// Converts one uncompressed tar layer into an EROFS image written to `out`.
/// OCI whiteouts become overlayfs whiteouts and opaque directories.
pub fn convert<R: Read, W: Write + Seek>(
    _tar: R,
    _out: &mut W,
    _limits: &Limits,
) -> Result<Stats, ConvertError> {
    Err(ConvertError::NotBuilt)
}
