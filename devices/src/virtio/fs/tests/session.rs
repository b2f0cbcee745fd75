//! Well-formed FUSE sessions, as Linux's virtiofs sends them, against a
//! temporary directory: the host must see what the guest did.

use super::*;

/// (nodeid, name) of each entry of a READDIR(PLUS) reply.
fn dirents(out: &[u8], plus: bool) -> Vec<(u64, u64, Vec<u8>)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let node = if plus { u64_at(out, at) } else { 0 };
        if plus {
            at += abi::ENTRY_OUT_LEN;
        }
        let off = u64_at(out, at + 8);
        let len = u32_at(out, at + 16) as usize;
        let name = out[at + 24..at + 24 + len].to_vec();
        at += abi::dirent_size(len);
        v.push((node, off, name));
    }
    v
}

#[test]
fn create_write_read_rename_unlink() {
    let mut h = Harness::ready(Config::default());
    let out = h.ok(opcode::CREATE, ROOT, &create_body("f", libc::O_RDWR as u32));
    assert_eq!(out.len(), abi::ENTRY_OUT_LEN + 16);
    let node = u64_at(&out, 0);
    let fh = u64_at(&out, abi::ENTRY_OUT_LEN);
    let mode = u32_at(&out, 40 + 60);
    assert_eq!(mode, libc::S_IFREG | 0o644);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut body = io_body(fh, 0, data.len() as u32);
    body.extend_from_slice(&data);
    let out = h.ok(opcode::WRITE, node, &body);
    assert_eq!(u32_at(&out, 0), data.len() as u32);
    assert_eq!(std::fs::read(h.dir.0.join("f")).expect("host"), data);
    let out = h.ok(opcode::READ, node, &io_body(fh, 1000, 50_000));
    assert_eq!(out, data[1000..51_000]);
    let out = h.ok(opcode::READ, node, &io_body(fh, 199_990, 4096));
    assert_eq!(out, data[199_990..], "short read at EOF");
    let out = h.ok(opcode::GETATTR, node, &[0u8; 16]);
    assert_eq!(u64_at(&out, 16 + 8), data.len() as u64, "size");
    h.ok(opcode::FLUSH, node, &fh_body(fh));
    let mut fsync = fh.to_le_bytes().to_vec();
    fsync.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    h.ok(opcode::FSYNC, node, &fsync);
    // SETATTR: truncate through the handle, chmod.
    let mut w = Writer::default();
    let valid = abi::setattr_valid::SIZE | abi::setattr_valid::FH | abi::setattr_valid::MODE;
    w.u32(valid).u32(0).u64(fh).u64(10).bytes(&[0u8; 44]);
    w.u32(0o600).u32(0).u32(0).u32(0).u32(0);
    let out = h.ok(opcode::SETATTR, node, &w.0);
    assert_eq!(u64_at(&out, 16 + 8), 10);
    assert_eq!(u32_at(&out, 16 + 60), libc::S_IFREG | 0o600);
    assert_eq!(std::fs::read(h.dir.0.join("f")).expect("host"), data[..10]);
    h.ok(opcode::RELEASE, node, &fh_body(fh));
    // RENAME over an existing file, then UNLINK.
    std::fs::write(h.dir.0.join("g"), b"old").expect("g");
    let mut body = ROOT.to_le_bytes().to_vec();
    body.extend_from_slice(&name("f"));
    body.extend_from_slice(&name("g"));
    h.ok(opcode::RENAME, ROOT, &body);
    assert_eq!(std::fs::read(h.dir.0.join("g")).expect("g"), data[..10]);
    assert!(!h.dir.0.join("f").exists());
    h.ok(opcode::UNLINK, ROOT, &name("g"));
    assert!(!h.dir.0.join("g").exists());
    assert_eq!(h.err(opcode::LOOKUP, ROOT, &name("g")), NEG(errno::ENOENT));
    let out = h.ok(opcode::STATFS, ROOT, &[]);
    assert_eq!(out.len(), 80);
    assert!(u64_at(&out, 0) > 0, "blocks");
}

#[test]
fn directories_symlinks_and_readdirplus() {
    let mut h = Harness::ready(Config::default());
    let mut w = Writer::default();
    w.u32(0o755).u32(0).bytes(&name("d"));
    let d = u64_at(&h.ok(opcode::MKDIR, ROOT, &w.0), 0);
    assert!(h.dir.0.join("d").is_dir());
    let mut body = name("l");
    body.extend_from_slice(&name("/etc/passwd"));
    let l = u64_at(&h.ok(opcode::SYMLINK, d, &body), 0);
    assert_eq!(h.ok(opcode::READLINK, l, &[]), b"/etc/passwd");
    // The link is not followed out of the share.
    assert_ne!(h.err(opcode::LOOKUP, l, &name("passwd")), 0);
    assert_eq!(h.err(opcode::OPEN, l, &[0u8; 8]), NEG(errno::EACCES));
    for i in 0..40 {
        std::fs::write(h.dir.0.join(format!("file-{i:02}")), b"x").expect("file");
    }
    // READDIR in small pieces resumes at the offsets and sees everything.
    let dh = u64_at(&h.ok(opcode::OPENDIR, ROOT, &[0u8; 8]), 0);
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let out = h.ok(opcode::READDIR, ROOT, &io_body(dh, off, 200));
        assert!(out.len() <= 200);
        let ents = dirents(&out, false);
        let Some(last) = ents.last() else { break };
        off = last.1;
        names.extend(ents.into_iter().map(|e| e.2));
    }
    names.sort();
    assert_eq!(names.len(), 43, "., .., d and 40 files");
    assert_eq!(names[2], b"d");
    // READDIRPLUS: real nodes for names, none for "." and "..".
    let out = h.ok(opcode::READDIRPLUS, ROOT, &io_body(dh, 0, 64 * 1024));
    let ents = dirents(&out, true);
    assert_eq!(ents.len(), 43);
    for (node, _, n) in &ents {
        if n == b"." || n == b".." {
            assert_eq!(*node, 0);
        } else if n == b"d" {
            assert_eq!(*node, d, "same node as MKDIR gave");
        } else {
            assert!(*node > ROOT);
        }
    }
    h.ok(opcode::RELEASEDIR, ROOT, &fh_body(dh));
    // LINK and hardlink counts; RMDIR of a non-empty and an empty dir.
    let f0 = u64_at(&h.ok(opcode::LOOKUP, ROOT, &name("file-00")), 0);
    let mut body = f0.to_le_bytes().to_vec();
    body.extend_from_slice(&name("hard"));
    let out = h.ok(opcode::LINK, d, &body);
    assert_eq!(
        (u64_at(&out, 0), u32_at(&out, 40 + 64)),
        (f0, 2),
        "node, nlink"
    );
    assert_ne!(h.err(opcode::RMDIR, ROOT, &name("d")), 0);
    h.ok(opcode::UNLINK, d, &name("hard"));
    h.ok(opcode::UNLINK, d, &name("l"));
    h.ok(opcode::RMDIR, ROOT, &name("d"));
    assert!(!h.dir.0.join("d").exists());
}

#[test]
fn xattrs_round_trip() {
    let mut h = Harness::ready(Config::default());
    std::fs::write(h.dir.0.join("f"), b"x").expect("file");
    let f = u64_at(&h.ok(opcode::LOOKUP, ROOT, &name("f")), 0);
    let mut w = Writer::default();
    w.u32(5).u32(0).bytes(b"user.k\0").bytes(b"value");
    h.ok(opcode::SETXATTR, f, &w.0);
    let mut get = Writer::default();
    get.u32(0).u32(0).bytes(b"user.k\0");
    assert_eq!(u32_at(&h.ok(opcode::GETXATTR, f, &get.0), 0), 5, "size");
    let mut get = Writer::default();
    get.u32(100).u32(0).bytes(b"user.k\0");
    assert_eq!(h.ok(opcode::GETXATTR, f, &get.0), b"value");
    let list = h.ok(opcode::LISTXATTR, f, &[0, 1, 0, 0, 0, 0, 0, 0]);
    assert!(list.split(|&b| b == 0).any(|n| n == b"user.k"), "{list:?}");
    h.ok(opcode::REMOVEXATTR, f, b"user.k\0");
    assert_eq!(h.err(opcode::GETXATTR, f, &get.0), NEG(errno::ENODATA));
}

#[test]
fn read_only_share_over_the_wire() {
    let mut h = Harness::ready(Config {
        read_only: true,
        ..Config::default()
    });
    std::fs::write(h.dir.0.join("f"), b"data").expect("file");
    let f = u64_at(&h.ok(opcode::LOOKUP, ROOT, &name("f")), 0);
    let fh = u64_at(&h.ok(opcode::OPEN, f, &[0u8; 8]), 0);
    assert_eq!(h.ok(opcode::READ, f, &io_body(fh, 0, 100)), b"data");
    let mut write = io_body(fh, 0, 1);
    write.push(b'x');
    let rofs = NEG(errno::EROFS);
    assert_eq!(h.err(opcode::WRITE, f, &write), rofs);
    assert_eq!(h.err(opcode::OPEN, f, &[1, 0, 0, 0, 0, 0, 0, 0]), rofs);
    assert_eq!(h.err(opcode::CREATE, ROOT, &create_body("n", 1)), rofs);
    let mut w = Writer::default();
    w.u32(0o755).u32(0).bytes(&name("n"));
    assert_eq!(h.err(opcode::MKDIR, ROOT, &w.0), rofs);
    assert_eq!(h.err(opcode::UNLINK, ROOT, &name("f")), rofs);
    let mut w = Writer::default();
    w.u32(abi::setattr_valid::SIZE).bytes(&[0u8; 84]);
    assert_eq!(h.err(opcode::SETATTR, f, &w.0), rofs);
    let mut w = Writer::default();
    w.u32(1).u32(0).bytes(b"user.k\0").bytes(b"v");
    assert_eq!(h.err(opcode::SETXATTR, f, &w.0), rofs);
    assert_eq!(std::fs::read(h.dir.0.join("f")).expect("host"), b"data");
    assert_eq!(std::fs::read_dir(&h.dir.0).expect("ls").count(), 1);
}

#[test]
fn dot_dot_at_the_root_goes_nowhere() {
    let mut h = Harness::ready(Config::default());
    for n in ["..", "."] {
        let err = h.err(opcode::LOOKUP, ROOT, &name(n));
        assert!(err < 0, "lookup {n} answered {err}");
    }
    let mut body = name("esc");
    body.extend_from_slice(&name("/"));
    let l = u64_at(&h.ok(opcode::SYMLINK, ROOT, &body), 0);
    assert_eq!(h.ok(opcode::READLINK, l, &[]), b"/");
    assert_ne!(h.err(opcode::LOOKUP, l, &name("etc")), 0);
    assert_ne!(h.err(opcode::OPENDIR, l, &[0u8; 8]), 0);
}

#[test]
fn readdirplus_lists_every_name_when_the_node_table_is_full() {
    let mut h = Harness::ready(Config {
        max_inodes: 3,
        ..Config::default()
    });
    for i in 0..5 {
        std::fs::write(h.dir.0.join(format!("f{i}")), b"x").expect("file");
    }
    let dh = u64_at(&h.ok(opcode::OPENDIR, ROOT, &[0u8; 8]), 0);
    let out = h.ok(opcode::READDIRPLUS, ROOT, &io_body(dh, 0, 64 * 1024));
    let ents = dirents(&out, true);
    assert_eq!(ents.len(), 7, "., .. and 5 files");
    let with_node = ents.iter().filter(|e| e.0 != 0).count();
    assert_eq!(with_node, 2, "only as many nodes as the table holds");
}

#[test]
fn requests_and_replies_split_over_descriptors_and_indirect_tables() {
    use crate::virtio::testing::{F_INDIRECT, F_NEXT};
    let mut h = Harness::ready(Config::default());
    let out = h.ok(
        opcode::CREATE,
        ROOT,
        &create_body("sg", libc::O_RDWR as u32),
    );
    let (node, fh) = (u64_at(&out, 0), u64_at(&out, abi::ENTRY_OUT_LEN));
    // WRITE as Linux sends it: header + fuse_write_in, then one descriptor
    // per page; the reply header and fuse_write_out in two descriptors.
    let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8).collect();
    let mut body = io_body(fh, 0, data.len() as u32);
    body.extend_from_slice(&data);
    let req = h.request(opcode::WRITE, node, &body);
    let hdr_len = (req.len() - data.len()) as u32;
    h.mem
        .write_slice(&req[..hdr_len as usize], GuestAddress(IN))
        .expect("hdr");
    let pages = [0x60_0000u64, 0x50_0000, 0x70_0000, 0x58_0000];
    for (i, chunk) in data.chunks(4096).enumerate() {
        h.mem
            .write_slice(chunk, GuestAddress(pages[i]))
            .expect("page");
    }
    let mut descs = vec![(IN, hdr_len, 0)];
    for (i, chunk) in data.chunks(4096).enumerate() {
        descs.push((pages[i], chunk.len() as u32, 0));
    }
    descs.push((OUT, 16, F_WRITE));
    descs.push((OUT + 0x1000, 8, F_WRITE));
    h.req.add_chain(&h.mem, &descs);
    h.d.notify(1);
    assert_eq!(h.req.wait_used(&h.mem).map(|u| u.1), Some(24));
    assert_eq!(std::fs::read(h.dir.0.join("sg")).expect("host"), data);
    let mut size = [0u8; 4];
    h.mem
        .read_slice(&mut size, GuestAddress(OUT + 0x1000))
        .expect("write_out");
    assert_eq!(u32::from_le_bytes(size), data.len() as u32);
    // READ through an indirect table, the data landing in two buffers.
    let req = h.request(opcode::READ, node, &io_body(fh, 0, data.len() as u32));
    h.mem.write_slice(&req, GuestAddress(IN)).expect("req");
    let table = 0x3f_0000u64;
    let entries: [(u64, u32, u16); 4] = [
        (IN, req.len() as u32, F_NEXT),
        (OUT, 16, F_WRITE | F_NEXT),
        (0x60_0000, 5000, F_WRITE | F_NEXT),
        (0x70_0000, 0x2000, F_WRITE),
    ];
    for (i, &(addr, len, flags)) in entries.iter().enumerate() {
        let a = table + 16 * i as u64;
        h.mem.write_obj(addr, GuestAddress(a)).expect("addr");
        h.mem.write_obj(len, GuestAddress(a + 8)).expect("len");
        h.mem.write_obj(flags, GuestAddress(a + 12)).expect("flags");
        h.mem
            .write_obj(i as u16 + 1, GuestAddress(a + 14))
            .expect("next");
    }
    h.req.add_chain(&h.mem, &[(table, 64, F_INDIRECT)]);
    h.d.notify(1);
    let used = h.req.wait_used(&h.mem).map(|u| u.1);
    assert_eq!(used, Some(16 + data.len() as u32));
    let mut got = vec![0u8; data.len()];
    h.mem
        .read_slice(&mut got[..5000], GuestAddress(0x60_0000))
        .expect("a");
    h.mem
        .read_slice(&mut got[5000..], GuestAddress(0x70_0000))
        .expect("b");
    assert_eq!(got, data);
}
