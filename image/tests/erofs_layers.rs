//! Crafted tar layers converted to EROFS, each image checked by
//! `fsck.erofs` and read back through a read-only loop mount (Linux, root,
//! host erofs; otherwise the check prints why it is skipped).

mod common;

use common::{Layer, MTIME, convert_with};
use krypton_image::erofs::Limits;
use tar::EntryType;

fn convert(tar: &[u8]) -> Vec<u8> {
    convert_with(tar, &Limits::default()).expect("convert").0
}

/// Bytes that are not all alike, so misplaced blocks show.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn files_dirs_modes_owners_devices_fifos() {
    let sizes = [0usize, 1, 4095, 4096, 4097, 8192, 100_000, 70_000];
    let mut l = Layer::new();
    l.dir("./", 0o755)
        .dir("bin", 0o755)
        .dir("tmp", 0o1777)
        .dir("shared", 0o2775);
    for (i, &n) in sizes.iter().enumerate() {
        l.file(&format!("data/f{n}"), 0o644, &pattern(n, i as u8));
    }
    l.file("bin/su", 0o4755, b"#!/bin/sh\n").file_owned(
        "home/user/big-ids",
        0o600,
        100_000,
        200_000,
        b"x",
    );
    l.pax(&[("mtime", b"1600000000.123456789")])
        .file("ns", 0o640, b"nanoseconds");
    l.device("dev/null", EntryType::Char, 1, 3)
        .device("dev/sda1", EntryType::Block, 8, 1);
    l.device("dev/wide", EntryType::Char, 240, 0x12345)
        .fifo("run/fifo");
    let image = convert(&l.bytes());
    assert_eq!(image.len() % 4096, 0);
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "basic");
        let Some(ls) = c.listing() else { return };
        for (i, &n) in sizes.iter().enumerate() {
            let f = &ls[&format!("data/f{n}")];
            assert_eq!(f.mode, 0o100644, "f{n}");
            assert_eq!(f.size, n as u64);
            assert_eq!(
                f.data.as_deref(),
                Some(&pattern(n, i as u8)[..]),
                "f{n} contents"
            );
            assert_eq!((f.mtime, f.mtime_nsec), (MTIME as i64, 0));
        }
        assert_eq!(ls["bin/su"].mode, 0o104755);
        assert_eq!(ls["tmp"].mode, 0o041777);
        assert_eq!(ls["shared"].mode, 0o042775);
        assert_eq!(ls[""].mode, 0o040755);
        assert_eq!(
            (ls["home/user/big-ids"].uid, ls["home/user/big-ids"].gid),
            (100_000, 200_000)
        );
        // Implicit parents: 0755 root.
        assert_eq!((ls["home/user"].mode, ls["home/user"].uid), (0o040755, 0));
        assert_eq!(
            (ls["ns"].mtime, ls["ns"].mtime_nsec),
            (1_600_000_000, 123_456_789)
        );
        assert_eq!(ls["dev/null"].mode, 0o020660);
        assert_eq!(ls["dev/null"].rdev, libc::makedev(1, 3));
        assert_eq!(ls["dev/null"].gid, 6);
        assert_eq!(ls["dev/sda1"].mode, 0o060660);
        assert_eq!(ls["dev/sda1"].rdev, libc::makedev(8, 1));
        assert_eq!(ls["dev/wide"].rdev, libc::makedev(240, 0x12345));
        assert_eq!(ls["run/fifo"].mode, 0o010600);
        // Directory link counts: 2 + subdirectories.
        assert_eq!(ls["dev"].nlink, 2);
        assert_eq!(ls[""].nlink, 2 + 7);
        // root, bin tmp shared, data/*, bin/su, home/user/big-ids, ns, dev/*, run/fifo
        assert_eq!(ls.len(), 1 + 3 + (1 + sizes.len()) + 1 + 3 + 1 + 4 + 2);
    }
    let _ = image;
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let mut l = Layer::new();
    l.file("keep", 0o644, b"k").file("dir/new", 0o644, b"n");
    l.file(".wh.gone", 0o644, b"")
        .file("dir/.wh..wh..opq", 0o644, b"");
    l.file("deep/er/.wh.x", 0o644, b"")
        .file("dir/.wh..wh.plnk", 0o644, b"");
    let (image, stats) = convert_with(&l.bytes(), &Limits::default()).expect("convert");
    assert_eq!(stats.whiteouts, 3);
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "whiteout");
        let Some(ls) = c.listing() else { return };
        for w in ["gone", "deep/er/x"] {
            assert_eq!(ls[w].mode & 0o170000, 0o020000, "{w} is a char device");
            assert_eq!(ls[w].rdev, 0, "{w} is 0:0");
        }
        assert_eq!(
            ls["dir"]
                .xattrs
                .get("trusted.overlay.opaque")
                .map(Vec::as_slice),
            Some(&b"y"[..])
        );
        assert!(ls["deep"].xattrs.is_empty());
        assert!(
            !ls.keys().any(|k| k.contains(".wh.")),
            "no .wh. names left: {:?}",
            ls.keys()
        );
        // Stack it over a lower layer with overlayfs: whiteouts hide files.
        let mut lower = Layer::new();
        lower
            .file("gone", 0o644, b"g")
            .file("dir/old", 0o644, b"o")
            .file("deep/er/x", 0o644, b"x");
        lower.file("deep/er/y", 0o644, b"y");
        let lc = common::Checked::new(&convert(&lower.bytes()), "lower");
        let (Some(up), Some(low)) = (&c.mnt, &lc.mnt) else {
            return;
        };
        let m = c.img.with_file_name("ovl");
        std::fs::create_dir_all(&m).expect("ovl dir");
        let opts = format!("lowerdir={}:{}", up.display(), low.display());
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&m)
            .status()
            .expect("mount overlay");
        assert!(st.success(), "overlay mount");
        let seen = |p: &str| std::fs::symlink_metadata(m.join(p)).is_ok();
        let r = (
            seen("gone"),
            seen("dir/old"),
            seen("dir/new"),
            seen("deep/er/x"),
            seen("deep/er/y"),
            seen("keep"),
        );
        let _ = std::process::Command::new("umount").arg(&m).status();
        assert_eq!(r, (false, false, true, false, true, true), "overlay view");
    }
    let _ = image;
}

#[test]
fn hardlinks_across_directories() {
    let mut l = Layer::new();
    l.file("a/f", 0o755, b"shared")
        .hardlink("b/l1", "a/f")
        .hardlink("c/d/l2", "./a/f");
    l.file("x/orig", 0o644, b"old")
        .hardlink("x/l", "x/orig")
        .file("x/orig", 0o644, b"new");
    let image = convert(&l.bytes());
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "hardlink");
        let Some(ls) = c.listing() else { return };
        let (f, l1, l2) = (&ls["a/f"], &ls["b/l1"], &ls["c/d/l2"]);
        assert_eq!((f.nlink, l1.nlink, l2.nlink), (3, 3, 3));
        assert_eq!((f.ino, f.ino), (l1.ino, l2.ino));
        assert_eq!(l2.data.as_deref(), Some(&b"shared"[..]));
        // Replacing one name of a linked file leaves the other name alone.
        assert_eq!((ls["x/orig"].nlink, ls["x/l"].nlink), (1, 1));
        assert_eq!(ls["x/orig"].data.as_deref(), Some(&b"new"[..]));
        assert_eq!(ls["x/l"].data.as_deref(), Some(&b"old"[..]));
    }
    let _ = image;
}

#[test]
fn symlink_chains_and_long_names() {
    let long_name = "n".repeat(200);
    let long_target = format!("/{}", "t".repeat(199));
    let deep = format!(
        "{}/{}/{}",
        "d".repeat(120),
        "e".repeat(120),
        "f".repeat(100)
    );
    let mut l = Layer::new();
    l.file("real", 0o644, b"end of chain");
    l.symlink("l3", "real")
        .symlink("l2", "l3")
        .symlink("sub/l1", "../l2");
    l.file(&format!("dir/{long_name}"), 0o644, b"long name");
    l.symlink(&format!("dir/{long_name}.lnk"), &long_target);
    l.pax(&[("path", deep.as_bytes())])
        .file("placeholder", 0o644, b"pax path");
    l.pax(&[("linkpath", long_target.as_bytes())])
        .symlink("paxlink", "short");
    let image = convert(&l.bytes());
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "symlink");
        let Some(ls) = c.listing() else { return };
        assert_eq!(ls["sub/l1"].target.as_deref(), Some(&b"../l2"[..]));
        assert_eq!(ls["l3"].mode, 0o120777);
        let m = c.mnt.as_ref().map(|m| m.join("sub/l1")).unwrap_or_default();
        assert_eq!(
            std::fs::read(m).expect("read through the chain"),
            b"end of chain"
        );
        assert_eq!(
            ls[&format!("dir/{long_name}")].data.as_deref(),
            Some(&b"long name"[..])
        );
        let t = ls[&format!("dir/{long_name}.lnk")].target.clone();
        assert_eq!(t.as_deref(), Some(long_target.as_bytes()));
        assert_eq!(ls[&deep].data.as_deref(), Some(&b"pax path"[..]));
        assert!(!ls.contains_key("placeholder"));
        assert_eq!(
            ls["paxlink"].target.as_deref(),
            Some(long_target.as_bytes())
        );
    }
    let _ = image;
}

#[test]
fn xattrs_from_pax() {
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff,
    ];
    let mut l = Layer::new();
    l.pax(&[
        ("SCHILY.xattr.security.capability", cap),
        ("SCHILY.xattr.user.note", b"hello"),
        ("SCHILY.xattr.trusted.t", b""),
        ("SCHILY.xattr.foo.bar", b"dropped"),
    ]);
    l.file("bin/ping", 0o755, &pattern(5000, 9));
    l.pax(&[("SCHILY.xattr.user.dir", b"on a dir")])
        .dir("etc", 0o755);
    let (image, stats) = convert_with(&l.bytes(), &Limits::default()).expect("convert");
    assert_eq!(stats.xattrs_skipped, 1);
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "xattr");
        let Some(ls) = c.listing() else { return };
        let x = &ls["bin/ping"].xattrs;
        assert_eq!(x.get("security.capability").map(Vec::as_slice), Some(cap));
        assert_eq!(x.get("user.note").map(Vec::as_slice), Some(&b"hello"[..]));
        assert_eq!(x.get("trusted.t").map(Vec::as_slice), Some(&b""[..]));
        assert_eq!(x.len(), 3);
        assert_eq!(ls["bin/ping"].data.as_deref(), Some(&pattern(5000, 9)[..]));
        assert_eq!(
            ls["etc"].xattrs.get("user.dir").map(Vec::as_slice),
            Some(&b"on a dir"[..])
        );
    }
    let _ = image;
}

#[test]
fn sparse_file_over_4gib_keeps_holes() {
    const REAL: u64 = (5 << 30) + 123;
    let segs: [(u64, u64); 3] = [(0, 4096), (4 << 30, 8192), (5 << 30, 123)];
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_path("sparse.img").expect("path");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    let stored: u64 = segs.iter().map(|s| s.1).sum();
    h.set_size(stored);
    let mut data = Vec::new();
    {
        let g = h.as_gnu_mut().expect("gnu header");
        g.set_real_size(REAL);
        for (i, &(off, len)) in segs.iter().enumerate() {
            g.sparse[i].set_offset(off);
            g.sparse[i].set_length(len);
            data.extend(pattern(len as usize, i as u8));
        }
    }
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &data[..]).expect("append sparse");
    let tar = b.into_inner().expect("tar");
    let image = convert(&tar);
    assert!(
        image.len() < 1 << 20,
        "holes are not written: image is {} bytes",
        image.len()
    );
    #[cfg(target_os = "linux")]
    {
        use std::io::{Read, Seek, SeekFrom};
        let c = common::Checked::new(&image, "sparse");
        let Some(ls) = c.listing() else { return };
        assert_eq!(ls["sparse.img"].size, REAL);
        let p = c
            .mnt
            .as_ref()
            .map(|m| m.join("sparse.img"))
            .unwrap_or_default();
        let mut f = std::fs::File::open(p).expect("open");
        for (i, &(off, len)) in segs.iter().enumerate() {
            let mut got = vec![0u8; len as usize + 16];
            f.seek(SeekFrom::Start(off - off.min(8))).expect("seek");
            let n = f.read(&mut got).expect("read");
            let want_pre = off.min(8) as usize;
            assert!(
                got[..want_pre].iter().all(|&b| b == 0),
                "hole before segment {i}"
            );
            assert_eq!(
                &got[want_pre..want_pre + len as usize],
                &pattern(len as usize, i as u8)[..]
            );
            assert!(n >= want_pre + len as usize);
        }
        f.seek(SeekFrom::Start(1 << 30)).expect("seek");
        let mut hole = vec![1u8; 4096];
        f.read_exact(&mut hole).expect("read hole");
        assert!(hole.iter().all(|&b| b == 0));
    }
    let _ = image;
}

#[test]
fn empty_layer() {
    let image = convert(&Layer::new().bytes());
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "empty");
        let Some(ls) = c.listing() else { return };
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[""].mode, 0o040755);
    }
    let _ = image;
}

#[test]
fn later_entries_replace_earlier_ones() {
    let mut l = Layer::new();
    l.file("f", 0o644, b"one").file("f", 0o600, b"two");
    l.dir("d", 0o700)
        .file("d/child", 0o644, b"c")
        .dir("d", 0o750);
    l.file("d2/x", 0o644, b"x").file("d2", 0o644, b"now a file");
    l.file("f2", 0o644, b"file").dir("f2", 0o711);
    l.symlink("s", "a").symlink("s", "b");
    let image = convert(&l.bytes());
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "dup");
        let Some(ls) = c.listing() else { return };
        assert_eq!(
            (ls["f"].mode, ls["f"].data.as_deref()),
            (0o100600, Some(&b"two"[..]))
        );
        assert_eq!(ls["d"].mode, 0o040750);
        assert!(ls.contains_key("d/child"));
        assert_eq!(ls["d2"].data.as_deref(), Some(&b"now a file"[..]));
        assert!(!ls.contains_key("d2/x"));
        assert_eq!(ls["f2"].mode, 0o040711);
        assert_eq!(ls["s"].target.as_deref(), Some(&b"b"[..]));
    }
    let _ = image;
}

#[test]
fn big_directories_and_odd_names() {
    let mut l = Layer::new();
    let names: Vec<String> = (0..3000)
        .map(|i| format!("entry-{i:05}-{}", "z".repeat(i % 50)))
        .collect();
    for n in &names {
        l.file(&format!("many/{n}"), 0o644, n.as_bytes());
    }
    // Names sorting before "." and ".." and high bytes.
    l.file("odd/-", 0o644, b"-")
        .file("odd/+x", 0o644, b"+")
        .file("odd/\u{e9}t\u{e9}", 0o644, b"e");
    let image = convert(&l.bytes());
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "bigdir");
        let Some(ls) = c.listing() else { return };
        for n in &names {
            assert_eq!(ls[&format!("many/{n}")].data.as_deref(), Some(n.as_bytes()));
        }
        assert_eq!(ls["odd/-"].data.as_deref(), Some(&b"-"[..]));
        assert_eq!(ls["odd/\u{e9}t\u{e9}"].data.as_deref(), Some(&b"e"[..]));
        assert_eq!(ls.len(), 1 + 2 + 3000 + 3);
        // Lookups (binary search over blocks), not only readdir.
        let m = c.mnt.as_ref().map(|m| m.join("many")).unwrap_or_default();
        for n in names.iter().step_by(97) {
            assert!(m.join(n).exists(), "lookup {n}");
        }
        assert!(!m.join("entry-99999").exists());
    }
    let _ = image;
}

#[test]
fn tails_without_inline_budget_still_read_back() {
    let mut l = Layer::new();
    for i in 0..20 {
        l.file(
            &format!("f{i}"),
            0o644,
            &pattern(4096 * (i % 3) + 100 * i + 1, i as u8),
        );
    }
    let limits = Limits {
        max_inline_bytes: 300,
        ..Limits::default()
    };
    let (image, _) = convert_with(&l.bytes(), &limits).expect("convert");
    #[cfg(target_os = "linux")]
    {
        let c = common::Checked::new(&image, "budget");
        let Some(ls) = c.listing() else { return };
        for i in 0..20 {
            let want = pattern(4096 * (i % 3) + 100 * i + 1, i as u8);
            assert_eq!(
                ls[&format!("f{i}")].data.as_deref(),
                Some(&want[..]),
                "f{i}"
            );
        }
    }
    let _ = image;
}

/// A real directory tree packed by the tar crate: the mounted image's
/// lstat listing (mode, owner, size, mtime, link target, contents) equals
/// the tree's own.
#[cfg(target_os = "linux")]
#[test]
fn mounted_image_matches_the_source_tree() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let src = std::env::temp_dir().join(format!("krypton-erofs-src-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&src);
    let mk = |p: &str| std::fs::create_dir_all(src.join(p)).expect("mkdir");
    mk("usr/bin");
    mk("etc/ssl/certs");
    mk("var/empty");
    for (i, n) in [0usize, 3, 4095, 4096, 5000, 65_536, 300_000]
        .iter()
        .enumerate()
    {
        std::fs::write(src.join(format!("usr/bin/f{i}")), pattern(*n, i as u8)).expect("write");
    }
    std::fs::write(src.join("etc/ssl/certs/ca.pem"), b"cert").expect("write");
    symlink("../../usr/bin/f1", src.join("etc/ssl/link")).expect("symlink");
    let perm = |p: &str, m: u32| {
        std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    perm("usr/bin/f1", 0o4755);
    perm("var/empty", 0o1777);
    perm("etc/ssl/certs/ca.pem", 0o600);
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    b.append_dir_all(".", &src).expect("pack");
    let tar = b.into_inner().expect("tar");
    let image = convert(&tar);
    let c = common::Checked::new(&image, "tree");
    let want = {
        let m = common::Checked {
            img: src.clone(),
            mnt: Some(src.clone()),
            dir: None,
        };
        m.listing()
    };
    let _ = std::fs::remove_dir_all(&src);
    let (Some(got), Some(mut want)) = (c.listing(), want) else {
        return;
    };
    let strip = |m: &mut std::collections::BTreeMap<String, common::Node>| {
        for n in m.values_mut() {
            // Not kept by tar or not comparable across filesystems.
            n.ino = 0;
            n.blocks = 0;
            n.mtime_nsec = 0;
            n.xattrs.clear();
            if n.mode & 0o170000 == 0o040000 {
                n.size = 0;
            }
        }
    };
    let mut got = got;
    strip(&mut got);
    strip(&mut want);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_eq!(&got[k], w, "{k}");
    }
}
