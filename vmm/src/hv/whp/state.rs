//! Snapshot state on WHP: which registers a saved vCPU holds, the MSR ↔
//! WHP register table, the bit layouts of the event registers, and the
//! conversions to and from the backend-neutral [`VcpuState`]. Pure
//! functions, tested on every host; `sys/vcpu.rs` makes the calls.
//!
//! What WHP saves differently from KVM, and why that is fine:
//! - The XSAVE area and the local APIC are the bytes
//!   `WHvGetVirtualProcessorState` returns (XSAVE in the compacted format
//!   Hyper-V uses; `InterruptControllerState2` for the APIC), kept opaque in
//!   `VcpuState::xsave`/`lapic` and handed back unchanged on restore. A
//!   snapshot's header names its backend, so a KVM file (1 KiB APIC page,
//!   standard-format XSAVE, kvmclock) is refused on WHP and the reverse.
//! - There is no kvmclock: the guest's clock is the TSC, saved per vCPU as
//!   MSR 0x10 (see `sys/mod.rs` for how partition time is suspended so the
//!   vCPUs' TSCs are restored together).
//! - The Hyper-V MSRs this backend offers (guest OS id, hypercall, VP index,
//!   frequencies, TSC invariant control) are answered by our MSR exit
//!   handler from fixed values (`policy.rs`); the hypervisor holds no state
//!   for them, so there is nothing to save. No reference-TSC page is offered.

use super::abi::{RegValue, reg};
use super::regs::{self, GPR_NAMES, SREG_NAMES};
use crate::hv::{MpState, VcpuEvents, VcpuState};

/// Architectural MSR index ↔ WHP register, for the MSRs a snapshot saves
/// (EFER and APIC_BASE travel in `Sregs`).
pub const MSR_REGISTERS: [(u32, i32); 12] = [
    (0x10, reg::TSC),
    (0x174, reg::SYSENTER_CS),
    (0x175, reg::SYSENTER_ESP),
    (0x176, reg::SYSENTER_EIP),
    (0x277, reg::PAT),
    (0x2ff, reg::MTRR_DEF_TYPE),
    (0xc000_0081, reg::STAR),
    (0xc000_0082, reg::LSTAR),
    (0xc000_0083, reg::CSTAR),
    (0xc000_0084, reg::SFMASK),
    (0xc000_0102, reg::KERNEL_GS_BASE),
    (0xc000_0103, reg::TSC_AUX),
];

/// DR0-DR3, DR6, DR7, in `VcpuState::debug` order.
pub const DEBUG_NAMES: [i32; 6] = [reg::DR0, reg::DR1, reg::DR2, reg::DR3, reg::DR6, reg::DR7];

/// The event and activity registers, in [`events_to_values`] order; set
/// last on restore, after the APIC.
pub const EVENT_NAMES: [i32; 4] = [
    reg::PENDING_INTERRUPTION,
    reg::INTERRUPT_STATE,
    reg::PENDING_EVENT,
    reg::INTERNAL_ACTIVITY_STATE,
];

const N_GPR: usize = GPR_NAMES.len();
const N_SREG: usize = SREG_NAMES.len();
const N_MSR: usize = MSR_REGISTERS.len();
/// Number of registers in [`register_names`].
pub const N_REGISTERS: usize = N_GPR + N_SREG + N_MSR + DEBUG_NAMES.len() + 1;

/// `WHV_X64_PENDING_INTERRUPTION_REGISTER.InterruptionType` values.
const PENDING_INTERRUPT: u64 = 0;
const PENDING_NMI: u64 = 2;
const PENDING_EXCEPTION: u64 = 3;
/// `WHV_X64_PENDING_EVENT_TYPE`: an exception.
const EVENT_EXCEPTION: u64 = 0;
/// `WHV_INTERNAL_ACTIVITY_REGISTER` bits.
const STARTUP_SUSPEND: u64 = 1 << 0;
const HALT_SUSPEND: u64 = 1 << 1;

/// Saved state this backend cannot represent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// An MSR with no WHP register.
    #[error("saved MSR {0:#x} has no WHP register")]
    UnknownMsr(u32),
    /// A field or register value WHP has no place for.
    #[error("cannot represent on WHP: {0}")]
    Unrepresentable(&'static str),
}

/// The registers a snapshot reads and writes in one call, in
/// [`registers_to_values`] order: GPRs, segment/control registers, the MSRs
/// of [`MSR_REGISTERS`], the debug registers, XCR0.
pub fn register_names() -> [i32; N_REGISTERS] {
    let mut names = [0; N_REGISTERS];
    let msrs = MSR_REGISTERS.map(|m| m.1);
    let parts: [&[i32]; 5] = [&GPR_NAMES, &SREG_NAMES, &msrs, &DEBUG_NAMES, &[reg::XCR0]];
    let mut i = 0;
    for part in parts {
        names[i..i + part.len()].copy_from_slice(part);
        i += part.len();
    }
    names
}

/// The values of [`register_names`] for `s`. Every MSR of [`MSR_REGISTERS`]
/// must be in `s.msrs` (a snapshot made on WHP has them all); any other MSR
/// is an error rather than silently dropped.
pub fn registers_to_values(s: &VcpuState) -> Result<[RegValue; N_REGISTERS], StateError> {
    if let Some(&(index, _)) = s
        .msrs
        .iter()
        .find(|(i, _)| !MSR_REGISTERS.iter().any(|m| m.0 == *i))
    {
        return Err(StateError::UnknownMsr(index));
    }
    let mut v = [RegValue::default(); N_REGISTERS];
    v[..N_GPR].copy_from_slice(&regs::regs_to_values(&s.regs));
    v[N_GPR..N_GPR + N_SREG].copy_from_slice(&regs::sregs_to_values(&s.sregs));
    let base = N_GPR + N_SREG;
    for (k, &(index, _)) in MSR_REGISTERS.iter().enumerate() {
        let value = s.msrs.iter().find(|m| m.0 == index).map(|m| m.1).ok_or(
            StateError::Unrepresentable("a saved vCPU lacks one of the WHP MSRs"),
        )?;
        v[base + k] = RegValue::u64(value);
    }
    let base = base + N_MSR;
    for (k, &d) in s.debug.iter().enumerate() {
        v[base + k] = RegValue::u64(d);
    }
    v[N_REGISTERS - 1] = RegValue::u64(s.xcr0);
    Ok(v)
}

/// A `VcpuState` from the values of [`register_names`]; `xsave`, `lapic`,
/// `events` and `mp_state` are left empty for the caller to fill.
pub fn registers_from_values(v: &[RegValue; N_REGISTERS]) -> VcpuState {
    let mut gpr = [RegValue::default(); N_GPR];
    gpr.copy_from_slice(&v[..N_GPR]);
    let mut sreg = [RegValue::default(); N_SREG];
    sreg.copy_from_slice(&v[N_GPR..N_GPR + N_SREG]);
    let base = N_GPR + N_SREG;
    let msrs = MSR_REGISTERS
        .iter()
        .enumerate()
        .map(|(k, &(index, _))| (index, v[base + k].0[0]))
        .collect();
    let base = base + N_MSR;
    VcpuState {
        regs: regs::regs_from_values(&gpr),
        sregs: regs::sregs_from_values(&sreg),
        msrs,
        debug: std::array::from_fn(|k| v[base + k].0[0]),
        xcr0: v[N_REGISTERS - 1].0[0],
        ..VcpuState::default()
    }
}

/// Packs events and the run state into the [`EVENT_NAMES`] registers.
///
/// - An injected exception, interrupt or NMI is `PendingInterruption`
///   (the event being delivered); a pending, not yet delivered exception
///   is `PendingEvent`.
/// - WHP has one interrupt-shadow bit for STI and MOV SS alike.
/// - `Halted` is `HaltSuspend`; an AP waiting for INIT or SIPI
///   (`Uninitialized`/`InitReceived`) is `StartupSuspend`; the hypervisor
///   handles SIPI itself, so `SipiReceived` resumes as runnable.
/// - A pending (not injected) NMI and a software interrupt have no WHP
///   register: a WHP save never produces them, and restoring one is refused.
pub fn events_to_values(e: &VcpuEvents, mp: MpState) -> Result<[RegValue; 4], StateError> {
    if e.nmi_pending {
        return Err(StateError::Unrepresentable("a pending NMI"));
    }
    if e.interrupt_soft {
        return Err(StateError::Unrepresentable(
            "a software interrupt being injected",
        ));
    }
    let injected = [e.exception_injected, e.interrupt_injected, e.nmi_injected];
    if injected.iter().filter(|&&b| b).count() > 1 {
        return Err(StateError::Unrepresentable(
            "two events being injected at once",
        ));
    }
    let mut pi = 0u64;
    if e.exception_injected && !e.exception_pending {
        pi = 1
            | (PENDING_EXCEPTION << 1)
            | (u64::from(e.exception_has_error_code) << 4)
            | (u64::from(e.exception_nr) << 16)
            | (u64::from(e.exception_error_code) << 32);
    } else if e.interrupt_injected {
        pi = 1 | (PENDING_INTERRUPT << 1) | (u64::from(e.interrupt_nr) << 16);
    } else if e.nmi_injected {
        pi = 1 | (PENDING_NMI << 1) | (2 << 16);
    }
    let shadow = u64::from(e.interrupt_shadow != 0) | (u64::from(e.nmi_masked) << 1);
    let mut pe = [0u64; 2];
    if e.exception_pending {
        if e.exception_injected {
            return Err(StateError::Unrepresentable(
                "an exception both pending and injected",
            ));
        }
        pe[0] = 1
            | (EVENT_EXCEPTION << 1)
            | (u64::from(e.exception_has_error_code) << 8)
            | (u64::from(e.exception_nr) << 16)
            | (u64::from(e.exception_error_code) << 32);
    }
    let activity = match mp {
        MpState::Runnable | MpState::SipiReceived => 0,
        MpState::Halted => HALT_SUSPEND,
        MpState::Uninitialized | MpState::InitReceived => STARTUP_SUSPEND,
    };
    Ok([
        RegValue::u64(pi),
        RegValue::u64(shadow),
        RegValue(pe),
        RegValue::u64(activity),
    ])
}

/// The inverse of [`events_to_values`]. Refuses what the neutral struct
/// cannot hold (a software exception's instruction length, a nested event,
/// an exception parameter, an unknown event type) instead of dropping it.
pub fn events_from_values(v: &[RegValue; 4]) -> Result<(VcpuEvents, MpState), StateError> {
    let mut e = VcpuEvents::default();
    let pi = v[0].0[0];
    if pi & 1 != 0 {
        if (pi >> 5) & 0xf != 0 {
            return Err(StateError::Unrepresentable(
                "a software event with an instruction length being injected",
            ));
        }
        if pi & (1 << 9) != 0 {
            return Err(StateError::Unrepresentable("a nested event being injected"));
        }
        let vector = ((pi >> 16) & 0xff) as u8;
        match (pi >> 1) & 7 {
            PENDING_INTERRUPT => {
                e.interrupt_injected = true;
                e.interrupt_nr = vector;
            }
            PENDING_NMI => e.nmi_injected = true,
            PENDING_EXCEPTION => {
                e.exception_injected = true;
                e.exception_nr = vector;
                e.exception_has_error_code = pi & (1 << 4) != 0;
                e.exception_error_code = (pi >> 32) as u32;
            }
            _ => return Err(StateError::Unrepresentable("an unknown interruption type")),
        }
    }
    let shadow = v[1].0[0];
    e.interrupt_shadow = (shadow & 1) as u8;
    e.nmi_masked = shadow & 2 != 0;
    let pe = v[2].0;
    if pe[0] & 1 != 0 {
        if (pe[0] >> 1) & 7 != EVENT_EXCEPTION {
            return Err(StateError::Unrepresentable(
                "a pending external interrupt event",
            ));
        }
        if pe[1] != 0 {
            return Err(StateError::Unrepresentable(
                "a pending exception's parameter",
            ));
        }
        if e.exception_injected {
            return Err(StateError::Unrepresentable(
                "an exception both pending and injected",
            ));
        }
        e.exception_pending = true;
        e.exception_nr = ((pe[0] >> 16) & 0xff) as u8;
        e.exception_has_error_code = pe[0] & (1 << 8) != 0;
        e.exception_error_code = (pe[0] >> 32) as u32;
    }
    let activity = v[3].0[0];
    if activity & !(STARTUP_SUSPEND | HALT_SUSPEND) != 0 {
        return Err(StateError::Unrepresentable("an idle-suspended vCPU"));
    }
    let mp = if activity & STARTUP_SUSPEND != 0 {
        MpState::InitReceived
    } else if activity & HALT_SUSPEND != 0 {
        MpState::Halted
    } else {
        MpState::Runnable
    };
    Ok((e, mp))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
