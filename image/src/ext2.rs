//! An empty ext2 filesystem written into a file, for a writable scratch
//! disk (the guest mounts it with its ext4 driver). No external tool, so
//! it works on Windows too.
//!
//! Layout: revision 1, 4 KiB blocks, 256-byte inodes, 32768 blocks per
//! group, features `filetype`, `sparse_super` and `large_file`; a root
//! directory and an empty `lost+found`. Only metadata is written: the file
//! is sparse, its length the requested size.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// The smallest scratch filesystem.
pub const MIN_SIZE: u64 = 16 << 20;
/// The largest scratch filesystem.
pub const MAX_SIZE: u64 = 1 << 40;

const BLOCK: u64 = 4096;
const BLOCKS_PER_GROUP: u64 = 32768;
const INODE_SIZE: u64 = 256;
const INODES_PER_BLOCK: u64 = BLOCK / INODE_SIZE;
/// One inode per this many bytes.
const BYTES_PER_INODE: u64 = 16384;
const DESC_SIZE: u64 = 32;
const FIRST_INO: u32 = 11;
const ROOT_INO: u32 = 2;
const LOST_FOUND_INO: u32 = 11;
/// lost+found gets 16 KiB, as mke2fs gives it.
const LOST_FOUND_BLOCKS: u64 = 4;
/// A last group smaller than its metadata plus this is dropped.
const MIN_LAST_GROUP_DATA: u64 = 64;

const COMPAT_NONE: u32 = 0;
const INCOMPAT_FILETYPE: u32 = 0x2;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;

/// What can go wrong formatting a scratch filesystem.
#[derive(Debug, thiserror::Error)]
pub enum Ext2Error {
    /// The size is below [`MIN_SIZE`] or above [`MAX_SIZE`].
    #[error("scratch size {size} bytes is out of bounds ({MIN_SIZE} to {MAX_SIZE})")]
    Size {
        /// The requested size.
        size: u64,
    },
    /// Creating or writing the file failed.
    #[error("scratch file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The computed geometry.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    blocks: u64,
    groups: u64,
    inodes_per_group: u64,
    /// Inode table blocks per group.
    itable_blocks: u64,
    /// Group descriptor table blocks.
    gdt_blocks: u64,
}

impl Geometry {
    fn new(size: u64) -> Geometry {
        let mut blocks = size / BLOCK;
        loop {
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
            let gdt_blocks = (groups * DESC_SIZE).div_ceil(BLOCK);
            let ipg = (blocks * BLOCK / BYTES_PER_INODE)
                .div_ceil(groups)
                .next_multiple_of(INODES_PER_BLOCK)
                .clamp(INODES_PER_BLOCK, BLOCKS_PER_GROUP / 4);
            let g = Geometry {
                blocks,
                groups,
                inodes_per_group: ipg,
                itable_blocks: ipg / INODES_PER_BLOCK,
                gdt_blocks,
            };
            let last = g.group_blocks(groups - 1);
            if groups > 1 && last < g.overhead(groups - 1) + MIN_LAST_GROUP_DATA {
                blocks -= last;
                continue;
            }
            return g;
        }
    }

    fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    fn group_blocks(&self, g: u64) -> u64 {
        (self.blocks - self.group_start(g)).min(BLOCKS_PER_GROUP)
    }

    /// Blocks used by the group's superblock and descriptor copies.
    fn super_blocks(&self, g: u64) -> u64 {
        if has_super(g) { 1 + self.gdt_blocks } else { 0 }
    }

    /// Metadata blocks of group `g`: superblock copy, bitmaps, inode table.
    fn overhead(&self, g: u64) -> u64 {
        self.super_blocks(g) + 2 + self.itable_blocks
    }

    fn block_bitmap(&self, g: u64) -> u64 {
        self.group_start(g) + self.super_blocks(g)
    }

    fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    /// The first data block of group 0: the root directory's.
    fn root_block(&self) -> u64 {
        self.overhead(0)
    }

    /// Data blocks in use in group `g` (directories, in group 0 only).
    fn used_data(&self, g: u64) -> u64 {
        if g == 0 { 1 + LOST_FOUND_BLOCKS } else { 0 }
    }

    fn free_blocks(&self, g: u64) -> u64 {
        self.group_blocks(g) - self.overhead(g) - self.used_data(g)
    }

    fn free_inodes(&self, g: u64) -> u64 {
        self.inodes_per_group - if g == 0 { u64::from(FIRST_INO) } else { 0 }
    }
}

/// Groups 0, 1 and powers of 3, 5 and 7 hold superblock copies.
fn has_super(g: u64) -> bool {
    fn power_of(mut g: u64, b: u64) -> bool {
        while g > 1 && g.is_multiple_of(b) {
            g /= b;
        }
        g == 1
    }
    g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
}

/// Creates (or truncates) `path` as a sparse file of `size` bytes holding
/// an empty ext2 filesystem.
pub fn format(path: &Path, size: u64) -> Result<(), Ext2Error> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(Ext2Error::Size { size });
    }
    let io = |source| Ext2Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = File::create(path).map_err(io)?;
    f.set_len(size).map_err(io)?;
    write_fs(&mut f, Geometry::new(size), uuid()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn put16(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
}

fn write_block(f: &mut File, block: u64, data: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(block * BLOCK))?;
    f.write_all(data)
}

fn write_fs(f: &mut File, g: Geometry, uuid: [u8; 16]) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let gdt = descriptors(&g);
    for grp in 0..g.groups {
        let start = g.group_start(grp);
        if has_super(grp) {
            let mut b = vec![0u8; BLOCK as usize];
            // Group 0's superblock is at byte 1024 of block 0.
            b[1024..2048].copy_from_slice(&superblock(&g, grp, uuid, now));
            write_block(f, start, &b)?;
            write_block(f, start + 1, &gdt)?;
        }
        write_block(f, g.block_bitmap(grp), &block_bitmap(&g, grp))?;
        write_block(f, g.block_bitmap(grp) + 1, &inode_bitmap(&g, grp))?;
    }
    write_block(f, g.inode_table(0), &first_inodes(&g, now))?;
    write_block(f, g.root_block(), &dir_block(ROOT_INO, ROOT_INO, true))?;
    let lf = g.root_block() + 1;
    write_block(f, lf, &dir_block(LOST_FOUND_INO, ROOT_INO, false))?;
    let mut empty = vec![0u8; BLOCK as usize];
    put16(&mut empty, 4, BLOCK);
    for i in 1..LOST_FOUND_BLOCKS {
        write_block(f, lf + i, &empty)?;
    }
    Ok(())
}

fn superblock(g: &Geometry, grp: u64, uuid: [u8; 16], now: u64) -> [u8; 1024] {
    let mut s = [0u8; 1024];
    let free_blocks: u64 = (0..g.groups).map(|i| g.free_blocks(i)).sum();
    let free_inodes: u64 = (0..g.groups).map(|i| g.free_inodes(i)).sum();
    put32(&mut s, 0, g.inodes_per_group * g.groups);
    put32(&mut s, 4, g.blocks);
    put32(&mut s, 8, 0); // no blocks reserved for root
    put32(&mut s, 12, free_blocks);
    put32(&mut s, 16, free_inodes);
    put32(&mut s, 20, 0); // first data block (4 KiB blocks)
    put32(&mut s, 24, 2); // log2(block size) - 10
    put32(&mut s, 28, 2); // fragment size, the same
    put32(&mut s, 32, BLOCKS_PER_GROUP);
    put32(&mut s, 36, BLOCKS_PER_GROUP);
    put32(&mut s, 40, g.inodes_per_group);
    put32(&mut s, 48, now); // write time
    put16(&mut s, 54, 0xFFFF); // no mount count check
    put16(&mut s, 56, 0xEF53);
    put16(&mut s, 58, 1); // clean
    put16(&mut s, 60, 1); // errors: continue
    put32(&mut s, 64, now); // last check
    put32(&mut s, 76, 1); // revision 1
    put32(&mut s, 84, u64::from(FIRST_INO));
    put16(&mut s, 88, INODE_SIZE);
    put16(&mut s, 90, grp);
    put32(&mut s, 92, u64::from(COMPAT_NONE));
    put32(&mut s, 96, u64::from(INCOMPAT_FILETYPE));
    put32(
        &mut s,
        100,
        u64::from(RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE),
    );
    s[104..120].copy_from_slice(&uuid);
    s[120..127].copy_from_slice(b"scratch");
    put32(&mut s, 264, now); // mkfs time
    put16(&mut s, 348, 32); // min extra inode size
    put16(&mut s, 350, 32); // wanted extra inode size
    s
}

/// The group descriptor table, padded to whole blocks.
fn descriptors(g: &Geometry) -> Vec<u8> {
    let mut d = vec![0u8; (g.gdt_blocks * BLOCK) as usize];
    for grp in 0..g.groups {
        let at = (grp * DESC_SIZE) as usize;
        put32(&mut d, at, g.block_bitmap(grp));
        put32(&mut d, at + 4, g.block_bitmap(grp) + 1);
        put32(&mut d, at + 8, g.inode_table(grp));
        put16(&mut d, at + 12, g.free_blocks(grp));
        put16(&mut d, at + 14, g.free_inodes(grp));
        put16(&mut d, at + 16, if grp == 0 { 2 } else { 0 });
    }
    d
}

/// Sets bits `from..to` of `b`.
fn set_bits(b: &mut [u8], from: u64, to: u64) {
    for i in from..to {
        b[(i / 8) as usize] |= 1 << (i % 8);
    }
}

fn block_bitmap(g: &Geometry, grp: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    set_bits(&mut b, 0, g.overhead(grp) + g.used_data(grp));
    // Past the end of a short last group: in use.
    set_bits(&mut b, g.group_blocks(grp), BLOCK * 8);
    b
}

fn inode_bitmap(g: &Geometry, grp: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    if grp == 0 {
        set_bits(&mut b, 0, u64::from(FIRST_INO));
    }
    set_bits(&mut b, g.inodes_per_group, BLOCK * 8);
    b
}

/// The first inode table block: inodes 1 to 16 (root and lost+found).
fn first_inodes(g: &Geometry, now: u64) -> Vec<u8> {
    let mut t = vec![0u8; BLOCK as usize];
    let root = g.root_block();
    let dirs: [(u32, u64, u64, u64); 2] = [
        (ROOT_INO, 0o40755, 3, 1),
        (LOST_FOUND_INO, 0o40700, 2, LOST_FOUND_BLOCKS),
    ];
    for (ino, mode, links, nblocks) in dirs {
        let at = ((ino - 1) as u64 * INODE_SIZE) as usize;
        let first = if ino == ROOT_INO { root } else { root + 1 };
        let i = &mut t[at..at + INODE_SIZE as usize];
        put16(i, 0, mode);
        put32(i, 4, nblocks * BLOCK);
        for off in [8, 12, 16] {
            put32(i, off, now);
        }
        put16(i, 26, links);
        put32(i, 28, nblocks * BLOCK / 512);
        for k in 0..nblocks {
            put32(i, 40 + 4 * k as usize, first + k);
        }
        put16(i, 128, 32); // extra inode size
    }
    t
}

/// A directory's first block: `.`, `..` and, in the root, `lost+found`.
fn dir_block(ino: u32, parent: u32, root: bool) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    let mut at = 0usize;
    let mut entry = |b: &mut Vec<u8>, ino: u32, name: &[u8], last: bool| {
        let len = if last {
            BLOCK as usize - at
        } else {
            (8 + name.len()).next_multiple_of(4)
        };
        put32(b, at, u64::from(ino));
        put16(b, at + 4, len as u64);
        b[at + 6] = name.len() as u8;
        b[at + 7] = 2; // directory
        b[at + 8..at + 8 + name.len()].copy_from_slice(name);
        at += len;
    };
    entry(&mut b, ino, b".", false);
    entry(&mut b, parent, b"..", !root);
    if root {
        entry(&mut b, LOST_FOUND_INO, b"lost+found", true);
    }
    b
}

/// A random version 4 UUID from std's randomly keyed hasher.
fn uuid() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut u = [0u8; 16];
    for (i, half) in u.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    u[6] = (u[6] & 0x0F) | 0x40;
    u[8] = (u[8] & 0x3F) | 0x80;
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..50).filter(|&g| has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn tiny_last_group_dropped() {
        let g = Geometry::new((BLOCKS_PER_GROUP + 10) * BLOCK);
        assert_eq!((g.groups, g.blocks), (1, BLOCKS_PER_GROUP));
        let g = Geometry::new(MAX_SIZE);
        assert_eq!(g.groups, 8192);
        assert!(g.blocks <= u64::from(u32::MAX));
    }
}
