//! tar layer → EROFS image converter.
//!
//! The image is uncompressed EROFS with 4 KiB blocks, as Linux 6.1 mounts
//! it: block 0 holds the superblock, file data is streamed into the
//! following blocks while the tar is read (nothing of a file is kept in
//! memory but its last partial block, to be stored inline), and the
//! directories and the metadata area (inodes, xattrs, chunk maps, inline
//! tails; `meta_blkaddr`) are written after the data at the end. The root
//! inode is the first in the metadata area (nid 0, as `root_nid` is 16-bit).
//!
//! Files of 64 KiB or more whose chunks are all zeros (sparse tar entries,
//! or plain zero runs) become chunk-based inodes with null chunks: holes
//! are kept, not written.

mod data;
mod format;
mod layout;
mod tarin;
mod tree;

use std::io::{BufWriter, Read, Seek, Write};

/// Bounds against archive bombs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest image written, in bytes.
    pub max_image_bytes: u64,
    /// Most tar entries.
    pub max_entries: u64,
    /// Longest path (and symlink target), in bytes.
    pub max_path: usize,
    /// Largest xattr body of one inode, in bytes (at most ~256 KiB).
    pub max_xattr_bytes: usize,
    /// File tails held in memory to be inlined, in bytes; past it tails
    /// take a block of their own.
    pub max_inline_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_bytes: 64 << 30,
            max_entries: 4 << 20,
            max_path: 4096,
            max_xattr_bytes: 64 << 10,
            max_inline_bytes: 256 << 20,
        }
    }
}

/// What a conversion produced.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Tar entries read.
    pub entries: u64,
    /// Bytes of the image written.
    pub image_bytes: u64,
    /// Inodes in the image.
    pub inodes: u64,
    /// Whiteouts and opaque markers converted.
    pub whiteouts: u64,
    /// xattrs dropped because EROFS has no prefix for their namespace.
    pub xattrs_skipped: u64,
}

/// Conversion errors.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Writing the image failed.
    #[error("writing the image: {0}")]
    Io(#[from] std::io::Error),
    /// The tar is malformed.
    #[error("reading the tar: {0}")]
    Tar(String),
    /// The tar ends inside an entry.
    #[error("the tar is truncated (it ends inside an entry)")]
    Truncated,
    /// More entries than [`Limits::max_entries`].
    #[error("the layer has more than {0} entries")]
    TooManyEntries(u64),
    /// The image would pass [`Limits::max_image_bytes`].
    #[error("the image would be larger than {0} bytes")]
    ImageTooLarge(u64),
    /// A path or symlink target longer than [`Limits::max_path`].
    #[error("path {path:?} is longer than {max} bytes")]
    PathTooLong {
        /// The path.
        path: String,
        /// The limit.
        max: usize,
    },
    /// A path component longer than 255 bytes.
    #[error("path {0:?} has a component longer than 255 bytes")]
    NameTooLong(String),
    /// A path with a `..` component.
    #[error("path {0:?} has a '..' component")]
    DotDot(String),
    /// An impossible name (NUL byte, empty whiteout, empty link).
    #[error("bad name {0:?}")]
    BadName(String),
    /// A path goes through a non-directory.
    #[error("{0} is not a directory")]
    NotADirectory(String),
    /// The root replaced by a non-directory.
    #[error("the layer's root is not a directory")]
    RootNotDir,
    /// A hard link to a path not (yet) in the layer.
    #[error("hard link {0}: target {1} is not earlier in the layer")]
    LinkTarget(String, String),
    /// A hard link to a directory.
    #[error("hard link {0} points to a directory")]
    LinkToDir(String),
    /// xattrs beyond [`Limits::max_xattr_bytes`] or the format's bounds.
    #[error("{path}: xattrs larger than {max} bytes")]
    XattrTooLarge {
        /// The path.
        path: String,
        /// The limit.
        max: usize,
    },
    /// A device number Linux cannot encode.
    #[error("device number out of range: {0}")]
    BadDevice(String),
    /// An unparseable PAX record.
    #[error("bad PAX header: {0}")]
    BadPax(String),
    /// An entry this converter does not handle.
    #[error("{path}: unsupported {what}")]
    Unsupported {
        /// The path.
        path: String,
        /// What it is.
        what: String,
    },
}

/// Converts one uncompressed tar layer into an EROFS image written to `out`
/// (from its current position, which should be 0). OCI whiteouts become
/// overlayfs whiteouts and opaque directories.
pub fn convert<R: Read, W: Write + Seek>(
    tar: R,
    out: &mut W,
    limits: &Limits,
) -> Result<Stats, ConvertError> {
    let mut stats = Stats::default();
    let mut tree = tree::Tree::new();
    let w = BufWriter::with_capacity(1 << 20, out);
    let mut data = data::DataWriter::new(w, limits.max_image_bytes, limits.max_inline_bytes)?;
    tarin::read_layer(tar, &mut tree, &mut data, limits, &mut stats)?;
    let (w, written) = layout::finish(&tree, data)?;
    w.into_inner()
        .map_err(|e| ConvertError::Io(e.into_error()))?;
    stats.image_bytes = written.image_bytes;
    stats.inodes = written.inodes;
    Ok(stats)
}
