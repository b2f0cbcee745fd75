//! The escape suite: a hostile guest tries to reach files outside the
//! share through `..`, absolute and relative symlinks, dangling symlinks,
//! hardlinks, swapped directories and /proc magic links. Every attempt
//! must fail and leave the outside untouched.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};

use super::tests::{CTX, ROOT, Scratch, backend};
use super::*;
use crate::virtio::fs::filesystem::{Filesystem, SetAttr};

fn assert_outside_untouched(s: &Scratch) {
    let names: Vec<_> = std::fs::read_dir(s.outside())
        .expect("ls outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["secret"], "nothing created outside");
    let meta = std::fs::metadata(s.outside().join("secret")).expect("secret");
    assert_eq!((meta.len(), meta.nlink()), (11, 1), "secret untouched");
    assert_eq!(
        std::fs::read(s.outside().join("secret")).expect("read"),
        b"host secret"
    );
}

/// Every way of using a symlink node `l` as a way out fails.
fn symlink_is_a_dead_end(fs: &Passthrough, l: Inode) {
    assert!(fs.lookup(CTX, l, b"secret").is_err(), "lookup through it");
    assert!(fs.lookup(CTX, l, b"passwd").is_err(), "lookup through it");
    assert_eq!(fs.open(CTX, l, 0).map(drop), Err(errno::EACCES));
    assert_eq!(
        fs.open(CTX, l, libc::O_RDWR as u32).map(drop),
        Err(errno::EACCES)
    );
    assert_eq!(fs.opendir(CTX, l, 0).map(drop), Err(errno::ENOTDIR));
    assert!(
        fs.create(CTX, l, b"x", 0o644, 0, 0).is_err(),
        "create via it"
    );
    assert!(fs.mkdir(CTX, l, b"x", 0o755, 0).is_err(), "mkdir via it");
    assert!(fs.unlink(CTX, l, b"secret").is_err(), "unlink via it");
    let trunc = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert!(fs.setattr(CTX, l, &trunc).is_err(), "truncate via it");
    let chmod = SetAttr {
        mode: Some(0o777),
        ..SetAttr::default()
    };
    assert!(fs.setattr(CTX, l, &chmod).is_err(), "chmod via it");
    assert!(
        fs.setxattr(CTX, l, b"user.x", b"1", 0).is_err(),
        "xattr via it"
    );
    assert!(fs.getxattr(CTX, l, b"user.x", 16).is_err(), "xattr via it");
}

#[test]
fn dot_dot_and_odd_names_stay_inside() {
    let s = Scratch::new();
    std::fs::create_dir(s.share().join("sub")).expect("sub");
    let fs = backend(&s, Config::default());
    let sub = fs.lookup(CTX, ROOT, b"sub").expect("sub");
    for (dir, name) in [
        (ROOT, &b".."[..]),
        (ROOT, b"."),
        (sub.inode, b".."),
        (ROOT, b"../outside"),
        (ROOT, b"sub/../../outside"),
        (ROOT, b""),
    ] {
        assert!(fs.lookup(CTX, dir, name).is_err(), "lookup {name:?}");
    }
    for name in [&b".."[..], b".", b"a/b"] {
        assert_eq!(
            fs.mkdir(CTX, ROOT, name, 0o755, 0).map(drop),
            Err(errno::EINVAL)
        );
        assert_eq!(
            fs.create(CTX, ROOT, name, 0o644, 0, 0).map(drop),
            Err(errno::EINVAL)
        );
        assert_eq!(fs.unlink(CTX, sub.inode, name), Err(errno::EINVAL));
        assert_eq!(fs.rmdir(CTX, sub.inode, name), Err(errno::EINVAL));
        assert_eq!(
            fs.rename(CTX, ROOT, b"sub", sub.inode, name, 0),
            Err(errno::EINVAL)
        );
        assert_eq!(
            fs.symlink(CTX, ROOT, name, b"x").map(drop),
            Err(errno::EINVAL)
        );
    }
    assert!(s.share().join("sub").is_dir(), "sub still there");
    assert_outside_untouched(&s);
}

#[test]
fn symlinks_pointing_outside_are_not_followed() {
    let s = Scratch::new();
    let outside = s.outside();
    symlink(&outside, s.share().join("abs")).expect("abs");
    symlink("../outside", s.share().join("rel")).expect("rel");
    symlink("/etc", s.share().join("etc")).expect("etc");
    symlink(outside.join("secret"), s.share().join("file")).expect("file");
    symlink(outside.join("new"), s.share().join("dangle")).expect("dangle");
    let fs = backend(&s, Config::default());
    for (name, target) in [
        ("abs", outside.as_os_str().as_bytes().to_vec()),
        ("rel", b"../outside".to_vec()),
        ("etc", b"/etc".to_vec()),
        (
            "file",
            outside.join("secret").as_os_str().as_bytes().to_vec(),
        ),
        (
            "dangle",
            outside.join("new").as_os_str().as_bytes().to_vec(),
        ),
    ] {
        let l = fs
            .lookup(CTX, ROOT, name.as_bytes())
            .expect("lookup the link");
        assert_eq!(
            l.attr.mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{name} is a link node"
        );
        assert_eq!(
            fs.readlink(CTX, l.inode).expect("readlink"),
            target,
            "{name}"
        );
        symlink_is_a_dead_end(&fs, l.inode);
    }
    // Creating a file "through" a dangling link does not create its target.
    assert!(fs.create(CTX, ROOT, b"dangle", 0o644, 0, 0).is_err());
    assert!(
        fs.mknod(CTX, ROOT, b"dangle", libc::S_IFREG | 0o644, 0, 0)
            .is_err()
    );
    // A guest-made symlink is only text too.
    let g = fs
        .symlink(CTX, ROOT, b"guest", b"/../../outside/secret")
        .expect("symlink");
    symlink_is_a_dead_end(&fs, g.inode);
    // Renaming or linking a link moves the link, never its target.
    fs.rename(CTX, ROOT, b"file", ROOT, b"moved", 0)
        .expect("rename link");
    let l = fs.lookup(CTX, ROOT, b"moved").expect("moved");
    let h = fs
        .link(CTX, l.inode, ROOT, b"hard")
        .expect("hardlink the link");
    assert_eq!(h.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert!(
        s.share()
            .join("hard")
            .symlink_metadata()
            .expect("hard")
            .is_symlink()
    );
    assert_outside_untouched(&s);
}

#[test]
fn hardlinks_only_name_nodes_of_the_share() {
    let s = Scratch::new();
    let fs = backend(&s, Config::default());
    // The guest can only name nodes the share gave it.
    for bogus in [0, 2, 3, 1000, u64::MAX] {
        assert_eq!(
            fs.link(CTX, bogus, ROOT, b"x").map(drop),
            Err(errno::ENOENT)
        );
    }
    assert!(
        fs.link(CTX, ROOT, ROOT, b"x").is_err(),
        "no hardlinked directories"
    );
    assert!(!s.share().join("x").exists());
    assert_outside_untouched(&s);
}

#[test]
fn swapped_directory_keeps_operations_inside() {
    let s = Scratch::new();
    std::fs::create_dir(s.share().join("d")).expect("d");
    let fs = backend(&s, Config::default());
    let d = fs.lookup(CTX, ROOT, b"d").expect("d");
    // The host (or a racing guest op) swaps d for a link to the outside.
    std::fs::rename(s.share().join("d"), s.share().join("d.old")).expect("move d");
    symlink(s.outside(), s.share().join("d")).expect("swap in a link");
    let (e, fh, _) = fs
        .create(CTX, d.inode, b"secret", 0o644, libc::O_RDWR as u32, 0)
        .expect("create in the node's own directory");
    fs.write(CTX, e.inode, fh, 0, b"guest").expect("write");
    assert_eq!(
        std::fs::read(s.share().join("d.old/secret")).expect("inside"),
        b"guest"
    );
    let again = fs.lookup(CTX, ROOT, b"d").expect("d is now a link");
    symlink_is_a_dead_end(&fs, again.inode);
    assert_outside_untouched(&s);
}

/// Unmounts a test mount on drop.
struct Mount(CString);

impl Drop for Mount {
    fn drop(&mut self) {
        // SAFETY: the path is NUL-terminated; umount2 only reads it.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn proc_magic_links_are_refused() {
    let s = Scratch::new();
    symlink("/proc/self/root", s.share().join("root")).expect("link");
    symlink("/proc/self/cwd", s.share().join("cwd")).expect("link");
    let fs = backend(&s, Config::default());
    for name in [&b"root"[..], b"cwd"] {
        let l = fs.lookup(CTX, ROOT, name).expect("the link itself");
        symlink_is_a_dead_end(&fs, l.inode);
    }
    // A procfs inside the share (as when sharing a host's /): its magic
    // links are nodes of their own that lead nowhere.
    let dir = s.share().join("proc");
    std::fs::create_dir(&dir).expect("mount point");
    let path = CString::new(dir.as_os_str().as_bytes()).expect("path");
    // SAFETY: all strings are NUL-terminated; mount only reads them.
    let r = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            path.as_ptr(),
            c"proc".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        eprintln!(
            "cannot mount proc here ({}); procfs case skipped",
            std::io::Error::last_os_error()
        );
        assert_outside_untouched(&s);
        return;
    }
    let _m = Mount(path);
    let p = fs.lookup(CTX, ROOT, b"proc").expect("proc dir");
    let me = fs.lookup(CTX, p.inode, b"self").expect("self link");
    assert_eq!(me.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    symlink_is_a_dead_end(&fs, me.inode);
    let one = fs.lookup(CTX, p.inode, b"1").expect("/proc/1");
    for magic in [&b"root"[..], b"cwd", b"exe"] {
        match fs.lookup(CTX, one.inode, magic) {
            Ok(l) => {
                assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK);
                symlink_is_a_dead_end(&fs, l.inode);
            }
            Err(e) => assert_ne!(e, errno::EIO),
        }
    }
    let fd = fs.lookup(CTX, one.inode, b"fd").expect("/proc/1/fd");
    let l = fs.lookup(CTX, fd.inode, b"0").expect("/proc/1/fd/0 itself");
    symlink_is_a_dead_end(&fs, l.inode);
    assert_outside_untouched(&s);
}
