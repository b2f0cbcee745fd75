//! Conversions between our `Regs`/`Sregs` and WHP register values. Pure
//! functions, tested on every host.

use super::abi::{RegValue, WhvSegment, reg};
use crate::hv::{DescriptorTable, Regs, Segment, Sregs};

/// Register names of [`Regs`], in the order of [`regs_to_values`].
pub const GPR_NAMES: [i32; 18] = [
    reg::RAX,
    1,  // RCX
    2,  // RDX
    3,  // RBX
    4,  // RSP
    5,  // RBP
    6,  // RSI
    7,  // RDI
    8,  // R8
    9,  // R9
    10, // R10
    11, // R11
    12, // R12
    13, // R13
    14, // R14
    15, // R15
    reg::RIP,
    reg::RFLAGS,
];

/// Register names of [`Sregs`], in the order of [`sregs_to_values`].
pub const SREG_NAMES: [i32; 17] = [
    reg::CS,
    reg::DS,
    reg::ES,
    reg::FS,
    reg::GS,
    reg::SS,
    reg::TR,
    reg::LDTR,
    reg::GDTR,
    reg::IDTR,
    reg::CR0,
    reg::CR2,
    reg::CR3,
    reg::CR4,
    reg::CR8,
    reg::EFER,
    reg::APIC_BASE,
];

/// WHP values for `regs`, in [`GPR_NAMES`] order.
pub fn regs_to_values(r: &Regs) -> [RegValue; 18] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ]
    .map(RegValue::u64)
}

/// `Regs` from values in [`GPR_NAMES`] order.
pub fn regs_from_values(v: &[RegValue; 18]) -> Regs {
    let g = |i: usize| v[i].0[0];
    Regs {
        rax: g(0),
        rcx: g(1),
        rdx: g(2),
        rbx: g(3),
        rsp: g(4),
        rbp: g(5),
        rsi: g(6),
        rdi: g(7),
        r8: g(8),
        r9: g(9),
        r10: g(10),
        r11: g(11),
        r12: g(12),
        r13: g(13),
        r14: g(14),
        r15: g(15),
        rip: g(16),
        rflags: g(17),
    }
}

/// Packs a segment's attributes the WHP way:
/// `type | S<<4 | DPL<<5 | P<<7 | AVL<<12 | L<<13 | D/B<<14 | G<<15`.
/// An unusable segment is reported as not present.
pub fn segment_to_whv(s: &Segment) -> WhvSegment {
    let present = s.present && !s.unusable;
    let attributes = u16::from(s.type_ & 0xf)
        | (u16::from(s.s) << 4)
        | (u16::from(s.dpl & 3) << 5)
        | (u16::from(present) << 7)
        | (u16::from(s.avl) << 12)
        | (u16::from(s.l) << 13)
        | (u16::from(s.db) << 14)
        | (u16::from(s.g) << 15);
    WhvSegment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        attributes,
    }
}

/// The inverse of [`segment_to_whv`].
pub fn segment_from_whv(w: &WhvSegment) -> Segment {
    let a = w.attributes;
    let present = a & (1 << 7) != 0;
    Segment {
        base: w.base,
        limit: w.limit,
        selector: w.selector,
        type_: (a & 0xf) as u8,
        s: a & (1 << 4) != 0,
        dpl: ((a >> 5) & 3) as u8,
        present,
        avl: a & (1 << 12) != 0,
        l: a & (1 << 13) != 0,
        db: a & (1 << 14) != 0,
        g: a & (1 << 15) != 0,
        unusable: !present,
    }
}

/// A `WHV_X64_TABLE_REGISTER` value: `{Pad[3]: u16, Limit: u16, Base: u64}`.
pub fn table_to_value(t: &DescriptorTable) -> RegValue {
    RegValue([u64::from(t.limit) << 48, t.base])
}

/// The inverse of [`table_to_value`].
pub fn table_from_value(v: RegValue) -> DescriptorTable {
    DescriptorTable {
        base: v.0[1],
        limit: (v.0[0] >> 48) as u16,
    }
}

/// WHP values for `s`, in [`SREG_NAMES`] order.
pub fn sregs_to_values(s: &Sregs) -> [RegValue; 17] {
    let seg = |x: &Segment| segment_to_whv(x).to_value();
    [
        seg(&s.cs),
        seg(&s.ds),
        seg(&s.es),
        seg(&s.fs),
        seg(&s.gs),
        seg(&s.ss),
        seg(&s.tr),
        seg(&s.ldt),
        table_to_value(&s.gdt),
        table_to_value(&s.idt),
        RegValue::u64(s.cr0),
        RegValue::u64(s.cr2),
        RegValue::u64(s.cr3),
        RegValue::u64(s.cr4),
        RegValue::u64(s.cr8),
        RegValue::u64(s.efer),
        RegValue::u64(s.apic_base),
    ]
}

/// `Sregs` from values in [`SREG_NAMES`] order.
pub fn sregs_from_values(v: &[RegValue; 17]) -> Sregs {
    let seg = |i: usize| segment_from_whv(&WhvSegment::from_value(v[i]));
    Sregs {
        cs: seg(0),
        ds: seg(1),
        es: seg(2),
        fs: seg(3),
        gs: seg(4),
        ss: seg(5),
        tr: seg(6),
        ldt: seg(7),
        gdt: table_from_value(v[8]),
        idt: table_from_value(v[9]),
        cr0: v[10].0[0],
        cr2: v[11].0[0],
        cr3: v[12].0[0],
        cr4: v[13].0[0],
        cr8: v[14].0[0],
        efer: v[15].0[0],
        apic_base: v[16].0[0],
    }
}

/// The WHP register holding MSR `index`, for the MSRs a loader sets.
pub fn msr_register(index: u32) -> Option<i32> {
    Some(match index {
        0x10 => reg::TSC,
        0x1b => reg::APIC_BASE,
        0x174 => reg::SYSENTER_CS,
        0x175 => reg::SYSENTER_ESP,
        0x176 => reg::SYSENTER_EIP,
        0x277 => reg::PAT,
        0x2ff => reg::MTRR_DEF_TYPE,
        0xc000_0080 => reg::EFER,
        0xc000_0081 => reg::STAR,
        0xc000_0082 => reg::LSTAR,
        0xc000_0083 => reg::CSTAR,
        0xc000_0084 => reg::SFMASK,
        0xc000_0102 => reg::KERNEL_GS_BASE,
        _ => return None,
    })
}
