//! Hostile and broken layers: each fails with its own error, never panics,
//! and the limits hold.

mod common;

use common::{Layer, convert_with};
use krypton_image::erofs::{ConvertError, Limits};

fn err(tar: &[u8], limits: &Limits) -> ConvertError {
    match convert_with(tar, limits) {
        Ok(_) => panic!("conversion should have failed"),
        Err(e) => e,
    }
}

/// A ustar entry written by hand, so any path can be stored.
fn raw_entry(path: &[u8], ty: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = ty;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().next_multiple_of(512), 0);
    v
}

fn finish(mut v: Vec<u8>) -> Vec<u8> {
    v.extend_from_slice(&[0u8; 1024]);
    v
}

#[test]
fn dotdot_is_an_error() {
    let d = Limits::default();
    let tar = finish(raw_entry(b"a/../../etc/passwd", b'0', b"", b"x"));
    assert!(matches!(err(&tar, &d), ConvertError::DotDot(_)));
    let tar = finish(raw_entry(b"link", b'1', b"../outside", b""));
    assert!(matches!(err(&tar, &d), ConvertError::DotDot(_)));
    // A leading slash is only dropped.
    let tar = finish(raw_entry(b"/etc/passwd", b'0', b"", b"x"));
    assert!(convert_with(&tar, &d).is_ok());
}

#[test]
fn truncated_tar_is_an_error() {
    let mut l = Layer::new();
    l.file("a", 0o644, &[7u8; 10_000]);
    let tar = l.bytes();
    let e = err(&tar[..512 + 3000], &Limits::default());
    assert!(matches!(e, ConvertError::Truncated), "{e}");
    // Cut inside the header of the next entry.
    let mut l = Layer::new();
    l.file("a", 0o644, b"x").file("b", 0o644, b"y");
    let tar = l.bytes();
    let e = err(&tar[..1024 + 100], &Limits::default());
    assert!(
        matches!(e, ConvertError::Truncated | ConvertError::Tar(_)),
        "{e}"
    );
}

#[test]
fn limits_each_give_their_own_error() {
    let mut l = Layer::new();
    for i in 0..10 {
        l.file(&format!("f{i}"), 0o644, &vec![1u8; 5000]);
    }
    let tar = l.bytes();
    let e = err(
        &tar,
        &Limits {
            max_entries: 5,
            ..Limits::default()
        },
    );
    assert!(matches!(e, ConvertError::TooManyEntries(5)), "{e}");
    let e = err(
        &tar,
        &Limits {
            max_image_bytes: 40_000,
            ..Limits::default()
        },
    );
    assert!(matches!(e, ConvertError::ImageTooLarge(40_000)), "{e}");
    // Metadata counts too: one block short of the image fails, the exact size works.
    let (image, _) = convert_with(&tar, &Limits::default()).expect("convert");
    let size = image.len() as u64;
    let e = err(
        &tar,
        &Limits {
            max_image_bytes: size - 4096,
            ..Limits::default()
        },
    );
    assert!(matches!(e, ConvertError::ImageTooLarge(_)), "{e}");
    assert!(
        convert_with(
            &tar,
            &Limits {
                max_image_bytes: size,
                ..Limits::default()
            }
        )
        .is_ok()
    );
    let e = err(
        &tar,
        &Limits {
            max_path: 1,
            ..Limits::default()
        },
    );
    assert!(matches!(e, ConvertError::PathTooLong { .. }), "{e}");
    let mut l = Layer::new();
    l.pax(&[("SCHILY.xattr.user.big", &[0u8; 3000][..])])
        .file("x", 0o644, b"");
    let e = err(
        &l.bytes(),
        &Limits {
            max_xattr_bytes: 1024,
            ..Limits::default()
        },
    );
    assert!(matches!(e, ConvertError::XattrTooLarge { .. }), "{e}");
    // Just under every limit converts.
    let ok = Limits {
        max_entries: 10,
        max_image_bytes: 1 << 20,
        ..Limits::default()
    };
    assert!(convert_with(&tar, &ok).is_ok());
}

#[test]
fn structural_errors() {
    let d = Limits::default();
    let mut l = Layer::new();
    l.hardlink("l", "missing");
    assert!(matches!(err(&l.bytes(), &d), ConvertError::LinkTarget(..)));
    let mut l = Layer::new();
    l.dir("d", 0o755).hardlink("l", "d");
    assert!(matches!(err(&l.bytes(), &d), ConvertError::LinkToDir(_)));
    let mut l = Layer::new();
    l.file("f", 0o644, b"").file("f/under", 0o644, b"");
    assert!(matches!(
        err(&l.bytes(), &d),
        ConvertError::NotADirectory(_)
    ));
    let tar = finish(raw_entry(b"./", b'0', b"", b""));
    assert!(matches!(err(&tar, &d), ConvertError::RootNotDir));
    let tar = finish(raw_entry(b"sock", b'V', b"", b""));
    assert!(matches!(err(&tar, &d), ConvertError::Unsupported { .. }));
    let tar = finish(raw_entry(b"dir/.wh.", b'0', b"", b""));
    assert!(matches!(err(&tar, &d), ConvertError::BadName(_)));
    let mut l = Layer::new();
    l.pax(&[("uid", b"4294967296")]).file("f", 0o644, b"");
    assert!(matches!(err(&l.bytes(), &d), ConvertError::BadPax(_)));
    let mut l = Layer::new();
    l.pax(&[("mtime", b"soon")]).file("f", 0o644, b"");
    assert!(matches!(err(&l.bytes(), &d), ConvertError::BadPax(_)));
    let mut l = Layer::new();
    l.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file("f", 0o644, b"");
    assert!(matches!(
        err(&l.bytes(), &d),
        ConvertError::Unsupported { .. }
    ));
}

/// A tiny deterministic generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mangled_tars_never_panic() {
    let mut l = Layer::new();
    l.file("a/b", 0o4755, &[1u8; 6000])
        .symlink("s", "a/b")
        .hardlink("h", "a/b");
    l.pax(&[("SCHILY.xattr.security.capability", b"\x01\x02")])
        .dir("d", 0o755);
    l.file(".wh.x", 0o644, b"")
        .file("d/.wh..wh..opq", 0o644, b"");
    let tar = l.bytes();
    let limits = Limits {
        max_image_bytes: 1 << 22,
        ..Limits::default()
    };
    // Every truncation point.
    for cut in (0..tar.len()).step_by(97) {
        let _ = convert_with(&tar[..cut], &limits);
    }
    // Random byte flips.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let mut t = tar.clone();
        for _ in 0..1 + rng.next() % 8 {
            let i = (rng.next() % t.len() as u64) as usize;
            t[i] = rng.next() as u8;
        }
        let _ = convert_with(&t, &limits);
    }
    // Pure noise.
    for _ in 0..200 {
        let n = (rng.next() % 4096) as usize;
        let t: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let _ = convert_with(&t, &limits);
    }
}
