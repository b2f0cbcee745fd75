//! The portable backend behind the FUSE server, request bytes in and
//! reply bytes out as the virtio-fs device passes them (on Linux and
//! under wine, where the device-level harness does not run).

use super::tests::{O_RDWR, S_IFREG, Scratch};
use super::*;
use crate::virtio::fs::abi::{self, InHeader, Writer, opcode};
use crate::virtio::fs::server::Server;

const OUT_CAP: usize = 0x2_0000;

struct Session {
    server: Server,
    unique: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn name(n: &[u8]) -> Vec<u8> {
    [n, b"\0"].concat()
}

fn io_body(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(fh).u64(offset).u32(size).u32(0).u64(0).u32(0).u32(0);
    w.0
}

impl Session {
    fn new(s: &Scratch, read_only: bool) -> Session {
        let cfg = Config {
            read_only,
            ..Config::default()
        };
        let fs = Portable::new(&s.share(), cfg).expect("share");
        let mut sess = Session {
            server: Server::new(Box::new(fs)),
            unique: 1,
        };
        let mut w = Writer::default();
        w.u32(7)
            .u32(36)
            .u32(0x2_0000)
            .u32(u32::MAX)
            .bytes(&[0u8; 48]);
        assert_eq!(sess.call(opcode::INIT, 0, &w.0).0, 0, "INIT");
        sess
    }

    /// (error, body) of one request.
    fn call(&mut self, op: u32, node: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let h = InHeader {
            len: (abi::IN_HEADER_LEN + body.len()) as u32,
            opcode: op,
            unique: self.unique,
            nodeid: node,
            uid: 0,
            gid: 0,
            pid: 42,
        };
        let input = [h.to_bytes().as_slice(), body].concat();
        let out = self.server.handle(&input, OUT_CAP).expect("a reply");
        let (len, err, unique) = abi::parse_out_header(&out).expect("out header");
        assert_eq!((len as usize, unique), (out.len(), self.unique));
        (err, out[abi::OUT_HEADER_LEN..].to_vec())
    }

    fn ok(&mut self, op: u32, node: u64, body: &[u8]) -> Vec<u8> {
        let (err, out) = self.call(op, node, body);
        assert_eq!(err, 0, "opcode {op} failed");
        out
    }
}

#[test]
fn a_fuse_session_over_the_portable_backend() {
    let s = Scratch::new();
    let mut h = Session::new(&s, false);
    let mut w = Writer::default();
    w.u32(0o755).u32(0).bytes(&name(b"d"));
    let d = u64_at(&h.ok(opcode::MKDIR, ROOT_ID, &w.0), 0);
    assert!(s.share().join("d").is_dir());
    let mut w = Writer::default();
    w.u32(O_RDWR)
        .u32(S_IFREG | 0o644)
        .u32(0o022)
        .u32(0)
        .bytes(&name(b"f"));
    let out = h.ok(opcode::CREATE, d, &w.0);
    let (node, fh) = (u64_at(&out, 0), u64_at(&out, abi::ENTRY_OUT_LEN));
    assert_eq!(u32_at(&out, 40 + 60), S_IFREG | 0o644, "mode");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut body = io_body(fh, 0, data.len() as u32);
    body.extend_from_slice(&data);
    assert_eq!(u32_at(&h.ok(opcode::WRITE, node, &body), 0), 300_000);
    assert_eq!(
        h.ok(opcode::READ, node, &io_body(fh, 1000, 50_000)),
        data[1000..51_000]
    );
    let mut rel = Writer::default();
    rel.u64(fh).u32(0).u32(0).u64(0);
    h.ok(opcode::RELEASE, node, &rel.0);
    let host = std::fs::read(s.share().join("d").join("f")).expect("host");
    assert!(host == data, "host sees the guest's data");
    // READDIRPLUS gives nodes for names, none for the dots.
    let dh = u64_at(&h.ok(opcode::OPENDIR, d, &[0u8; 8]), 0);
    let out = h.ok(opcode::READDIRPLUS, d, &io_body(dh, 0, 4096));
    let mut at = 0;
    let mut seen = Vec::new();
    while at < out.len() {
        let n = u64_at(&out, at);
        at += abi::ENTRY_OUT_LEN;
        let len = u32_at(&out, at + 16) as usize;
        seen.push((n, out[at + 24..at + 24 + len].to_vec()));
        at += abi::dirent_size(len);
    }
    assert_eq!(
        seen,
        [
            (0, b".".to_vec()),
            (0, b"..".to_vec()),
            (node, b"f".to_vec())
        ]
    );
    // RENAME over an existing file; bad names on the wire are refused.
    std::fs::write(s.share().join("g"), b"old").expect("g");
    let mut body = ROOT_ID.to_le_bytes().to_vec();
    body.extend_from_slice(&name(b"f"));
    body.extend_from_slice(&name(b"g"));
    h.ok(opcode::RENAME, d, &body);
    assert!(std::fs::read(s.share().join("g")).expect("g") == data);
    for bad in [&b"..\\x"[..], b"g:ads", b"CON", b"aux.c"] {
        assert_eq!(
            h.call(opcode::LOOKUP, ROOT_ID, &name(bad)).0,
            -errno::EINVAL.0
        );
    }
    h.ok(opcode::UNLINK, ROOT_ID, &name(b"g"));
    h.ok(opcode::RMDIR, ROOT_ID, &name(b"d"));
    let st = h.ok(opcode::STATFS, ROOT_ID, &[]);
    assert_eq!(st.len(), 80);
    assert_eq!(
        h.call(
            opcode::GETXATTR,
            ROOT_ID,
            &[&[0u8; 8][..], &name(b"user.a")].concat()
        )
        .0,
        -errno::ENODATA.0
    );
    // A read-only share answers EROFS on the wire.
    let mut ro = Session::new(&s, true);
    let mut w = Writer::default();
    w.u32(0o755).u32(0).bytes(&name(b"x"));
    assert_eq!(ro.call(opcode::MKDIR, ROOT_ID, &w.0).0, -errno::EROFS.0);
    assert!(!s.share().join("x").exists());
}
