//! Empty ext2 filesystems from `krypton_image::ext2::format`, checked by
//! `e2fsck -fn` and (Linux, root, loop mounts allowed) mounted with the
//! host's ext4 driver, written to, unmounted and checked again. Missing
//! tools or permissions print SKIPPED with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use krypton_image::ext2::{Ext2Error, MAX_SIZE, MIN_SIZE, format};

const MIB: u64 = 1 << 20;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("krypton-ext2-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmpdir");
    d
}

/// `e2fsck -fn`: true if it ran and found nothing; None if missing.
fn fsck(img: &Path) -> Option<()> {
    let out = match Command::new("e2fsck").arg("-fn").arg(img).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED e2fsck: {e}");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "e2fsck {}: {}\n{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// Loop-mounts `img`, writes files, unmounts. False if skipped.
fn mount_and_write(img: &Path, dir: &Path) -> bool {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let out = Command::new("mount")
        .args(["-o", "loop", "-t", "ext4"])
        .arg(img)
        .arg(&mnt)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED loop mount: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return false;
        }
        Err(e) => {
            eprintln!("SKIPPED loop mount: {e}");
            return false;
        }
    }
    let res = (|| -> std::io::Result<()> {
        assert!(mnt.join("lost+found").is_dir());
        std::fs::create_dir_all(mnt.join("a/b/c"))?;
        std::fs::write(mnt.join("a/b/c/file"), vec![7u8; 3 * MIB as usize])?;
        for i in 0..200 {
            std::fs::write(mnt.join(format!("a/f{i}")), format!("{i}"))?;
        }
        assert_eq!(std::fs::read(mnt.join("a/f42"))?, b"42");
        Ok(())
    })();
    let um = Command::new("umount").arg(&mnt).status();
    res.expect("write on the mounted scratch fs");
    assert!(um.expect("umount").success(), "umount");
    true
}

fn check(name: &str, size: u64, mount: bool) {
    let dir = tmpdir(name);
    let img = dir.join("scratch.img");
    format(&img, size).expect("format");
    assert_eq!(std::fs::metadata(&img).expect("meta").len(), size);
    if fsck(&img).is_some() && mount && mount_and_write(&img, &dir) {
        fsck(&img);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn min_size() {
    check("16m", MIN_SIZE, true);
}

#[test]
fn hundred_mib() {
    check("100m", 100 * MIB, true);
}

#[test]
fn odd_size_not_a_group_multiple() {
    // 3 full groups, 12345 blocks more and a partial block.
    check("odd", (3 * 32768 + 12345) * 4096 + 1000, true);
}

#[test]
fn ten_gib_sparse() {
    let dir = tmpdir("10g");
    let img = dir.join("scratch.img");
    format(&img, 10 << 30).expect("format");
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let used = std::fs::metadata(&img).expect("meta").blocks() * 512;
        assert!(used < 16 * MIB, "only metadata is written: {used} bytes");
    }
    let _ = std::fs::remove_dir_all(&dir);
    check("10g", 10 << 30, true);
}

#[test]
fn bounds() {
    let dir = tmpdir("bounds");
    for size in [0, MIN_SIZE - 1, MAX_SIZE + 1] {
        let e = format(&dir.join("x"), size).expect_err("out of bounds");
        assert!(matches!(e, Ext2Error::Size { .. }), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
    let e = format(&dir.join("no/such/dir/x"), MIN_SIZE).expect_err("no dir");
    assert!(matches!(e, Ext2Error::Io { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
