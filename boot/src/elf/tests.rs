use super::*;
use crate::testutil::{ElfSpec, build_elf};

fn spec(is64: bool, note: Option<Vec<u8>>) -> Vec<u8> {
    build_elf(&ElfSpec {
        is64,
        entry: 0x10_0010,
        paddr: 0x10_0000,
        code: &[0x90; 40],
        bss: 0x100,
        note_desc: note,
    })
}

#[test]
fn parses_elf64_and_elf32() {
    for is64 in [true, false] {
        let img = parse(&spec(is64, None)).expect("parse");
        assert_eq!(
            img.class,
            if is64 {
                ElfClass::Elf64
            } else {
                ElfClass::Elf32
            }
        );
        assert_eq!(img.entry, 0x10_0010);
        assert_eq!(img.segments.len(), 1);
        assert_eq!(
            (
                img.segments[0].paddr,
                img.segments[0].filesz,
                img.segments[0].memsz
            ),
            (0x10_0000, 40, 0x128)
        );
        assert_eq!(img.pvh_entry, None);
        assert_eq!(img.end(), 0x10_0128);
    }
}

#[test]
fn finds_pvh_note_of_either_width() {
    let four = parse(&spec(true, Some(0x10_0020u32.to_le_bytes().to_vec()))).expect("4-byte note");
    assert_eq!(four.pvh_entry, Some(0x10_0020));
    let eight =
        parse(&spec(false, Some(0x10_0040u64.to_le_bytes().to_vec()))).expect("8-byte note");
    assert_eq!(eight.pvh_entry, Some(0x10_0040));
    assert_eq!(
        parse(&spec(true, Some(vec![1, 2]))),
        Err(ElfError::BadPvhNote)
    );
    assert_eq!(
        parse(&spec(true, Some((1u64 << 32).to_le_bytes().to_vec()))),
        Err(ElfError::BadPvhNote)
    );
}

#[test]
fn every_truncation_is_an_error() {
    for is64 in [true, false] {
        let full = spec(is64, Some(0x10_0020u32.to_le_bytes().to_vec()));
        for len in 0..full.len() {
            assert!(
                parse(&full[..len]).is_err(),
                "truncated to {len} bytes parsed"
            );
        }
    }
}

#[test]
fn corrupt_fields_are_rejected() {
    let good = spec(true, None);
    let with = |off: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[off..off + bytes.len()].copy_from_slice(bytes);
        parse(&b)
    };
    assert_eq!(with(0, b"\x7fELG"), Err(ElfError::BadMagic));
    assert!(matches!(with(4, &[3]), Err(ElfError::Unsupported(_))));
    assert!(matches!(with(5, &[2]), Err(ElfError::Unsupported(_))));
    assert!(matches!(with(16, &[3, 0]), Err(ElfError::Unsupported(_))));
    assert!(matches!(with(18, &[3, 0]), Err(ElfError::Unsupported(_))));
    assert!(matches!(with(54, &[40, 0]), Err(ElfError::BadPhdrs(_))));
    assert!(matches!(with(56, &[0, 0]), Err(ElfError::BadPhdrs(_))));
    assert!(matches!(
        with(56, &[0xff, 0xff]),
        Err(ElfError::BadPhdrs(_))
    ));
    assert!(matches!(
        with(32, &[0xf0; 8]),
        Err(ElfError::Truncated { .. })
    ));
    // p_filesz (phdr at 64, +32) larger than p_memsz.
    assert!(matches!(
        with(64 + 32, &[0xff, 0xff, 0, 0]),
        Err(ElfError::BadSegment { index: 0, .. })
    ));
    // p_offset pointing past the end.
    assert!(matches!(
        with(64 + 8, &[0, 0, 0, 0x10]),
        Err(ElfError::Truncated { .. })
    ));
    // p_paddr + p_memsz overflowing.
    assert!(matches!(
        with(64 + 24, &[0xff; 8]),
        Err(ElfError::BadSegment { .. })
    ));
    // Only a non-load segment.
    assert_eq!(with(64, &[6, 0, 0, 0]), Err(ElfError::NoLoadSegments));
}
