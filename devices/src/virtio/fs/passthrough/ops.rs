//! The passthrough backend's [`Filesystem`] operations.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use super::super::filesystem::{
    Attr, Context, DirEntry, Entry, Filesystem, FsResult, Handle, Inode, SetAttr, SetTime, StatFs,
    XattrReply, errno,
};
use super::super::request::XATTR_SIZE_MAX;
use super::{Passthrough, io_err, lock, plain_name, sys};

/// Open flags the guest may pass through (everything else is dropped).
const OPEN_FLAGS: libc::c_int = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_TRUNC
    | libc::O_EXCL
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NONBLOCK;

fn guest_flags(flags: u32) -> libc::c_int {
    (flags as libc::c_int) & OPEN_FLAGS
}

fn writes(flags: libc::c_int) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(s, ns)) => libc::timespec {
            tv_sec: i64::try_from(s).unwrap_or(i64::MAX),
            tv_nsec: i64::from(ns),
        },
    }
}

impl Passthrough {
    /// Creates `name` in `parent` with `make`, gives it the caller's ids
    /// and looks it up.
    fn make_node(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        make: impl FnOnce(std::os::fd::BorrowedFd<'_>, &std::ffi::CStr) -> FsResult<()>,
    ) -> FsResult<Entry> {
        self.check_writable()?;
        let cname = plain_name(name)?;
        let dir = self.node_fd(parent)?;
        make(dir.as_fd(), &cname)?;
        self.set_owner(dir.as_fd(), &cname, ctx.uid, ctx.gid)?;
        self.do_lookup(parent, name)
    }

    /// A buffer for an xattr value or list: at most 64 KiB, as Linux.
    fn xattr_buf(size: u32) -> Vec<u8> {
        vec![0u8; (size as usize).min(XATTR_SIZE_MAX)]
    }
}

impl Filesystem for Passthrough {
    fn destroy(&self) {
        let mut nodes = lock(&self.nodes);
        nodes.map.clear();
        nodes.by_key.clear();
        lock(&self.handles).clear();
    }

    fn lookup(&self, _ctx: Context, parent: Inode, name: &[u8]) -> FsResult<Entry> {
        self.do_lookup(parent, name)
    }

    fn forget(&self, inode: Inode, count: u64) {
        self.do_forget(inode, count);
    }

    fn getattr(
        &self,
        _ctx: Context,
        inode: Inode,
        _fh: Option<Handle>,
    ) -> FsResult<(Attr, Duration)> {
        let fd = self.node_fd(inode)?;
        self.stat_attr(fd.as_fd())
    }

    fn setattr(&self, _ctx: Context, inode: Inode, set: &SetAttr) -> FsResult<(Attr, Duration)> {
        let fd = self.node_fd(inode)?;
        if set.is_empty() {
            return self.stat_attr(fd.as_fd());
        }
        self.check_writable()?;
        let kind = Self::file_type(fd.as_fd())?;
        if let Some(mode) = set.mode {
            if kind == libc::S_IFLNK {
                return Err(errno::EOPNOTSUPP);
            }
            let name = Self::proc_name(fd.as_fd())?;
            sys::fchmodat(self.proc_fd.as_fd(), &name, mode & 0o7777)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::fchownat(
                fd.as_fd(),
                c"",
                set.uid.unwrap_or(u32::MAX),
                set.gid.unwrap_or(u32::MAX),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(size) = set.size {
            if kind != libc::S_IFREG {
                return Err(if kind == libc::S_IFDIR {
                    errno::EISDIR
                } else {
                    errno::EINVAL
                });
            }
            match set.handle.map(|fh| self.handle(inode, fh)) {
                Some(Ok(h)) => sys::ftruncate(h.file.as_fd(), size)?,
                _ => {
                    let f = self.reopen(fd.as_fd(), libc::O_WRONLY | libc::O_NONBLOCK)?;
                    sys::ftruncate(f.as_fd(), size)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::utimens_fd(fd.as_fd(), &[timespec(set.atime), timespec(set.mtime)])?;
        }
        self.stat_attr(fd.as_fd())
    }

    fn readlink(&self, _ctx: Context, inode: Inode) -> FsResult<Vec<u8>> {
        let fd = self.node_fd(inode)?;
        if Self::file_type(fd.as_fd())? != libc::S_IFLNK {
            return Err(errno::EINVAL);
        }
        sys::readlink_fd(fd.as_fd())
    }

    fn symlink(&self, ctx: Context, parent: Inode, name: &[u8], target: &[u8]) -> FsResult<Entry> {
        let target = sys::cstr(target)?;
        self.make_node(ctx, parent, name, |dir, n| sys::symlinkat(&target, dir, n))
    }

    fn mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let kind = mode & libc::S_IFMT;
        let allowed = matches!(kind, libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK)
            || (kind == libc::S_IFCHR && rdev == 0);
        if !allowed {
            self.check_writable()?;
            return Err(errno::EPERM);
        }
        let mode = kind | (mode & 0o7777 & !umask);
        self.make_node(ctx, parent, name, |dir, n| sys::mknodat(dir, n, mode))
    }

    fn mkdir(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let mode = mode & 0o7777 & !umask;
        self.make_node(ctx, parent, name, |dir, n| sys::mkdirat(dir, n, mode))
    }

    fn unlink(&self, _ctx: Context, parent: Inode, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        let name = plain_name(name)?;
        sys::unlinkat(self.node_fd(parent)?.as_fd(), &name, 0)
    }

    fn rmdir(&self, _ctx: Context, parent: Inode, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        let name = plain_name(name)?;
        sys::unlinkat(self.node_fd(parent)?.as_fd(), &name, libc::AT_REMOVEDIR)
    }

    fn rename(
        &self,
        _ctx: Context,
        parent: Inode,
        name: &[u8],
        new_parent: Inode,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.check_writable()?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            return Err(errno::EINVAL);
        }
        let (old, new) = (plain_name(name)?, plain_name(new_name)?);
        let (od, nd) = (self.node_fd(parent)?, self.node_fd(new_parent)?);
        sys::renameat2(od.as_fd(), &old, nd.as_fd(), &new, flags)
    }

    fn link(
        &self,
        _ctx: Context,
        inode: Inode,
        new_parent: Inode,
        new_name: &[u8],
    ) -> FsResult<Entry> {
        self.check_writable()?;
        let name = plain_name(new_name)?;
        // Only nodes of our table, all found beneath the root, can be named.
        let fd = self.node_fd(inode)?;
        let dir = self.node_fd(new_parent)?;
        if let Err(e) = sys::linkat(fd.as_fd(), c"", dir.as_fd(), &name, libc::AT_EMPTY_PATH) {
            if e != errno::ENOENT && e != errno::EPERM {
                return Err(e);
            }
            // Without CAP_DAC_READ_SEARCH: link our own fd's /proc entry.
            let proc = Self::proc_name(fd.as_fd())?;
            sys::linkat(
                self.proc_fd.as_fd(),
                &proc,
                dir.as_fd(),
                &name,
                libc::AT_SYMLINK_FOLLOW,
            )?;
        }
        self.do_lookup(new_parent, new_name)
    }

    fn open(&self, _ctx: Context, inode: Inode, flags: u32) -> FsResult<(Handle, u32)> {
        let flags = guest_flags(flags) & !libc::O_EXCL;
        if writes(flags) {
            self.check_writable()?;
        }
        let fd = self.node_fd(inode)?;
        match Self::file_type(fd.as_fd())? {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(errno::EISDIR),
            _ => return Err(errno::EACCES),
        }
        if self.handles_full() {
            return Err(errno::EMFILE);
        }
        let file = self.reopen(fd.as_fd(), flags)?;
        Ok((self.add_handle(inode, file)?, 0))
    }

    fn create(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        flags: u32,
        umask: u32,
    ) -> FsResult<(Entry, Handle, u32)> {
        self.check_writable()?;
        if self.handles_full() {
            return Err(errno::EMFILE);
        }
        let cname = plain_name(name)?;
        let dir = self.node_fd(parent)?;
        let flags = guest_flags(flags) | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let file: OwnedFd = sys::openat2(
            dir.as_fd(),
            &cname,
            flags,
            mode & 0o7777 & !umask,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS,
        )?;
        self.set_owner(dir.as_fd(), &cname, ctx.uid, ctx.gid)?;
        let entry = self.do_lookup(parent, name)?;
        match self.add_handle(entry.inode, file.into()) {
            Ok(fh) => Ok((entry, fh, 0)),
            Err(e) => {
                self.do_forget(entry.inode, 1);
                Err(e)
            }
        }
    }

    fn read(
        &self,
        _ctx: Context,
        inode: Inode,
        fh: Handle,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let h = self.handle(inode, fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let at = offset.checked_add(done as u64).ok_or(errno::EINVAL)?;
            match h.file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if done > 0 => {
                    log::debug!("virtio-fs: short read: {e}");
                    break;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn write(
        &self,
        _ctx: Context,
        inode: Inode,
        fh: Handle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        self.check_writable()?;
        let h = self.handle(inode, fh)?;
        offset.checked_add(data.len() as u64).ok_or(errno::EINVAL)?;
        h.file.write_all_at(data, offset).map_err(io_err)?;
        u32::try_from(data.len()).map_err(|_| errno::EINVAL)
    }

    fn flush(&self, _ctx: Context, inode: Inode, fh: Handle) -> FsResult<()> {
        self.handle(inode, fh).map(drop)
    }

    fn fsync(&self, _ctx: Context, inode: Inode, fh: Handle, datasync: bool) -> FsResult<()> {
        let h = self.handle(inode, fh)?;
        if datasync {
            h.file.sync_data().map_err(io_err)
        } else {
            h.file.sync_all().map_err(io_err)
        }
    }

    fn release(&self, _ctx: Context, inode: Inode, fh: Handle) -> FsResult<()> {
        lock(&self.handles).remove(inode, fh)
    }

    fn statfs(&self, _ctx: Context, inode: Inode) -> FsResult<StatFs> {
        let fd = self.node_fd(inode)?;
        let s = sys::statfs_fd(fd.as_fd())?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: u32::try_from(s.f_bsize).unwrap_or(4096),
            namelen: u32::try_from(s.f_namelen).unwrap_or(255),
            frsize: u32::try_from(s.f_frsize).unwrap_or(4096),
        })
    }

    fn opendir(&self, _ctx: Context, inode: Inode, _flags: u32) -> FsResult<Handle> {
        let fd = self.node_fd(inode)?;
        if Self::file_type(fd.as_fd())? != libc::S_IFDIR {
            return Err(errno::ENOTDIR);
        }
        if self.handles_full() {
            return Err(errno::EMFILE);
        }
        let dir = self.reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        self.add_handle(inode, dir)
    }

    fn readdir(
        &self,
        _ctx: Context,
        inode: Inode,
        fh: Handle,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<DirEntry>> {
        let h = self.handle(inode, fh)?;
        let _guard = lock(&h.dir);
        sys::lseek(h.file.as_fd(), offset, libc::SEEK_SET as u32)?;
        let mut buf = vec![0u8; (size as usize).clamp(1024, 64 * 1024)];
        let n = sys::getdents(h.file.as_fd(), &mut buf)?;
        let mut out = Vec::new();
        let mut rest = buf.get(..n).unwrap_or(&[]);
        // linux_dirent64: ino u64, off i64, reclen u16, type u8, name NUL.
        while rest.len() >= 19 {
            let u64_at = |i: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&rest[i..i + 8]);
                u64::from_ne_bytes(a)
            };
            let reclen = usize::from(u16::from_ne_bytes([rest[16], rest[17]]));
            let Some(rec) = rest.get(..reclen).filter(|_| reclen >= 19) else {
                break;
            };
            let name = &rec[19..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            out.push(DirEntry {
                ino: u64_at(0),
                offset: u64_at(8),
                kind: u32::from(rec[18]),
                name: name.to_vec(),
            });
            rest = &rest[reclen..];
        }
        Ok(out)
    }

    fn releasedir(&self, ctx: Context, inode: Inode, fh: Handle) -> FsResult<()> {
        self.release(ctx, inode, fh)
    }

    fn fsyncdir(&self, ctx: Context, inode: Inode, fh: Handle, datasync: bool) -> FsResult<()> {
        self.fsync(ctx, inode, fh, datasync)
    }

    fn fallocate(
        &self,
        _ctx: Context,
        inode: Inode,
        fh: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> FsResult<()> {
        self.check_writable()?;
        let h = self.handle(inode, fh)?;
        sys::fallocate(h.file.as_fd(), mode, offset, length)
    }

    fn lseek(
        &self,
        _ctx: Context,
        inode: Inode,
        fh: Handle,
        offset: u64,
        whence: u32,
    ) -> FsResult<u64> {
        let h = self.handle(inode, fh)?;
        let _guard = lock(&h.dir);
        sys::lseek(h.file.as_fd(), offset, whence)
    }

    fn getxattr(
        &self,
        _ctx: Context,
        inode: Inode,
        name: &[u8],
        size: u32,
    ) -> FsResult<XattrReply> {
        let name = sys::cstr(name)?;
        let (_fd, path) = self.xattr_path(inode)?;
        let mut buf = Self::xattr_buf(size);
        let n = sys::getxattr(&path, &name, &mut buf)?;
        if size == 0 {
            return Ok(XattrReply::Size(
                u32::try_from(n).map_err(|_| errno::ERANGE)?,
            ));
        }
        buf.truncate(n);
        Ok(XattrReply::Data(buf))
    }

    fn listxattr(&self, _ctx: Context, inode: Inode, size: u32) -> FsResult<XattrReply> {
        let (_fd, path) = self.xattr_path(inode)?;
        let mut buf = Self::xattr_buf(size);
        let n = sys::listxattr(&path, &mut buf)?;
        if size == 0 {
            return Ok(XattrReply::Size(
                u32::try_from(n).map_err(|_| errno::ERANGE)?,
            ));
        }
        buf.truncate(n);
        Ok(XattrReply::Data(buf))
    }

    fn setxattr(
        &self,
        _ctx: Context,
        inode: Inode,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.check_writable()?;
        let name = sys::cstr(name)?;
        let (_fd, path) = self.xattr_path(inode)?;
        let flags = (flags as libc::c_int) & (libc::XATTR_CREATE | libc::XATTR_REPLACE);
        sys::setxattr(&path, &name, value, flags)
    }

    fn removexattr(&self, _ctx: Context, inode: Inode, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        let name = sys::cstr(name)?;
        let (_fd, path) = self.xattr_path(inode)?;
        sys::removexattr(&path, &name)
    }
}
