//! Saved machine state, backend-neutral where the hardware state is the
//! same on KVM and WHP: registers, MSRs, the XSAVE area, the local APIC's
//! register page, pending events. Snapshots (`crate::snapshot`) store these.

use super::{Regs, Sregs};

/// A vCPU's multiprocessing state, numbered as KVM numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MpState {
    /// Running or ready to run.
    #[default]
    Runnable,
    /// An application processor that has not received INIT yet.
    Uninitialized,
    /// INIT received, waiting for SIPI.
    InitReceived,
    /// Halted (HLT) with interrupts enabled: an interrupt wakes it.
    Halted,
    /// SIPI received.
    SipiReceived,
}

impl MpState {
    /// KVM's `KVM_MP_STATE_*` number.
    pub fn to_raw(self) -> u32 {
        match self {
            MpState::Runnable => 0,
            MpState::Uninitialized => 1,
            MpState::InitReceived => 2,
            MpState::Halted => 3,
            MpState::SipiReceived => 4,
        }
    }

    /// From KVM's number; `None` for states a snapshot cannot hold.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => MpState::Runnable,
            1 => MpState::Uninitialized,
            2 => MpState::InitReceived,
            3 => MpState::Halted,
            4 => MpState::SipiReceived,
            _ => return None,
        })
    }
}

/// Events in flight in a vCPU: an exception or interrupt being injected,
/// NMI state, the interrupt shadow of STI/MOV SS, and the SIPI vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuEvents {
    /// An exception is being injected.
    pub exception_injected: bool,
    /// An exception is pending (not yet delivered).
    pub exception_pending: bool,
    /// Its vector.
    pub exception_nr: u8,
    /// Whether it pushes an error code.
    pub exception_has_error_code: bool,
    /// The error code.
    pub exception_error_code: u32,
    /// An external interrupt is being injected.
    pub interrupt_injected: bool,
    /// Its vector.
    pub interrupt_nr: u8,
    /// A software interrupt (INT n).
    pub interrupt_soft: bool,
    /// Interrupt shadow (bit 0: STI, bit 1: MOV SS).
    pub interrupt_shadow: u8,
    /// An NMI is being injected.
    pub nmi_injected: bool,
    /// An NMI is pending.
    pub nmi_pending: bool,
    /// NMIs are blocked.
    pub nmi_masked: bool,
    /// Vector of the last SIPI.
    pub sipi_vector: u32,
}

/// Everything needed to resume one vCPU exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: Regs,
    /// Segment, descriptor-table and control registers, EFER, APIC base.
    pub sregs: Sregs,
    /// Every MSR the hypervisor lets us read (TSC, kvmclock, syscall MSRs,
    /// and on kvm_pvm its own PVM MSRs), as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// The XSAVE area (legacy FXSAVE region, header, extended state).
    pub xsave: Vec<u8>,
    /// XCR0.
    pub xcr0: u64,
    /// The local APIC's register page (the first 1 KiB).
    pub lapic: Vec<u8>,
    /// DR0-DR3, DR6, DR7.
    pub debug: [u64; 6],
    /// Events in flight.
    pub events: VcpuEvents,
    /// Running, halted, waiting for SIPI...
    pub mp_state: MpState,
}

/// VM-wide hypervisor state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmState {
    /// The guest's paravirtual clock (kvmclock) in ns; 0 where the backend
    /// has none.
    pub clock_ns: u64,
}
