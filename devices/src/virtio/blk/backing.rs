//! What a virtio-blk disk reads from and writes to: one image file, or a
//! read-only set of files placed at offsets of a larger, otherwise zero
//! disk (the image layers of a container, packed into one device).

use std::fs::File;
use std::io;

use super::request::{read_exact_at, write_all_at};

/// One file placed on a [`Backing::Placed`] disk.
#[derive(Debug)]
pub struct Placed {
    /// Byte offset on the disk.
    pub start: u64,
    /// Bytes of the file shown (the file's length).
    pub len: u64,
    /// The open file.
    pub file: File,
}

/// The bytes behind a disk.
#[derive(Debug)]
pub enum Backing {
    /// One image file, the whole disk.
    File(File),
    /// Files at offsets, sorted and not overlapping; bytes between and
    /// after them read as zeros. Read-only.
    Placed(Vec<Placed>),
}

impl Backing {
    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Backing::File(f) => read_exact_at(f, buf, offset),
            Backing::Placed(parts) => read_placed(parts, buf, offset),
        }
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            Backing::File(f) => write_all_at(f, buf, offset),
            Backing::Placed(_) => Err(io::ErrorKind::PermissionDenied.into()),
        }
    }

    /// fdatasync for a file; nothing to do for read-only placements.
    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            Backing::File(f) => f.sync_data(),
            Backing::Placed(_) => Ok(()),
        }
    }
}

fn read_placed(parts: &[Placed], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let end = offset
        .checked_add(buf.len() as u64)
        .ok_or(io::ErrorKind::InvalidInput)?;
    buf.fill(0);
    // The first part that ends after `offset`.
    let first = parts.partition_point(|p| p.start + p.len <= offset);
    for p in parts.get(first..).unwrap_or(&[]) {
        if p.start >= end {
            break;
        }
        let from = offset.max(p.start);
        let to = end.min(p.start + p.len);
        // Both in range: from >= offset, to <= end, from < to.
        let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
        read_exact_at(&p.file, dst, from - p.start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile_in_target();
        f.write_all(bytes).expect("write");
        f
    }

    fn tempfile_in_target() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "krypton-backing-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("temp file");
        let _ = std::fs::remove_file(&path);
        f
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn placed_files_read_back_with_zero_gaps() {
        let a = vec![0xaa; 4096];
        let b = vec![0xbb; 1000];
        let disk = Backing::Placed(vec![
            Placed {
                start: 4096,
                len: 4096,
                file: file(&a),
            },
            Placed {
                start: 12288,
                len: 1000,
                file: file(&b),
            },
        ]);
        let mut all = vec![0x11; 20480];
        disk.read_exact_at(&mut all, 0).expect("read");
        assert!(all[..4096].iter().all(|&x| x == 0));
        assert!(all[4096..8192].iter().all(|&x| x == 0xaa));
        assert!(all[8192..12288].iter().all(|&x| x == 0));
        assert!(all[12288..13288].iter().all(|&x| x == 0xbb));
        assert!(all[13288..].iter().all(|&x| x == 0));
        // A read straddling a boundary, and one inside a part.
        let mut mid = vec![0x11; 1024];
        disk.read_exact_at(&mut mid, 8192 - 512).expect("read");
        assert!(mid[..512].iter().all(|&x| x == 0xaa) && mid[512..].iter().all(|&x| x == 0));
        let mut inner = [0u8; 10];
        disk.read_exact_at(&mut inner, 12300).expect("read");
        assert_eq!(inner, [0xbb; 10]);
        assert!(disk.write_all_at(&[1], 0).is_err(), "read-only");
        assert!(disk.read_exact_at(&mut [0u8; 8], u64::MAX - 3).is_err());
    }

    #[test]
    fn a_file_shorter_than_its_placement_is_an_error() {
        let disk = Backing::Placed(vec![Placed {
            start: 0,
            len: 8192,
            file: file(&[1; 4096]),
        }]);
        let mut buf = vec![0u8; 8192];
        assert!(disk.read_exact_at(&mut buf, 0).is_err());
    }
}
