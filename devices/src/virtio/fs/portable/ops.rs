//! The portable backend's [`Filesystem`] operations.

use std::time::Duration;

use super::super::filesystem::{
    Attr, Context, DirEntry, Entry, Filesystem, FsResult, Handle, Inode, SetAttr, StatFs,
    XattrReply, errno,
};
use super::host::{self, Access, Kind};
use super::nodes::{
    NOREPLACE, O_ACCMODE, O_EXCL, O_RDONLY, O_TRUNC, O_WRONLY, S_IFMT, S_IFREG, sys_time,
};
use super::{Meta, Portable, io_err, lock};

impl Filesystem for Portable {
    fn destroy(&self) {
        let mut st = lock(&self.state);
        st.nodes.clear();
        st.by_path.clear();
        st.meta.clear();
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
        self.node_stat(inode)
    }

    fn setattr(&self, ctx: Context, inode: Inode, set: &SetAttr) -> FsResult<(Attr, Duration)> {
        let rel = self.rel(inode)?;
        let full = self.host_path(&rel)?;
        if set.is_empty() {
            return self.stat(inode, &rel, &full);
        }
        self.check_writable()?;
        let k = host::kind_of(&full)?;
        if k == Kind::Link || k == Kind::Other {
            return Err(errno::EOPNOTSUPP);
        }
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            let (a, _) = self.stat(inode, &rel, &full)?;
            // Root may do anything; the owner may chmod and chgrp to its
            // own group, as on Linux.
            let owner = ctx.uid == a.uid;
            let uid_ok = set.uid.is_none_or(|u| u == a.uid);
            let gid_ok = set.gid.is_none_or(|g| g == a.gid || g == ctx.gid);
            if ctx.uid != 0 && !(owner && uid_ok && gid_ok) {
                return Err(errno::EPERM);
            }
            let meta = Meta {
                mode: set.mode.map(|m| m & 0o7777),
                uid: set.uid,
                gid: set.gid,
            };
            self.remember(&rel, meta)?;
        }
        if let Some(size) = set.size {
            if k == Kind::Dir {
                return Err(errno::EISDIR);
            }
            match set.handle.map(|fh| self.handle(inode, fh)) {
                Some(Ok(h)) if h.writable => {
                    let f = h.file.as_ref().ok_or(errno::EBADF)?;
                    f.set_len(size).map_err(io_err)?;
                }
                _ => {
                    let write = Access {
                        write: true,
                        ..Access::default()
                    };
                    host::open_file(&full, write)?
                        .set_len(size)
                        .map_err(io_err)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let mut times = std::fs::FileTimes::new();
            if let Some(t) = set.atime {
                times = times.set_accessed(sys_time(t));
            }
            if let Some(t) = set.mtime {
                times = times.set_modified(sys_time(t));
            }
            host::open_for_times(&full, k)?
                .set_times(times)
                .map_err(io_err)?;
        }
        self.stat(inode, &rel, &full)
    }

    fn readlink(&self, _ctx: Context, inode: Inode) -> FsResult<Vec<u8>> {
        let rel = self.rel(inode)?;
        let full = self.host_path(&rel)?;
        if host::kind_of(&full)? != Kind::Link {
            return Err(errno::EINVAL);
        }
        let target = std::fs::read_link(&full).map_err(io_err)?;
        let text = target.to_str().ok_or(errno::EINVAL)?;
        Ok(text.replace('\\', "/").into_bytes())
    }

    fn symlink(&self, _ctx: Context, parent: Inode, name: &[u8], _t: &[u8]) -> FsResult<Entry> {
        self.check_writable()?;
        self.child(parent, name)?;
        Err(errno::EPERM)
    }

    fn mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        _rdev: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        self.check_writable()?;
        let (_, full) = self.child(parent, name)?;
        if mode & S_IFMT != S_IFREG {
            return Err(errno::EPERM);
        }
        let new = Access {
            write: true,
            create_new: true,
            ..Access::default()
        };
        drop(host::open_file(&full, new)?);
        self.made(ctx, parent, name, mode & !umask)
    }

    fn mkdir(
        &self,
        ctx: Context,
        parent: Inode,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        self.check_writable()?;
        let (_, full) = self.child(parent, name)?;
        std::fs::create_dir(&full).map_err(io_err)?;
        self.made(ctx, parent, name, mode & !umask)
    }

    fn unlink(&self, _ctx: Context, parent: Inode, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        let (rel, full) = self.child(parent, name)?;
        let k = host::kind_of(&full)?;
        if k == Kind::Dir {
            return Err(errno::EISDIR);
        }
        host::remove(&full, k)?;
        lock(&self.state).detach(&rel);
        Ok(())
    }

    fn rmdir(&self, _ctx: Context, parent: Inode, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        let (rel, full) = self.child(parent, name)?;
        if host::kind_of(&full)? != Kind::Dir {
            return Err(errno::ENOTDIR);
        }
        std::fs::remove_dir(&full).map_err(io_err)?;
        lock(&self.state).detach(&rel);
        Ok(())
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
        if flags & !NOREPLACE != 0 {
            return Err(errno::EINVAL);
        }
        let (old_rel, old) = self.child(parent, name)?;
        let (new_rel, new) = self.child(new_parent, new_name)?;
        let k = host::kind_of(&old)?;
        if k == Kind::Dir && new_rel.starts_with(&old_rel) && new_rel != old_rel {
            return Err(errno::EINVAL);
        }
        match host::kind_of(&new) {
            Ok(_) if flags & NOREPLACE != 0 => return Err(errno::EEXIST),
            Ok(Kind::Dir) if k != Kind::Dir => return Err(errno::EISDIR),
            Ok(nk) if nk != Kind::Dir && k == Kind::Dir => return Err(errno::ENOTDIR),
            _ => {}
        }
        if old_rel == new_rel {
            return Ok(());
        }
        std::fs::rename(&old, &new).map_err(io_err)?;
        let mut st = lock(&self.state);
        st.detach(&new_rel);
        st.moved(&old_rel, &new_rel);
        Ok(())
    }

    fn link(&self, _ctx: Context, inode: Inode, new_parent: Inode, name: &[u8]) -> FsResult<Entry> {
        self.check_writable()?;
        let rel = self.rel(inode)?;
        let src = self.host_path(&rel)?;
        let (_, dst) = self.child(new_parent, name)?;
        if host::kind_of(&src)? != Kind::File {
            return Err(errno::EPERM);
        }
        std::fs::hard_link(&src, &dst).map_err(io_err)?;
        self.do_lookup(new_parent, name)
    }

    fn open(&self, _ctx: Context, inode: Inode, flags: u32) -> FsResult<(Handle, u32)> {
        let acc = flags & O_ACCMODE;
        let write = acc != O_RDONLY || flags & O_TRUNC != 0;
        if write {
            self.check_writable()?;
        }
        let rel = self.rel(inode)?;
        let full = self.host_path(&rel)?;
        match host::kind_of(&full)? {
            Kind::File => {}
            Kind::Dir => return Err(errno::EISDIR),
            Kind::Link | Kind::Other => return Err(errno::EACCES),
        }
        if self.handles_full() {
            return Err(errno::EMFILE);
        }
        let a = Access {
            read: acc != O_WRONLY,
            write,
            truncate: flags & O_TRUNC != 0,
            ..Access::default()
        };
        let file = host::open_file(&full, a)?;
        Ok((self.add_handle(inode, Some(file), write)?, 0))
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
        let (_, full) = self.child(parent, name)?;
        let a = Access {
            read: true,
            write: true,
            truncate: flags & O_TRUNC != 0,
            create: true,
            create_new: flags & O_EXCL != 0,
        };
        // An existing file keeps its mode and owner, as on Linux.
        let existed = host::kind_of(&full).is_ok();
        let file = host::open_file(&full, a)?;
        let entry = if existed {
            self.do_lookup(parent, name)?
        } else {
            self.made(ctx, parent, name, mode & !umask)?
        };
        match self.add_handle(entry.inode, Some(file), true) {
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
        off: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let h = self.handle(inode, fh)?;
        let f = h.file.as_ref().ok_or(errno::EISDIR)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let at = off.checked_add(done as u64).ok_or(errno::EINVAL)?;
            match host::read_at(f, &mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) if done > 0 => break,
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
        off: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        self.check_writable()?;
        let h = self.handle(inode, fh)?;
        let f = h.file.as_ref().ok_or(errno::EISDIR)?;
        if !h.writable {
            return Err(errno::EBADF);
        }
        off.checked_add(data.len() as u64).ok_or(errno::EINVAL)?;
        host::write_all_at(f, data, off).map_err(io_err)?;
        u32::try_from(data.len()).map_err(|_| errno::EINVAL)
    }

    fn flush(&self, _ctx: Context, inode: Inode, fh: Handle) -> FsResult<()> {
        self.handle(inode, fh).map(drop)
    }

    fn fsync(&self, _ctx: Context, inode: Inode, fh: Handle, datasync: bool) -> FsResult<()> {
        let h = self.handle(inode, fh)?;
        match (&h.file, h.writable) {
            (Some(f), true) if datasync => f.sync_data().map_err(io_err),
            (Some(f), true) => f.sync_all().map_err(io_err),
            // Nothing to flush through a read-only handle or a directory.
            _ => Ok(()),
        }
    }

    fn release(&self, _ctx: Context, inode: Inode, fh: Handle) -> FsResult<()> {
        lock(&self.handles).remove(inode, fh)
    }

    fn statfs(&self, _ctx: Context, inode: Inode) -> FsResult<StatFs> {
        self.rel(inode)?;
        Ok(super::statfs())
    }

    fn opendir(&self, _ctx: Context, inode: Inode, _flags: u32) -> FsResult<Handle> {
        self.dir(inode)?;
        self.add_handle(inode, None, false)
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
        if h.file.is_some() {
            return Err(errno::ENOTDIR);
        }
        let mut listing = lock(&h.listing);
        let entries = match &*listing {
            Some(l) if offset != 0 => std::sync::Arc::clone(l),
            _ => {
                let (rel, full) = self.dir(inode)?;
                let l = std::sync::Arc::new(self.list(inode, &rel, &full)?);
                *listing = Some(std::sync::Arc::clone(&l));
                l
            }
        };
        drop(listing);
        // Each entry takes at least 32 bytes on the wire.
        let most = (size as usize / 32).saturating_add(1);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(entries.iter().skip(start).take(most).cloned().collect())
    }

    fn releasedir(&self, ctx: Context, inode: Inode, fh: Handle) -> FsResult<()> {
        self.release(ctx, inode, fh)
    }

    fn fsyncdir(&self, _ctx: Context, inode: Inode, fh: Handle, _datasync: bool) -> FsResult<()> {
        self.handle(inode, fh).map(drop)
    }

    fn fallocate(
        &self,
        _ctx: Context,
        inode: Inode,
        fh: Handle,
        _mode: u32,
        _offset: u64,
        _length: u64,
    ) -> FsResult<()> {
        self.check_writable()?;
        self.handle(inode, fh)?;
        Err(errno::EOPNOTSUPP)
    }

    fn lseek(
        &self,
        _ctx: Context,
        _inode: Inode,
        _fh: Handle,
        _off: u64,
        _w: u32,
    ) -> FsResult<u64> {
        Err(errno::ENOSYS)
    }

    fn getxattr(
        &self,
        _ctx: Context,
        inode: Inode,
        _name: &[u8],
        _size: u32,
    ) -> FsResult<XattrReply> {
        self.rel(inode)?;
        Err(errno::ENODATA)
    }

    fn listxattr(&self, _ctx: Context, inode: Inode, size: u32) -> FsResult<XattrReply> {
        self.rel(inode)?;
        Ok(if size == 0 {
            XattrReply::Size(0)
        } else {
            XattrReply::Data(Vec::new())
        })
    }

    fn setxattr(
        &self,
        _ctx: Context,
        inode: Inode,
        _name: &[u8],
        _value: &[u8],
        _flags: u32,
    ) -> FsResult<()> {
        self.check_writable()?;
        self.rel(inode)?;
        Err(errno::EOPNOTSUPP)
    }

    fn removexattr(&self, _ctx: Context, inode: Inode, _name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        self.rel(inode)?;
        Err(errno::EOPNOTSUPP)
    }
}
