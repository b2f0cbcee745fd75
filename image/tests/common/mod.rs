//! Helpers for the EROFS converter tests: tar crafting, conversion, and
//! (on Linux) checking each image with `fsck.erofs` and reading it back
//! through a read-only loop mount.
#![allow(dead_code, unused_imports)]

use std::io::Cursor;

use krypton_image::erofs::{ConvertError, Limits, Stats, convert};
use tar::{Builder, EntryType, Header};

/// A tar being built.
pub struct Layer {
    pub b: Builder<Vec<u8>>,
}

/// mtime used by the tests unless an entry sets another.
pub const MTIME: u64 = 1_700_000_000;

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: Builder::new(Vec::new()),
        }
    }

    fn header(ty: EntryType, mode: u32, uid: u64, gid: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(0);
        h
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.file_owned(path, mode, 0, 0, data)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Self::header(EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("append file");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(EntryType::Directory, mode, 0, 0);
        self.b
            .append_data(&mut h, path, &[][..])
            .expect("append dir");
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("append symlink");
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Link, 0o644, 0, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("append link");
        self
    }

    pub fn device(&mut self, path: &str, ty: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(ty, 0o660, 0, 6);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.b
            .append_data(&mut h, path, &[][..])
            .expect("append device");
        self
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Fifo, 0o600, 0, 0);
        self.b
            .append_data(&mut h, path, &[][..])
            .expect("append fifo");
        self
    }

    /// A PAX extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().map(|&(k, v)| (k, v)))
            .expect("pax");
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

/// Converts with `limits`, returning the image bytes.
pub fn convert_with(tar: &[u8], limits: &Limits) -> Result<(Vec<u8>, Stats), ConvertError> {
    let mut out = Cursor::new(Vec::new());
    let stats = convert(Cursor::new(tar), &mut out, limits)?;
    Ok((out.into_inner(), stats))
}

#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// One file as the mounted image shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Node {
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u64,
        pub size: u64,
        pub mtime: i64,
        pub mtime_nsec: i64,
        pub rdev: u64,
        pub ino: u64,
        pub target: Option<Vec<u8>>,
        pub xattrs: BTreeMap<String, Vec<u8>>,
        /// Contents of regular files up to 1 MiB.
        pub data: Option<Vec<u8>>,
        /// 512-byte blocks allocated.
        pub blocks: u64,
    }

    static SEQ: AtomicU32 = AtomicU32::new(0);

    fn scratch(tag: &str) -> PathBuf {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("krypton-erofs-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("--help").output().is_ok()
    }

    /// Runs `fsck.erofs` on the image; false (with the reason printed) if
    /// the tool is missing. A failing fsck panics.
    pub fn fsck(img: &Path) -> bool {
        if !have("fsck.erofs") {
            eprintln!("SKIPPED fsck: fsck.erofs is not installed (apt-get install erofs-utils)");
            return false;
        }
        let out = Command::new("fsck.erofs")
            .arg("--extract")
            .arg(img)
            .output()
            .expect("run fsck.erofs");
        assert!(
            out.status.success(),
            "fsck.erofs {} failed: {}{}",
            img.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        true
    }

    fn can_mount() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fs.contains("erofs") {
            let _ = Command::new("modprobe").arg("erofs").output();
            let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if !fs.contains("erofs") {
                return Err("the host kernel has no erofs".into());
            }
        }
        Ok(())
    }

    /// An image written to disk, checked with fsck, and mounted if possible.
    pub struct Checked {
        /// Scratch dir removed on drop (None: a plain directory view).
        pub dir: Option<PathBuf>,
        pub img: PathBuf,
        pub mnt: Option<PathBuf>,
    }

    impl Checked {
        pub fn new(image: &[u8], tag: &str) -> Checked {
            let dir = scratch(tag);
            let img = dir.join("layer.erofs");
            std::fs::write(&img, image).expect("write image");
            fsck(&img);
            let mnt = match can_mount() {
                Ok(()) => {
                    let m = dir.join("mnt");
                    std::fs::create_dir(&m).expect("mnt dir");
                    let out = Command::new("mount")
                        .args(["-t", "erofs", "-o", "loop,ro"])
                        .arg(&img)
                        .arg(&m)
                        .output()
                        .expect("run mount");
                    assert!(
                        out.status.success(),
                        "mount failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    Some(m)
                }
                Err(why) => {
                    eprintln!("SKIPPED mount check: {why}");
                    None
                }
            };
            Checked {
                dir: Some(dir),
                img,
                mnt,
            }
        }

        /// Every path under the mount (relative, "" for the root).
        pub fn listing(&self) -> Option<BTreeMap<String, Node>> {
            let m = self.mnt.as_ref()?;
            let mut out = BTreeMap::new();
            walk(m, m, &mut out);
            Some(out)
        }
    }

    impl Drop for Checked {
        fn drop(&mut self) {
            let Some(dir) = &self.dir else { return };
            if let Some(m) = &self.mnt {
                let _ = Command::new("umount").arg(m).output();
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, Node>) {
        let md = std::fs::symlink_metadata(p).expect("lstat");
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let ft = md.file_type();
        let target = ft.is_symlink().then(|| {
            std::fs::read_link(p)
                .expect("readlink")
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let data = (ft.is_file() && md.len() <= 1 << 20).then(|| std::fs::read(p).expect("read"));
        out.insert(
            rel,
            Node {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                nlink: md.nlink(),
                size: md.len(),
                mtime: md.mtime(),
                mtime_nsec: md.mtime_nsec(),
                rdev: md.rdev(),
                ino: md.ino(),
                target,
                xattrs: xattrs(p),
                data,
                blocks: md.blocks(),
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(p).expect("readdir") {
                walk(root, &e.expect("dirent").path(), out);
            }
        }
    }

    /// All xattrs of `p` (not following symlinks).
    pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
        let c = CString::new(p.as_os_str().as_bytes()).expect("path");
        let mut names = vec![0u8; 65536];
        // SAFETY: c is NUL-terminated; names is a writable buffer of its length.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        let mut out = BTreeMap::new();
        if n <= 0 {
            return out;
        }
        for name in names[..n as usize]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
        {
            let cn = CString::new(name).expect("name");
            let mut v = vec![0u8; 65536];
            // SAFETY: both strings are NUL-terminated; v is writable for its length.
            let len =
                unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
            if len >= 0 {
                v.truncate(len as usize);
                out.insert(String::from_utf8_lossy(name).into_owned(), v);
            }
        }
        out
    }
}
