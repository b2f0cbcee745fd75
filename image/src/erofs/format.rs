//! On-disk structures of uncompressed EROFS as Linux 6.1 reads them
//! (`fs/erofs/erofs_fs.h`), serialized little-endian by hand.

/// Block size: 4 KiB (`blkszbits` 12), the only one Linux 6.1 mounts on x86.
pub(crate) const BLK_BITS: u32 = 12;
/// Block size in bytes.
pub(crate) const BLK: u64 = 1 << BLK_BITS;
/// Block size as usize.
pub(crate) const BLK_USIZE: usize = 1 << BLK_BITS;
/// Byte offset of the superblock in block 0.
pub(crate) const SUPER_OFFSET: u64 = 1024;
/// Superblock magic.
const MAGIC: u32 = 0xE0F5_E1E2;
/// `feature_incompat` bit for chunk-based files.
pub(crate) const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// Chunk map entry of a hole.
pub(crate) const NULL_ADDR: u32 = u32::MAX;
/// Longest name in a directory entry.
pub(crate) const NAME_LEN: usize = 255;
/// Size of a compact inode.
pub(crate) const COMPACT_SIZE: usize = 32;
/// Size of an extended inode.
pub(crate) const EXTENDED_SIZE: usize = 64;
/// Size of a directory entry record.
pub(crate) const DIRENT_SIZE: usize = 12;
/// Size of the in-inode xattr header.
pub(crate) const XATTR_HEADER_SIZE: usize = 12;
/// Inodes are addressed in 32-byte slots (nid = offset / 32).
pub(crate) const SLOT: u64 = 32;

/// `i_format` data layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataLayout {
    /// Data in consecutive blocks at `raw_blkaddr`.
    FlatPlain = 0,
    /// Whole blocks at `raw_blkaddr`, the last partial block right after the inode.
    FlatInline = 2,
    /// A block map after the inode, one entry per chunk.
    ChunkBased = 4,
}

/// Directory entry file types (`EROFS_FT_*`).
pub(crate) mod ft {
    pub(crate) const REG: u8 = 1;
    pub(crate) const DIR: u8 = 2;
    pub(crate) const CHR: u8 = 3;
    pub(crate) const BLK: u8 = 4;
    pub(crate) const FIFO: u8 = 5;
    pub(crate) const SYMLINK: u8 = 7;
}

/// xattr name indexes (`EROFS_XATTR_INDEX_*`) and the prefix each stands for.
pub(crate) const XATTR_PREFIXES: &[(u8, &[u8])] = &[
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
];

/// Splits a full xattr name into its EROFS name index and suffix, or
/// `None` if EROFS cannot store that namespace.
pub(crate) fn xattr_split(name: &[u8]) -> Option<(u8, &[u8])> {
    for &(idx, prefix) in XATTR_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            // The ACL indexes are whole names; the others need a suffix.
            let whole = idx == 2 || idx == 3;
            if whole == rest.is_empty() {
                return Some((idx, rest));
            }
        }
    }
    None
}

/// Encodes a device number as Linux's `new_encode_dev`, or `None` if it
/// does not fit (major < 4096, minor < 2^20).
pub(crate) fn encode_dev(major: u32, minor: u32) -> Option<u32> {
    if major >= 1 << 12 || minor >= 1 << 20 {
        return None;
    }
    Some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// The superblock fields we set.
#[derive(Debug, Clone, Default)]
pub(crate) struct SuperBlock {
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub feature_incompat: u32,
    pub uuid: [u8; 16],
}

impl SuperBlock {
    /// The 128-byte on-disk superblock.
    pub(crate) fn to_bytes(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        put32(&mut b, 0, MAGIC);
        // checksum (4) and feature_compat (8) stay 0: no SB_CHKSUM.
        b[12] = BLK_BITS as u8;
        // sb_extslots (13) = 0.
        put16(&mut b, 14, self.root_nid);
        put64(&mut b, 16, self.inos);
        put64(&mut b, 24, self.build_time);
        put32(&mut b, 32, self.build_time_nsec);
        put32(&mut b, 36, self.blocks);
        put32(&mut b, 40, self.meta_blkaddr);
        // xattr_blkaddr (44) = 0: no shared xattrs.
        b[48..64].copy_from_slice(&self.uuid);
        b[64..72].copy_from_slice(b"krypton\0");
        put32(&mut b, 80, self.feature_incompat);
        // u1, extra_devices, devt_slotoff, dirblkbits, packed_nid: 0.
        b
    }
}

/// One on-disk inode core (compact or extended is chosen by the caller).
#[derive(Debug, Clone, Default)]
pub(crate) struct InodeCore {
    pub extended: bool,
    pub layout: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// raw_blkaddr, rdev or chunk format.
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

impl InodeCore {
    /// Appends the 32- or 64-byte inode to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let format = (self.layout << 1) | u16::from(self.extended);
        if self.extended {
            let mut b = [0u8; EXTENDED_SIZE];
            put16(&mut b, 0, format);
            put16(&mut b, 2, self.xattr_icount);
            put16(&mut b, 4, self.mode);
            put64(&mut b, 8, self.size);
            put32(&mut b, 16, self.i_u);
            put32(&mut b, 20, self.ino);
            put32(&mut b, 24, self.uid);
            put32(&mut b, 28, self.gid);
            put64(&mut b, 32, self.mtime);
            put32(&mut b, 40, self.mtime_nsec);
            put32(&mut b, 44, self.nlink);
            out.extend_from_slice(&b);
        } else {
            let mut b = [0u8; COMPACT_SIZE];
            put16(&mut b, 0, format);
            put16(&mut b, 2, self.xattr_icount);
            put16(&mut b, 4, self.mode);
            // The caller only picks compact when these fit.
            put16(&mut b, 6, self.nlink as u16);
            put32(&mut b, 8, self.size as u32);
            put32(&mut b, 16, self.i_u);
            put32(&mut b, 20, self.ino);
            put16(&mut b, 24, self.uid as u16);
            put16(&mut b, 26, self.gid as u16);
            out.extend_from_slice(&b);
        }
    }
}

/// Size of the in-inode xattr body holding `entries` (index, suffix, value).
pub(crate) fn xattr_body_size<'a>(entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> usize {
    let mut n = 0;
    let mut size = XATTR_HEADER_SIZE;
    for (name, value) in entries {
        n += 1;
        size += (4 + name.len() + value.len()).next_multiple_of(4);
    }
    if n == 0 { 0 } else { size }
}

/// `i_xattr_icount` for a body of `size` bytes (0 for none).
pub(crate) fn xattr_icount(size: usize) -> u32 {
    if size == 0 {
        0
    } else {
        ((size - XATTR_HEADER_SIZE) / 4 + 1) as u32
    }
}

/// Appends the in-inode xattr body (header, no shared xattrs, entries).
pub(crate) fn write_xattrs<'a>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = (u8, &'a [u8], &'a [u8])>,
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; XATTR_HEADER_SIZE]);
    for (idx, name, value) in entries {
        let e0 = out.len();
        out.push(name.len() as u8);
        out.push(idx);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(value);
        let padded = (out.len() - e0).next_multiple_of(4);
        out.resize(e0 + padded, 0);
    }
    if out.len() == start + XATTR_HEADER_SIZE {
        out.truncate(start);
    }
}

/// Appends one directory entry record.
pub(crate) fn write_dirent(out: &mut Vec<u8>, nid: u64, nameoff: u16, file_type: u8) {
    out.extend_from_slice(&nid.to_le_bytes());
    out.extend_from_slice(&nameoff.to_le_bytes());
    out.push(file_type);
    out.push(0);
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_names_split_into_indexes() {
        assert_eq!(
            xattr_split(b"security.capability"),
            Some((6, &b"capability"[..]))
        );
        assert_eq!(
            xattr_split(b"trusted.overlay.opaque"),
            Some((4, &b"overlay.opaque"[..]))
        );
        assert_eq!(xattr_split(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(xattr_split(b"user."), None);
        assert_eq!(xattr_split(b"system.other"), None);
        assert_eq!(xattr_split(b"foo.bar"), None);
    }

    #[test]
    fn devices_encode_like_linux() {
        assert_eq!(encode_dev(1, 3), Some(0x103));
        assert_eq!(
            encode_dev(8, 0x12345),
            Some(0x45 | (8 << 8) | (0x12300 << 12))
        );
        assert_eq!(encode_dev(4096, 0), None);
        assert_eq!(encode_dev(0, 1 << 20), None);
    }

    #[test]
    fn xattr_body_sizes_match_icount() {
        let e = [(&b"capability"[..], &[1u8, 2, 3][..])];
        let size = xattr_body_size(e.iter().copied());
        assert_eq!(size, 12 + (4 + 10 + 3usize).next_multiple_of(4));
        let mut v = Vec::new();
        write_xattrs(&mut v, e.iter().map(|&(n, val)| (6, n, val)));
        assert_eq!(v.len(), size);
        assert_eq!(12 + (xattr_icount(size) as usize - 1) * 4, size);
    }
}
