use super::*;
use crate::testutil::{mem, read, u64_at};

#[test]
fn gdt_entries_match_linux_encoding() {
    // Values as produced by Linux's GDT_ENTRY(flags, 0, 0xfffff).
    assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    assert_eq!(gdt_entry(0x008b, 0, 0x67), 0x0000_8b00_0000_0067);
    assert_eq!(
        gdt_entry(0x0093, 0x1234_5678, 0xabcde),
        0x120a_9334_5678_bcde
    );
}

#[test]
fn segment_decoding_expands_granular_limit() {
    let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), CODE64_SELECTOR);
    assert_eq!(
        (
            code64.base,
            code64.limit,
            code64.type_,
            code64.l,
            code64.db,
            code64.g,
            code64.present,
            code64.s
        ),
        (0, 0xffff_ffff, 0xb, true, false, true, true, true)
    );
    let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), TSS_SELECTOR);
    assert_eq!(
        (tss.limit, tss.type_, tss.s, tss.g, tss.present),
        (0x67, 0xb, false, false, true)
    );
    let odd = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 0x30);
    assert_eq!(
        (odd.base, odd.limit, odd.selector),
        (0x1234_5678, 0xabcde, 0x30)
    );
    assert!(segment_from_gdt(0, 0).unusable);
}

#[test]
fn real_mode_state_uses_selector_bases() {
    let s = real_mode_state(0x1000, 0x20);
    assert_eq!(s.regs.rip, 0x20);
    assert_eq!(s.regs.rflags, 2);
    for seg in [
        s.sregs.cs, s.sregs.ds, s.sregs.es, s.sregs.ss, s.sregs.fs, s.sregs.gs,
    ] {
        assert_eq!(
            (seg.selector, seg.base, seg.limit, seg.present),
            (0x1000, 0x10000, 0xffff, true)
        );
    }
    assert_eq!(s.sregs.cs.type_, 0xb);
    assert_eq!(s.sregs.ds.type_, 3);
    assert_eq!(s.sregs.cr0, CR0_ET);
    assert_eq!(s.sregs.efer, 0);
    assert_eq!(
        s.sregs.idt,
        DescriptorTable {
            base: 0,
            limit: 0x3ff
        }
    );
}

#[test]
fn protected_mode_state_is_flat_32_bit_without_paging() {
    let m = mem(16 << 20);
    let s = protected_mode_state(&m, 0x10_0000, 0x1000).expect("state");
    assert_eq!(
        (s.regs.rip, s.regs.rbx, s.regs.rflags),
        (0x10_0000, 0x1000, 2)
    );
    assert_eq!(s.sregs.cr0, CR0_PE | CR0_ET);
    assert_eq!((s.sregs.cr3, s.sregs.cr4, s.sregs.efer), (0, 0, 0));
    let cs = s.sregs.cs;
    assert_eq!(
        (cs.selector, cs.base, cs.limit, cs.db, cs.l, cs.type_),
        (0x08, 0, 0xffff_ffff, true, false, 0xb)
    );
    for d in [s.sregs.ds, s.sregs.es, s.sregs.ss] {
        assert_eq!(
            (d.selector, d.limit, d.db, d.type_),
            (0x18, 0xffff_ffff, true, 3)
        );
    }
    assert_eq!(
        (s.sregs.tr.selector, s.sregs.tr.limit, s.sregs.tr.type_),
        (0x20, 0x67, 0xb)
    );
    // The GDT in memory decodes to the same segments.
    let gdt = read(&m, GDT_START, GDT_ENTRIES * 8);
    assert_eq!(
        s.sregs.gdt,
        DescriptorTable {
            base: GDT_START,
            limit: 0x2f
        }
    );
    assert_eq!(segment_from_gdt(u64_at(&gdt, 8), 0x08), cs);
    assert_eq!(segment_from_gdt(u64_at(&gdt, 0x18), 0x18), s.sregs.ds);
    assert_eq!(u64_at(&gdt, 0), 0);
    assert_eq!(
        s.sregs.idt,
        DescriptorTable {
            base: IDT_START,
            limit: 7
        }
    );
}

#[test]
fn long_mode_state_and_page_tables() {
    let m = mem(64 << 20);
    let s = long_mode_state(&m, 0x20_0000, 0x2000).expect("state");
    assert_eq!(
        (s.regs.rip, s.regs.rsi, s.regs.rsp, s.regs.rflags),
        (0x20_0000, 0x2000, BOOT_STACK_POINTER, 2)
    );
    assert_eq!(s.sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
    assert_eq!(s.sregs.cr4 & CR4_PAE, CR4_PAE);
    assert_eq!(s.sregs.efer, EFER_LME | EFER_LMA);
    assert_eq!(s.sregs.cr3, PML4_START);
    let cs = s.sregs.cs;
    assert_eq!(
        (cs.selector, cs.l, cs.db, cs.type_),
        (0x10, true, false, 0xb)
    );
    assert_eq!(
        u64_at(&read(&m, GDT_START + 0x10, 8), 0),
        0x00af_9b00_0000_ffff
    );

    let pml4 = read(&m, PML4_START, 4096);
    assert_eq!(u64_at(&pml4, 0), PDPTE_START | 3);
    assert!(pml4[8..].iter().all(|&b| b == 0));
    let pdpt = read(&m, PDPTE_START, 4096);
    for i in 0..4 {
        assert_eq!(u64_at(&pdpt, i * 8), (PDE_START + i as u64 * 0x1000) | 3);
    }
    assert!(pdpt[32..].iter().all(|&b| b == 0));
    // Walk a few addresses through the tables: identity, 2 MiB pages.
    for addr in [
        0u64,
        0x1f_ffff,
        0x100_0000,
        0xbfff_ffff,
        0xd000_0000,
        0xfec0_0000,
        0xffff_ffff,
    ] {
        let pdpte = u64_at(&pdpt, ((addr >> 30) & 511) as usize * 8);
        let pd = read(&m, pdpte & !0xfff, 4096);
        let pde = u64_at(&pd, ((addr >> 21) & 511) as usize * 8);
        assert_eq!(
            pde & 0x83,
            0x83,
            "present, writable, 2 MiB page at {addr:#x}"
        );
        assert_eq!(
            (pde & !0x1f_ffffu64 & 0x000f_ffff_ffff_f000) | (addr & 0x1f_ffff),
            addr
        );
    }
}

#[test]
fn boot_msrs_cover_syscall_state() {
    let msrs = boot_msrs();
    for idx in [
        0x174u32,
        0x175,
        0x176,
        0xc000_0081,
        0xc000_0082,
        0xc000_0084,
        0xc000_0102,
    ] {
        assert_eq!(
            msrs.iter().find(|(i, _)| *i == idx).map(|m| m.1),
            Some(0),
            "{idx:#x}"
        );
    }
    assert_eq!(msrs.iter().find(|(i, _)| *i == 0x1a0).map(|m| m.1), Some(1));
}

#[test]
fn tiny_memory_is_an_error_not_a_panic() {
    let m = mem(0x1000);
    assert!(matches!(
        long_mode_state(&m, 0, 0),
        Err(BootError::OutOfGuestMemory { .. })
    ));
}
