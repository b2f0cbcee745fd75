//! The FUSE request path under fuzzing: an input is the device-readable
//! bytes of one request. It is decoded (which must not panic and must
//! agree with the header's length) and run through a [`Server`] over a
//! canned in-memory backend, whose reply must be well-formed and bounded
//! by the guest's writable room. Used by `fuzz/fuzz_targets/fuzz_fuse.rs`
//! and a unit test; not part of the device's API.

use std::time::Duration;

use super::abi;
use super::filesystem::{
    Attr, Context, DirEntry, Entry, Filesystem, FsResult, Handle, Inode, SetAttr, StatFs,
    XattrReply,
};
use super::request::decode;
use super::server::Server;

/// Answers everything with fixed data sized as the guest asked.
#[derive(Debug)]
struct Canned;

fn entry(inode: Inode) -> Entry {
    Entry {
        inode: inode.wrapping_add(1),
        generation: 0,
        attr: Attr {
            ino: inode,
            mode: 0o100644,
            nlink: 1,
            ..Attr::default()
        },
        attr_timeout: Duration::from_secs(1),
        entry_timeout: Duration::from_millis(1500),
    }
}

fn xattr(size: u32) -> XattrReply {
    if size == 0 {
        XattrReply::Size(10)
    } else {
        XattrReply::Data(vec![b'x'; (size as usize).min(10)])
    }
}

#[allow(clippy::too_many_arguments)]
impl Filesystem for Canned {
    fn lookup(&self, _: Context, p: Inode, _: &[u8]) -> FsResult<Entry> {
        Ok(entry(p))
    }
    fn forget(&self, _: Inode, _: u64) {}
    fn getattr(&self, _: Context, i: Inode, _: Option<Handle>) -> FsResult<(Attr, Duration)> {
        Ok((entry(i).attr, Duration::from_secs(1)))
    }
    fn setattr(&self, _: Context, i: Inode, _: &SetAttr) -> FsResult<(Attr, Duration)> {
        Ok((entry(i).attr, Duration::ZERO))
    }
    fn readlink(&self, _: Context, _: Inode) -> FsResult<Vec<u8>> {
        Ok(b"target".to_vec())
    }
    fn symlink(&self, _: Context, p: Inode, _: &[u8], _: &[u8]) -> FsResult<Entry> {
        Ok(entry(p))
    }
    fn mknod(&self, _: Context, p: Inode, _: &[u8], _: u32, _: u32, _: u32) -> FsResult<Entry> {
        Ok(entry(p))
    }
    fn mkdir(&self, _: Context, p: Inode, _: &[u8], _: u32, _: u32) -> FsResult<Entry> {
        Ok(entry(p))
    }
    fn unlink(&self, _: Context, _: Inode, _: &[u8]) -> FsResult<()> {
        Ok(())
    }
    fn rmdir(&self, _: Context, _: Inode, _: &[u8]) -> FsResult<()> {
        Ok(())
    }
    fn rename(&self, _: Context, _: Inode, _: &[u8], _: Inode, _: &[u8], _: u32) -> FsResult<()> {
        Ok(())
    }
    fn link(&self, _: Context, i: Inode, _: Inode, _: &[u8]) -> FsResult<Entry> {
        Ok(entry(i))
    }
    fn open(&self, _: Context, i: Inode, _: u32) -> FsResult<(Handle, u32)> {
        Ok((i, 0))
    }
    fn create(
        &self,
        _: Context,
        p: Inode,
        _: &[u8],
        _: u32,
        _: u32,
        _: u32,
    ) -> FsResult<(Entry, Handle, u32)> {
        Ok((entry(p), 1, 0))
    }
    fn read(&self, _: Context, _: Inode, _: Handle, _: u64, size: u32) -> FsResult<Vec<u8>> {
        Ok(vec![0x5a; size as usize])
    }
    fn write(&self, _: Context, _: Inode, _: Handle, _: u64, d: &[u8]) -> FsResult<u32> {
        Ok(u32::try_from(d.len()).unwrap_or(u32::MAX))
    }
    fn flush(&self, _: Context, _: Inode, _: Handle) -> FsResult<()> {
        Ok(())
    }
    fn fsync(&self, _: Context, _: Inode, _: Handle, _: bool) -> FsResult<()> {
        Ok(())
    }
    fn release(&self, _: Context, _: Inode, _: Handle) -> FsResult<()> {
        Ok(())
    }
    fn statfs(&self, _: Context, _: Inode) -> FsResult<StatFs> {
        Ok(StatFs::default())
    }
    fn opendir(&self, _: Context, i: Inode, _: u32) -> FsResult<Handle> {
        Ok(i)
    }
    fn readdir(
        &self,
        _: Context,
        _: Inode,
        _: Handle,
        offset: u64,
        _: u32,
    ) -> FsResult<Vec<DirEntry>> {
        let names: [&[u8]; 4] = [b".", b"..", b"a", &[b'n'; 255]];
        Ok((offset..offset.saturating_add(4).min(64))
            .map(|o| DirEntry {
                ino: o,
                offset: o + 1,
                kind: 8,
                name: names[(o % 4) as usize].to_vec(),
            })
            .collect())
    }
    fn releasedir(&self, _: Context, _: Inode, _: Handle) -> FsResult<()> {
        Ok(())
    }
    fn fsyncdir(&self, _: Context, _: Inode, _: Handle, _: bool) -> FsResult<()> {
        Ok(())
    }
    fn fallocate(&self, _: Context, _: Inode, _: Handle, _: u32, _: u64, _: u64) -> FsResult<()> {
        Ok(())
    }
    fn lseek(&self, _: Context, _: Inode, _: Handle, o: u64, _: u32) -> FsResult<u64> {
        Ok(o)
    }
    fn getxattr(&self, _: Context, _: Inode, _: &[u8], size: u32) -> FsResult<XattrReply> {
        Ok(xattr(size))
    }
    fn listxattr(&self, _: Context, _: Inode, size: u32) -> FsResult<XattrReply> {
        Ok(xattr(size))
    }
    fn setxattr(&self, _: Context, _: Inode, _: &[u8], _: &[u8], _: u32) -> FsResult<()> {
        Ok(())
    }
    fn removexattr(&self, _: Context, _: Inode, _: &[u8]) -> FsResult<()> {
        Ok(())
    }
}

/// A server that has seen INIT.
fn server() -> Server {
    let s = Server::new(Box::new(Canned));
    let mut init = abi::InHeader {
        len: 56,
        opcode: abi::opcode::INIT,
        ..abi::InHeader::default()
    }
    .to_bytes()
    .to_vec();
    init.extend_from_slice(&[7, 0, 0, 0, 31, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let _ = s.handle(&init, 4096);
    s
}

/// Runs one input; panics if the decoder or the reply breaks a rule.
pub fn run(data: &[u8]) {
    let decoded = decode(data);
    if let Ok((h, _)) = &decoded {
        assert_eq!(h.len as usize, data.len(), "decoded length matches");
    }
    // The guest's writable room: from the input so both sides vary.
    let room = match data.get(8..10) {
        Some(b) => usize::from(u16::from_le_bytes([b[0], b[1]])) * 4,
        None => 4096,
    };
    let Some(reply) = server().handle(data, room) else {
        return;
    };
    let (len, err, unique) = abi::parse_out_header(&reply).expect("reply has a header");
    assert_eq!(len as usize, reply.len(), "header length = reply length");
    assert!(
        err <= 0 && err > -4096,
        "error {err} is a negative errno or 0"
    );
    assert!(
        reply.len() <= room.max(abi::OUT_HEADER_LEN),
        "reply of {} bytes for room {room}",
        reply.len()
    );
    if err != 0 {
        assert_eq!(reply.len(), abi::OUT_HEADER_LEN, "errors have no body");
    }
    if let Ok((h, _)) = decoded {
        assert_eq!(unique, h.unique);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke() {
        // Every opcode with bodies of every short length and a few long ones.
        for op in 0..50u32 {
            for body_len in (0..100).chain([200, 300, 1000]) {
                let body: Vec<u8> = (0..body_len).map(|i| (i * 37 % 251) as u8).collect();
                let h = abi::InHeader {
                    len: (abi::IN_HEADER_LEN + body.len()) as u32,
                    opcode: op,
                    unique: 0x1234_0000_0000_ffff,
                    nodeid: 1,
                    ..abi::InHeader::default()
                };
                let mut input = h.to_bytes().to_vec();
                input.extend_from_slice(&body);
                run(&input);
                run(&input[..input.len() / 2]);
            }
        }
    }
}
