//! The escape suite of the portable backend: names with separators,
//! alternate data streams, device names and dots, symlinks (and on
//! Windows reparse points) pointing out of the share, a held directory
//! replaced by a link. Every attempt fails and the outside is untouched.

use super::tests::{
    CTX, O_RDONLY, O_RDWR, ROOT, S_IFLNK, S_IFMT, Scratch, backend, list, write_file,
};
use super::*;
use crate::virtio::fs::filesystem::{Filesystem, SetAttr, SetTime};

#[test]
fn bad_names_stay_inside() {
    let s = Scratch::new();
    std::fs::create_dir(s.share().join("sub")).expect("sub");
    let fs = backend(&s, Config::default());
    let sub = fs.lookup(CTX, ROOT, b"sub").expect("sub");
    let f = write_file(&fs, ROOT, b"f", b"f");
    let bad: [&[u8]; 12] = [
        b"..",
        b".",
        b"../outside",
        b"sub/../../outside",
        b"..\\outside",
        b"C:\\Windows",
        b"f:stream",
        b"CON",
        b"nul.txt",
        b"COM1",
        b"x.",
        b"",
    ];
    for name in bad {
        for dir in [ROOT, sub.inode] {
            assert!(fs.lookup(CTX, dir, name).is_err(), "lookup {name:?}");
            assert_eq!(
                fs.mkdir(CTX, dir, name, 0o755, 0).map(drop),
                Err(errno::EINVAL)
            );
            assert_eq!(
                fs.create(CTX, dir, name, 0o644, O_RDWR, 0).map(drop),
                Err(errno::EINVAL)
            );
            assert_eq!(fs.rename(CTX, ROOT, b"f", dir, name, 0), Err(errno::EINVAL));
            assert_eq!(
                fs.link(CTX, f.inode, dir, name).map(drop),
                Err(errno::EINVAL)
            );
            assert_eq!(fs.unlink(CTX, dir, name), Err(errno::EINVAL));
            assert_eq!(fs.rmdir(CTX, dir, name), Err(errno::EINVAL));
        }
    }
    assert_eq!(
        fs.lookup(CTX, 12345, b"f").map(drop),
        Err(errno::ENOENT),
        "unknown node"
    );
    assert_eq!(
        fs.lookup(CTX, f.inode, b"x").map(drop),
        Err(errno::ENOTDIR),
        "file as dir"
    );
    s.assert_outside_untouched();
    assert!(s.share().join("f").exists());
}

#[cfg(unix)]
fn make_link(target: &std::path::Path, link: &std::path::Path) -> bool {
    std::os::unix::fs::symlink(target, link).is_ok()
}

#[cfg(windows)]
fn make_link(target: &std::path::Path, link: &std::path::Path) -> bool {
    let r = if target.is_dir() {
        std::os::windows::fs::symlink_dir(target, link)
    } else {
        std::os::windows::fs::symlink_file(target, link)
    };
    r.map_err(|e| eprintln!("cannot create a symlink here ({e}): link checks skipped"))
        .is_ok()
}

/// Every way of using link node `l` as a way out fails.
fn link_is_a_dead_end(s: &Scratch, fs: &Portable, l: Inode) {
    assert!(fs.lookup(CTX, l, b"secret").is_err(), "lookup through it");
    assert_eq!(fs.open(CTX, l, O_RDONLY).map(drop), Err(errno::EACCES));
    assert_eq!(fs.open(CTX, l, O_RDWR).map(drop), Err(errno::EACCES));
    assert_eq!(fs.opendir(CTX, l, 0).map(drop), Err(errno::ENOTDIR));
    assert!(
        fs.create(CTX, l, b"x", 0o644, O_RDWR, 0).is_err(),
        "create via it"
    );
    assert!(fs.mkdir(CTX, l, b"x", 0o755, 0).is_err(), "mkdir via it");
    assert!(fs.unlink(CTX, l, b"secret").is_err(), "unlink via it");
    let trunc = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert!(fs.setattr(CTX, l, &trunc).is_err(), "truncate via it");
    let touch = SetAttr {
        mtime: Some(SetTime::At(1, 0)),
        ..SetAttr::default()
    };
    assert!(fs.setattr(CTX, l, &touch).is_err(), "utimes via it");
    assert_eq!(fs.link(CTX, l, ROOT, b"hard").map(drop), Err(errno::EPERM));
    s.assert_outside_untouched();
}

#[test]
fn symlinks_out_of_the_share_are_not_followed() {
    let s = Scratch::new();
    let share = s.share();
    if !make_link(&s.outside(), &share.join("out")) {
        return;
    }
    assert!(make_link(&s.outside().join("secret"), &share.join("sec")));
    std::fs::create_dir(share.join("sub")).expect("sub");
    std::fs::write(share.join("sub").join("f"), b"inside").expect("f");
    let fs = backend(&s, Config::default());
    let mut seen = 0;
    for name in ["out", "sec"] {
        let l = match fs.lookup(CTX, ROOT, name.as_bytes()) {
            Ok(l) => l,
            // Wine 8 reports success from CreateSymbolicLinkW but makes no
            // link (checked: the name does not exist on the host).
            Err(e) if cfg!(windows) => {
                let m = std::fs::symlink_metadata(share.join(name));
                eprintln!("lookup {name}: {e:?}; host: {m:?}: link checks skipped");
                assert!(m.is_err(), "a link the host sees must be a node");
                continue;
            }
            Err(e) => panic!("lookup of the link {name}: {e:?}"),
        };
        assert_eq!(l.attr.mode & S_IFMT, S_IFLNK, "{name} is a link node");
        link_is_a_dead_end(&s, &fs, l.inode);
        assert!(!fs.readlink(CTX, l.inode).expect("readlink").is_empty());
        seen += 1;
    }
    let kinds = list(&fs, ROOT, 4096);
    assert!(
        seen == 0 || kinds.contains(&(b"out".to_vec(), 10)),
        "DT_LNK: {kinds:?}"
    );
    // A held directory replaced by a link is not followed either.
    let sub = fs.lookup(CTX, ROOT, b"sub").expect("sub");
    let f = fs.lookup(CTX, sub.inode, b"f").expect("f");
    std::fs::rename(share.join("sub"), share.join("old")).expect("move sub");
    assert!(make_link(&s.outside(), &share.join("sub")));
    std::fs::write(s.outside().join("f"), b"outside").expect("bait");
    assert!(fs.lookup(CTX, sub.inode, b"secret").is_err());
    assert!(fs.lookup(CTX, sub.inode, b"f").is_err());
    assert!(
        fs.getattr(CTX, f.inode, None).is_err(),
        "parent is a link now"
    );
    assert!(
        fs.open(CTX, f.inode, O_RDONLY).is_err(),
        "parent is a link now"
    );
    assert!(fs.opendir(CTX, sub.inode, 0).is_err());
    std::fs::remove_file(s.outside().join("f")).expect("rm bait");
    s.assert_outside_untouched();
}
