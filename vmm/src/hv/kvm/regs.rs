//! Conversions between KVM's register structs and the backend-neutral ones.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

use crate::hv::{DescriptorTable, Regs, Segment, Sregs};

pub(super) fn to_kvm_regs(r: &Regs) -> kvm_regs {
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

pub(super) fn from_kvm_regs(r: &kvm_regs) -> Regs {
    Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn to_seg(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.g),
        avl: u8::from(s.avl),
        unusable: u8::from(s.unusable),
        padding: 0,
    }
}

fn from_seg(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

fn to_dt(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        padding: [0; 3],
    }
}

fn from_dt(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: d.base,
        limit: d.limit,
    }
}

/// Overlays `s` on the vCPU's current `k`, keeping KVM's APIC base when the
/// caller leaves it 0 (a zero APIC base would disable the local APIC).
pub(super) fn apply_sregs(k: &mut kvm_sregs, s: &Sregs) {
    k.cs = to_seg(&s.cs);
    k.ds = to_seg(&s.ds);
    k.es = to_seg(&s.es);
    k.fs = to_seg(&s.fs);
    k.gs = to_seg(&s.gs);
    k.ss = to_seg(&s.ss);
    k.tr = to_seg(&s.tr);
    k.ldt = to_seg(&s.ldt);
    k.gdt = to_dt(&s.gdt);
    k.idt = to_dt(&s.idt);
    k.cr0 = s.cr0;
    k.cr2 = s.cr2;
    k.cr3 = s.cr3;
    k.cr4 = s.cr4;
    k.cr8 = s.cr8;
    k.efer = s.efer;
    if s.apic_base != 0 {
        k.apic_base = s.apic_base;
    }
}

pub(super) fn from_kvm_sregs(k: &kvm_sregs) -> Sregs {
    Sregs {
        cs: from_seg(&k.cs),
        ds: from_seg(&k.ds),
        es: from_seg(&k.es),
        fs: from_seg(&k.fs),
        gs: from_seg(&k.gs),
        ss: from_seg(&k.ss),
        tr: from_seg(&k.tr),
        ldt: from_seg(&k.ldt),
        gdt: from_dt(&k.gdt),
        idt: from_dt(&k.idt),
        cr0: k.cr0,
        cr2: k.cr2,
        cr3: k.cr3,
        cr4: k.cr4,
        cr8: k.cr8,
        efer: k.efer,
        apic_base: k.apic_base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_round_trip() {
        let r = Regs {
            rax: 1,
            rbx: 2,
            r15: 15,
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        assert_eq!(from_kvm_regs(&to_kvm_regs(&r)), r);
    }

    #[test]
    fn sregs_round_trip_keeps_apic_base_when_unset() {
        let s = Sregs {
            cs: Segment {
                base: 0,
                limit: 0xffff_ffff,
                selector: 8,
                type_: 0xb,
                present: true,
                s: true,
                l: true,
                g: true,
                ..Default::default()
            },
            cr0: 0x8000_0011,
            efer: 0x500,
            ..Default::default()
        };
        let mut k = kvm_sregs {
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        apply_sregs(&mut k, &s);
        assert_eq!(k.apic_base, 0xfee0_0900);
        let back = from_kvm_sregs(&k);
        assert_eq!(back.cs, s.cs);
        assert_eq!((back.cr0, back.efer), (s.cr0, s.efer));
    }
}
