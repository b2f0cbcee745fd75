//! Decoder unit tests.

use super::*;

fn req(opcode: u32, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (abi::IN_HEADER_LEN + body.len()) as u32,
        opcode,
        unique: 7,
        nodeid: 1,
        ..InHeader::default()
    };
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn lookup_and_names() {
    let b = req(opcode::LOOKUP, b"abc\0");
    let (h, r) = decode(&b).expect("decodes");
    assert_eq!((h.unique, h.nodeid), (7, 1));
    assert_eq!(r, Request::Lookup { name: b"abc" });
    for bad in [&b"\0"[..], b"a/b\0", b"abc"] {
        assert!(decode(&req(opcode::LOOKUP, bad)).is_err(), "{bad:?}");
    }
    let long = [vec![b'x'; NAME_MAX + 1], vec![0]].concat();
    assert_eq!(
        decode(&req(opcode::LOOKUP, &long)),
        Err(DecodeError::BadName(opcode::LOOKUP))
    );
}

#[test]
fn lengths_are_checked() {
    assert_eq!(decode(&[0u8; 39]), Err(DecodeError::NoHeader(39)));
    let mut b = req(opcode::GETATTR, &[0u8; 16]);
    b.push(0);
    assert!(matches!(decode(&b), Err(DecodeError::Length { .. })));
    let b = req(opcode::GETATTR, &[0u8; 15]);
    assert!(matches!(decode(&b), Err(DecodeError::Body { .. })));
    // WRITE's size must equal the payload.
    let mut body = vec![0u8; 40];
    body[16..20].copy_from_slice(&5u32.to_le_bytes());
    body.extend_from_slice(b"hello");
    let b = req(opcode::WRITE, &body);
    let (_, r) = decode(&b).expect("write");
    assert!(matches!(r, Request::Write { data: b"hello", .. }));
    body.push(b'!');
    assert_eq!(
        decode(&req(opcode::WRITE, &body)),
        Err(DecodeError::BadSize(opcode::WRITE))
    );
    // BATCH_FORGET's count must match the entries.
    let mut body = 2u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[0u8; 16]);
    assert_eq!(
        decode(&req(opcode::BATCH_FORGET, &body)),
        Err(DecodeError::BadSize(opcode::BATCH_FORGET))
    );
    body.truncate(0);
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&[0u8; 4]);
    assert!(decode(&req(opcode::BATCH_FORGET, &body)).is_err());
}

#[test]
fn unknown_opcodes_decode_as_unsupported() {
    let b = req(999, b"whatever");
    let (_, r) = decode(&b).expect("decodes");
    assert_eq!(r, Request::Unsupported(999));
    let b = req(36, &[0u8; 8]);
    let (_, r) = decode(&b).expect("INTERRUPT");
    assert_eq!(r, Request::Unsupported(36));
}

#[test]
fn rename2_and_setattr() {
    let mut body = 5u64.to_le_bytes().to_vec();
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&[0u8; 4]);
    body.extend_from_slice(b"a\0b\0");
    let b = req(opcode::RENAME2, &body);
    let (_, r) = decode(&b).expect("rename2");
    assert_eq!(
        r,
        Request::Rename {
            new_dir: 5,
            flags: 1,
            name: b"a",
            new_name: b"b"
        }
    );
    let mut w = abi::Writer::default();
    w.u32(setattr_valid::MODE | setattr_valid::MTIME_NOW)
        .u32(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(0o640)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(0);
    let b = req(opcode::SETATTR, &w.0);
    let (_, r) = decode(&b).expect("setattr");
    let Request::Setattr(s) = r else {
        panic!("not setattr: {r:?}")
    };
    assert_eq!(
        (s.mode, s.mtime, s.atime),
        (Some(0o640), Some(SetTime::Now), None)
    );
}
