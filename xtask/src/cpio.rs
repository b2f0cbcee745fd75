//! A minimal writer for the "newc" cpio format the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//! Writing the archive ourselves lets it hold device nodes and root-owned
//! files without running as root.

use std::io::{self, Write};

/// File type bits of `mode` (from `<sys/stat.h>`).
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

/// Writes newc entries; all owned by root with mtime 0 (reproducible).
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio member over 4 GiB"))?;
        let name_len = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        self.next_ino += 1;
        let nlink = if mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_len, 0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()
    }

    /// A directory (`name` without a leading slash).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, (0, 0), &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, (0, 0), data)
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, (major, minor), &[])
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn layout_is_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"hello").expect("write");
        let buf = w.finish().expect("finish");
        // header (110) + "init\0" (5) padded to 116, data 5 padded to 124
        assert_eq!(&buf[..6], b"070701");
        assert_eq!(&buf[6 + 8..6 + 16], b"000081ed"); // mode
        assert_eq!(&buf[6 + 6 * 8..6 + 7 * 8], b"00000005"); // filesize
        assert_eq!(&buf[110..115], b"init\0");
        assert_eq!(&buf[116..121], b"hello");
        assert_eq!(&buf[124..130], b"070701");
        assert_eq!(buf.len() % 4, 0);
    }

    /// Cross-check against GNU cpio when it is installed.
    #[test]
    fn gnu_cpio_lists_it() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).expect("dir");
        w.char_dev("dev/console", 0o600, 5, 1).expect("dev");
        w.file("init", 0o755, b"abc").expect("file");
        let buf = w.finish().expect("finish");
        let Ok(mut child) = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            eprintln!("skipped: GNU cpio not installed");
            return;
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&buf)
            .expect("feed");
        let out = child.wait_with_output().expect("cpio");
        assert!(out.status.success());
        let list = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 3, "{list}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"),
            "{list}"
        );
        assert!(
            lines[1].starts_with("crw-------")
                && lines[1].contains("5,")
                && lines[1].ends_with("dev/console")
        );
        assert!(
            lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"),
            "{list}"
        );
    }
}
