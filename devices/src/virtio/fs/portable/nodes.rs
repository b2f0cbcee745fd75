//! The portable backend's attributes, lookups and directory listings.

use std::fs::Metadata;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::abi::ROOT_ID;
use super::super::filesystem::{Attr, Context, DirEntry, Entry, FsResult, Inode, SetTime};
use super::host::{self, Kind};
use super::{Meta, Portable, check_name, io_err};

/// Linux `S_IF*` and `DT_*` values and the open flags we look at.
pub(super) const S_IFDIR: u32 = 0o040_000;
pub(super) const S_IFREG: u32 = 0o100_000;
pub(super) const S_IFLNK: u32 = 0o120_000;
pub(super) const S_IFIFO: u32 = 0o010_000;
pub(super) const S_IFMT: u32 = 0o170_000;
const DT_DIR: u32 = 4;
const DT_REG: u32 = 8;
const DT_LNK: u32 = 10;
const DT_UNKNOWN: u32 = 0;
pub(super) const O_ACCMODE: u32 = 3;
pub(super) const O_RDONLY: u32 = 0;
pub(super) const O_WRONLY: u32 = 1;
pub(super) const O_EXCL: u32 = 0o200;
pub(super) const O_TRUNC: u32 = 0o1000;
/// RENAME_NOREPLACE.
pub(super) const NOREPLACE: u32 = 1;

fn split(t: std::io::Result<SystemTime>) -> (u64, u32) {
    match t.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => (d.as_secs(), d.subsec_nanos()),
        None => (0, 0),
    }
}

pub(super) fn sys_time(t: SetTime) -> SystemTime {
    match t {
        SetTime::Now => SystemTime::now(),
        SetTime::At(s, ns) => UNIX_EPOCH
            .checked_add(Duration::new(s, ns.min(999_999_999)))
            .unwrap_or(UNIX_EPOCH),
    }
}

/// Default permission bits (see the module docs).
fn default_mode(k: Kind, m: &Metadata) -> u32 {
    let bits = match k {
        Kind::Link => return 0o777,
        Kind::Dir | Kind::File | Kind::Other => 0o755,
    };
    if m.permissions().readonly() {
        bits & !0o222
    } else {
        bits
    }
}

/// FUSE attributes of node `ino` from host metadata and remembered `meta`.
fn attr(ino: Inode, k: Kind, m: &Metadata, meta: Meta) -> Attr {
    let ftype = match k {
        Kind::Dir => S_IFDIR,
        Kind::File => S_IFREG,
        Kind::Link => S_IFLNK,
        Kind::Other => S_IFIFO,
    };
    let size = if k == Kind::Dir { 4096 } else { m.len() };
    let (atime, atime_nsec) = split(m.accessed());
    let (mtime, mtime_nsec) = split(m.modified());
    Attr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime,
        mtime,
        ctime: mtime,
        atime_nsec,
        mtime_nsec,
        ctime_nsec: mtime_nsec,
        mode: ftype | meta.mode.unwrap_or_else(|| default_mode(k, m)),
        nlink: if k == Kind::Dir { 2 } else { 1 },
        uid: meta.uid.unwrap_or(0),
        gid: meta.gid.unwrap_or(0),
        rdev: 0,
        blksize: 4096,
    }
}

/// A stable, nonzero dirent inode number for a name.
fn name_ino(rel: &Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rel.to_string_lossy().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

impl Portable {
    pub(super) fn stat(&self, inode: Inode, rel: &Path, full: &Path) -> FsResult<(Attr, Duration)> {
        let m = std::fs::symlink_metadata(full).map_err(io_err)?;
        Ok((
            attr(inode, host::kind(&m), &m, self.meta(rel)),
            self.cfg.timeout,
        ))
    }

    pub(super) fn node_stat(&self, inode: Inode) -> FsResult<(Attr, Duration)> {
        let rel = self.rel(inode)?;
        let full = self.host_path(&rel)?;
        self.stat(inode, &rel, &full)
    }

    /// Looks `name` up below `parent` and takes a reference on the node.
    pub(super) fn do_lookup(&self, parent: Inode, name: &[u8]) -> FsResult<Entry> {
        let (rel, full) = self.child(parent, name)?;
        let m = std::fs::symlink_metadata(&full).map_err(io_err)?;
        let inode = self.insert_node(rel.clone())?;
        Ok(Entry {
            inode,
            generation: 0,
            attr: attr(inode, host::kind(&m), &m, self.meta(&rel)),
            attr_timeout: self.cfg.timeout,
            entry_timeout: self.cfg.timeout,
        })
    }

    /// Remembers a new node's mode and the caller's ids, then looks it up.
    pub(super) fn made(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
    ) -> FsResult<Entry> {
        let (rel, _) = self.child(parent, name)?;
        let meta = Meta {
            mode: Some(mode & 0o7777),
            uid: Some(ctx.uid).filter(|&u| u != 0),
            gid: Some(ctx.gid).filter(|&g| g != 0),
        };
        // A new node: nothing remembered for an earlier one of that name
        // survives. Without room to remember, it keeps the defaults.
        super::lock(&self.state).meta.remove(&rel);
        let _ = self.remember(&rel, meta);
        self.do_lookup(parent, name)
    }

    /// The directory listing of `full` as the guest sees it.
    pub(super) fn list(&self, inode: Inode, rel: &Path, full: &Path) -> FsResult<Vec<DirEntry>> {
        let parent_ino = rel.parent().map_or(ROOT_ID, name_ino);
        let mut out = vec![
            DirEntry {
                ino: if inode == ROOT_ID {
                    ROOT_ID
                } else {
                    name_ino(rel)
                },
                offset: 1,
                kind: DT_DIR,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: parent_ino,
                offset: 2,
                kind: DT_DIR,
                name: b"..".to_vec(),
            },
        ];
        let mut names = Vec::new();
        for e in std::fs::read_dir(full).map_err(io_err)? {
            let e = e.map_err(io_err)?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_name(name.as_bytes()).is_err() {
                continue;
            }
            let kind = match e.metadata().map(|m| host::kind(&m)) {
                Ok(Kind::Dir) => DT_DIR,
                Ok(Kind::File) => DT_REG,
                Ok(Kind::Link) => DT_LNK,
                _ => DT_UNKNOWN,
            };
            names.push((name, kind));
        }
        names.sort();
        for (name, kind) in names {
            let offset = out.len() as u64 + 1;
            out.push(DirEntry {
                ino: name_ino(&rel.join(&name)),
                offset,
                kind,
                name: name.into_bytes(),
            });
        }
        Ok(out)
    }
}
