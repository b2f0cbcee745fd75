//! A WHP virtual processor: run, exit decoding, port I/O, MMIO through the
//! instruction emulator, registers, and the cancel-based kick.

use super::Partition;
use super::api::check;
use crate::emulator::{self, SnapshotCpu};
use crate::hv::whp::abi::{
    self, Exit, ExitBuf, IoAccess, MemoryAccess, RegValue, VpContext, prop, reg,
};
use crate::hv::whp::policy::{self, MsrReply};
use crate::hv::whp::regs::{self, GPR_NAMES, SREG_NAMES};
use crate::hv::whp::state;
use crate::hv::{HvError, IoOp, Kick, Regs, Sregs, Vcpu, VcpuExit, VcpuState};
use krypton_devices::warn_ratelimited;
use std::sync::Arc;
use windows_sys::Win32::System::Hypervisor::{WHV_REGISTER_VALUE, WHV_TRANSLATE_GVA_RESULT};

/// Largest XSAVE and APIC state read: the snapshot format's limits
/// (`snapshot/state.rs`).
const MAX_XSAVE: usize = 16 << 10;
const MAX_LAPIC: usize = 4096;

fn state_err(e: state::StateError) -> HvError {
    HvError::State(e.to_string())
}

fn state_api_missing(what: &str) -> HvError {
    HvError::Unavailable(format!(
        "this Windows lacks WHvGet/SetVirtualProcessorState ({what}); VM snapshots need \
         Windows 11 or Windows Server 2022 or later"
    ))
}

/// An exit waiting for `handle_io`/`handle_mmio`.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Io(VpContext, IoAccess),
    Mmio(MemoryAccess),
}

/// One WHP virtual processor.
#[derive(Debug)]
pub(crate) struct WhpVcpu {
    part: Arc<Partition>,
    index: u32,
    exit: ExitBuf,
    pending: Option<Pending>,
}

impl Drop for WhpVcpu {
    fn drop(&mut self) {
        // SAFETY: the VP was created by `create` and is deleted once.
        let hr = unsafe { (self.part.api.delete_vp)(self.part.handle, self.index) };
        if hr < 0 {
            log::warn!(
                "WHvDeleteVirtualProcessor({}) failed: {hr:#010x}",
                self.index
            );
        }
    }
}

impl WhpVcpu {
    pub(super) fn create(part: Arc<Partition>, index: u32) -> Result<Self, HvError> {
        // SAFETY: plain call on a set-up partition.
        check("WHvCreateVirtualProcessor", unsafe {
            (part.api.create_vp)(part.handle, index, 0)
        })?;
        Ok(WhpVcpu {
            part,
            index,
            exit: ExitBuf::default(),
            pending: None,
        })
    }

    fn get(&self, names: &[i32], values: &mut [RegValue]) -> Result<(), HvError> {
        let n = names.len().min(values.len()) as u32;
        let p = &self.part;
        // SAFETY: `names` and `values` hold `n` entries; RegValue is a
        // 16-byte-aligned, 16-byte WHV_REGISTER_VALUE.
        let hr = unsafe {
            (p.api.get_vp_registers)(
                p.handle,
                self.index,
                names.as_ptr(),
                n,
                values.as_mut_ptr().cast::<WHV_REGISTER_VALUE>(),
            )
        };
        check("WHvGetVirtualProcessorRegisters", hr)
    }

    fn set(&self, names: &[i32], values: &[RegValue]) -> Result<(), HvError> {
        let n = names.len().min(values.len()) as u32;
        let p = &self.part;
        // SAFETY: as in `get`, read-only.
        let hr = unsafe {
            (p.api.set_vp_registers)(
                p.handle,
                self.index,
                names.as_ptr(),
                n,
                values.as_ptr().cast::<WHV_REGISTER_VALUE>(),
            )
        };
        check("WHvSetVirtualProcessorRegisters", hr)
    }

    /// `WHvGetVirtualProcessorState` of `kind`, growing the buffer while
    /// WHP answers `WHV_E_INSUFFICIENT_BUFFER`, up to `max` bytes.
    fn get_state(&self, kind: i32, what: &str, max: usize) -> Result<Vec<u8>, HvError> {
        let p = &self.part;
        let get = p.api.get_vp_state.ok_or_else(|| state_api_missing(what))?;
        let mut buf = vec![0u8; 4096.min(max)];
        loop {
            let mut written = 0u32;
            // SAFETY: `buf` is `len` writable bytes; `written` is a writable local.
            let hr = unsafe {
                get(
                    p.handle,
                    self.index,
                    kind,
                    buf.as_mut_ptr().cast(),
                    buf.len() as u32,
                    &raw mut written,
                )
            };
            if hr == prop::E_INSUFFICIENT_BUFFER {
                if buf.len() >= max {
                    return Err(HvError::State(format!(
                        "WHP's {what} state is larger than the {max} bytes a snapshot holds"
                    )));
                }
                let want = (written as usize).max(buf.len() * 2).min(max);
                buf.resize(want, 0);
                continue;
            }
            check("WHvGetVirtualProcessorState", hr)?;
            buf.truncate((written as usize).min(buf.len()));
            return Ok(buf);
        }
    }

    fn set_state(&self, kind: i32, data: &[u8]) -> Result<(), HvError> {
        let p = &self.part;
        let set = p
            .api
            .set_vp_state
            .ok_or_else(|| state_api_missing("state"))?;
        // SAFETY: `data` is `len` readable bytes for the call.
        let hr = unsafe {
            set(
                p.handle,
                self.index,
                kind,
                data.as_ptr().cast(),
                data.len() as u32,
            )
        };
        check("WHvSetVirtualProcessorState", hr)
    }

    fn next_rip(vp: &VpContext, default_len: u64) -> u64 {
        let len = if vp.instruction_length == 0 {
            default_len
        } else {
            u64::from(vp.instruction_length)
        };
        vp.rip.wrapping_add(len)
    }

    fn complete_msr(&self, vp: &VpContext, m: &abi::MsrAccess) -> Result<(), HvError> {
        let rip = RegValue::u64(Self::next_rip(vp, 2));
        if m.is_write {
            if !policy::msr_write_known(m.msr) {
                warn_ratelimited!("WHP: guest wrote unknown MSR {:#x}; ignored", m.msr);
            }
            return self.set(&[reg::RIP], &[rip]);
        }
        let v = match policy::msr_read(m.msr, self.index, self.part.tsc_hz, self.part.apic_hz) {
            MsrReply::Value(v) => v,
            MsrReply::Unknown => {
                warn_ratelimited!("WHP: guest read unknown MSR {:#x}; returning 0", m.msr);
                0
            }
        };
        let vals = [RegValue::u64(v & 0xffff_ffff), RegValue::u64(v >> 32), rip];
        self.set(&[reg::RAX, 2, reg::RIP], &vals)
    }

    fn complete_cpuid(&self, vp: &VpContext, c: &abi::CpuidAccess) -> Result<(), HvError> {
        let r = policy::apply_hide(c.leaf, c.subleaf, c.default, &self.part.hide_cpuid);
        let vals = [r[0], r[1], r[2], r[3]].map(|v| RegValue::u64(u64::from(v)));
        let rip = RegValue::u64(Self::next_rip(vp, 2));
        // RAX, RBX, RCX, RDX, RIP
        self.set(
            &[reg::RAX, 3, 1, 2, reg::RIP],
            &[vals[0], vals[1], vals[2], vals[3], rip],
        )
    }

    /// Loads GPRs and segment/control registers for the emulator.
    fn snapshot(&self) -> Result<(Regs, Sregs), HvError> {
        let mut g = [RegValue::default(); 18];
        let mut s = [RegValue::default(); 17];
        self.get(&GPR_NAMES, &mut g)?;
        self.get(&SREG_NAMES, &mut s)?;
        Ok((regs::regs_from_values(&g), regs::sregs_from_values(&s)))
    }

    fn translate(part: &Partition, index: u32, gva: u64, write: bool) -> Option<u64> {
        let flags = abi::prop::TRANSLATE_PRIVILEGE_EXEMPT
            | if write {
                abi::prop::TRANSLATE_VALIDATE_WRITE
            } else {
                abi::prop::TRANSLATE_VALIDATE_READ
            };
        let mut result = WHV_TRANSLATE_GVA_RESULT::default();
        let mut gpa = 0u64;
        // SAFETY: `result` and `gpa` are writable locals.
        let hr = unsafe {
            (part.api.translate_gva)(
                part.handle,
                index,
                gva,
                flags,
                &raw mut result,
                &raw mut gpa,
            )
        };
        (hr >= 0 && result.ResultCode == 0).then_some(gpa)
    }

    /// Runs the emulator on a register snapshot, then writes GPRs and the
    /// new RIP back.
    fn emulate(
        &self,
        run: impl FnOnce(&mut SnapshotCpu<'_>) -> Result<u64, emulator::EmulatorError>,
    ) -> Result<(), HvError> {
        let (r, s) = self.snapshot()?;
        let part = &*self.part;
        let index = self.index;
        let mut cpu = SnapshotCpu::new(r, s)
            .with_translate(Box::new(move |gva, write| {
                Self::translate(part, index, gva, write)
            }))
            .with_ram(
                Box::new(|gpa, buf| part.read_ram(gpa, buf)),
                Box::new(|gpa, buf| part.write_ram(gpa, buf)),
            );
        let rip = run(&mut cpu)?;
        let mut out = cpu.regs;
        out.rip = rip;
        self.set(&GPR_NAMES, &regs::regs_to_values(&out))
    }
}

impl Vcpu for WhpVcpu {
    fn run(&mut self) -> Result<VcpuExit, HvError> {
        self.pending = None;
        loop {
            let p = &self.part;
            let size = abi::EXIT_CONTEXT_SIZE as u32;
            // SAFETY: the exit buffer is EXIT_CONTEXT_SIZE writable bytes, 16-byte aligned.
            let hr = unsafe {
                (p.api.run_vp)(p.handle, self.index, self.exit.0.as_mut_ptr().cast(), size)
            };
            check("WHvRunVirtualProcessor", hr)?;
            let (vp, exit) = abi::parse_exit(&self.exit.0);
            return Ok(match exit {
                Exit::Memory(m) => {
                    self.pending = Some(Pending::Mmio(m));
                    VcpuExit::Mmio
                }
                Exit::Io(io) => {
                    self.pending = Some(Pending::Io(vp, io));
                    VcpuExit::Io
                }
                Exit::ApicEoi(v) => VcpuExit::IoapicEoi(v),
                Exit::Halt => VcpuExit::Halt,
                // Also a cancel latched while the VP was not running.
                Exit::Canceled => VcpuExit::Canceled,
                Exit::UnrecoverableException => VcpuExit::Shutdown,
                Exit::InvalidVpRegisterValue => {
                    VcpuExit::Unhandled("whp: invalid VP register value")
                }
                Exit::UnsupportedFeature => VcpuExit::Unhandled("whp: unsupported feature"),
                Exit::Msr(m) => {
                    self.complete_msr(&vp, &m)?;
                    continue;
                }
                Exit::Cpuid(c) => {
                    self.complete_cpuid(&vp, &c)?;
                    continue;
                }
                // We never request interrupt windows (the hypervisor's LAPIC
                // delivers); clear a stale one so it cannot spin.
                Exit::InterruptWindow => {
                    self.set(
                        &[abi::reg::DELIVERABILITY_NOTIFICATIONS],
                        &[RegValue::default()],
                    )?;
                    continue;
                }
                Exit::Other(_) => VcpuExit::Unhandled("whp: unexpected exit reason"),
            });
        }
    }

    fn handle_io(&mut self, f: &mut dyn FnMut(u16, IoOp<'_>)) -> Result<(), HvError> {
        let Some(Pending::Io(vp, io)) = self.pending.take() else {
            return Err(HvError::Guest(
                "handle_io without a pending port I/O exit".into(),
            ));
        };
        if io.string || io.rep {
            let insn = io.insn;
            let len = usize::from(io.insn_len).min(16);
            return self.emulate(|cpu| emulator::emulate_string_io(cpu, &insn[..len], f));
        }
        let size = usize::from(io.size).clamp(1, 4);
        let rip = RegValue::u64(Self::next_rip(&vp, 1));
        if io.is_write {
            f(io.port, IoOp::Write(&io.rax.to_le_bytes()[..size]));
            self.set(&[reg::RIP], &[rip])
        } else {
            let mut data = [0u8; 4];
            f(io.port, IoOp::Read(&mut data[..size]));
            let rax = RegValue::u64(abi::rax_after_in(io.rax, io.size, &data[..size]));
            self.set(&[reg::RAX, reg::RIP], &[rax, rip])
        }
    }

    fn handle_mmio(&mut self, f: &mut dyn FnMut(u64, IoOp<'_>)) -> Result<(), HvError> {
        let Some(Pending::Mmio(m)) = self.pending.take() else {
            return Err(HvError::Guest(
                "handle_mmio without a pending MMIO exit".into(),
            ));
        };
        self.emulate(|cpu| emulator::emulate_mmio(cpu, m.insn_bytes(), m.gpa, f))
    }

    fn regs(&self) -> Result<Regs, HvError> {
        let mut v = [RegValue::default(); 18];
        self.get(&GPR_NAMES, &mut v)?;
        Ok(regs::regs_from_values(&v))
    }

    fn set_regs(&mut self, r: &Regs) -> Result<(), HvError> {
        self.set(&GPR_NAMES, &regs::regs_to_values(r))
    }

    fn sregs(&self) -> Result<Sregs, HvError> {
        let mut v = [RegValue::default(); 17];
        self.get(&SREG_NAMES, &mut v)?;
        Ok(regs::sregs_from_values(&v))
    }

    fn set_sregs(&mut self, s: &Sregs) -> Result<(), HvError> {
        let values = regs::sregs_to_values(s);
        // APIC_BASE is last; a zero there would disable the LAPIC, so keep
        // the hypervisor's default unless the loader chose one.
        let n = if s.apic_base == 0 {
            SREG_NAMES.len() - 1
        } else {
            SREG_NAMES.len()
        };
        self.set(&SREG_NAMES[..n], &values[..n])
    }

    fn set_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<(), HvError> {
        let mut names = Vec::new();
        let mut values = Vec::new();
        for &(index, value) in msrs {
            match regs::msr_register(index) {
                Some(name) => {
                    names.push(name);
                    values.push(RegValue::u64(value));
                }
                // IA32_MISC_ENABLE (fast strings) is the hypervisor's to
                // report; anything else a loader asks for is worth a warning.
                None if index == 0x1a0 => {
                    log::debug!("WHP: IA32_MISC_ENABLE is not settable; skipped")
                }
                None => log::warn!("WHP: MSR {index:#x} has no WHP register; not set"),
            }
        }
        if names.is_empty() {
            Ok(())
        } else {
            self.set(&names, &values)
        }
    }

    fn translate_gva(&self, gva: u64, write: bool) -> Result<Option<u64>, HvError> {
        Ok(Self::translate(&self.part, self.index, gva, write))
    }

    fn kicker(&self) -> Arc<dyn Kick> {
        Arc::new(WhpKick {
            part: self.part.clone(),
            index: self.index,
        })
    }

    /// Reads the register arrays, the event registers and the opaque
    /// XSAVE and APIC state. An I/O or MMIO exit not yet completed is
    /// dropped: WHP has not advanced RIP, so the restored guest executes
    /// the access again.
    fn save_state(&mut self) -> Result<VcpuState, HvError> {
        self.pending = None;
        let names = state::register_names();
        let mut v = [RegValue::default(); state::N_REGISTERS];
        self.get(&names, &mut v)?;
        let mut s = state::registers_from_values(&v);
        let mut ev = [RegValue::default(); 4];
        self.get(&state::EVENT_NAMES, &mut ev)?;
        (s.events, s.mp_state) = state::events_from_values(&ev).map_err(state_err)?;
        s.xsave = self.get_state(prop::STATE_XSAVE, "XSAVE", MAX_XSAVE)?;
        s.lapic = self.get_state(prop::STATE_LAPIC, "local APIC", MAX_LAPIC)?;
        Ok(s)
    }

    /// Registers first (APIC base included), then XSAVE and the APIC, then
    /// events and the run state.
    fn restore_state(&mut self, s: &VcpuState) -> Result<(), HvError> {
        if s.xsave.is_empty() || s.lapic.is_empty() {
            return Err(HvError::State(
                "the saved vCPU has no XSAVE or local APIC state".into(),
            ));
        }
        let values = state::registers_to_values(s).map_err(state_err)?;
        let events = state::events_to_values(&s.events, s.mp_state).map_err(state_err)?;
        self.set(&state::register_names(), &values)?;
        self.set_state(prop::STATE_XSAVE, &s.xsave)?;
        self.set_state(prop::STATE_LAPIC, &s.lapic)?;
        self.set(&state::EVENT_NAMES, &events)
    }
}

/// Cancels a running (or the next) `WHvRunVirtualProcessor`.
#[derive(Debug)]
struct WhpKick {
    part: Arc<Partition>,
    index: u32,
}

impl Kick for WhpKick {
    fn kick(&self) {
        // SAFETY: the partition outlives this handle (Arc), so the cancel
        // cannot race its deletion.
        let hr = unsafe { (self.part.api.cancel_run_vp)(self.part.handle, self.index, 0) };
        if hr < 0 {
            warn_ratelimited!(
                "WHvCancelRunVirtualProcessor({}) failed: {hr:#010x}",
                self.index
            );
        }
    }
}
