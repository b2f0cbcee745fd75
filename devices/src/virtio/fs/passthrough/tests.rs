//! The passthrough backend against real temporary directories: the
//! operations, the limits, read-only shares and the escape suite.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::virtio::fs::filesystem::{Context, Filesystem, SetAttr, SetTime, XattrReply};

pub const CTX: Context = Context {
    uid: 0,
    gid: 0,
    pid: 1,
};
pub const ROOT: Inode = ROOT_ID;

/// A scratch directory holding `share/` (served) and `outside/` (not).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "krypton-fs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("share")).expect("share");
        std::fs::create_dir_all(p.join("outside")).expect("outside");
        std::fs::write(p.join("outside/secret"), b"host secret").expect("secret");
        Scratch(p)
    }
    pub fn share(&self) -> PathBuf {
        self.0.join("share")
    }
    pub fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn backend(s: &Scratch, cfg: Config) -> Passthrough {
    Passthrough::new(&s.share(), cfg).expect("open share")
}

fn create(fs: &Passthrough, parent: Inode, name: &[u8]) -> (Entry, Handle) {
    let (e, fh, _) = fs
        .create(CTX, parent, name, 0o100644, libc::O_RDWR as u32, 0o022)
        .expect("create");
    (e, fh)
}

#[test]
fn file_data_and_metadata_round_trip() {
    let s = Scratch::new();
    let fs = backend(&s, Config::default());
    let (e, fh) = create(&fs, ROOT, b"hello.txt");
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(e.attr.mode & 0o777, 0o644);
    assert_eq!(
        fs.write(CTX, e.inode, fh, 0, b"hello, world")
            .expect("write"),
        12
    );
    assert_eq!(fs.write(CTX, e.inode, fh, 100, b"!").expect("write"), 1);
    assert_eq!(fs.read(CTX, e.inode, fh, 7, 5).expect("read"), b"world");
    assert_eq!(
        fs.read(CTX, e.inode, fh, 101, 50).expect("read at eof"),
        b""
    );
    fs.fsync(CTX, e.inode, fh, true).expect("fsync");
    fs.release(CTX, e.inode, fh).expect("release");
    assert_eq!(
        fs.release(CTX, e.inode, fh),
        Err(errno::EBADF),
        "released once"
    );
    let host = std::fs::read(s.share().join("hello.txt")).expect("host sees it");
    assert_eq!(&host[..12], b"hello, world");
    assert_eq!(host.len(), 101);
    // Host writes are seen by the guest.
    std::fs::write(s.share().join("hello.txt"), b"from the host").expect("host write");
    let (fh, _) = fs.open(CTX, e.inode, libc::O_RDONLY as u32).expect("open");
    assert_eq!(
        fs.read(CTX, e.inode, fh, 0, 4096).expect("read"),
        b"from the host"
    );
    assert_eq!(
        fs.write(CTX, e.inode, fh, 0, b"x"),
        Err(errno::EBADF),
        "read-only handle"
    );
    // chmod, truncate, utimes.
    let set = SetAttr {
        mode: Some(0o600),
        size: Some(4),
        mtime: Some(SetTime::At(1_000_000_000, 5)),
        ..SetAttr::default()
    };
    let (a, _) = fs.setattr(CTX, e.inode, &set).expect("setattr");
    assert_eq!(
        (a.mode & 0o7777, a.size, a.mtime, a.mtime_nsec),
        (0o600, 4, 1_000_000_000, 5)
    );
    let meta = std::fs::metadata(s.share().join("hello.txt")).expect("meta");
    assert_eq!((meta.permissions().mode() & 0o7777, meta.len()), (0o600, 4));
    assert_eq!(meta.mtime(), 1_000_000_000);
    let st = fs.statfs(CTX, ROOT).expect("statfs");
    assert!(st.blocks > 0 && st.bsize > 0, "{st:?}");
}

#[test]
fn directories_names_links_and_xattrs() {
    let s = Scratch::new();
    let fs = backend(&s, Config::default());
    let d = fs.mkdir(CTX, ROOT, b"dir", 0o755, 0).expect("mkdir");
    let (f, fh) = create(&fs, d.inode, b"a");
    fs.release(CTX, f.inode, fh).expect("release");
    fs.rename(CTX, d.inode, b"a", ROOT, b"b", 0)
        .expect("rename");
    assert!(s.share().join("b").exists() && !s.share().join("dir/a").exists());
    let l = fs.link(CTX, f.inode, d.inode, b"hard").expect("link");
    assert_eq!(l.inode, f.inode, "same node for both names");
    assert_eq!(l.attr.nlink, 2);
    let sl = fs.symlink(CTX, ROOT, b"sym", b"dir/hard").expect("symlink");
    assert_eq!(sl.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(fs.readlink(CTX, sl.inode).expect("readlink"), b"dir/hard");
    let fifo = fs
        .mknod(CTX, ROOT, b"fifo", libc::S_IFIFO | 0o644, 0, 0)
        .expect("fifo");
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!(
        fs.open(CTX, fifo.inode, 0),
        Err(errno::EACCES),
        "never opened on the host"
    );
    assert_eq!(
        fs.mknod(CTX, ROOT, b"mem", libc::S_IFCHR | 0o600, (1 << 8) | 1, 0),
        Err(errno::EPERM),
        "no device nodes"
    );
    // readdir lists everything, in pieces that resume at the offsets.
    let dh = fs.opendir(CTX, ROOT, 0).expect("opendir");
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let ents = fs.readdir(CTX, ROOT, dh, off, 1024).expect("readdir");
        let Some(first) = ents.first() else { break };
        names.push(first.name.clone());
        off = first.offset;
    }
    fs.releasedir(CTX, ROOT, dh).expect("releasedir");
    names.sort();
    let want: Vec<Vec<u8>> = [".", "..", "b", "dir", "fifo", "sym"]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    assert_eq!(names, want);
    // xattrs.
    fs.setxattr(CTX, f.inode, b"user.k", b"v1", 0)
        .expect("setxattr");
    assert_eq!(
        fs.getxattr(CTX, f.inode, b"user.k", 0).expect("size"),
        XattrReply::Size(2)
    );
    assert_eq!(
        fs.getxattr(CTX, f.inode, b"user.k", 64).expect("get"),
        XattrReply::Data(b"v1".to_vec())
    );
    assert_eq!(fs.getxattr(CTX, f.inode, b"user.k", 1), Err(errno::ERANGE));
    let XattrReply::Data(list) = fs.listxattr(CTX, f.inode, 4096).expect("list") else {
        panic!("list as data")
    };
    assert!(list.split(|&b| b == 0).any(|n| n == b"user.k"), "{list:?}");
    fs.removexattr(CTX, f.inode, b"user.k")
        .expect("removexattr");
    assert_eq!(
        fs.getxattr(CTX, f.inode, b"user.k", 64),
        Err(errno::ENODATA)
    );
    // unlink and rmdir.
    assert!(fs.rmdir(CTX, ROOT, b"dir").is_err(), "not empty");
    fs.unlink(CTX, d.inode, b"hard").expect("unlink");
    fs.rmdir(CTX, ROOT, b"dir").expect("rmdir");
    assert!(!s.share().join("dir").exists());
    assert_eq!(
        fs.lookup(CTX, ROOT, b"dir").map(|e| e.inode),
        Err(errno::ENOENT)
    );
}

#[test]
fn tables_are_bounded_and_forget_is_tolerant() {
    let s = Scratch::new();
    for n in ["a", "b", "c"] {
        std::fs::write(s.share().join(n), n).expect("file");
    }
    let fs = backend(
        &s,
        Config {
            max_inodes: 3,
            max_handles: 2,
            ..Config::default()
        },
    );
    let a = fs.lookup(CTX, ROOT, b"a").expect("a");
    let b = fs.lookup(CTX, ROOT, b"b").expect("b");
    assert_eq!(
        fs.lookup(CTX, ROOT, b"c").map(|e| e.inode),
        Err(errno::ENFILE)
    );
    assert_eq!(fs.lookup(CTX, ROOT, b"a").expect("again").inode, a.inode);
    let h1 = fs.open(CTX, a.inode, 0).expect("open 1").0;
    let _h2 = fs.open(CTX, b.inode, 0).expect("open 2").0;
    assert_eq!(fs.open(CTX, a.inode, 0), Err(errno::EMFILE));
    assert_eq!(fs.opendir(CTX, ROOT, 0), Err(errno::EMFILE));
    fs.release(CTX, a.inode, h1).expect("release");
    fs.open(CTX, a.inode, 0).expect("room again");
    // Unknown nodes, the root and over-counts are ignored.
    fs.forget(999_999, 5);
    fs.forget(ROOT, 100);
    assert_eq!(
        fs.lookup(CTX, ROOT, b"a").expect("root kept").inode,
        a.inode
    );
    fs.forget(a.inode, 2);
    assert_eq!(fs.node_count(), 3, "a still held once");
    fs.forget(a.inode, u64::MAX);
    assert_eq!(fs.node_count(), 2);
    assert!(fs.getattr(CTX, a.inode, None).is_err(), "a forgotten");
    fs.lookup(CTX, ROOT, b"c").expect("room for c");
    // A handle of another node is refused.
    assert_eq!(fs.read(CTX, b.inode, 12345, 0, 1), Err(errno::EBADF));
}

#[test]
fn read_only_share_refuses_every_write() {
    let s = Scratch::new();
    std::fs::write(s.share().join("f"), b"data").expect("file");
    std::fs::create_dir(s.share().join("d")).expect("dir");
    let fs = backend(
        &s,
        Config {
            read_only: true,
            ..Config::default()
        },
    );
    let f = fs.lookup(CTX, ROOT, b"f").expect("lookup");
    let d = fs.lookup(CTX, ROOT, b"d").expect("lookup");
    let ro = Err::<(), _>(errno::EROFS);
    let (fh, _) = fs
        .open(CTX, f.inode, libc::O_RDONLY as u32)
        .expect("read open");
    assert_eq!(fs.read(CTX, f.inode, fh, 0, 10).expect("read"), b"data");
    assert_eq!(fs.write(CTX, f.inode, fh, 0, b"x").map(drop), ro);
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(fs.open(CTX, f.inode, flags as u32).map(drop), ro);
    }
    assert_eq!(fs.create(CTX, ROOT, b"n", 0o644, 0, 0).map(drop), ro);
    assert_eq!(fs.mkdir(CTX, ROOT, b"n", 0o755, 0).map(drop), ro);
    assert_eq!(
        fs.mknod(CTX, ROOT, b"n", libc::S_IFIFO | 0o644, 0, 0)
            .map(drop),
        ro
    );
    assert_eq!(
        fs.mknod(CTX, ROOT, b"n", libc::S_IFBLK | 0o644, 1, 0)
            .map(drop),
        ro
    );
    assert_eq!(fs.symlink(CTX, ROOT, b"n", b"f").map(drop), ro);
    assert_eq!(fs.link(CTX, f.inode, ROOT, b"n").map(drop), ro);
    assert_eq!(fs.unlink(CTX, ROOT, b"f"), ro);
    assert_eq!(fs.rmdir(CTX, ROOT, b"d"), ro);
    assert_eq!(fs.rename(CTX, ROOT, b"f", d.inode, b"f", 0), ro);
    let set = SetAttr {
        mode: Some(0o777),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(CTX, f.inode, &set).map(drop), ro);
    let set = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(CTX, f.inode, &set).map(drop), ro);
    assert_eq!(fs.fallocate(CTX, f.inode, fh, 0, 0, 4096), ro);
    assert_eq!(fs.setxattr(CTX, f.inode, b"user.k", b"v", 0), ro);
    assert_eq!(fs.removexattr(CTX, f.inode, b"user.k"), ro);
    assert_eq!(std::fs::read(s.share().join("f")).expect("file"), b"data");
    let names: Vec<_> = std::fs::read_dir(s.share())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing created: {names:?}");
}

#[test]
fn ownership_times_and_rename_flags() {
    let s = Scratch::new();
    let fs = backend(&s, Config::default());
    let user = Context {
        uid: 1234,
        gid: 567,
        pid: 1,
    };
    // New nodes belong to the caller (the VMM runs as root here).
    let (f, fh, _) = fs
        .create(user, ROOT, b"mine", 0o644, libc::O_RDWR as u32, 0)
        .expect("create");
    assert_eq!((f.attr.uid, f.attr.gid), (1234, 567));
    let d = fs.mkdir(user, ROOT, b"sgid", 0o775, 0).expect("mkdir");
    assert_eq!((d.attr.uid, d.attr.gid), (1234, 567));
    let setgid = SetAttr {
        mode: Some(0o2775),
        ..SetAttr::default()
    };
    fs.setattr(user, d.inode, &setgid).expect("chmod g+s");
    let other = Context {
        uid: 99,
        gid: 98,
        pid: 1,
    };
    let inner = fs.mkdir(other, d.inode, b"in", 0o755, 0).expect("mkdir");
    assert_eq!(
        (inner.attr.uid, inner.attr.gid),
        (99, 567),
        "setgid parent's gid"
    );
    let meta = std::fs::metadata(s.share().join("mine")).expect("meta");
    assert_eq!((meta.uid(), meta.gid()), (1234, 567));
    // chown and utimes, on a file and on a symlink itself.
    let set = SetAttr {
        uid: Some(42),
        gid: Some(43),
        atime: Some(SetTime::At(5, 0)),
        mtime: Some(SetTime::At(7, 9)),
        ..SetAttr::default()
    };
    let (a, _) = fs.setattr(CTX, f.inode, &set).expect("setattr");
    assert_eq!(
        (a.uid, a.gid, a.atime, a.mtime, a.mtime_nsec),
        (42, 43, 5, 7, 9)
    );
    let l = fs.symlink(CTX, ROOT, b"l", b"mine").expect("symlink");
    let (a, _) = fs.setattr(CTX, l.inode, &set).expect("setattr link");
    assert_eq!((a.uid, a.mtime), (42, 7));
    let link_meta = std::fs::symlink_metadata(s.share().join("l")).expect("meta");
    assert_eq!((link_meta.uid(), link_meta.mtime()), (42, 7));
    let target = std::fs::metadata(s.share().join("mine")).expect("meta");
    assert_eq!(target.mtime(), 7, "the file kept its own time");
    // fallocate and SEEK_DATA / SEEK_END.
    fs.fallocate(CTX, f.inode, fh, 0, 0, 8192)
        .expect("fallocate");
    assert_eq!(fs.getattr(CTX, f.inode, None).expect("attr").0.size, 8192);
    assert_eq!(
        fs.lseek(CTX, f.inode, fh, 0, libc::SEEK_END as u32),
        Ok(8192)
    );
    fs.write(CTX, f.inode, fh, 0, b"data").expect("write");
    assert_eq!(fs.lseek(CTX, f.inode, fh, 0, 3), Ok(0), "SEEK_DATA");
    let hole = fs.lseek(CTX, f.inode, fh, 0, 4).expect("SEEK_HOLE");
    assert!((4..=8192).contains(&hole), "hole at {hole}");
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    std::fs::write(s.share().join("x"), b"x").expect("x");
    std::fs::write(s.share().join("y"), b"y").expect("y");
    assert_eq!(
        fs.rename(CTX, ROOT, b"x", ROOT, b"y", libc::RENAME_NOREPLACE),
        Err(Errno(libc::EEXIST))
    );
    fs.rename(CTX, ROOT, b"x", ROOT, b"y", libc::RENAME_EXCHANGE)
        .expect("exchange");
    assert_eq!(std::fs::read(s.share().join("y")).expect("y"), b"x");
    assert_eq!(std::fs::read(s.share().join("x")).expect("x"), b"y");
    assert_eq!(
        fs.rename(CTX, ROOT, b"x", ROOT, b"y", 1 << 7),
        Err(errno::EINVAL),
        "unknown rename flags"
    );
}

#[test]
fn share_must_be_an_existing_directory() {
    let s = Scratch::new();
    let missing = s.0.join("missing");
    assert!(matches!(
        Passthrough::new(&missing, Config::default()),
        Err(PassthroughError::Open { .. })
    ));
    let file = s.outside().join("secret");
    assert!(
        Passthrough::new(&file, Config::default()).is_err(),
        "a file"
    );
    // A symlink to a directory is followed once, by the host's own choice.
    std::os::unix::fs::symlink(s.share(), s.0.join("link")).expect("link");
    let fs = Passthrough::new(&s.0.join("link"), Config::default()).expect("via link");
    assert_eq!(fs.node_count(), 1);
}
