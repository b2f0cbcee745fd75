//! Saving and restoring a KVM vCPU and VM (`KVM_GET/SET_*`), in the order
//! KVM needs: pending I/O completed first, then MP state, registers, XSAVE,
//! XCRs, debug registers, LAPIC, MSRs and events last (they depend on the
//! rest).

use kvm_bindings::{
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
    Msrs, kvm_clock_data, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::{call_err, regs};
use crate::hv::HvError;
use crate::hv::state::{MpState, VcpuEvents, VcpuState, VmState};

/// Size of `kvm_xsave` (the 4 KiB XSAVE area KVM_GET_XSAVE returns).
const XSAVE_BYTES: usize = 4096;
/// Size of the LAPIC register page KVM exposes.
const LAPIC_BYTES: usize = 1024;
/// MSRs read per KVM_GET_MSRS call.
const MSR_BATCH: usize = 64;

fn guest_err(what: String) -> HvError {
    HvError::Guest(what)
}

/// Completes an exit whose result KVM applies on the next KVM_RUN (an MMIO
/// or port read's data lands in the register then) without running guest
/// code: KVM_RUN with `immediate_exit` set does exactly that and returns
/// EINTR.
fn complete_pending_io(fd: &mut VcpuFd) -> Result<(), HvError> {
    fd.set_kvm_immediate_exit(1);
    let r = fd.run().map(|_| ());
    fd.set_kvm_immediate_exit(0);
    match r {
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
        Err(e) => Err(call_err("KVM_RUN(immediate_exit)")(e)),
        Ok(()) => Ok(()),
    }
}

/// Reads every MSR of `index` KVM lets us read, skipping those it refuses.
fn read_msrs(fd: &VcpuFd, index: &[u32]) -> Result<Vec<(u32, u64)>, HvError> {
    let mut out = Vec::with_capacity(index.len());
    let mut rest: &[u32] = index;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| guest_err(format!("too many MSRs ({})", entries.len())))?;
        let n = fd.get_msrs(&mut msrs).map_err(call_err("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        // KVM stops at the first MSR it cannot read: skip that one.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

fn events_from_kvm(e: &kvm_vcpu_events) -> VcpuEvents {
    VcpuEvents {
        exception_injected: e.exception.injected != 0,
        exception_pending: e.exception.pending != 0,
        exception_nr: e.exception.nr,
        exception_has_error_code: e.exception.has_error_code != 0,
        exception_error_code: e.exception.error_code,
        interrupt_injected: e.interrupt.injected != 0,
        interrupt_nr: e.interrupt.nr,
        interrupt_soft: e.interrupt.soft != 0,
        interrupt_shadow: e.interrupt.shadow,
        nmi_injected: e.nmi.injected != 0,
        nmi_pending: e.nmi.pending != 0,
        nmi_masked: e.nmi.masked != 0,
        sipi_vector: e.sipi_vector,
    }
}

fn events_to_kvm(e: &VcpuEvents) -> kvm_vcpu_events {
    let mut k = kvm_vcpu_events {
        sipi_vector: e.sipi_vector,
        flags: KVM_VCPUEVENT_VALID_NMI_PENDING
            | KVM_VCPUEVENT_VALID_SIPI_VECTOR
            | KVM_VCPUEVENT_VALID_SHADOW,
        ..Default::default()
    };
    k.exception.injected = u8::from(e.exception_injected);
    k.exception.pending = u8::from(e.exception_pending);
    k.exception.nr = e.exception_nr;
    k.exception.has_error_code = u8::from(e.exception_has_error_code);
    k.exception.error_code = e.exception_error_code;
    k.interrupt.injected = u8::from(e.interrupt_injected);
    k.interrupt.nr = e.interrupt_nr;
    k.interrupt.soft = u8::from(e.interrupt_soft);
    k.interrupt.shadow = e.interrupt_shadow;
    k.nmi.injected = u8::from(e.nmi_injected);
    k.nmi.pending = u8::from(e.nmi_pending);
    k.nmi.masked = u8::from(e.nmi_masked);
    k
}

/// Saves a stopped vCPU.
pub(super) fn save(fd: &mut VcpuFd, msr_index: &[u32]) -> Result<VcpuState, HvError> {
    complete_pending_io(fd)?;
    let mp = fd.get_mp_state().map_err(call_err("KVM_GET_MP_STATE"))?;
    let mp_state = MpState::from_raw(mp.mp_state)
        .ok_or_else(|| guest_err(format!("vCPU in MP state {} cannot be saved", mp.mp_state)))?;
    let regs = regs::from_kvm_regs(&fd.get_regs().map_err(call_err("KVM_GET_REGS"))?);
    let sregs = regs::from_kvm_sregs(&fd.get_sregs().map_err(call_err("KVM_GET_SREGS"))?);
    let xsave = fd.get_xsave().map_err(call_err("KVM_GET_XSAVE"))?;
    let xsave: Vec<u8> = xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect();
    let xcrs = fd.get_xcrs().map_err(call_err("KVM_GET_XCRS"))?;
    let xcr0 = xcrs.xcrs[..(xcrs.nr_xcrs as usize).min(xcrs.xcrs.len())]
        .iter()
        .find(|x| x.xcr == 0)
        .map_or(1, |x| x.value);
    let dbg = fd.get_debug_regs().map_err(call_err("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(call_err("KVM_GET_LAPIC"))?;
    let lapic: Vec<u8> = lapic.regs.iter().map(|&b| b as u8).collect();
    let msrs = read_msrs(fd, msr_index)?;
    let events = fd
        .get_vcpu_events()
        .map_err(call_err("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        regs,
        sregs,
        msrs,
        xsave,
        xcr0,
        lapic,
        debug: [dbg.db[0], dbg.db[1], dbg.db[2], dbg.db[3], dbg.dr6, dbg.dr7],
        events: events_from_kvm(&events),
        mp_state,
    })
}

/// Restores a freshly created vCPU (its CPUID already set).
pub(super) fn restore(fd: &mut VcpuFd, s: &VcpuState) -> Result<(), HvError> {
    if s.xsave.len() != XSAVE_BYTES || s.lapic.len() != LAPIC_BYTES {
        return Err(guest_err(format!(
            "saved vCPU state has a {}-byte XSAVE area and a {}-byte LAPIC page (KVM uses {XSAVE_BYTES} and {LAPIC_BYTES})",
            s.xsave.len(),
            s.lapic.len()
        )));
    }
    fd.set_mp_state(kvm_mp_state {
        mp_state: s.mp_state.to_raw(),
    })
    .map_err(call_err("KVM_SET_MP_STATE"))?;
    fd.set_regs(&regs::to_kvm_regs(&s.regs))
        .map_err(call_err("KVM_SET_REGS"))?;
    let mut k = fd.get_sregs().map_err(call_err("KVM_GET_SREGS"))?;
    regs::apply_sregs(&mut k, &s.sregs);
    fd.set_sregs(&k).map_err(call_err("KVM_SET_SREGS"))?;
    let mut xsave = kvm_xsave::default();
    for (w, b) in xsave.region.iter_mut().zip(s.xsave.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    // SAFETY: `xsave` is a plain 4 KiB kvm_xsave; this VM never enabled
    // the larger XSAVE2 layout, so KVM reads exactly that much.
    unsafe { fd.set_xsave(&xsave) }.map_err(call_err("KVM_SET_XSAVE"))?;
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = s.xcr0;
    fd.set_xcrs(&xcrs).map_err(call_err("KVM_SET_XCRS"))?;
    let dbg = kvm_debugregs {
        db: [s.debug[0], s.debug[1], s.debug[2], s.debug[3]],
        dr6: s.debug[4],
        dr7: s.debug[5],
        ..Default::default()
    };
    fd.set_debug_regs(&dbg)
        .map_err(call_err("KVM_SET_DEBUGREGS"))?;
    let mut lapic = kvm_lapic_state::default();
    for (d, &b) in lapic.regs.iter_mut().zip(&s.lapic) {
        *d = b as i8;
    }
    fd.set_lapic(&lapic).map_err(call_err("KVM_SET_LAPIC"))?;
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    for chunk in entries.chunks(MSR_BATCH) {
        let list = Msrs::from_entries(chunk)
            .map_err(|_| guest_err(format!("too many MSRs ({})", chunk.len())))?;
        let n = fd.set_msrs(&list).map_err(call_err("KVM_SET_MSRS"))?;
        if n != chunk.len() {
            return Err(guest_err(format!(
                "KVM refused to restore MSR {:#x}",
                chunk.get(n).map_or(0, |e| e.index)
            )));
        }
    }
    fd.set_vcpu_events(&events_to_kvm(&s.events))
        .map_err(call_err("KVM_SET_VCPU_EVENTS"))
}

/// Saves the VM-wide clock.
pub(super) fn save_vm(fd: &VmFd) -> Result<VmState, HvError> {
    let clock = fd.get_clock().map_err(call_err("KVM_GET_CLOCK"))?;
    Ok(VmState {
        clock_ns: clock.clock,
    })
}

/// Restores the VM-wide clock.
pub(super) fn restore_vm(fd: &VmFd, s: &VmState) -> Result<(), HvError> {
    let clock = kvm_clock_data {
        clock: s.clock_ns,
        ..Default::default()
    };
    fd.set_clock(&clock).map_err(call_err("KVM_SET_CLOCK"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_kvm_layout() {
        let e = VcpuEvents {
            exception_injected: true,
            exception_nr: 14,
            exception_has_error_code: true,
            exception_error_code: 6,
            interrupt_injected: true,
            interrupt_nr: 0x31,
            interrupt_shadow: 1,
            nmi_pending: true,
            nmi_masked: true,
            sipi_vector: 0x9a,
            ..Default::default()
        };
        assert_eq!(events_from_kvm(&events_to_kvm(&e)), e);
    }
}
