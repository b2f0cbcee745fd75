//! Drives the device as Linux's virtio_mmio + virtiofs would, over plain
//! guest memory: well-formed FUSE sessions against a temporary directory
//! and hostile requests.

use vm_memory::{Bytes, GuestAddress};

use super::abi::{InHeader, Writer, opcode};
use super::filesystem::errno;
use super::passthrough::{Config, Passthrough};
use super::*;
use crate::virtio::mmio::{reg, status};
use crate::virtio::testing::{Driver, F_WRITE, Ring, driver_for};

const IN: u64 = 0x10_0000;
const OUT: u64 = 0x40_0000;
const OUT_LEN: u32 = 0x2_0000;
const ROOT: u64 = 1;

struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "krypton-virtiofs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    d: Driver,
    mem: GuestMem,
    hiprio: Ring,
    req: Ring,
    unique: u64,
    dir: Scratch,
}

/// A reply: (used length, error, body).
type Answer = (u32, i32, Vec<u8>);

fn harness(cfg: Config) -> Harness {
    let dir = Scratch::new();
    let fs = Passthrough::new(&dir.0, cfg).expect("share");
    let dev = VirtioFs::new("myfs", Box::new(fs)).expect("device");
    let (mut d, mem, _irq) = driver_for(Box::new(dev));
    let hiprio = Ring::new(&mem, 0x1_0000, 64);
    let req = Ring::new(&mem, 0x2_0000, 64);
    d.negotiate(u64::MAX);
    d.setup_queue(0, &hiprio);
    d.setup_queue(1, &req);
    d.driver_ok();
    assert!(d.t.is_activated());
    Harness {
        d,
        mem,
        hiprio,
        req,
        unique: 100,
        dir,
    }
}

fn init_body() -> Vec<u8> {
    // A 7.36 client's fuse_init_in: 64 bytes (flags2 and unused words).
    let mut w = Writer::default();
    w.u32(7)
        .u32(36)
        .u32(0x2_0000)
        .u32(u32::MAX)
        .bytes(&[0u8; 48]);
    w.0
}

impl Harness {
    fn ready(cfg: Config) -> Harness {
        let mut h = harness(cfg);
        let (_, err, _) = h.call(opcode::INIT, 0, &init_body());
        assert_eq!(err, 0, "INIT");
        h
    }

    /// Sends raw request bytes on `queue` with `out_len` writable bytes.
    fn raw(&mut self, queue: u32, input: &[u8], out_len: u32) -> u32 {
        self.mem
            .write_slice(input, GuestAddress(IN))
            .expect("request");
        self.mem
            .write_slice(&vec![0xee; out_len as usize], GuestAddress(OUT))
            .expect("clear reply");
        let mut descs = vec![(IN, input.len() as u32, 0)];
        if out_len > 0 {
            descs.push((OUT, out_len, F_WRITE));
        }
        let ring = if queue == 0 {
            &mut self.hiprio
        } else {
            &mut self.req
        };
        let head = ring.add_chain(&self.mem, &descs);
        self.d.notify(queue);
        let (id, len) = ring.wait_used(&self.mem).expect("request completed");
        assert_eq!(id, u32::from(head));
        len
    }

    fn request(&mut self, op: u32, node: u64, body: &[u8]) -> Vec<u8> {
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
        [h.to_bytes().as_slice(), body].concat()
    }

    fn reply(&self, used: u32) -> Answer {
        let mut out = vec![0u8; used as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(OUT))
            .expect("reply");
        if used == 0 {
            return (0, 0, Vec::new());
        }
        let (len, err, unique) = abi::parse_out_header(&out).expect("out header");
        assert_eq!(len, used, "header length = used length");
        assert_eq!(unique, self.unique, "reply to this request");
        (used, err, out[abi::OUT_HEADER_LEN..].to_vec())
    }

    fn call(&mut self, op: u32, node: u64, body: &[u8]) -> Answer {
        let input = self.request(op, node, body);
        let used = self.raw(1, &input, OUT_LEN);
        self.reply(used)
    }

    /// Calls and expects success; returns the body.
    fn ok(&mut self, op: u32, node: u64, body: &[u8]) -> Vec<u8> {
        let (_, err, out) = self.call(op, node, body);
        assert_eq!(err, 0, "opcode {op} failed");
        out
    }

    fn err(&mut self, op: u32, node: u64, body: &[u8]) -> i32 {
        self.call(op, node, body).1
    }
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

fn name(n: &str) -> Vec<u8> {
    [n.as_bytes(), b"\0"].concat()
}

fn create_body(n: &str, flags: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(flags).u32(0o100644).u32(0o022).u32(0).bytes(&name(n));
    w.0
}

fn io_body(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(fh).u64(offset).u32(size).u32(0).u64(0).u32(0).u32(0);
    w.0
}

fn fh_body(fh: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(fh).u32(0).u32(0).u64(0);
    w.0
}

const NEG: fn(filesystem::Errno) -> i32 = |e| -e.0;

mod hostile;
mod session;

#[test]
fn config_space_and_tag_validation() {
    let mut h = harness(Config::default());
    assert_eq!(h.d.read(reg::DEVICE_ID), FS_DEVICE_ID);
    let mut tag = b"myfs".to_vec();
    tag.resize(TAG_LEN, 0);
    assert_eq!(h.d.config_bytes(0, TAG_LEN), tag);
    assert_eq!(h.d.config_bytes(36, 4), 1u32.to_le_bytes());
    assert_eq!(h.d.config_bytes(40, 4), vec![0; 4], "beyond config reads 0");
    let dir = Scratch::new();
    for bad in ["", "a\0b", &"x".repeat(37)] {
        let fs = Passthrough::new(&dir.0, Config::default()).expect("share");
        assert!(VirtioFs::new(bad, Box::new(fs)).is_err(), "tag {bad:?}");
    }
    let fs = Passthrough::new(&dir.0, Config::default()).expect("share");
    assert!(VirtioFs::new(&"x".repeat(36), Box::new(fs)).is_ok());
}

#[test]
fn init_handshake_and_reset() {
    let mut h = harness(Config::default());
    // Nothing but INIT before INIT.
    assert_eq!(h.err(opcode::GETATTR, ROOT, &[0u8; 16]), NEG(errno::EIO));
    let (used, err, out) = h.call(opcode::INIT, 0, &init_body());
    assert_eq!(
        (used as usize, err),
        (abi::OUT_HEADER_LEN + abi::INIT_OUT_LEN, 0)
    );
    assert_eq!((u32_at(&out, 0), u32_at(&out, 4)), (7, 31));
    assert_eq!(u32_at(&out, 20), server::MAX_IO, "max_write");
    let flags = u32_at(&out, 12);
    assert_ne!(flags & abi::init_flags::DO_READDIRPLUS, 0);
    assert_eq!(flags & !0x00ff_ffff, 0, "only flags we implement");
    // A FUSE 6.x or 7.26 client is refused.
    let mut old = init_body();
    old[4..8].copy_from_slice(&26u32.to_le_bytes());
    assert_eq!(h.err(opcode::INIT, 0, &old), NEG(errno::EPROTO));
    // The session still works, then a device reset forgets it.
    let out = h.ok(opcode::INIT, 0, &init_body());
    assert_eq!(u32_at(&out, 4), 31);
    assert_eq!(h.err(opcode::GETATTR, ROOT, &[0u8; 16]), 0);
    h.d.write(reg::STATUS, 0);
    assert!(!h.d.t.is_activated());
    assert_eq!(h.d.read(reg::STATUS), 0);
    h.hiprio = Ring::new(&h.mem, 0x3_0000, 64);
    h.req = Ring::new(&h.mem, 0x4_0000, 64);
    h.d.negotiate(u64::MAX);
    h.d.setup_queue(0, &h.hiprio);
    h.d.setup_queue(1, &h.req);
    h.d.driver_ok();
    assert_ne!(h.d.read(reg::STATUS) & status::DRIVER_OK, 0);
    assert_eq!(
        h.err(opcode::GETATTR, ROOT, &[0u8; 16]),
        NEG(errno::EIO),
        "a reset ends the session"
    );
    h.ok(opcode::INIT, 0, &init_body());
}
