//! The guest's CPUID: what KVM supports, plus the bits a PIT-less guest
//! needs (TSC-deadline, ARAT), per-vCPU APIC IDs, minus anything the
//! configuration hides. The KVM signature leaves (0x4000_0000/1) pass through
//! unchanged so the guest finds kvmclock.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};

use super::{HvError, call_err};
use crate::hv::VmConfig;

const TSC_DEADLINE_ECX: u32 = 1 << 24;
const HYPERVISOR_ECX: u32 = 1 << 31;
const ARAT_EAX: u32 = 1 << 2;

/// KVM's supported CPUID adjusted for this VM (vCPU-independent part).
pub(super) fn build(kvm: &kvm_ioctls::Kvm, config: &VmConfig) -> Result<CpuId, HvError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(call_err("KVM_GET_SUPPORTED_CPUID"))?;
    adjust(cpuid.as_mut_slice(), config);
    Ok(cpuid)
}

fn adjust(entries: &mut [kvm_cpuid_entry2], config: &VmConfig) {
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ecx |= TSC_DEADLINE_ECX | HYPERVISOR_ECX;
                // Logical processor count for the package.
                e.ebx = (e.ebx & !0x00ff_0000) | (u32::from(config.cpus) << 16);
            }
            6 => e.eax |= ARAT_EAX,
            _ => {}
        }
        for &(leaf, subleaf, reg, bit) in &config.hide_cpuid {
            if e.function == leaf && (e.index == subleaf || e.flags & 1 == 0) && bit < 32 {
                let r = match reg {
                    0 => &mut e.eax,
                    1 => &mut e.ebx,
                    2 => &mut e.ecx,
                    _ => &mut e.edx,
                };
                *r &= !(1u32 << bit);
            }
        }
    }
}

/// The per-vCPU copy: APIC IDs in leaves 1, 0xB and 0x1F.
pub(super) fn for_vcpu(base: &CpuId, id: u8, _cpus: u8) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24),
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn advertises_tsc_deadline_and_arat_and_keeps_kvm_leaves() {
        let mut e = [entry(1, 0), entry(6, 0), entry(0x4000_0000, 0)];
        e[2].ebx = 0x4b4d_564b; // "KVMK"
        e[2].eax = 0x4000_0001;
        let cfg = VmConfig {
            cpus: 2,
            ..Default::default()
        };
        adjust(&mut e, &cfg);
        assert_ne!(e[0].ecx & TSC_DEADLINE_ECX, 0);
        assert_eq!((e[0].ebx >> 16) & 0xff, 2);
        assert_ne!(e[1].eax & ARAT_EAX, 0);
        assert_eq!((e[2].eax, e[2].ebx), (0x4000_0001, 0x4b4d_564b));
    }

    #[test]
    fn hides_requested_bits() {
        let mut e = [entry(1, 0), entry(7, 0), entry(7, 1)];
        e[0].ecx = 1 << 13; // CX16
        e[1].edx = 1 << 29; // ARCH_CAPABILITIES
        e[1].flags = 1; // significant index
        e[2].flags = 1;
        e[2].edx = 1 << 29;
        let cfg = VmConfig {
            cpus: 1,
            hide_cpuid: vec![(1, 0, 2, 13), (7, 0, 3, 29)],
        };
        adjust(&mut e, &cfg);
        assert_eq!(e[0].ecx & (1 << 13), 0);
        assert_eq!(e[1].edx & (1 << 29), 0);
        assert_ne!(e[2].edx & (1 << 29), 0, "other subleaf untouched");
    }
}
