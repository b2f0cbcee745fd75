//! Unit tests that need no hypervisor: guests assemble in every mode, the
//! memory image and entry state are what the modes require, verdicts and the
//! report table read correctly.

use super::cases;
use super::guest::{self, GuestAsm, GuestVerdict, Mode, addr};
use super::report::{CaseReport, SelftestReport, Status};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use std::time::Duration;

const MODES: [Mode; 3] = [Mode::Real, Mode::Protected, Mode::Long];

fn mnemonics(g: &guest::Assembled) -> Vec<Mnemonic> {
    let bits = match g.mode {
        Mode::Real => 16,
        Mode::Protected => 32,
        Mode::Long => 64,
    };
    Decoder::with_ip(bits, &g.code, 0, DecoderOptions::NONE)
        .into_iter()
        .map(|i| i.mnemonic())
        .collect()
}

#[test]
fn every_guest_assembles_in_its_modes() {
    for mode in MODES {
        let g = cases::pio::pio_guest(mode)
            .and_then(GuestAsm::assemble)
            .expect("pio");
        assert!(mnemonics(&g).contains(&Mnemonic::In), "{mode:?}");
        let g = cases::pio::pio_string_guest(mode)
            .and_then(GuestAsm::assemble)
            .expect("string");
        assert!(mnemonics(&g).contains(&Mnemonic::Outsb));
        let g = cases::mmio::mmio_guest(mode)
            .and_then(GuestAsm::assemble)
            .expect("mmio");
        assert!(mnemonics(&g).contains(&Mnemonic::Stosd));
    }
    for mode in [Mode::Protected, Mode::Long] {
        for build in [
            cases::irq::ioapic_guest,
            cases::irq::ioapic_level_guest,
            cases::irq::serial_irq_guest,
            cases::smp::smp_guest,
            cases::irq::oneshot_guest,
            cases::irq::periodic_guest,
            cases::irq::tsc_deadline_guest,
        ] {
            let g = build(mode).and_then(GuestAsm::assemble).expect("assemble");
            assert!(!g.code.is_empty());
        }
    }
}

#[test]
fn smp_trampoline_is_real_mode_code_that_records_the_apic_id() {
    let code = cases::smp::trampoline().expect("asm");
    let m: Vec<Mnemonic> = Decoder::with_ip(16, &code, 0, DecoderOptions::NONE)
        .into_iter()
        .map(|i| i.mnemonic())
        .collect();
    assert_eq!(
        &m[..4],
        &[Mnemonic::Xor, Mnemonic::Mov, Mnemonic::Mov, Mnemonic::Cpuid]
    );
    assert!(code.len() < 0x1000);
}

#[test]
fn interrupt_guests_install_their_handler() {
    let g = cases::irq::ioapic_guest(Mode::Long)
        .and_then(GuestAsm::assemble)
        .expect("asm");
    assert_eq!(g.vectors.len(), 1);
    let (vector, off) = g.vectors[0];
    assert_eq!(vector, 0x40);
    assert!((off as usize) < g.code.len());
    // The long-mode IDT gate points at CODE + off.
    let image = guest::memory_image(&g);
    let gate = image
        .iter()
        .find(|(a, _)| *a == addr::IDT + 0x40 * 16)
        .expect("gate");
    let b = &gate.1;
    let target = u64::from(u16::from_le_bytes([b[0], b[1]]))
        | (u64::from(u16::from_le_bytes([b[6], b[7]])) << 16)
        | (u64::from(u32::from_le_bytes([b[8], b[9], b[10], b[11]])) << 32);
    assert_eq!(target, addr::CODE + off);
    assert_eq!(b[5], 0x8e, "present interrupt gate");
}

fn test_mem() -> vm_memory::GuestMemoryMmap {
    vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).expect("mem")
}

#[test]
fn long_mode_page_tables_identity_map_the_apics() {
    use vm_memory::{Bytes, GuestAddress};
    let mem = test_mem();
    let st = guest::entry_state(&mem, Mode::Long).expect("state");
    let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).expect("read");
    for va in [0u64, addr::CODE, 0xc000_0000, 0xfec0_0000, 0xfee0_00b0] {
        let pml4e = read(st.sregs.cr3 + ((va >> 39) & 0x1ff) * 8);
        let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8);
        let pde = read((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8);
        assert_eq!(pde & 0x81, 0x81, "present 2 MiB page for {va:#x}");
        let pa = (pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff);
        assert_eq!(pa, va);
    }
    // The boot crate's tables stay clear of the guest's own areas.
    for (name, a) in [
        ("IDT", addr::IDT),
        ("DATA", addr::DATA),
        ("STACK", addr::STACK_TOP - 8),
    ] {
        assert!(
            a + 8 <= st.sregs.cr3 || a >= st.sregs.cr3 + 6 * 0x1000,
            "{name} overlaps page tables"
        );
    }
}

#[test]
fn entry_states_match_their_modes() {
    let mem = test_mem();
    let real = guest::entry_state(&mem, Mode::Real).expect("real");
    assert_eq!(real.sregs.cr0 & 1, 0);
    assert_eq!(real.sregs.cs.base, addr::CODE);
    assert_eq!(real.regs.rip, 0);
    let prot = guest::entry_state(&mem, Mode::Protected).expect("prot");
    assert_eq!(prot.sregs.cr0 & 0x8000_0001, 1);
    assert!(prot.sregs.cs.db && !prot.sregs.cs.l);
    assert_eq!(prot.regs.rip, addr::CODE);
    let long = guest::entry_state(&mem, Mode::Long).expect("long");
    assert_eq!(long.sregs.efer & 0x500, 0x500);
    assert!(long.sregs.cs.l && !long.sregs.cs.db);
    assert_eq!(long.regs.rip, addr::CODE);
    // The guest's IDT gates use the code selectors the states load.
    let g = cases::irq::ioapic_guest(Mode::Protected)
        .and_then(GuestAsm::assemble)
        .expect("asm");
    let gate = guest::memory_image(&g)
        .into_iter()
        .find(|(a, _)| *a == addr::IDT + 0x40 * 8)
        .expect("gate");
    assert_eq!(
        u16::from_le_bytes([gate.1[2], gate.1[3]]),
        prot.sregs.cs.selector
    );
}

#[test]
fn verdicts_name_the_failed_check() {
    let mut g = GuestAsm::new(Mode::Protected).expect("asm");
    g.a.in_(iced_x86::code_asm::al, 0x10_u32).expect("in");
    g.expect_al(7, "first").expect("check");
    g.expect_al(8, "second").expect("check");
    g.skip("no feature").expect("skip");
    let g = g.assemble().expect("asm");
    assert_eq!(g.verdict(guest::PASS), GuestVerdict::Pass);
    assert!(
        matches!(g.verdict(guest::FAIL_BASE + 1), GuestVerdict::Failed(s) if s.starts_with("second"))
    );
    assert_eq!(
        g.verdict(guest::SKIP_BASE),
        GuestVerdict::Skipped("no feature".into())
    );
    assert_eq!(
        g.verdict(guest::FAIL_BASE + 2),
        GuestVerdict::Unknown(guest::FAIL_BASE + 2)
    );
}

#[test]
fn report_prints_a_line_per_case_and_the_summary() {
    let r = SelftestReport {
        backend: "kvm",
        cases: vec![
            CaseReport {
                name: "pio-real".into(),
                status: Status::Pass,
                duration: Duration::from_millis(3),
            },
            CaseReport {
                name: "mmio-long".into(),
                status: Status::Fail("bad".into()),
                duration: Duration::ZERO,
            },
            CaseReport {
                name: "x".into(),
                status: Status::Skip("why".into()),
                duration: Duration::ZERO,
            },
        ],
        total: Duration::from_millis(5),
    };
    let text = r.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("PASS  pio-real"));
    assert!(lines[1].starts_with("FAIL  mmio-long") && lines[1].ends_with("bad"));
    assert!(lines[2].starts_with("SKIP  x") && lines[2].ends_with("why"));
    assert_eq!(lines[4], "1 passed, 1 failed, 1 skipped");
    assert!(!r.ok());
}

#[test]
fn case_names_are_unique_and_cover_every_mode() {
    let names = super::case_names();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    for m in ["real", "prot", "long"] {
        assert!(names.contains(&format!("pio-{m}")));
        assert!(names.contains(&format!("entry-{m}")));
    }
}
