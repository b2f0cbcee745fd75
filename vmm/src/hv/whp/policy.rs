//! Platform-neutral WHP policy: the Hyper-V CPUID leaves and frequency MSRs
//! that give Linux its TSC and LAPIC timer frequencies without calibration,
//! the CPUID hiding used by the test-platform kernel, and MSI →
//! `WHV_INTERRUPT_CONTROL` conversion.

use crate::hv::Msi;

/// `HV_X64_MSR_GUEST_OS_ID`.
pub const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
/// `HV_X64_MSR_HYPERCALL`.
pub const MSR_HYPERCALL: u32 = 0x4000_0001;
/// `HV_X64_MSR_VP_INDEX`.
pub const MSR_VP_INDEX: u32 = 0x4000_0002;
/// `HV_X64_MSR_TSC_FREQUENCY`.
pub const MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
/// `HV_X64_MSR_APIC_FREQUENCY`.
pub const MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
/// `HV_X64_MSR_TSC_INVARIANT_CONTROL`.
pub const MSR_TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;

/// 0x40000003 EAX: HYPERCALL MSRs available (bit 5).
pub const HV_MSR_HYPERCALL_AVAILABLE: u32 = 1 << 5;
/// 0x40000003 EAX: VP_INDEX MSR available (bit 6).
pub const HV_MSR_VP_INDEX_AVAILABLE: u32 = 1 << 6;
/// 0x40000003 EAX: frequency MSRs readable (bit 11).
pub const HV_ACCESS_FREQUENCY_MSRS: u32 = 1 << 11;
/// 0x40000003 EAX: TSC invariant control (bit 15).
pub const HV_ACCESS_TSC_INVARIANT: u32 = 1 << 15;
/// 0x40000003 EDX: frequency MSRs available (bit 8).
pub const HV_FEATURE_FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;

/// LAPIC timer frequency used when WHP does not report one (QEMU's
/// `HYPERV_APIC_BUS_FREQUENCY`).
pub const DEFAULT_APIC_HZ: u64 = 200_000_000;

/// One `WHV_X64_CPUID_RESULT` entry: leaf and EAX, EBX, ECX, EDX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidResult {
    /// Leaf (`Function`).
    pub leaf: u32,
    /// EAX, EBX, ECX, EDX.
    pub regs: [u32; 4],
}

/// The Hyper-V leaves 0x40000000..=0x40000006 that make Linux's
/// `ms_hyperv_platform()` accept the platform and read the TSC and APIC
/// frequencies from MSRs 0x40000022/0x40000023 (linux
/// arch/x86/kernel/cpu/mshyperv.c), with an invariant TSC. Without a known
/// TSC frequency (`frequencies` false) the frequency MSRs are not offered
/// and Linux calibrates.
pub fn hyperv_leaves(frequencies: bool) -> Vec<CpuidResult> {
    let (freq_eax, freq_edx) = if frequencies {
        (
            HV_ACCESS_FREQUENCY_MSRS,
            HV_FEATURE_FREQUENCY_MSRS_AVAILABLE,
        )
    } else {
        (0, 0)
    };
    let sig = |s: &[u8; 4]| u32::from_le_bytes(*s);
    let mut leaves = vec![
        CpuidResult {
            leaf: 0x4000_0000,
            regs: [0x4000_0006, sig(b"Micr"), sig(b"osof"), sig(b"t Hv")],
        },
        CpuidResult {
            leaf: 0x4000_0001,
            regs: [sig(b"Hv#1"), 0, 0, 0],
        },
        CpuidResult {
            leaf: 0x4000_0002,
            regs: [0; 4],
        },
        CpuidResult {
            leaf: 0x4000_0003,
            regs: [
                HV_MSR_HYPERCALL_AVAILABLE
                    | HV_MSR_VP_INDEX_AVAILABLE
                    | freq_eax
                    | HV_ACCESS_TSC_INVARIANT,
                0,
                0,
                freq_edx,
            ],
        },
    ];
    leaves.extend((4..=6).map(|i| CpuidResult {
        leaf: 0x4000_0000 + i,
        regs: [0; 4],
    }));
    leaves
}

/// What to do with an RDMSR/WRMSR that exited to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrReply {
    /// Return this value (reads) or accept (writes).
    Value(u64),
    /// Unknown MSR: reads return 0 and writes are dropped, with a
    /// rate-limited warning (QEMU's default policy).
    Unknown,
}

/// Answers the synthetic MSRs. `vp` is the VP index.
pub fn msr_read(msr: u32, vp: u32, tsc_hz: u64, apic_hz: u64) -> MsrReply {
    match msr {
        MSR_TSC_FREQUENCY => MsrReply::Value(tsc_hz),
        MSR_APIC_FREQUENCY => MsrReply::Value(apic_hz),
        MSR_VP_INDEX => MsrReply::Value(u64::from(vp)),
        MSR_GUEST_OS_ID | MSR_HYPERCALL | MSR_TSC_INVARIANT_CONTROL => MsrReply::Value(0),
        _ => MsrReply::Unknown,
    }
}

/// Whether a write to `msr` is expected (accepted silently).
pub fn msr_write_known(msr: u32) -> bool {
    matches!(
        msr,
        MSR_GUEST_OS_ID | MSR_HYPERCALL | MSR_TSC_INVARIANT_CONTROL
    )
}

/// Leaves whose CPUID must exit to us so `hide` can clear bits.
pub fn cpuid_exit_leaves(hide: &[(u32, u32, u8, u8)]) -> Vec<u32> {
    let mut v: Vec<u32> = hide.iter().map(|h| h.0).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Applies the `VmConfig::hide_cpuid` list to the hypervisor's answer.
pub fn apply_hide(
    leaf: u32,
    subleaf: u32,
    mut regs: [u32; 4],
    hide: &[(u32, u32, u8, u8)],
) -> [u32; 4] {
    for &(l, s, r, bit) in hide {
        if l == leaf && s == subleaf && r < 4 && bit < 32 {
            regs[usize::from(r)] &= !(1u32 << bit);
        }
    }
    regs
}

/// A `WHV_INTERRUPT_CONTROL`: packed type/mode word, destination, vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptControl {
    /// `Type:8 | DestinationMode:4 | TriggerMode:4`.
    pub control: u64,
    /// Destination APIC ID (or logical mask).
    pub destination: u32,
    /// Vector.
    pub vector: u32,
}

/// Converts an x86 MSI to `WHV_INTERRUPT_CONTROL`; `None` for delivery
/// modes WHP cannot request (SMI, ExtINT, reserved).
pub fn msi_to_interrupt(msi: Msi) -> Option<InterruptControl> {
    let delivery = (msi.data >> 8) & 7;
    // WHV_INTERRUPT_TYPE: Fixed 0, LowestPriority 1, Nmi 4, Init 5 equal
    // the MSI delivery-mode encodings.
    if !matches!(delivery, 0 | 1 | 4 | 5) {
        return None;
    }
    let dest_mode = (msi.address >> 2) & 1;
    let level = u64::from((msi.data >> 15) & 1);
    Some(InterruptControl {
        control: u64::from(delivery) | (dest_mode << 8) | (level << 12),
        destination: ((msi.address >> 12) & 0xff) as u32,
        vector: msi.data & 0xff,
    })
}
