//! Unit tests of the header codec and a smoke run of the fuzz script.

use super::fuzz;
use super::packet::{HDR_LEN, Hdr, op};

#[test]
fn header_codec_matches_linux_layout() {
    let h = Hdr {
        src_cid: 0x0102_0304_0506_0708,
        dst_cid: 2,
        src_port: 0x1122_3344,
        dst_port: 1024,
        len: 5,
        type_: 1,
        op: op::CREDIT_UPDATE,
        flags: 3,
        buf_alloc: 0x40000,
        fwd_cnt: 0xdead_beef,
    };
    let b = h.encode();
    assert_eq!(b.len(), HDR_LEN);
    assert_eq!(HDR_LEN, 44);
    assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[16..20], &0x1122_3344u32.to_le_bytes());
    assert_eq!(&b[24..28], &5u32.to_le_bytes());
    assert_eq!(&b[28..30], &1u16.to_le_bytes());
    assert_eq!(&b[30..32], &6u16.to_le_bytes());
    assert_eq!(&b[36..40], &0x40000u32.to_le_bytes());
    assert_eq!(&b[40..44], &0xdead_beefu32.to_le_bytes());
    assert_eq!(Hdr::decode(&b), h);
    let r = h.reply(op::RST);
    assert_eq!(
        (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.op),
        (2, h.src_cid, 1024, 0x1122_3344, op::RST)
    );
}

/// xorshift64*, enough to make varied scripts.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn fuzz_script_smoke() {
    // A hand-written script: host opens a connection to guest port 5,
    // RX buffers, the guest answers RESPONSE then sends data.
    let mut s = vec![
        3, 5, 0, 1, 4, 0x2c, 0x10, 0, 1, 0, 0x2c, 0x10, 0, 1, 0, 0x2c, 0x10, 0, 1, 4,
    ];
    let mut hdr = [0u8; HDR_LEN];
    hdr[16..20].copy_from_slice(&5u32.to_le_bytes());
    hdr[20..24].copy_from_slice(&(1u32 << 30).to_le_bytes());
    hdr[30] = 2; // RESPONSE
    hdr[36..40].copy_from_slice(&65536u32.to_le_bytes());
    s.push(0);
    s.push(1);
    s.extend_from_slice(&hdr);
    s.extend_from_slice(&[0, 0, 4]);
    hdr[30] = 5; // RW, 100 bytes over 3 descriptors
    s.push(0);
    s.push(0x23);
    s.extend_from_slice(&hdr);
    s.extend_from_slice(&[100, 0]);
    s.extend_from_slice(&[7; 100]);
    s.extend_from_slice(&[4, 2, 0, 1, 7, 4]);
    assert!(fuzz::run(&s) >= 5, "script's chains were processed");

    let mut state = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        let len = (next(&mut state) % 600) as usize;
        let input: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        fuzz::run(&input);
    }
}
