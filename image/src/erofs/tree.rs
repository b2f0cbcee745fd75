//! The in-memory tree of a layer: inodes (metadata and where their data
//! went) and directories, built as the tar is read. File data itself is
//! never held here, only the tails of files waiting to be inlined.

use std::collections::BTreeMap;

use super::ConvertError;
use super::format::NAME_LEN;

/// Index of an inode in [`Tree::inodes`].
pub(crate) type Ino = usize;

/// xattrs keyed by (EROFS name index, name suffix); sorted for determinism.
pub(crate) type Xattrs = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

/// Where a regular file's data is.
#[derive(Debug, Clone)]
pub(crate) enum FileData {
    /// `blocks` whole blocks from `blkaddr`; `tail` (shorter than a block,
    /// possibly empty) is to be stored inline after the inode.
    Flat { blkaddr: u32, tail: Vec<u8> },
    /// Chunks of `1 << chunkbits` bytes; `NULL_ADDR` entries are holes.
    Chunked { chunkbits: u32, map: Vec<u32> },
}

/// What an inode is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Dir(BTreeMap<Vec<u8>, Ino>),
    File { size: u64, data: FileData },
    Symlink(Vec<u8>),
    Char(u32),
    Block(u32),
    Fifo,
}

/// One inode.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    /// Permission bits including setuid, setgid and sticky (0o7777).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: Xattrs,
    pub kind: Kind,
}

impl Inode {
    /// A directory with no children.
    pub(crate) fn empty_dir(perm: u16) -> Inode {
        Inode {
            perm,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Xattrs::new(),
            kind: Kind::Dir(BTreeMap::new()),
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }
}

/// A normalized path: its components, none empty, `.` or `..`.
pub(crate) type Components = Vec<Vec<u8>>;

/// Normalizes a tar path: drops a leading `/`, empty and `.` components;
/// `..`, NUL bytes and over-long names are errors. The empty result is the
/// root.
pub(crate) fn normalize(path: &[u8], max_path: usize) -> Result<Components, ConvertError> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    if path.len() > max_path {
        return Err(ConvertError::PathTooLong {
            path: shown(),
            max: max_path,
        });
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(ConvertError::DotDot(shown())),
            _ if c.contains(&0) => return Err(ConvertError::BadName(shown())),
            _ if c.len() > NAME_LEN => return Err(ConvertError::NameTooLong(shown())),
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// The inodes of a layer; inode 0 is the root directory.
#[derive(Debug)]
pub(crate) struct Tree {
    pub inodes: Vec<Inode>,
}

impl Tree {
    pub(crate) fn new() -> Tree {
        Tree {
            inodes: vec![Inode::empty_dir(0o755)],
        }
    }

    fn children_mut(&mut self, dir: Ino) -> Option<&mut BTreeMap<Vec<u8>, Ino>> {
        match &mut self.inodes.get_mut(dir)?.kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// The inode at `path`, if any.
    pub(crate) fn lookup(&self, path: &[Vec<u8>]) -> Option<Ino> {
        let mut cur = 0;
        for c in path {
            match &self.inodes.get(cur)?.kind {
                Kind::Dir(children) => cur = *children.get(c)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// The directory holding `path`'s last component, creating missing
    /// parents (0755, root-owned). A non-directory in the way is an error.
    pub(crate) fn parent_dir(&mut self, path: &[Vec<u8>]) -> Result<Ino, ConvertError> {
        let mut cur = 0;
        let parents = path.len().saturating_sub(1);
        for (i, c) in path.iter().take(parents).enumerate() {
            let next = self.children_mut(cur).and_then(|ch| ch.get(c).copied());
            cur = match next {
                Some(n) if self.inodes.get(n).is_some_and(Inode::is_dir) => n,
                Some(_) => {
                    return Err(ConvertError::NotADirectory(join(&path[..=i])));
                }
                None => {
                    let n = self.push(Inode::empty_dir(0o755));
                    if let Some(ch) = self.children_mut(cur) {
                        ch.insert(c.clone(), n);
                    }
                    n
                }
            };
        }
        Ok(cur)
    }

    /// The directory at `path`, created (0755, root-owned) with its
    /// parents if missing; an existing one is left as it is.
    pub(crate) fn ensure_dir(&mut self, path: &[Vec<u8>]) -> Result<Ino, ConvertError> {
        match self.lookup(path) {
            Some(d) if self.inodes[d].is_dir() => Ok(d),
            Some(_) => Err(ConvertError::NotADirectory(join(path))),
            None => self.insert(path, Inode::empty_dir(0o755)),
        }
    }

    fn push(&mut self, inode: Inode) -> Ino {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// Places `inode` at `path`, replacing whatever was there (a directory
    /// given for an existing directory only updates its metadata and keeps
    /// its children and opaque mark). Returns its index.
    pub(crate) fn insert(&mut self, path: &[Vec<u8>], inode: Inode) -> Result<Ino, ConvertError> {
        let Some(name) = path.last() else {
            // The root: only a directory may replace it.
            if !inode.is_dir() {
                return Err(ConvertError::RootNotDir);
            }
            update_dir(&mut self.inodes[0], inode);
            return Ok(0);
        };
        let parent = self.parent_dir(path)?;
        let existing = self.children_mut(parent).and_then(|c| c.get(name).copied());
        if let Some(old) = existing
            && inode.is_dir()
            && self.inodes.get(old).is_some_and(Inode::is_dir)
        {
            update_dir(&mut self.inodes[old], inode);
            return Ok(old);
        }
        let n = self.push(inode);
        if let Some(ch) = self.children_mut(parent) {
            ch.insert(name.clone(), n);
        }
        Ok(n)
    }

    /// Adds a hard link at `path` to the existing non-directory at `target`.
    pub(crate) fn link(
        &mut self,
        path: &[Vec<u8>],
        target: &[Vec<u8>],
    ) -> Result<(), ConvertError> {
        let t = self
            .lookup(target)
            .ok_or_else(|| ConvertError::LinkTarget(join(path), join(target)))?;
        if self.inodes[t].is_dir() {
            return Err(ConvertError::LinkToDir(join(path)));
        }
        let Some(name) = path.last() else {
            return Err(ConvertError::RootNotDir);
        };
        let parent = self.parent_dir(path)?;
        if let Some(ch) = self.children_mut(parent) {
            ch.insert(name.clone(), t);
        }
        Ok(())
    }

    /// Sets an xattr on an existing inode.
    pub(crate) fn set_xattr(&mut self, ino: Ino, idx: u8, name: &[u8], value: &[u8]) {
        if let Some(i) = self.inodes.get_mut(ino) {
            i.xattrs.insert((idx, name.to_vec()), value.to_vec());
        }
    }
}

/// The opaque-directory xattr (`trusted.overlay.opaque`).
pub(crate) const OPAQUE: (u8, &[u8]) = (4, b"overlay.opaque");

/// Copies a directory entry's metadata onto an existing directory.
fn update_dir(dir: &mut Inode, new: Inode) {
    let opaque = dir.xattrs.remove(&(OPAQUE.0, OPAQUE.1.to_vec()));
    dir.perm = new.perm;
    dir.uid = new.uid;
    dir.gid = new.gid;
    dir.mtime = new.mtime;
    dir.mtime_nsec = new.mtime_nsec;
    dir.xattrs = new.xattrs;
    if let Some(v) = opaque {
        dir.xattrs.insert((OPAQUE.0, OPAQUE.1.to_vec()), v);
    }
}

/// `a/b/c` for messages.
pub(crate) fn join(path: &[Vec<u8>]) -> String {
    let v: Vec<String> = path
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("/{}", v.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Components {
        normalize(s.as_bytes(), 4096).unwrap_or_default()
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(
            p("./a//b/./c/"),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(p("/etc/passwd"), vec![b"etc".to_vec(), b"passwd".to_vec()]);
        assert!(p("./").is_empty());
        assert!(matches!(
            normalize(b"a/../b", 4096),
            Err(ConvertError::DotDot(_))
        ));
        assert!(matches!(
            normalize(b"a/b\0c", 4096),
            Err(ConvertError::BadName(_))
        ));
        let long = "x".repeat(256);
        assert!(matches!(
            normalize(long.as_bytes(), 4096),
            Err(ConvertError::NameTooLong(_))
        ));
        assert!(matches!(
            normalize(b"abcdef", 3),
            Err(ConvertError::PathTooLong { .. })
        ));
    }

    #[test]
    fn dir_over_dir_keeps_children_and_file_over_dir_drops_them() {
        let mut t = Tree::new();
        let f = Inode {
            kind: Kind::Fifo,
            ..Inode::empty_dir(0o644)
        };
        t.insert(&p("a/b"), f.clone()).ok();
        let a = t.lookup(&p("a")).unwrap_or(0);
        assert_eq!(t.inodes[a].perm, 0o755);
        t.insert(&p("a"), Inode::empty_dir(0o700)).ok();
        assert_eq!(t.lookup(&p("a")), Some(a));
        assert_eq!(t.inodes[a].perm, 0o700);
        assert!(t.lookup(&p("a/b")).is_some());
        t.insert(&p("a"), f.clone()).ok();
        assert!(t.lookup(&p("a/b")).is_none());
        assert!(matches!(
            t.insert(&p("a/c"), f),
            Err(ConvertError::NotADirectory(_))
        ));
    }
}
