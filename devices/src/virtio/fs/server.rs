//! The FUSE server: a decoded request in, the backend called, the reply
//! bytes (`fuse_out_header` + body) out. Reply sizes are bounded by the
//! guest's writable buffer and by [`MAX_IO`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::abi::{self, Writer, init_flags, opcode};
use super::filesystem::{Attr, Context, Entry, Errno, Filesystem, FsResult, XattrReply, errno};
use super::request::{self, DecodeError, Request};
use crate::warn_ratelimited;

/// Largest READ or WRITE payload (advertised as max_write / max_pages).
pub const MAX_IO: u32 = 1 << 20;
/// Pages per request advertised with FUSE_MAX_PAGES.
pub const MAX_PAGES: u16 = (MAX_IO / 4096) as u16;
/// Largest request the device reads from a chain: a WRITE of [`MAX_IO`]
/// plus its headers, rounded up.
pub const MAX_REQUEST: usize = MAX_IO as usize + 4096;

/// INIT flags we accept when the guest offers them.
const SUPPORTED_FLAGS: u32 = init_flags::ASYNC_READ
    | init_flags::ATOMIC_O_TRUNC
    | init_flags::BIG_WRITES
    | init_flags::DO_READDIRPLUS
    | init_flags::READDIRPLUS_AUTO
    | init_flags::PARALLEL_DIROPS
    | init_flags::MAX_PAGES
    | init_flags::CACHE_SYMLINKS;

/// A FUSE session over one backend.
pub struct Server {
    fs: Box<dyn Filesystem>,
    initialized: AtomicBool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("initialized", &self.initialized)
            .finish_non_exhaustive()
    }
}

/// A complete reply, or none (FORGET and BATCH_FORGET are not answered).
pub type Reply = Option<Vec<u8>>;

fn reply_ok(unique: u64, body: &[u8]) -> Vec<u8> {
    let mut v = abi::out_header(unique, 0, body.len()).to_vec();
    v.extend_from_slice(body);
    v
}

fn reply_err(unique: u64, e: Errno) -> Vec<u8> {
    abi::out_header(unique, -e.0, 0).to_vec()
}

/// Encodes `fuse_attr`.
pub fn write_attr(w: &mut Writer, a: &Attr) {
    w.u64(a.ino)
        .u64(a.size)
        .u64(a.blocks)
        .u64(a.atime)
        .u64(a.mtime)
        .u64(a.ctime)
        .u32(a.atime_nsec)
        .u32(a.mtime_nsec)
        .u32(a.ctime_nsec)
        .u32(a.mode)
        .u32(a.nlink)
        .u32(a.uid)
        .u32(a.gid)
        .u32(a.rdev)
        .u32(a.blksize)
        .u32(0);
}

/// Encodes `fuse_entry_out`.
pub fn write_entry(w: &mut Writer, e: &Entry) {
    w.u64(e.inode)
        .u64(e.generation)
        .u64(e.entry_timeout.as_secs())
        .u64(e.attr_timeout.as_secs())
        .u32(e.entry_timeout.subsec_nanos())
        .u32(e.attr_timeout.subsec_nanos());
    write_attr(w, &e.attr);
}

fn attr_out(a: &Attr, timeout: Duration) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(timeout.as_secs()).u32(timeout.subsec_nanos()).u32(0);
    write_attr(&mut w, a);
    w.0
}

fn entry_out(e: &Entry) -> Vec<u8> {
    let mut w = Writer::default();
    write_entry(&mut w, e);
    w.0
}

fn open_out(fh: u64, flags: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(fh).u32(flags).u32(0);
    w.0
}

impl Server {
    /// A server for `fs`; the guest must send INIT first.
    pub fn new(fs: Box<dyn Filesystem>) -> Server {
        Server {
            fs,
            initialized: AtomicBool::new(false),
        }
    }

    /// Forgets the session (device reset): every node and handle goes.
    pub fn reset(&self) {
        if self.initialized.swap(false, Ordering::AcqRel) {
            self.fs.destroy();
        }
    }

    /// Handles one request of `input` bytes whose reply may use at most
    /// `out_cap` bytes. Never panics on guest input.
    pub fn handle(&self, input: &[u8], out_cap: usize) -> Reply {
        let (h, req) = match request::decode(input) {
            Ok(r) => r,
            Err(e) => {
                warn_ratelimited!("virtio-fs: bad request: {e}");
                return match e {
                    DecodeError::NoHeader(_) => None,
                    _ => request::decode_header(input)
                        .ok()
                        .map(|h| reply_err(h.unique, e.errno())),
                };
            }
        };
        let ctx = Context {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
        };
        if !matches!(req, Request::Init { .. }) && !self.initialized.load(Ordering::Acquire) {
            return match req {
                Request::Forget { .. } | Request::BatchForget { .. } => None,
                _ => Some(reply_err(h.unique, errno::EIO)),
            };
        }
        let room = out_cap.saturating_sub(abi::OUT_HEADER_LEN);
        let result = match req {
            Request::Forget { nlookup } => {
                self.fs.forget(h.nodeid, nlookup);
                return None;
            }
            Request::BatchForget { forgets } => {
                for (node, n) in forgets {
                    self.fs.forget(node, n);
                }
                return None;
            }
            req => self.dispatch(ctx, h.nodeid, h.opcode, req, room),
        };
        Some(match result {
            Ok(body) if body.len() <= room => reply_ok(h.unique, &body),
            Ok(_) => reply_err(h.unique, errno::ERANGE),
            Err(e) => reply_err(h.unique, e),
        })
    }

    fn dispatch(
        &self,
        ctx: Context,
        node: u64,
        op: u32,
        req: Request<'_>,
        room: usize,
    ) -> FsResult<Vec<u8>> {
        let fs = &*self.fs;
        let room32 = u32::try_from(room).unwrap_or(u32::MAX);
        match req {
            Request::Init {
                major,
                minor,
                max_readahead,
                flags,
            } => self.init(major, minor, max_readahead, flags),
            Request::Destroy => {
                self.reset();
                Ok(Vec::new())
            }
            Request::Lookup { name } => fs.lookup(ctx, node, name).map(|e| entry_out(&e)),
            Request::Getattr { fh } => fs.getattr(ctx, node, fh).map(|(a, t)| attr_out(&a, t)),
            Request::Setattr(set) => fs.setattr(ctx, node, &set).map(|(a, t)| attr_out(&a, t)),
            Request::Readlink => fs.readlink(ctx, node),
            Request::Symlink { name, target } => {
                fs.symlink(ctx, node, name, target).map(|e| entry_out(&e))
            }
            Request::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => fs
                .mknod(ctx, node, name, mode, rdev, umask)
                .map(|e| entry_out(&e)),
            Request::Mkdir { name, mode, umask } => fs
                .mkdir(ctx, node, name, mode, umask)
                .map(|e| entry_out(&e)),
            Request::Unlink { name } => fs.unlink(ctx, node, name).map(|()| Vec::new()),
            Request::Rmdir { name } => fs.rmdir(ctx, node, name).map(|()| Vec::new()),
            Request::Rename {
                new_dir,
                flags,
                name,
                new_name,
            } => fs
                .rename(ctx, node, name, new_dir, new_name, flags)
                .map(|()| Vec::new()),
            Request::Link { old_node, name } => {
                fs.link(ctx, old_node, node, name).map(|e| entry_out(&e))
            }
            Request::Open { flags } => fs.open(ctx, node, flags).map(|(fh, f)| open_out(fh, f)),
            Request::Opendir { flags } => fs.opendir(ctx, node, flags).map(|fh| open_out(fh, 0)),
            Request::Create {
                name,
                mode,
                flags,
                umask,
            } => fs
                .create(ctx, node, name, mode, flags, umask)
                .map(|(e, fh, f)| [entry_out(&e), open_out(fh, f)].concat()),
            Request::Read { fh, offset, size } => {
                fs.read(ctx, node, fh, offset, size.min(MAX_IO).min(room32))
            }
            Request::Write { fh, offset, data } => {
                if data.len() > MAX_IO as usize {
                    return Err(errno::EINVAL);
                }
                fs.write(ctx, node, fh, offset, data).map(|n| {
                    let mut w = Writer::default();
                    w.u32(n).u32(0);
                    w.0
                })
            }
            Request::Readdir {
                fh,
                offset,
                size,
                plus,
            } => self.readdir(ctx, node, fh, offset, size.min(room32).min(MAX_IO), plus),
            Request::Statfs => fs.statfs(ctx, node).map(|s| {
                let mut w = Writer::default();
                w.u64(s.blocks)
                    .u64(s.bfree)
                    .u64(s.bavail)
                    .u64(s.files)
                    .u64(s.ffree)
                    .u32(s.bsize)
                    .u32(s.namelen)
                    .u32(s.frsize)
                    .u32(0)
                    .bytes(&[0u8; 24]);
                w.0
            }),
            Request::Release { fh } => fs.release(ctx, node, fh).map(|()| Vec::new()),
            Request::Releasedir { fh } => fs.releasedir(ctx, node, fh).map(|()| Vec::new()),
            Request::Flush { fh } => fs.flush(ctx, node, fh).map(|()| Vec::new()),
            Request::Fsync { fh, datasync } => {
                fs.fsync(ctx, node, fh, datasync).map(|()| Vec::new())
            }
            Request::Fsyncdir { fh, datasync } => {
                fs.fsyncdir(ctx, node, fh, datasync).map(|()| Vec::new())
            }
            Request::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => fs
                .fallocate(ctx, node, fh, mode, offset, length)
                .map(|()| Vec::new()),
            Request::Lseek { fh, offset, whence } => fs
                .lseek(ctx, node, fh, offset, whence)
                .map(|o| o.to_le_bytes().to_vec()),
            Request::Getxattr { name, size } => fs.getxattr(ctx, node, name, size).map(xattr_reply),
            Request::Listxattr { size } => fs.listxattr(ctx, node, size).map(xattr_reply),
            Request::Setxattr { name, value, flags } => fs
                .setxattr(ctx, node, name, value, flags)
                .map(|()| Vec::new()),
            Request::Removexattr { name } => fs.removexattr(ctx, node, name).map(|()| Vec::new()),
            Request::Unsupported(_) | Request::Forget { .. } | Request::BatchForget { .. } => {
                log::debug!("virtio-fs: opcode {op} not supported");
                Err(errno::ENOSYS)
            }
        }
    }

    fn init(&self, major: u32, minor: u32, _readahead: u32, flags: u32) -> FsResult<Vec<u8>> {
        if major != abi::KERNEL_VERSION || minor < 27 {
            warn_ratelimited!("virtio-fs: guest speaks FUSE {major}.{minor}, need 7.27+");
            return Err(errno::EPROTO);
        }
        self.reset();
        self.fs.init()?;
        self.initialized.store(true, Ordering::Release);
        let mut w = Writer::default();
        w.u32(abi::KERNEL_VERSION)
            .u32(abi::KERNEL_MINOR_VERSION)
            .u32(MAX_IO) // max_readahead
            .u32(flags & SUPPORTED_FLAGS)
            .u16(16) // max_background
            .u16(12) // congestion_threshold
            .u32(MAX_IO) // max_write
            .u32(1) // time_gran (ns)
            .u16(MAX_PAGES)
            .u16(0) // map_alignment
            .bytes(&[0u8; 32]);
        debug_assert_eq!(w.0.len(), abi::INIT_OUT_LEN);
        Ok(w.0)
    }

    fn readdir(
        &self,
        ctx: Context,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    ) -> FsResult<Vec<u8>> {
        let entries = self.fs.readdir(ctx, node, fh, offset, size)?;
        let mut w = Writer::default();
        for d in entries {
            let need = abi::dirent_size(d.name.len()) + if plus { abi::ENTRY_OUT_LEN } else { 0 };
            if w.0.len() + need > size as usize {
                break;
            }
            if plus {
                let dots = d.name == b"." || d.name == b"..";
                // A name that cannot be looked up (gone since it was
                // listed, node table full) is still listed, as by READDIR.
                let entry = if dots {
                    None
                } else {
                    self.fs.lookup(ctx, node, &d.name).ok()
                };
                match entry {
                    Some(e) => write_entry(&mut w, &e),
                    // Node 0: the guest lists the name without a node.
                    None => {
                        w.bytes(&[0u8; abi::ENTRY_OUT_LEN]);
                    }
                }
            }
            let namelen = u32::try_from(d.name.len()).map_err(|_| errno::EIO)?;
            w.u64(d.ino)
                .u64(d.offset)
                .u32(namelen)
                .u32(d.kind)
                .bytes(&d.name)
                .pad8();
        }
        Ok(w.0)
    }
}

fn xattr_reply(r: XattrReply) -> Vec<u8> {
    match r {
        XattrReply::Size(n) => {
            let mut w = Writer::default();
            w.u32(n).u32(0);
            w.0
        }
        XattrReply::Data(d) => d,
    }
}

/// Whether `op` is answered (FORGET and BATCH_FORGET are not).
pub fn expects_reply(op: u32) -> bool {
    op != opcode::FORGET && op != opcode::BATCH_FORGET
}
