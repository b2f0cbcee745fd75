use super::*;
use crate::entry::{CODE32_SELECTOR, CODE64_SELECTOR};
use crate::layout::{PVH_INFO_START, ZERO_PAGE_START};
use crate::testutil::{ElfSpec, build_elf, mem, read, u32_at};

#[test]
fn flat_image_lands_at_its_address() {
    let m = mem(4 << 20);
    assert_eq!(load_flat(&m, &[1, 2, 3, 4], 0x7c00).expect("load"), 0x7c04);
    assert_eq!(read(&m, 0x7c00, 4), [1, 2, 3, 4]);
    assert!(matches!(
        load_flat(&m, &[0; 16], (4 << 20) - 8),
        Err(BootError::OutOfGuestMemory { .. })
    ));
    assert!(load_flat(&m, &[0; 16], u64::MAX - 4).is_err());
}

#[test]
fn elf_segments_are_copied_and_bss_zeroed() {
    let m = mem(4 << 20);
    crate::memory::write(&m, "dirt", 0x10_0000, &[0xaa; 0x200]).expect("dirt");
    let elf = build_elf(&ElfSpec {
        is64: true,
        entry: 0x10_0000,
        paddr: 0x10_0000,
        code: &[0xf4; 16],
        bss: 32,
        note_desc: None,
    });
    load_elf(&m, &elf).expect("load");
    assert_eq!(read(&m, 0x10_0000, 16), [0xf4; 16]);
    assert_eq!(read(&m, 0x10_0010, 32), [0; 32]);
    assert_eq!(read(&m, 0x10_0030, 1), [0xaa]);
}

#[test]
fn elf_entry_mode_follows_the_image() {
    let m = mem(8 << 20);
    let code = [0xf4; 8];
    let note = Some(0x10_0004u32.to_le_bytes().to_vec());
    let pvh = build_elf(&ElfSpec {
        is64: true,
        entry: 0x10_0000,
        paddr: 0x10_0000,
        code: &code,
        bss: 0,
        note_desc: note,
    });
    let s = load_elf(&m, &pvh).expect("pvh");
    assert_eq!(
        (s.regs.rip, s.regs.rbx, s.sregs.cs.selector, s.sregs.efer),
        (0x10_0004, PVH_INFO_START, CODE32_SELECTOR, 0)
    );
    let info = read(&m, PVH_INFO_START, 56);
    assert_eq!(u32_at(&info, 0), crate::pvh::PVH_MAGIC);
    assert_eq!(u32_at(&info, 48), 3, "memmap entries");

    let e64 = build_elf(&ElfSpec {
        is64: true,
        entry: 0x10_0002,
        paddr: 0x10_0000,
        code: &code,
        bss: 0,
        note_desc: None,
    });
    let s = load_elf(&m, &e64).expect("elf64");
    assert_eq!(
        (s.regs.rip, s.regs.rsi, s.sregs.cs.selector),
        (0x10_0002, ZERO_PAGE_START, CODE64_SELECTOR)
    );
    assert!(s.sregs.cs.l);
    assert_eq!(read(&m, ZERO_PAGE_START + 0x1e8, 1), [3], "e820 entries");

    let e32 = build_elf(&ElfSpec {
        is64: false,
        entry: 0x10_0001,
        paddr: 0x10_0000,
        code: &code,
        bss: 0,
        note_desc: None,
    });
    let s = load_elf(&m, &e32).expect("elf32");
    assert_eq!(
        (s.regs.rip, s.regs.rbx, s.sregs.cs.selector, s.sregs.cr0 & 1),
        (0x10_0001, 0, CODE32_SELECTOR, 1)
    );
}

#[test]
fn elf_placement_errors() {
    let m = mem(4 << 20);
    let low = build_elf(&ElfSpec {
        is64: true,
        entry: 0x8000,
        paddr: 0x8000,
        code: &[0; 4],
        bss: 0,
        note_desc: None,
    });
    assert!(matches!(
        load_elf(&m, &low),
        Err(BootError::BelowHighMemory { addr: 0x8000, .. })
    ));
    let high = build_elf(&ElfSpec {
        is64: true,
        entry: 0,
        paddr: 0x3f_fff0,
        code: &[0; 4],
        bss: 64,
        note_desc: None,
    });
    assert!(matches!(
        load_elf(&m, &high),
        Err(BootError::OutOfGuestMemory { .. })
    ));
    assert!(matches!(
        load_elf(&m, b"MZ not an elf"),
        Err(BootError::Elf(_))
    ));
}
