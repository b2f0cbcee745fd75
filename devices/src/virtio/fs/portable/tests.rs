//! The portable backend against real temporary directories, on Linux and
//! (cross-built) under wine: data, directories, renames, read-only shares,
//! escape attempts and the table bounds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::virtio::fs::filesystem::{Context, Entry, Filesystem, SetAttr, SetTime, XattrReply};

pub(super) const CTX: Context = Context {
    uid: 0,
    gid: 0,
    pid: 1,
};
pub(super) const USER: Context = Context {
    uid: 1000,
    gid: 1000,
    pid: 2,
};
pub(super) const ROOT: Inode = ROOT_ID;
pub(super) const S_IFMT: u32 = 0o170_000;
pub(super) const S_IFDIR: u32 = 0o040_000;
pub(super) const S_IFREG: u32 = 0o100_000;
pub(super) const S_IFLNK: u32 = 0o120_000;
pub(super) const O_RDONLY: u32 = 0;
pub(super) const O_RDWR: u32 = 2;
pub(super) const O_TRUNC: u32 = 0o1000;

/// A scratch directory holding `share/` (served) and `outside/` (not).
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    pub(super) fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "krypton-portable-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("share")).expect("share");
        std::fs::create_dir_all(p.join("outside")).expect("outside");
        std::fs::write(p.join("outside").join("secret"), b"host secret").expect("secret");
        Scratch(p)
    }
    pub(super) fn share(&self) -> PathBuf {
        self.0.join("share")
    }
    pub(super) fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }
    pub(super) fn assert_outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.outside())
            .expect("ls outside")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["secret"], "nothing created outside");
        assert_eq!(
            std::fs::read(self.outside().join("secret")).expect("read"),
            b"host secret"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn backend(s: &Scratch, cfg: Config) -> Portable {
    Portable::new(&s.share(), cfg).expect("open share")
}

pub(super) fn create(fs: &Portable, parent: Inode, name: &[u8]) -> (Entry, Handle) {
    let (e, fh, _) = fs
        .create(CTX, parent, name, S_IFREG | 0o644, O_RDWR, 0o022)
        .expect("create");
    (e, fh)
}

pub(super) fn write_file(fs: &Portable, parent: Inode, name: &[u8], data: &[u8]) -> Entry {
    let (e, fh) = create(fs, parent, name);
    fs.write(CTX, e.inode, fh, 0, data).expect("write");
    fs.release(CTX, e.inode, fh).expect("release");
    e
}

pub(super) fn read_all(fs: &Portable, inode: Inode) -> Vec<u8> {
    let (fh, _) = fs.open(CTX, inode, O_RDONLY).expect("open");
    let data = fs.read(CTX, inode, fh, 0, 1 << 16).expect("read");
    fs.release(CTX, inode, fh).expect("release");
    data
}

pub(super) fn list(fs: &Portable, dir: Inode, size: u32) -> Vec<(Vec<u8>, u32)> {
    let dh = fs.opendir(CTX, dir, 0).expect("opendir");
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let ents = fs.readdir(CTX, dir, dh, off, size).expect("readdir");
        let Some(last) = ents.last() else { break };
        off = last.offset;
        out.extend(ents.into_iter().map(|d| (d.name, d.kind)));
    }
    fs.releasedir(CTX, dir, dh).expect("releasedir");
    out
}

#[test]
fn names_are_checked() {
    for ok in [
        "a", "file.txt", "CONSOLE", "COM10", "lpt", "x.con", ".hidden", "ü",
    ] {
        assert!(check_name(ok.as_bytes()).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "a:b",
        "f:$DATA",
        "a\0b",
        "CON",
        "con",
        "Nul.txt",
        "COM1",
        "com1.tar.gz",
        "LPT9",
        "AUX ",
        "PRN.x",
        "conin$",
        "COM¹",
        "foo.",
        "foo ",
        "a<b",
        "a|b",
        "a?",
        "a*",
        "a\"b",
        "a\nb",
    ] {
        assert_eq!(check_name(bad.as_bytes()), Err(errno::EINVAL), "{bad:?}");
    }
    assert_eq!(check_name(&[0xff, 0xfe]), Err(errno::EINVAL), "not UTF-8");
    assert_eq!(check_name(&[b'a'; 256]), Err(errno::ENAMETOOLONG));
    assert!(check_name(&[b'a'; 255]).is_ok());
}

#[test]
fn file_data_and_metadata_round_trip() {
    let s = Scratch::new();
    let fs = backend(&s, Config::default());
    let (e, fh) = create(&fs, ROOT, b"hello.txt");
    assert_eq!(e.attr.mode, S_IFREG | 0o644, "mode as created");
    assert_eq!(fs.write(CTX, e.inode, fh, 0, b"hello, world"), Ok(12));
    assert_eq!(fs.write(CTX, e.inode, fh, 100, b"!"), Ok(1));
    assert_eq!(fs.read(CTX, e.inode, fh, 7, 5).expect("read"), b"world");
    assert_eq!(fs.read(CTX, e.inode, fh, 101, 50).expect("eof"), b"");
    fs.flush(CTX, e.inode, fh).expect("flush");
    fs.fsync(CTX, e.inode, fh, true).expect("fsync");
    fs.release(CTX, e.inode, fh).expect("release");
    assert_eq!(fs.release(CTX, e.inode, fh), Err(errno::EBADF));
    let host = std::fs::read(s.share().join("hello.txt")).expect("host sees it");
    assert_eq!((&host[..12], host.len()), (&b"hello, world"[..], 101));
    // Host writes are seen; a read-only handle cannot write.
    std::fs::write(s.share().join("hello.txt"), b"from the host").expect("host write");
    let (fh, _) = fs.open(CTX, e.inode, O_RDONLY).expect("open");
    assert_eq!(
        fs.read(CTX, e.inode, fh, 0, 4096).expect("read"),
        b"from the host"
    );
    assert_eq!(fs.write(CTX, e.inode, fh, 0, b"x"), Err(errno::EBADF));
    assert_eq!(fs.read(CTX, e.inode, 999, 0, 1), Err(errno::EBADF));
    fs.release(CTX, e.inode, fh).expect("release");
    // O_TRUNC on open.
    let (fh, _) = fs.open(CTX, e.inode, O_RDWR | O_TRUNC).expect("open trunc");
    fs.write(CTX, e.inode, fh, 0, b"0123456789").expect("write");
    // chmod (remembered), truncate through the handle, utimes.
    let set = SetAttr {
        mode: Some(0o600),
        size: Some(4),
        mtime: Some(SetTime::At(1_000_000_000, 5000)),
        atime: Some(SetTime::Now),
        handle: Some(fh),
        ..SetAttr::default()
    };
    let (a, _) = fs.setattr(CTX, e.inode, &set).expect("setattr");
    assert_eq!(
        (a.mode, a.size, a.mtime),
        (S_IFREG | 0o600, 4, 1_000_000_000)
    );
    fs.release(CTX, e.inode, fh).expect("release");
    let meta = std::fs::metadata(s.share().join("hello.txt")).expect("meta");
    assert_eq!(meta.len(), 4);
    let mtime = meta.modified().expect("mtime");
    let secs = mtime.duration_since(std::time::UNIX_EPOCH).expect("epoch");
    assert_eq!(secs.as_secs(), 1_000_000_000);
    // Truncate without a handle.
    let grow = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(CTX, e.inode, &grow).expect("grow").0.size, 10);
    let (a, _) = fs.getattr(CTX, e.inode, None).expect("getattr");
    assert_eq!(
        (a.mode, a.uid, a.gid, a.ino),
        (S_IFREG | 0o600, 0, 0, e.inode)
    );
    // chown by root is remembered; a user may not chown or chmod root's.
    let chown = SetAttr {
        uid: Some(1000),
        gid: Some(1000),
        ..SetAttr::default()
    };
    let (a, _) = fs.setattr(CTX, e.inode, &chown).expect("chown");
    assert_eq!((a.uid, a.gid), (1000, 1000));
    let chmod = SetAttr {
        mode: Some(0o640),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(USER, e.inode, &chmod)
            .expect("owner chmod")
            .0
            .mode
            & 0o7777,
        0o640
    );
    assert_eq!(
        fs.setattr(
            USER,
            e.inode,
            &SetAttr {
                uid: Some(0),
                ..SetAttr::default()
            }
        )
        .map(drop),
        Err(errno::EPERM)
    );
    // Host files get the defaults.
    std::fs::write(s.share().join("host.bin"), b"x").expect("host file");
    let h = fs.lookup(CTX, ROOT, b"host.bin").expect("lookup");
    assert_eq!(
        (h.attr.mode, h.attr.uid, h.attr.nlink),
        (S_IFREG | 0o755, 0, 1)
    );
    // CREATE of an existing name opens it; with O_EXCL it fails.
    let (again, fh, _) = fs
        .create(CTX, ROOT, b"host.bin", S_IFREG | 0o600, O_RDWR, 0)
        .expect("create existing");
    assert_eq!((again.inode, again.attr.mode), (h.inode, S_IFREG | 0o755));
    fs.release(CTX, h.inode, fh).expect("release");
    let excl = fs.create(CTX, ROOT, b"host.bin", 0o600, O_RDWR | 0o200, 0);
    assert_eq!(excl.map(drop), Err(errno::EEXIST));
    let st = fs.statfs(CTX, ROOT).expect("statfs");
    assert!(st.blocks > 0 && st.bsize == 4096, "{st:?}");
    // No xattrs.
    assert_eq!(
        fs.getxattr(CTX, e.inode, b"user.k", 64),
        Err(errno::ENODATA)
    );
    assert_eq!(fs.listxattr(CTX, e.inode, 0), Ok(XattrReply::Size(0)));
    assert_eq!(
        fs.setxattr(CTX, e.inode, b"user.k", b"v", 0),
        Err(errno::EOPNOTSUPP)
    );
    assert_eq!(fs.lseek(CTX, e.inode, 1, 0, 3), Err(errno::ENOSYS));
}

#[test]
fn directories_readdir_rename_unlink_link() {
    let s = Scratch::new();
    let fs = backend(&s, Config::default());
    let d = fs
        .mkdir(CTX, ROOT, b"dir", S_IFDIR | 0o750, 0o022)
        .expect("mkdir");
    assert_eq!(d.attr.mode, S_IFDIR | 0o750);
    // Directory times; a user's new directory is its own.
    let touch = SetAttr {
        atime: Some(SetTime::At(1_500_000_000, 0)),
        mtime: Some(SetTime::At(1_600_000_000, 0)),
        ..SetAttr::default()
    };
    let (a, _) = fs.setattr(CTX, d.inode, &touch).expect("dir utimes");
    assert_eq!(
        (a.mtime, a.atime, a.size),
        (1_600_000_000, 1_500_000_000, 4096)
    );
    let u = fs.mkdir(USER, ROOT, b"mine", 0o700, 0).expect("user mkdir");
    assert_eq!(
        (u.attr.uid, u.attr.gid, u.attr.mode),
        (1000, 1000, S_IFDIR | 0o700)
    );
    fs.rmdir(USER, ROOT, b"mine").expect("rmdir");
    let again = fs.mkdir(CTX, ROOT, b"mine", 0o755, 0).expect("mkdir again");
    assert_eq!(
        (again.attr.uid, again.attr.mode),
        (0, S_IFDIR | 0o755),
        "nothing left over"
    );
    fs.rmdir(CTX, ROOT, b"mine").expect("rmdir");
    assert_eq!(
        fs.mkdir(CTX, ROOT, b"dir", 0o755, 0).map(drop),
        Err(errno::EEXIST)
    );
    let a = write_file(&fs, d.inode, b"a", b"content of a");
    let b = write_file(&fs, ROOT, b"b", b"old b");
    for i in 0..40 {
        write_file(&fs, d.inode, format!("f{i:02}").as_bytes(), b"");
    }
    // readdir in small pieces lists everything once.
    let names: Vec<Vec<u8>> = list(&fs, d.inode, 100)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut want: Vec<Vec<u8>> = [".", "..", "a"]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    want.extend((0..40).map(|i| format!("f{i:02}").into_bytes()));
    assert_eq!(names, want);
    let top = list(&fs, ROOT, 4096);
    assert!(
        top.contains(&(b"dir".to_vec(), 4)) && top.contains(&(b"b".to_vec(), 8)),
        "{top:?}"
    );
    // Rename over an existing file: b's old node goes stale, a moves.
    fs.rename(CTX, d.inode, b"a", ROOT, b"b", 0)
        .expect("rename over");
    assert_eq!(
        std::fs::read(s.share().join("b")).expect("b"),
        b"content of a"
    );
    assert!(!s.share().join("dir").join("a").exists());
    assert_eq!(fs.getattr(CTX, b.inode, None).map(drop), Err(errno::ENOENT));
    assert_eq!(read_all(&fs, a.inode), b"content of a", "a's node is now b");
    assert_eq!(fs.lookup(CTX, ROOT, b"b").expect("b").inode, a.inode);
    write_file(&fs, ROOT, b"c", b"c");
    assert_eq!(
        fs.rename(CTX, ROOT, b"b", ROOT, b"c", 1),
        Err(errno::EEXIST),
        "NOREPLACE"
    );
    assert_eq!(
        fs.rename(CTX, ROOT, b"b", ROOT, b"c", 2),
        Err(errno::EINVAL),
        "EXCHANGE"
    );
    // Renaming a directory moves the nodes below it.
    let f0 = fs.lookup(CTX, d.inode, b"f00").expect("f00");
    fs.rename(CTX, ROOT, b"dir", ROOT, b"moved", 0)
        .expect("rename dir");
    assert!(fs.getattr(CTX, f0.inode, None).is_ok(), "child follows");
    assert_eq!(fs.lookup(CTX, d.inode, b"f01").map(|e| e.attr.size), Ok(0));
    assert_eq!(fs.mkdir(CTX, d.inode, b"sub", 0o755, 0).map(drop), Ok(()));
    assert_eq!(
        fs.rename(CTX, ROOT, b"moved", d.inode, b"x", 0),
        Err(errno::EINVAL),
        "into itself"
    );
    // Hard links inside the share.
    fs.link(CTX, a.inode, d.inode, b"hard").expect("link");
    assert_eq!(
        std::fs::read(s.share().join("moved").join("hard")).expect("hard"),
        b"content of a"
    );
    assert_eq!(
        fs.link(CTX, d.inode, ROOT, b"dirlink").map(drop),
        Err(errno::EPERM)
    );
    assert_eq!(
        fs.symlink(CTX, ROOT, b"sym", b"b").map(drop),
        Err(errno::EPERM)
    );
    assert_eq!(
        fs.mknod(CTX, ROOT, b"fifo", 0o010_644, 0, 0).map(drop),
        Err(errno::EPERM)
    );
    assert_eq!(
        fs.mknod(CTX, ROOT, b"plain", S_IFREG | 0o600, 0, 0)
            .map(|e| e.attr.mode),
        Ok(S_IFREG | 0o600)
    );
    // unlink and rmdir; an open file stays readable after unlink.
    let (fh, _) = fs.open(CTX, a.inode, O_RDONLY).expect("open");
    fs.unlink(CTX, ROOT, b"b").expect("unlink");
    assert_eq!(fs.read(CTX, a.inode, fh, 0, 7).expect("read"), b"content");
    fs.release(CTX, a.inode, fh).expect("release");
    // (Windows without POSIX delete semantics keeps the name until then.)
    assert!(!s.share().join("b").exists());
    assert_eq!(fs.getattr(CTX, a.inode, None).map(drop), Err(errno::ENOENT));
    assert_eq!(fs.lookup(CTX, ROOT, b"b").map(drop), Err(errno::ENOENT));
    // A host file marked read-only can be unlinked, as on Linux.
    std::fs::write(s.share().join("ro"), b"ro").expect("ro");
    let mut perm = std::fs::metadata(s.share().join("ro"))
        .expect("ro")
        .permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(s.share().join("ro"), perm).expect("set read-only");
    let ro = fs.lookup(CTX, ROOT, b"ro").expect("ro");
    assert_eq!(ro.attr.mode, S_IFREG | 0o555, "no write bits");
    fs.unlink(CTX, ROOT, b"ro").expect("unlink read-only");
    assert!(!s.share().join("ro").exists());
    assert_eq!(fs.unlink(CTX, ROOT, b"moved"), Err(errno::EISDIR));
    assert_eq!(fs.rmdir(CTX, ROOT, b"c"), Err(errno::ENOTDIR));
    assert_eq!(fs.rmdir(CTX, ROOT, b"moved"), Err(errno::ENOTEMPTY));
    fs.rmdir(CTX, d.inode, b"sub").expect("rmdir");
    assert!(!s.share().join("moved").join("sub").exists());
    assert_eq!(fs.opendir(CTX, b.inode, 0).map(drop), Err(errno::ENOENT));
    assert_eq!(
        fs.open(CTX, d.inode, O_RDONLY).map(drop),
        Err(errno::EISDIR)
    );
    assert_eq!(fs.opendir(CTX, f0.inode, 0).map(drop), Err(errno::ENOTDIR));
    s.assert_outside_untouched();
}

#[test]
fn read_only_share_refuses_every_write() {
    let s = Scratch::new();
    std::fs::create_dir(s.share().join("d")).expect("d");
    std::fs::write(s.share().join("f"), b"data").expect("f");
    let fs = backend(
        &s,
        Config {
            read_only: true,
            ..Config::default()
        },
    );
    let f = fs.lookup(CTX, ROOT, b"f").expect("f");
    let d = fs.lookup(CTX, ROOT, b"d").expect("d");
    assert_eq!(read_all(&fs, f.inode), b"data", "reads work");
    let (fh, _) = fs.open(CTX, f.inode, O_RDONLY).expect("open");
    let rofs = Err(errno::EROFS);
    assert_eq!(fs.write(CTX, f.inode, fh, 0, b"x").map(drop), rofs);
    assert_eq!(fs.fallocate(CTX, f.inode, fh, 0, 0, 10), rofs);
    assert_eq!(fs.open(CTX, f.inode, O_RDWR).map(drop), rofs);
    assert_eq!(fs.open(CTX, f.inode, 1).map(drop), rofs);
    assert_eq!(fs.open(CTX, f.inode, O_RDONLY | O_TRUNC).map(drop), rofs);
    for set in [
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
        SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
        SetAttr {
            uid: Some(1),
            ..SetAttr::default()
        },
        SetAttr {
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        },
    ] {
        assert_eq!(fs.setattr(CTX, f.inode, &set).map(drop), rofs, "{set:?}");
    }
    assert_eq!(fs.create(CTX, ROOT, b"n", 0o644, O_RDWR, 0).map(drop), rofs);
    assert_eq!(fs.mkdir(CTX, ROOT, b"n", 0o755, 0).map(drop), rofs);
    assert_eq!(
        fs.mknod(CTX, ROOT, b"n", S_IFREG | 0o644, 0, 0).map(drop),
        rofs
    );
    assert_eq!(
        fs.mknod(CTX, ROOT, b"n", 0o020_644, 0x101, 0).map(drop),
        rofs
    );
    assert_eq!(fs.symlink(CTX, ROOT, b"n", b"f").map(drop), rofs);
    assert_eq!(fs.link(CTX, f.inode, ROOT, b"n").map(drop), rofs);
    assert_eq!(fs.unlink(CTX, ROOT, b"f"), rofs);
    assert_eq!(fs.rmdir(CTX, ROOT, b"d"), rofs);
    assert_eq!(fs.rename(CTX, ROOT, b"f", d.inode, b"f", 0), rofs);
    assert_eq!(fs.setxattr(CTX, f.inode, b"user.a", b"1", 0), rofs);
    assert_eq!(fs.removexattr(CTX, f.inode, b"user.a"), rofs);
    fs.release(CTX, f.inode, fh).expect("release");
    assert_eq!(std::fs::read(s.share().join("f")).expect("f"), b"data");
    let names: Vec<_> = list(&fs, ROOT, 4096).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, [&b"."[..], b"..", b"d", b"f"]);
}

#[test]
fn tables_are_bounded_and_forget_is_tolerant() {
    let s = Scratch::new();
    for i in 0..8 {
        std::fs::write(s.share().join(format!("f{i}")), b"x").expect("file");
    }
    let fs = backend(
        &s,
        Config {
            max_inodes: 4,
            max_handles: 2,
            ..Config::default()
        },
    );
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            fs.lookup(CTX, ROOT, format!("f{i}").as_bytes())
                .expect("fits")
                .inode,
        );
    }
    assert_eq!(fs.lookup(CTX, ROOT, b"f3").map(drop), Err(errno::ENFILE));
    assert_eq!(
        fs.lookup(CTX, ROOT, b"f0").map(|e| e.inode),
        Ok(held[0]),
        "known node"
    );
    assert_eq!(fs.node_count(), 4);
    fs.forget(999, 1);
    fs.forget(held[0], 1);
    assert_eq!(fs.node_count(), 4, "one reference left");
    fs.forget(held[0], u64::MAX);
    assert_eq!(fs.node_count(), 3);
    assert!(fs.lookup(CTX, ROOT, b"f3").is_ok(), "room again");
    let (h1, _) = fs.open(CTX, held[1], O_RDONLY).expect("h1");
    let dh = fs.opendir(CTX, ROOT, 0).expect("dh");
    assert_eq!(
        fs.open(CTX, held[2], O_RDONLY).map(drop),
        Err(errno::EMFILE)
    );
    assert_eq!(fs.opendir(CTX, ROOT, 0).map(drop), Err(errno::EMFILE));
    assert_eq!(
        fs.create(CTX, ROOT, b"new", 0o644, O_RDWR, 0).map(drop),
        Err(errno::EMFILE)
    );
    assert!(!s.share().join("new").exists());
    assert_eq!(
        fs.release(CTX, held[2], h1),
        Err(errno::EBADF),
        "wrong node"
    );
    fs.release(CTX, held[1], h1).expect("release");
    fs.releasedir(CTX, ROOT, dh).expect("releasedir");
    assert_eq!(fs.handle_count(), 0);
    fs.destroy();
    assert_eq!((fs.node_count(), fs.handle_count()), (1, 0));
    assert_eq!(fs.getattr(CTX, held[1], None).map(drop), Err(errno::ENOENT));
}

#[test]
fn the_share_must_be_an_existing_directory() {
    let s = Scratch::new();
    let missing = Portable::new(&s.0.join("missing"), Config::default());
    assert!(
        matches!(missing, Err(PortableError::Open { .. })),
        "{missing:?}"
    );
    let file = s.outside().join("secret");
    let not_dir = Portable::new(&file, Config::default());
    assert!(
        matches!(not_dir, Err(PortableError::NotADirectory { .. })),
        "{not_dir:?}"
    );
}
