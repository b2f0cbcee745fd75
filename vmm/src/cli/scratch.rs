//! `krypton run --scratch SIZE`: the container's writable layer on a
//! fresh ext2 disk (formatted here, no external tool) in a private temp
//! directory, removed when the run ends.

use std::path::{Path, PathBuf};

/// Parses docker-style sizes: bytes, or a number with `k`, `m`, `g` or
/// `t` (binary multiples, case-insensitive, an optional trailing `b`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a size such as 512M or 4G");
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|x| !x.is_empty()).unwrap_or(&t);
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 10),
        Some(b'm') => (&t[..t.len() - 1], 20),
        Some(b'g') => (&t[..t.len() - 1], 30),
        Some(b't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// A formatted scratch disk in its own temp directory; both are removed
/// on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    /// The disk image.
    pub path: PathBuf,
}

impl Scratch {
    /// Creates the private directory and an empty ext2 filesystem of
    /// `size` bytes in it.
    pub fn create(size: u64) -> Result<Scratch, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("krypton-scratch-{}-{nanos}", std::process::id()));
        private_dir(&dir).map_err(|e| format!("scratch directory {}: {e}", dir.display()))?;
        let s = Scratch {
            path: dir.join("scratch.ext2"),
            dir,
        };
        krypton_image::ext2::format(&s.path, size)
            .map_err(|e| format!("--scratch: {}", super::one_line(&e)))?;
        Ok(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(unix)]
fn private_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(p)
}

#[cfg(not(unix))]
fn private_dir(p: &Path) -> std::io::Result<()> {
    std::fs::create_dir(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, n) in [
            ("0", 0),
            ("4096", 4096),
            ("64k", 64 << 10),
            ("512M", 512 << 20),
            ("512mb", 512 << 20),
            ("4G", 4 << 30),
            ("1t", 1 << 40),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for s in [
            "",
            "m",
            "1x",
            "-1",
            "1.5g",
            "1 g",
            "99999999999999999999",
            "17179869184g",
        ] {
            let e = parse_size(s).expect_err(s);
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn removed_on_drop() {
        let s = Scratch::create(16 << 20).expect("scratch");
        let dir = s.dir.clone();
        assert_eq!(std::fs::metadata(&s.path).expect("file").len(), 16 << 20);
        drop(s);
        assert!(!dir.exists());
        assert!(Scratch::create(1 << 20).is_err(), "below the minimum");
    }
}
