use super::*;
use crate::hv::{DescriptorTable, Regs, Segment, Sregs};

fn seg(n: u64, type_: u8) -> Segment {
    Segment {
        base: 0x1000 * n,
        limit: 0xffff_ffff,
        selector: (n as u16) << 3,
        type_,
        s: true,
        dpl: 0,
        present: true,
        avl: false,
        l: n == 1,
        db: n != 1,
        g: true,
        unusable: false,
    }
}

/// A state with a distinct value in every register field.
fn sample() -> VcpuState {
    let regs = Regs {
        rax: 1,
        rbx: 2,
        rcx: 3,
        rdx: 4,
        rsi: 5,
        rdi: 6,
        rsp: 7,
        rbp: 8,
        r8: 9,
        r9: 10,
        r10: 11,
        r11: 12,
        r12: 13,
        r13: 14,
        r14: 15,
        r15: 16,
        rip: 0xffff_ffff_8100_0000,
        rflags: 0x246,
    };
    let sregs = Sregs {
        cs: seg(1, 0xb),
        ds: seg(2, 3),
        es: seg(3, 3),
        fs: seg(4, 3),
        gs: seg(5, 3),
        ss: seg(6, 3),
        tr: Segment {
            s: false,
            ..seg(7, 0xb)
        },
        ldt: Segment {
            s: false,
            ..seg(8, 2)
        },
        gdt: DescriptorTable {
            base: 0xffff_8880_0000_1000,
            limit: 0x7f,
        },
        idt: DescriptorTable {
            base: 0xffff_fe00_0000_0000,
            limit: 0xfff,
        },
        cr0: 0x8005_0033,
        cr2: 0x7fff_1234,
        cr3: 0x0123_4000,
        cr4: 0x0034_06f0,
        cr8: 3,
        efer: 0xd01,
        apic_base: 0xfee0_0900,
    };
    VcpuState {
        regs,
        sregs,
        msrs: MSR_REGISTERS
            .iter()
            .enumerate()
            .map(|(k, &(i, _))| (i, 0x1111 * (k as u64 + 1)))
            .collect(),
        debug: [0x10, 0x20, 0x30, 0x40, 0xffff_0ff0, 0x400],
        xcr0: 0x7,
        ..VcpuState::default()
    }
}

#[test]
fn register_names_are_the_parts_in_order_without_duplicates() {
    let names = register_names();
    assert_eq!(names[..18], GPR_NAMES);
    assert_eq!(names[18..35], SREG_NAMES);
    assert_eq!(names[35], reg::TSC);
    assert_eq!(names[46], reg::TSC_AUX);
    assert_eq!(names[47..53], DEBUG_NAMES);
    assert_eq!(names[N_REGISTERS - 1], reg::XCR0);
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), N_REGISTERS, "a register appears twice");
    for n in EVENT_NAMES {
        assert!(
            !names.contains(&n),
            "event register {n:#x} in the main list"
        );
    }
}

#[test]
fn msr_table_agrees_with_the_loader_table() {
    // Every saved MSR the loader can also set maps to the same register.
    for &(index, name) in &MSR_REGISTERS {
        if let Some(r) = regs::msr_register(index) {
            assert_eq!(r, name, "MSR {index:#x}");
        }
    }
    assert!(MSR_REGISTERS.iter().any(|m| m == &(0x10, reg::TSC)));
    assert!(
        MSR_REGISTERS
            .iter()
            .any(|m| m == &(0xc000_0103, reg::TSC_AUX))
    );
}

#[test]
fn registers_round_trip_every_field() {
    let s = sample();
    let v = registers_to_values(&s).expect("to values");
    // Spot-check the raw encoding of a few registers.
    assert_eq!(v[16], RegValue::u64(s.regs.rip));
    assert_eq!(v[35], RegValue::u64(0x1111)); // TSC
    assert_eq!(v[47], RegValue::u64(0x10)); // DR0
    assert_eq!(v[52], RegValue::u64(0x400)); // DR7
    assert_eq!(v[N_REGISTERS - 1], RegValue::u64(7));
    let back = registers_from_values(&v);
    assert_eq!(back.regs, s.regs);
    assert_eq!(back.sregs, s.sregs);
    assert_eq!(back.msrs, s.msrs);
    assert_eq!(back.debug, s.debug);
    assert_eq!(back.xcr0, s.xcr0);
    assert!(back.xsave.is_empty() && back.lapic.is_empty());
}

#[test]
fn msrs_in_any_order_are_placed_by_index() {
    let mut s = sample();
    s.msrs.reverse();
    let back = registers_from_values(&registers_to_values(&s).expect("to values"));
    assert_eq!(back.msrs, sample().msrs);
}

#[test]
fn unknown_or_missing_msrs_are_refused() {
    let mut s = sample();
    s.msrs.push((0x4b56_4d01, 5)); // kvmclock: a KVM snapshot's MSR
    assert_eq!(
        registers_to_values(&s),
        Err(StateError::UnknownMsr(0x4b56_4d01))
    );
    let mut s = sample();
    s.msrs.retain(|m| m.0 != 0x10);
    assert!(matches!(
        registers_to_values(&s),
        Err(StateError::Unrepresentable(_))
    ));
}

fn round_trip(e: VcpuEvents, mp: MpState) -> (VcpuEvents, MpState) {
    let v = events_to_values(&e, mp).expect("to values");
    events_from_values(&v).expect("from values")
}

#[test]
fn no_events_is_all_zero_and_runnable() {
    let v = events_to_values(&VcpuEvents::default(), MpState::Runnable).expect("to values");
    assert_eq!(v, [RegValue::default(); 4]);
    assert_eq!(
        events_from_values(&v),
        Ok((VcpuEvents::default(), MpState::Runnable))
    );
}

#[test]
fn injected_exception_packs_like_the_sdk_bitfield() {
    let e = VcpuEvents {
        exception_injected: true,
        exception_nr: 14,
        exception_has_error_code: true,
        exception_error_code: 0x6,
        ..VcpuEvents::default()
    };
    let v = events_to_values(&e, MpState::Runnable).expect("to values");
    // Pending:1 | Type=3 (exception) <<1 | DeliverErrorCode <<4 | vector <<16 | code <<32
    assert_eq!(v[0].0[0], 1 | (3 << 1) | (1 << 4) | (14 << 16) | (6 << 32));
    assert_eq!(round_trip(e, MpState::Runnable), (e, MpState::Runnable));
}

#[test]
fn injected_interrupt_and_nmi_round_trip() {
    let e = VcpuEvents {
        interrupt_injected: true,
        interrupt_nr: 0xec,
        ..VcpuEvents::default()
    };
    let v = events_to_values(&e, MpState::Runnable).expect("to values");
    assert_eq!(v[0].0[0], 1 | (0xec << 16));
    assert_eq!(round_trip(e, MpState::Runnable).0, e);
    let e = VcpuEvents {
        nmi_injected: true,
        nmi_masked: true,
        ..VcpuEvents::default()
    };
    let v = events_to_values(&e, MpState::Runnable).expect("to values");
    assert_eq!(v[0].0[0], 1 | (2 << 1) | (2 << 16));
    assert_eq!(v[1].0[0], 2);
    assert_eq!(round_trip(e, MpState::Runnable).0, e);
}

#[test]
fn pending_exception_goes_to_pending_event() {
    let e = VcpuEvents {
        exception_pending: true,
        exception_nr: 13,
        exception_has_error_code: true,
        exception_error_code: 0x10,
        ..VcpuEvents::default()
    };
    let v = events_to_values(&e, MpState::Runnable).expect("to values");
    assert_eq!(v[0], RegValue::default());
    // EventPending | EventType=0 <<1 | DeliverErrorCode <<8 | vector <<16 | code <<32
    assert_eq!(v[2].0, [1 | (1 << 8) | (13 << 16) | (0x10 << 32), 0]);
    assert_eq!(round_trip(e, MpState::Runnable).0, e);
}

#[test]
fn interrupt_shadow_is_one_bit() {
    for shadow in [1u8, 2, 3] {
        let e = VcpuEvents {
            interrupt_shadow: shadow,
            ..VcpuEvents::default()
        };
        let v = events_to_values(&e, MpState::Runnable).expect("to values");
        assert_eq!(v[1].0[0], 1);
        assert_eq!(round_trip(e, MpState::Runnable).0.interrupt_shadow, 1);
    }
}

#[test]
fn run_states_map_to_internal_activity() {
    let activity = |mp| events_to_values(&VcpuEvents::default(), mp).expect("to values")[3].0[0];
    assert_eq!(activity(MpState::Runnable), 0);
    assert_eq!(activity(MpState::Halted), 2);
    assert_eq!(activity(MpState::InitReceived), 1);
    assert_eq!(activity(MpState::Uninitialized), 1);
    assert_eq!(activity(MpState::SipiReceived), 0);
    for mp in [MpState::Runnable, MpState::Halted, MpState::InitReceived] {
        assert_eq!(round_trip(VcpuEvents::default(), mp).1, mp);
    }
    let idle = [
        RegValue::default(),
        RegValue::default(),
        RegValue::default(),
        RegValue::u64(4),
    ];
    assert!(events_from_values(&idle).is_err());
}

#[test]
fn what_whp_cannot_hold_is_refused_not_dropped() {
    let bad = [
        VcpuEvents {
            nmi_pending: true,
            ..VcpuEvents::default()
        },
        VcpuEvents {
            interrupt_injected: true,
            interrupt_soft: true,
            ..VcpuEvents::default()
        },
        VcpuEvents {
            interrupt_injected: true,
            nmi_injected: true,
            ..VcpuEvents::default()
        },
        VcpuEvents {
            exception_injected: true,
            exception_pending: true,
            ..VcpuEvents::default()
        },
    ];
    for e in bad {
        assert!(events_to_values(&e, MpState::Runnable).is_err(), "{e:?}");
    }
    let z = RegValue::default();
    let with = |i: usize, r: RegValue| {
        let mut v = [z; 4];
        v[i] = r;
        v
    };
    // Instruction length, nested event, unknown type, ExtInt, parameter.
    for v in [
        with(0, RegValue::u64(1 | (3 << 1) | (2 << 5))),
        with(0, RegValue::u64(1 | (1 << 9))),
        with(0, RegValue::u64(1 | (5 << 1))),
        with(2, RegValue::u64(1 | (5 << 1) | (0x30 << 8))),
        with(2, RegValue([1 | (14 << 16), 0xdead_0000])),
    ] {
        assert!(events_from_values(&v).is_err(), "{v:x?}");
    }
}
