//! Hostile guests: truncated headers, wrong lengths, unknown opcodes,
//! malformed chains, FORGETs of unknown nodes, exhausted tables. The
//! device must answer what it can, drop what it cannot, and keep working.

use super::*;

/// The session still answers a plain GETATTR of the root.
fn still_healthy(h: &mut Harness) {
    let out = h.ok(opcode::GETATTR, ROOT, &[0u8; 16]);
    assert_eq!(out.len(), abi::ATTR_OUT_LEN);
    let mode = u32_at(&out, 16 + 60);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFDIR, "root is a directory");
}

#[test]
fn truncated_headers_and_wrong_lengths() {
    let mut h = Harness::ready(Config::default());
    // Shorter than a header: nothing to answer.
    assert_eq!(h.raw(1, &[0u8; 20], OUT_LEN), 0);
    assert_eq!(h.raw(1, &[], OUT_LEN), 0);
    still_healthy(&mut h);
    // The header's length disagrees with the chain: EIO to that request.
    let mut req = h.request(opcode::GETATTR, ROOT, &[0u8; 16]);
    req[0..4].copy_from_slice(&1000u32.to_le_bytes());
    let used = h.raw(1, &req, OUT_LEN);
    assert_eq!(h.reply(used).1, NEG(errno::EIO));
    req[0..4].copy_from_slice(&40u32.to_le_bytes());
    let used = h.raw(1, &req, OUT_LEN);
    assert_eq!(h.reply(used).1, NEG(errno::EIO));
    // Bodies shorter than the opcode's arguments.
    for (op, len) in [
        (opcode::GETATTR, 15),
        (opcode::SETATTR, 87),
        (opcode::READ, 39),
        (opcode::WRITE, 39),
        (opcode::INIT, 15),
        (opcode::MKNOD, 16),
        (opcode::RENAME2, 15),
        (opcode::FALLOCATE, 31),
    ] {
        assert_eq!(h.err(op, ROOT, &vec![0u8; len]), NEG(errno::EIO), "op {op}");
    }
    // WRITE whose size field disagrees with its payload.
    let mut body = io_body(1, 0, 10);
    body.extend_from_slice(b"short");
    assert_eq!(h.err(opcode::WRITE, ROOT, &body), NEG(errno::EIO));
    let mut body = io_body(1, 0, u32::MAX);
    body.extend_from_slice(b"short");
    assert_eq!(h.err(opcode::WRITE, ROOT, &body), NEG(errno::EIO));
    // SETXATTR whose size disagrees with the value.
    let mut w = Writer::default();
    w.u32(100).u32(0).bytes(b"user.a\0").bytes(b"v");
    assert_eq!(h.err(opcode::SETXATTR, ROOT, &w.0), NEG(errno::EIO));
    // Names: unterminated, empty, with '/'.
    assert_eq!(h.err(opcode::LOOKUP, ROOT, b"abc"), NEG(errno::EIO));
    assert_eq!(h.err(opcode::LOOKUP, ROOT, b"\0"), NEG(errno::EINVAL));
    assert_eq!(h.err(opcode::LOOKUP, ROOT, b"../etc\0"), NEG(errno::EINVAL));
    assert_eq!(h.err(opcode::MKDIR, ROOT, &[0u8; 8]), NEG(errno::EIO));
    still_healthy(&mut h);
}

#[test]
fn unknown_opcodes_get_enosys() {
    let mut h = Harness::ready(Config::default());
    // 0, INTERRUPT, GETLK, ACCESS, IOCTL, POLL, COPY_FILE_RANGE,
    // SETUPMAPPING and numbers nobody defined.
    for op in [0, 31, 34, 36, 39, 40, 47, 48, 49, 1000, u32::MAX] {
        assert_eq!(h.err(op, ROOT, &[0u8; 64]), NEG(errno::ENOSYS), "op {op}");
    }
    still_healthy(&mut h);
}

#[test]
fn forgets_of_unknown_nodes_are_ignored() {
    let mut h = Harness::ready(Config::default());
    std::fs::write(h.dir.0.join("f"), b"x").expect("file");
    let e = h.ok(opcode::LOOKUP, ROOT, &name("f"));
    let node = u64_at(&e, 0);
    // FORGET on the hiprio queue, as virtiofs sends it: no reply.
    assert!(node < 1000, "small node ids");
    for bogus in [0, 12345, u64::MAX, ROOT] {
        let req = h.request(opcode::FORGET, bogus, &1u64.to_le_bytes());
        assert_eq!(h.raw(0, &req, 0), 0);
    }
    // BATCH_FORGET of unknown nodes, the root and huge counts.
    let mut w = Writer::default();
    w.u32(3)
        .u32(0)
        .u64(999)
        .u64(1)
        .u64(ROOT)
        .u64(u64::MAX)
        .u64(0)
        .u64(7);
    let req = h.request(opcode::BATCH_FORGET, 0, &w.0);
    assert_eq!(h.raw(0, &req, 0), 0);
    // A count that disagrees with the entries is dropped.
    let mut w = Writer::default();
    w.u32(u32::MAX).u32(0).u64(node).u64(1);
    let req = h.request(opcode::BATCH_FORGET, 0, &w.0);
    assert_eq!(h.raw(0, &req, 0), 0);
    // A FORGET with a reply buffer on the request queue: still no reply.
    let req = h.request(opcode::FORGET, 4242, &1u64.to_le_bytes());
    assert_eq!(h.raw(1, &req, OUT_LEN), 0);
    // The node looked up before is still there; a real FORGET drops it.
    h.ok(opcode::GETATTR, node, &[0u8; 16]);
    let req = h.request(opcode::FORGET, node, &1u64.to_le_bytes());
    assert_eq!(h.raw(0, &req, 0), 0);
    assert_eq!(h.err(opcode::GETATTR, node, &[0u8; 16]), NEG(errno::ENOENT));
    still_healthy(&mut h);
}

#[test]
fn malformed_chains_are_dropped() {
    let mut h = Harness::ready(Config::default());
    let req = h.request(opcode::GETATTR, ROOT, &[0u8; 16]);
    h.mem.write_slice(&req, GuestAddress(IN)).expect("req");
    // Readable after writable; outside guest memory; oversized request.
    for descs in [
        vec![(OUT, OUT_LEN, F_WRITE), (IN, req.len() as u32, 0)],
        vec![(IN, req.len() as u32, 0), (15 << 20, 0x20_0000, F_WRITE)],
        vec![(0xffff_f000, 56, 0), (OUT, OUT_LEN, F_WRITE)],
        vec![(IN, 0x20_0000, 0), (OUT, OUT_LEN, F_WRITE)],
    ] {
        h.req.add_chain(&h.mem, &descs);
        h.d.notify(1);
        assert_eq!(h.req.wait_used(&h.mem).map(|u| u.1), Some(0), "{descs:x?}");
    }
    // No room for a reply header: nothing written.
    assert_eq!(h.raw(1, &req, 8), 0);
    // Room for the header but not the body: ERANGE alone.
    let used = h.raw(1, &req, 16);
    assert_eq!(used, 16);
    assert_eq!(h.reply(used).1, NEG(errno::ERANGE));
    // A READ asking for more than the buffer holds is cut to the buffer.
    std::fs::write(h.dir.0.join("big"), vec![7u8; 8192]).expect("file");
    let e = h.ok(opcode::LOOKUP, ROOT, &name("big"));
    let node = u64_at(&e, 0);
    let o = h.ok(opcode::OPEN, node, &[0u8; 8]);
    let req = h.request(opcode::READ, node, &io_body(u64_at(&o, 0), 0, u32::MAX));
    let used = h.raw(1, &req, 16 + 100);
    let (_, err, data) = h.reply(used);
    assert_eq!((err, data), (0, vec![7u8; 100]));
    still_healthy(&mut h);
}

#[test]
fn bogus_nodes_and_handles() {
    let mut h = Harness::ready(Config::default());
    assert_eq!(h.err(opcode::GETATTR, 777, &[0u8; 16]), NEG(errno::ENOENT));
    assert_eq!(h.err(opcode::LOOKUP, 777, &name("x")), NEG(errno::ENOENT));
    assert_eq!(
        h.err(opcode::READ, ROOT, &io_body(9999, 0, 10)),
        NEG(errno::EBADF)
    );
    assert_eq!(
        h.err(opcode::RELEASE, ROOT, &fh_body(9999)),
        NEG(errno::EBADF)
    );
    let mut link = 777u64.to_le_bytes().to_vec();
    link.extend_from_slice(&name("l"));
    assert_eq!(h.err(opcode::LINK, ROOT, &link), NEG(errno::ENOENT));
    assert!(!h.dir.0.join("l").exists());
    still_healthy(&mut h);
}

#[test]
fn handles_and_nodes_exhausted() {
    let mut h = Harness::ready(Config {
        max_handles: 2,
        max_inodes: 3,
        ..Config::default()
    });
    for n in ["a", "b", "c"] {
        std::fs::write(h.dir.0.join(n), n).expect("file");
    }
    let a = u64_at(&h.ok(opcode::LOOKUP, ROOT, &name("a")), 0);
    let b = u64_at(&h.ok(opcode::LOOKUP, ROOT, &name("b")), 0);
    assert_eq!(h.err(opcode::LOOKUP, ROOT, &name("c")), NEG(errno::ENFILE));
    let fa = u64_at(&h.ok(opcode::OPEN, a, &[0u8; 8]), 0);
    h.ok(opcode::OPEN, b, &[0u8; 8]);
    assert_eq!(h.err(opcode::OPEN, a, &[0u8; 8]), NEG(errno::EMFILE));
    assert_eq!(h.err(opcode::OPENDIR, ROOT, &[0u8; 8]), NEG(errno::EMFILE));
    assert_eq!(
        h.err(opcode::CREATE, ROOT, &create_body("d", 2)),
        NEG(errno::EMFILE)
    );
    assert!(!h.dir.0.join("d").exists(), "nothing created when full");
    h.ok(opcode::RELEASE, a, &fh_body(fa));
    h.ok(opcode::OPENDIR, ROOT, &[0u8; 8]);
    still_healthy(&mut h);
}
