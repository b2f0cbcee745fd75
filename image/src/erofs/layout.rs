//! The end of a conversion: number the reachable inodes, write directory
//! and symlink blocks after the file data, then the metadata area (inodes,
//! xattrs, chunk maps and inline tails) and finally the superblock.

use std::collections::HashMap;
use std::io::{Seek, Write};

use super::ConvertError;
use super::data::DataWriter;
use super::format::{
    self, BLK, BLK_BITS, BLK_USIZE, COMPACT_SIZE, DIRENT_SIZE, DataLayout, EXTENDED_SIZE,
    INCOMPAT_CHUNKED_FILE, InodeCore, SLOT, SUPER_OFFSET, SuperBlock, ft,
};
use super::tree::{FileData, Ino, Inode, Kind, Tree};

/// What the metadata pass produced.
#[derive(Debug)]
pub(crate) struct Written {
    pub image_bytes: u64,
    pub inodes: u64,
}

/// One reachable inode's on-disk plan.
struct Plan {
    ino: Ino,
    core: InodeCore,
    xattr_size: usize,
    /// Bytes after the xattrs: a chunk map or an inline tail.
    extra: Vec<u8>,
    inline: bool,
    nid: u64,
}

/// A directory's entries in on-disk (byte) order, with the inode each names.
fn dir_entries(tree: &Tree, ino: Ino, parent: Ino) -> Vec<(&[u8], Ino)> {
    let mut v: Vec<(&[u8], Ino)> = vec![(b".", ino), (b"..", parent)];
    if let Kind::Dir(ch) = &tree.inodes[ino].kind {
        v.extend(ch.iter().map(|(n, &i)| (n.as_slice(), i)));
    }
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// Splits entries into directory blocks: (first, end, bytes used) each.
fn pack(entries: &[(&[u8], Ino)]) -> Vec<(usize, usize, usize)> {
    let mut blocks = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, (name, _)) in entries.iter().enumerate() {
        let need = DIRENT_SIZE + name.len();
        if used + need > BLK_USIZE && i > start {
            blocks.push((start, i, used));
            (start, used) = (i, 0);
        }
        used += need;
    }
    blocks.push((start, entries.len(), used));
    blocks
}

fn file_type(i: &Inode) -> u8 {
    match i.kind {
        Kind::Dir(_) => ft::DIR,
        Kind::File { .. } => ft::REG,
        Kind::Symlink(_) => ft::SYMLINK,
        Kind::Char(_) => ft::CHR,
        Kind::Block(_) => ft::BLK,
        Kind::Fifo => ft::FIFO,
    }
}

fn mode_type(i: &Inode) -> u16 {
    match i.kind {
        Kind::Dir(_) => 0o040000,
        Kind::File { .. } => 0o100000,
        Kind::Symlink(_) => 0o120000,
        Kind::Char(_) => 0o020000,
        Kind::Block(_) => 0o060000,
        Kind::Fifo => 0o010000,
    }
}

/// Walks the tree from the root: every reachable inode once (directories
/// before their children) with its parent directory and its link count.
fn walk(tree: &Tree) -> (Vec<(Ino, Ino)>, Vec<u32>) {
    let mut links = vec![0u32; tree.inodes.len()];
    let mut order = Vec::new();
    let mut stack = vec![(0usize, 0usize)];
    links[0] = 1;
    while let Some((ino, parent)) = stack.pop() {
        order.push((ino, parent));
        let Kind::Dir(ch) = &tree.inodes[ino].kind else {
            continue;
        };
        for &c in ch.values().rev() {
            links[c] = links[c].saturating_add(1);
            // Directories are reached once (a tree); files on their first link.
            if links[c] == 1 {
                stack.push((c, ino));
            }
            if tree.inodes[c].is_dir() {
                links[ino] = links[ino].saturating_add(1);
            }
        }
    }
    // Directories: one link from the parent, "." and one per subdirectory.
    for &(ino, _) in &order {
        if tree.inodes[ino].is_dir() {
            links[ino] = links[ino].saturating_add(1);
        }
    }
    (order, links)
}

/// The most common (mtime, nsec): compact inodes take their time from it.
fn build_time(tree: &Tree, order: &[(Ino, Ino)]) -> (i64, u32) {
    let mut count: HashMap<(i64, u32), u64> = HashMap::new();
    for &(ino, _) in order {
        let i = &tree.inodes[ino];
        *count.entry((i.mtime, i.mtime_nsec)).or_default() += 1;
    }
    count
        .into_iter()
        .max_by_key(|&(t, n)| (n, std::cmp::Reverse(t)))
        .map_or((0, 0), |(t, _)| t)
}

/// Writes everything after the streamed file data; returns the sizes.
pub(crate) fn finish<W: Write + Seek>(
    tree: &Tree,
    mut data: DataWriter<W>,
) -> Result<(W, Written), ConvertError> {
    let (order, links) = walk(tree);
    let (bt, bt_nsec) = build_time(tree, &order);
    let mut index = vec![usize::MAX; tree.inodes.len()];
    let mut plans = Vec::with_capacity(order.len());
    let mut chunked = false;
    for (n, &(ino, _)) in order.iter().enumerate() {
        index[ino] = n;
        let i = &tree.inodes[ino];
        let xattr_size = format::xattr_body_size(
            i.xattrs
                .iter()
                .map(|((_, k), v)| (k.as_slice(), v.as_slice())),
        );
        let (size, layout, i_u, extra) = match &i.kind {
            Kind::File {
                size,
                data: FileData::Flat { blkaddr, tail },
            } => {
                let l = if tail.is_empty() {
                    DataLayout::FlatPlain
                } else {
                    DataLayout::FlatInline
                };
                (*size, l, *blkaddr, tail.clone())
            }
            Kind::File {
                size,
                data: FileData::Chunked { chunkbits, map },
            } => {
                chunked = true;
                let extra = map.iter().flat_map(|a| a.to_le_bytes()).collect();
                (*size, DataLayout::ChunkBased, chunkbits - BLK_BITS, extra)
            }
            Kind::Char(rdev) | Kind::Block(rdev) => (0, DataLayout::FlatPlain, *rdev, Vec::new()),
            Kind::Fifo => (0, DataLayout::FlatPlain, 0, Vec::new()),
            // Directories and symlinks: sized here, placed below.
            Kind::Symlink(t) => (t.len() as u64, DataLayout::FlatPlain, 0, Vec::new()),
            Kind::Dir(_) => {
                let e = dir_entries(tree, ino, 0);
                let b = pack(&e);
                let size = (b.len() as u64 - 1) * BLK + b.last().map_or(0, |l| l.2) as u64;
                (size, DataLayout::FlatPlain, 0, Vec::new())
            }
        };
        let nlink = links[ino];
        let extended = i.uid > 0xffff
            || i.gid > 0xffff
            || nlink > 0xffff
            || size > u64::from(u32::MAX)
            || (i.mtime, i.mtime_nsec) != (bt, bt_nsec);
        let core = InodeCore {
            extended,
            layout: layout as u16,
            xattr_icount: format::xattr_icount(xattr_size) as u16,
            mode: mode_type(i) | (i.perm & 0o7777),
            nlink,
            size,
            i_u,
            ino: (n + 1) as u32,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime as u64,
            mtime_nsec: i.mtime_nsec,
        };
        let inline = layout == DataLayout::FlatInline;
        plans.push(Plan {
            ino,
            core,
            xattr_size,
            extra,
            inline,
            nid: 0,
        });
    }
    // Directories and symlinks: inline their last partial block if it fits.
    for p in &mut plans {
        let i = &tree.inodes[p.ino];
        if !matches!(i.kind, Kind::Dir(_) | Kind::Symlink(_)) {
            continue;
        }
        let tail = (p.core.size % BLK) as usize;
        if tail > 0 && core_len(p) + p.xattr_size + tail <= BLK_USIZE {
            p.inline = true;
            p.core.layout = DataLayout::FlatInline as u16;
        }
    }
    // Number the inodes: 32-byte slots; an inode with an inline tail must
    // not cross a block, nor may any inode core.
    let mut pos = 0u64;
    for p in &mut plans {
        pos = pos.next_multiple_of(SLOT);
        let core = core_len(p) as u64;
        let total = core + p.xattr_size as u64 + extra_len(p) as u64;
        let span = if p.inline { total } else { core };
        if pos % BLK + span > BLK {
            pos = pos.next_multiple_of(BLK);
        }
        p.nid = pos / SLOT;
        pos += total;
    }
    let meta_bytes = pos.next_multiple_of(BLK);
    let nids: Vec<u64> = plans.iter().map(|p| p.nid).collect();
    // Directory and symlink blocks go after the file data; the inline
    // part stays for the metadata area.
    for (n, p) in plans.iter_mut().enumerate() {
        let i = &tree.inodes[p.ino];
        let content = match &i.kind {
            Kind::Symlink(t) => t.clone(),
            Kind::Dir(_) => render_dir(tree, &dir_entries(tree, p.ino, order[n].1), &index, &nids),
            _ => continue,
        };
        let keep = if p.inline {
            content.len() % BLK_USIZE
        } else {
            0
        };
        let (blocks, tail) = content.split_at(content.len() - keep);
        p.core.i_u = if blocks.is_empty() {
            0
        } else {
            data.write_blocks(blocks)?
        };
        p.extra = tail.to_vec();
    }
    // The metadata area.
    let meta_blkaddr = data.reserve(meta_bytes / BLK)?;
    let mut buf = Vec::with_capacity(BLK_USIZE * 2);
    let mut written = 0u64;
    for p in &plans {
        let at = p.nid * SLOT;
        buf.resize(buf.len() + (at - written) as usize, 0);
        let start = buf.len();
        p.core.write(&mut buf);
        let i = &tree.inodes[p.ino];
        format::write_xattrs(
            &mut buf,
            i.xattrs
                .iter()
                .map(|((x, k), v)| (*x, k.as_slice(), v.as_slice())),
        );
        buf.extend_from_slice(&p.extra);
        written = at + (buf.len() - start) as u64;
        if buf.len() >= 1 << 20 {
            data.write_raw(&buf)?;
            buf.clear();
        }
    }
    buf.resize(buf.len() + (meta_bytes - written) as usize, 0);
    data.write_raw(&buf)?;
    let blocks = u64::from(meta_blkaddr) + meta_bytes / BLK;
    let sb = SuperBlock {
        root_nid: 0,
        inos: plans.len() as u64,
        build_time: bt as u64,
        build_time_nsec: bt_nsec,
        blocks: u32::try_from(blocks).map_err(|_| ConvertError::ImageTooLarge(blocks * BLK))?,
        meta_blkaddr,
        feature_incompat: if chunked { INCOMPAT_CHUNKED_FILE } else { 0 },
        uuid: [0; 16],
    };
    data.write_at(SUPER_OFFSET, &sb.to_bytes())?;
    let out = data.finish()?;
    Ok((
        out,
        Written {
            image_bytes: blocks * BLK,
            inodes: plans.len() as u64,
        },
    ))
}

fn core_len(p: &Plan) -> usize {
    if p.core.extended {
        EXTENDED_SIZE
    } else {
        COMPACT_SIZE
    }
}

/// Bytes after the xattrs: the chunk map, or the inline tail.
fn extra_len(p: &Plan) -> usize {
    if p.inline {
        (p.core.size % BLK) as usize
    } else {
        p.extra.len()
    }
}

/// The directory's blocks (the last one not padded).
fn render_dir(tree: &Tree, entries: &[(&[u8], Ino)], index: &[usize], nids: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let blocks = pack(entries);
    let last = blocks.len() - 1;
    for (b, &(first, end, _)) in blocks.iter().enumerate() {
        let base = out.len();
        let mut nameoff = (end - first) * DIRENT_SIZE;
        for &(name, ino) in &entries[first..end] {
            let nid = nids[index[ino]];
            format::write_dirent(&mut out, nid, nameoff as u16, file_type(&tree.inodes[ino]));
            nameoff += name.len();
        }
        for &(name, _) in &entries[first..end] {
            out.extend_from_slice(name);
        }
        if b != last {
            out.resize(base + BLK_USIZE, 0);
        }
    }
    out
}
