//! Platform-neutral tests of the WHP backend: exit-context parsing,
//! register conversion, CPUID/MSR policy and MSI conversion.

use super::abi::{self, Exit, RegValue, WhvSegment, off};
use super::policy::{self, MsrReply};
use super::regs;
use crate::hv::{DescriptorTable, Msi, Regs, Segment, Sregs};

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn exit_buf(reason: u32) -> abi::ExitBuf {
    let mut b = abi::ExitBuf::default();
    put(&mut b.0, 0, &reason.to_le_bytes());
    put(&mut b.0, off::EXECUTION_STATE, &0x0014u16.to_le_bytes()); // PE | LMA
    b.0[off::INSTRUCTION_LENGTH] = 0xa3; // CR8 = 0xa, length 3
    put(&mut b.0, off::CS, &0x1000u64.to_le_bytes());
    put(&mut b.0, off::CS + 8, &0xffff_ffffu32.to_le_bytes());
    put(&mut b.0, off::CS + 12, &0x10u16.to_le_bytes());
    put(&mut b.0, off::CS + 14, &0xa09bu16.to_le_bytes());
    put(&mut b.0, off::RIP, &0xffff_ffff_8100_0000u64.to_le_bytes());
    put(&mut b.0, off::RFLAGS, &0x246u64.to_le_bytes());
    b
}

#[test]
fn parses_vp_context() {
    let (vp, exit) = abi::parse_exit(&exit_buf(abi::exit::HALT).0);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(vp.instruction_length, 3);
    assert!(vp.cr0_pe() && vp.efer_lma() && !vp.interruption_pending());
    assert_eq!(
        vp.cs,
        WhvSegment {
            base: 0x1000,
            limit: 0xffff_ffff,
            selector: 0x10,
            attributes: 0xa09b
        }
    );
    assert_eq!((vp.rip, vp.rflags), (0xffff_ffff_8100_0000, 0x246));
    let cs = regs::segment_from_whv(&vp.cs);
    assert!(cs.l && !cs.db && cs.present && cs.s && cs.g && cs.type_ == 0xb);
}

#[test]
fn parses_memory_access() {
    let mut b = exit_buf(abi::exit::MEMORY_ACCESS);
    let u = off::UNION;
    b.0[u] = 3;
    put(&mut b.0, u + 4, &[0x89, 0x18, 0x90, 0xcc]);
    put(&mut b.0, u + 20, &(1u32 | 4 | 8).to_le_bytes()); // write, unmapped, gva valid
    put(&mut b.0, u + 24, &0xd000_0040u64.to_le_bytes());
    put(&mut b.0, u + 32, &0xffff_c900_0000_0040u64.to_le_bytes());
    let Exit::Memory(m) = abi::parse_exit(&b.0).1 else {
        panic!("not a memory exit")
    };
    assert_eq!(m.insn_bytes(), &[0x89, 0x18, 0x90]);
    assert_eq!(
        (m.access_type, m.gpa_unmapped, m.gva_valid),
        (1, true, true)
    );
    assert_eq!((m.gpa, m.gva), (0xd000_0040, 0xffff_c900_0000_0040));
    // A bogus byte count is clamped, not trusted.
    b.0[u] = 200;
    let Exit::Memory(m) = abi::parse_exit(&b.0).1 else {
        panic!("not a memory exit")
    };
    assert_eq!(m.insn_bytes().len(), 16);
}

#[test]
fn parses_io_access() {
    let mut b = exit_buf(abi::exit::IO_PORT_ACCESS);
    let u = off::UNION;
    b.0[u] = 1;
    b.0[u + 4] = 0xee; // out dx, al
    put(&mut b.0, u + 20, &(1u32 | (1 << 1)).to_le_bytes());
    put(&mut b.0, u + 24, &0x3f8u16.to_le_bytes());
    put(&mut b.0, u + 32, &0x1234_5641u64.to_le_bytes());
    let Exit::Io(io) = abi::parse_exit(&b.0).1 else {
        panic!("not io")
    };
    assert_eq!(
        (io.port, io.size, io.is_write, io.string, io.rep, io.rax),
        (0x3f8, 1, true, false, false, 0x1234_5641)
    );
    // rep insw: read, size 2, string, rep
    put(
        &mut b.0,
        u + 20,
        &((2u32 << 1) | (1 << 4) | (1 << 5)).to_le_bytes(),
    );
    let Exit::Io(io) = abi::parse_exit(&b.0).1 else {
        panic!("not io")
    };
    assert_eq!(
        (io.size, io.is_write, io.string, io.rep),
        (2, false, true, true)
    );
}

#[test]
fn parses_msr_cpuid_eoi_cancel() {
    let u = off::UNION;
    let mut b = exit_buf(abi::exit::MSR_ACCESS);
    put(&mut b.0, u, &1u32.to_le_bytes());
    put(&mut b.0, u + 4, &0x4000_0022u32.to_le_bytes());
    put(&mut b.0, u + 8, &5u64.to_le_bytes());
    put(&mut b.0, u + 16, &6u64.to_le_bytes());
    assert_eq!(
        abi::parse_exit(&b.0).1,
        Exit::Msr(abi::MsrAccess {
            is_write: true,
            msr: 0x4000_0022,
            rax: 5,
            rdx: 6
        })
    );
    let mut b = exit_buf(abi::exit::CPUID);
    for (i, v) in [7u64, 1, 0, 0, 0xa, 0xc, 0xd, 0xb].iter().enumerate() {
        put(&mut b.0, u + 8 * i, &v.to_le_bytes());
    }
    let Exit::Cpuid(c) = abi::parse_exit(&b.0).1 else {
        panic!("not cpuid")
    };
    assert_eq!((c.leaf, c.subleaf, c.default), (7, 1, [0xa, 0xb, 0xc, 0xd]));
    let mut b = exit_buf(abi::exit::APIC_EOI);
    put(&mut b.0, u, &0x31u32.to_le_bytes());
    assert_eq!(abi::parse_exit(&b.0).1, Exit::ApicEoi(0x31));
    assert_eq!(
        abi::parse_exit(&exit_buf(abi::exit::CANCELED).0).1,
        Exit::Canceled
    );
    assert_eq!(
        abi::parse_exit(&exit_buf(abi::exit::UNRECOVERABLE_EXCEPTION).0).1,
        Exit::UnrecoverableException
    );
    assert_eq!(abi::parse_exit(&exit_buf(0x1234).0).1, Exit::Other(0x1234));
    // A short buffer parses as zeros instead of panicking.
    assert_eq!(abi::parse_exit(&[1, 0, 0, 0]).0.rip, 0);
}

#[test]
fn rax_after_in_merges_like_hardware() {
    let rax = 0x1122_3344_5566_7788;
    assert_eq!(abi::rax_after_in(rax, 1, &[0xab]), 0x1122_3344_5566_77ab);
    assert_eq!(
        abi::rax_after_in(rax, 2, &[0xcd, 0xab]),
        0x1122_3344_5566_abcd
    );
    assert_eq!(abi::rax_after_in(rax, 4, &[1, 2, 3, 4]), 0x0403_0201);
}

fn long_mode_sregs() -> Sregs {
    let code = Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: true,
        dpl: 0,
        db: false,
        s: true,
        l: true,
        g: true,
        avl: false,
        unusable: false,
    };
    let data = Segment {
        selector: 0x10,
        type_: 0x3,
        l: false,
        db: true,
        ..code
    };
    let tss = Segment {
        selector: 0x18,
        type_: 0xb,
        s: false,
        l: false,
        db: false,
        g: false,
        limit: 0x67,
        ..code
    };
    let ldt = Segment {
        present: false,
        unusable: true,
        type_: 2,
        s: false,
        l: false,
        g: false,
        ..Segment::default()
    };
    Sregs {
        cs: code,
        ds: data,
        es: data,
        fs: Segment {
            base: 0x7fff_0000,
            ..data
        },
        gs: Segment {
            base: 0xffff_8880_0000_0000,
            ..data
        },
        ss: data,
        tr: tss,
        ldt,
        gdt: DescriptorTable {
            base: 0x500,
            limit: 0x1f,
        },
        idt: DescriptorTable { base: 0, limit: 0 },
        cr0: 0x8000_0011,
        cr2: 0,
        cr3: 0x9000,
        cr4: 0x20,
        cr8: 0,
        efer: 0x500,
        apic_base: 0xfee0_0900,
    }
}

#[test]
fn segment_attributes_match_the_sdk_sample() {
    // The MS sample's 64-bit code segment is 0xa09b, data is 0xc093.
    let s = long_mode_sregs();
    assert_eq!(regs::segment_to_whv(&s.cs).attributes, 0xa09b);
    assert_eq!(regs::segment_to_whv(&s.ds).attributes, 0xc093);
    assert_eq!(regs::segment_to_whv(&s.tr).attributes, 0x008b);
    assert_eq!(
        regs::segment_to_whv(&s.ldt).attributes,
        0x0002,
        "unusable → not present"
    );
    let v = regs::segment_to_whv(&s.gs).to_value();
    assert_eq!(WhvSegment::from_value(v), regs::segment_to_whv(&s.gs));
}

#[test]
fn sregs_and_regs_round_trip() {
    let s = long_mode_sregs();
    assert_eq!(regs::sregs_from_values(&regs::sregs_to_values(&s)), s);
    let r = Regs {
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
        rip: 17,
        rflags: 18,
    };
    let v = regs::regs_to_values(&r);
    assert_eq!(
        v[1],
        RegValue::u64(3),
        "index 1 is RCX (WHvX64RegisterRcx = 1)"
    );
    assert_eq!(v[3], RegValue::u64(2), "index 3 is RBX");
    assert_eq!(regs::regs_from_values(&v), r);
    // GDTR value layout: {Pad[3], Limit} then Base.
    assert_eq!(regs::table_to_value(&s.gdt), RegValue([0x1f << 48, 0x500]));
    assert_eq!(std::mem::align_of::<RegValue>(), 16);
    assert_eq!(std::mem::size_of::<[RegValue; 18]>(), 18 * 16);
}

#[test]
fn msr_registers() {
    assert_eq!(regs::msr_register(0xc000_0080), Some(abi::reg::EFER));
    assert_eq!(regs::msr_register(0x277), Some(abi::reg::PAT));
    assert_eq!(regs::msr_register(0x2ff), Some(abi::reg::MTRR_DEF_TYPE));
    assert_eq!(regs::msr_register(0x1234), None);
}

#[test]
fn hyperv_leaves_satisfy_linux_mshyperv() {
    let leaves = policy::hyperv_leaves(true);
    let get = |l: u32| {
        leaves
            .iter()
            .find(|x| x.leaf == l)
            .map(|x| x.regs)
            .expect("leaf")
    };
    let l0 = get(0x4000_0000);
    assert!(l0[0] >= 0x4000_0005, "max leaf must reach HYPERV_CPUID_MIN");
    let sig: Vec<u8> = l0[1..].iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(&sig, b"Microsoft Hv");
    let l3 = get(0x4000_0003);
    for bit in [5, 6, 11, 15] {
        assert_ne!(l3[0] & (1 << bit), 0, "EAX bit {bit}");
    }
    assert_ne!(l3[3] & (1 << 8), 0, "EDX FREQUENCY_MSRS_AVAILABLE");
    assert_eq!(
        (0x4000_0000..=0x4000_0006)
            .filter(|l| leaves.iter().any(|x| x.leaf == *l))
            .count(),
        7
    );
    let l3 = policy::hyperv_leaves(false)
        .into_iter()
        .find(|x| x.leaf == 0x4000_0003)
        .expect("leaf")
        .regs;
    assert_eq!(
        (l3[0] & (1 << 11), l3[3] & (1 << 8)),
        (0, 0),
        "no frequencies offered without a TSC rate"
    );
}

#[test]
fn msr_responder() {
    assert_eq!(
        policy::msr_read(0x4000_0022, 0, 2_400_000_000, 200_000_000),
        MsrReply::Value(2_400_000_000)
    );
    assert_eq!(
        policy::msr_read(0x4000_0023, 0, 2_400_000_000, 200_000_000),
        MsrReply::Value(200_000_000)
    );
    assert_eq!(policy::msr_read(0x4000_0002, 3, 1, 1), MsrReply::Value(3));
    assert_eq!(policy::msr_read(0xdead, 0, 1, 1), MsrReply::Unknown);
    assert!(policy::msr_write_known(0x4000_0118));
    assert!(!policy::msr_write_known(0x4000_0022));
}

#[test]
fn cpuid_hiding() {
    let hide = [(1, 0, 2, 13), (7, 0, 3, 29), (1, 0, 2, 99)];
    assert_eq!(policy::cpuid_exit_leaves(&hide), vec![1, 7]);
    assert_eq!(
        policy::apply_hide(1, 0, [u32::MAX; 4], &hide),
        [u32::MAX, u32::MAX, !(1 << 13), u32::MAX]
    );
    assert_eq!(
        policy::apply_hide(1, 1, [u32::MAX; 4], &hide),
        [u32::MAX; 4],
        "other subleaf untouched"
    );
}

#[test]
fn msi_to_interrupt_control() {
    // Fixed, physical, edge, APIC 2, vector 0x30.
    let ic = policy::msi_to_interrupt(Msi {
        address: 0xfee0_2000,
        data: 0x30,
    })
    .expect("fixed");
    assert_eq!((ic.control, ic.destination, ic.vector), (0, 2, 0x30));
    // Lowest priority, logical, level.
    let ic = policy::msi_to_interrupt(Msi {
        address: 0xfee0_1004,
        data: 0x8000 | (1 << 8) | 0x41,
    })
    .expect("lowest");
    assert_eq!(
        (ic.control, ic.destination, ic.vector),
        (1 | (1 << 8) | (1 << 12), 1, 0x41)
    );
    // NMI and INIT keep their encodings; SMI and ExtINT are refused.
    assert_eq!(
        policy::msi_to_interrupt(Msi {
            address: 0xfee0_0000,
            data: 4 << 8
        })
        .map(|i| i.control),
        Some(4)
    );
    assert_eq!(
        policy::msi_to_interrupt(Msi {
            address: 0xfee0_0000,
            data: 5 << 8
        })
        .map(|i| i.control),
        Some(5)
    );
    assert!(
        policy::msi_to_interrupt(Msi {
            address: 0xfee0_0000,
            data: 2 << 8
        })
        .is_none()
    );
    assert!(
        policy::msi_to_interrupt(Msi {
            address: 0xfee0_0000,
            data: 7 << 8
        })
        .is_none()
    );
}

#[test]
fn open_off_windows_is_unavailable() {
    if cfg!(windows) {
        eprintln!("skipping: on Windows open() probes the real hypervisor");
        return;
    }
    match super::open() {
        Err(crate::hv::HvError::Unavailable(m)) => {
            assert!(m.contains("only available on Windows"), "{m}")
        }
        other => panic!("{:?}", other.map(|h| h.name())),
    }
}

#[test]
fn open_on_windows_succeeds_or_explains() {
    if !cfg!(windows) {
        eprintln!("skipping: needs Windows (or wine)");
        return;
    }
    match super::open() {
        Ok(h) => assert_eq!(h.name(), "whp"),
        Err(crate::hv::HvError::Unavailable(m)) => {
            eprintln!("WHP unavailable: {m}");
            assert!(m == super::NOT_INSTALLED || m == super::NOT_RUNNING, "{m}");
        }
        Err(e) => panic!("open() must report Unavailable, got {e}"),
    }
}
