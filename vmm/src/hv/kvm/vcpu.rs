//! A KVM vCPU: run, exit decoding, I/O completion and kicking.
//!
//! Kicking uses a real-time signal whose handler sets `immediate_exit` in
//! the kicked thread's `kvm_run`, so a kick that lands just before `KVM_RUN`
//! is not lost: the ioctl then returns `EINTR` at once.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kvm_bindings::{KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_MMIO, kvm_run};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use super::{call_err, regs, state};
use crate::hv::{HvError, IoOp, Kick, Regs, Sregs, Vcpu, VcpuExit, VcpuState};

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, for the kick handler.
    static RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = RUN_PTR.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` is this thread's mapped kvm_run, set by `KvmVcpu::run`
        // only for the duration of KVM_RUN; taking a field address is safe.
        let field = unsafe { std::ptr::addr_of_mut!((*p).immediate_exit) };
        // SAFETY: as above, the page is mapped; a byte store is async-signal-safe.
        unsafe { field.write_volatile(1) };
    }
}

/// Registers the kick signal handler once per process.
pub(super) fn install_kick_handler() -> Result<(), HvError> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    DONE.get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(|e| HvError::Call {
            call: "sigaction(SIGRTMIN)",
            source: std::io::Error::from_raw_os_error(e),
        })
}

/// Cross-thread handle that cancels a vCPU's `run`.
#[derive(Debug, Default)]
struct KvmKick {
    requested: AtomicBool,
    /// pthread_t of the running thread, 0 before the first `run`.
    thread: AtomicU64,
}

impl Kick for KvmKick {
    fn kick(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let t = self.thread.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: pthread_kill only queues a signal; a thread id that
            // has exited yields ESRCH, which is harmless here.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}

/// A KVM vCPU.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    id: u8,
    kick: Arc<KvmKick>,
    msr_index: Arc<Vec<u32>>,
}

impl KvmVcpu {
    pub(super) fn new(fd: VcpuFd, id: u8, msr_index: Arc<Vec<u32>>) -> Self {
        KvmVcpu {
            fd,
            id,
            kick: Arc::default(),
            msr_index,
        }
    }
}

const INTERNAL_ERROR: VcpuExit = VcpuExit::Unhandled("KVM internal error");

/// Maps KVM's exit to ours. Data stays in kvm_run for `handle_io`/`handle_mmio`.
fn classify(exit: &KvmExit<'_>) -> VcpuExit {
    match exit {
        KvmExit::IoIn(..) | KvmExit::IoOut(..) => VcpuExit::Io,
        KvmExit::MmioRead(..) | KvmExit::MmioWrite(..) => VcpuExit::Mmio,
        KvmExit::Hlt => VcpuExit::Halt,
        KvmExit::Shutdown | KvmExit::SystemEvent(..) => VcpuExit::Shutdown,
        KvmExit::IoapicEoi(v) => VcpuExit::IoapicEoi(*v),
        KvmExit::Intr => VcpuExit::Canceled,
        KvmExit::InternalError => INTERNAL_ERROR,
        KvmExit::FailEntry(reason, cpu) => {
            log::error!("VM entry failed, hardware reason {reason:#x} on host cpu {cpu}");
            VcpuExit::Unhandled("VM entry failure")
        }
        KvmExit::Exception => VcpuExit::Unhandled("KVM_EXIT_EXCEPTION"),
        KvmExit::Unknown => VcpuExit::Unhandled("KVM_EXIT_UNKNOWN"),
        _ => VcpuExit::Unhandled("unexpected KVM exit"),
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VcpuExit, HvError> {
        if self.kick.thread.load(Ordering::Relaxed) == 0 {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            self.kick.thread.store(me as u64, Ordering::SeqCst);
        }
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        RUN_PTR.with(|p| p.set(run_ptr));
        if self.kick.requested.swap(false, Ordering::SeqCst) {
            RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
            return Ok(VcpuExit::Canceled);
        }
        let result = self.fd.run();
        // Never leave the pointer set outside `run`: the vCPU (and its
        // kvm_run mapping) may be dropped before this thread exits, and a
        // late kick must not write to an unmapped page. A kick that lands
        // between runs is caught by `requested` at the next `run`.
        RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        let exit = match result {
            Ok(exit) => classify(&exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                self.kick.requested.store(false, Ordering::SeqCst);
                VcpuExit::Canceled
            }
            Err(e) => return Err(call_err("KVM_RUN")(e)),
        };
        if exit == INTERNAL_ERROR {
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active field.
            let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
            log::error!("vCPU {}: KVM internal error, suberror {sub}", self.id);
        }
        Ok(exit)
    }

    fn handle_io(&mut self, f: &mut dyn FnMut(u16, IoOp<'_>)) -> Result<(), HvError> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return Err(HvError::Guest(
                "handle_io without a pending port I/O exit".into(),
            ));
        }
        // SAFETY: exit_reason is KVM_EXIT_IO, so `io` is the active field.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let total = size * io.count as usize;
        let run_size = std::mem::size_of::<kvm_run>();
        let offset = io.data_offset as usize;
        // The data area lies inside the kvm_run mapping (one or more pages);
        // KVM guarantees it, but refuse anything that would leave the page.
        if !matches!(size, 1 | 2 | 4) || offset < run_size || offset + total > 4096 * 4 {
            return Err(HvError::Guest(format!(
                "bad port I/O exit: size {size}, count {}",
                io.count
            )));
        }
        let base = (run as *mut kvm_run).cast::<u8>();
        // SAFETY: `offset` lies inside the kvm_run mapping (checked above).
        let start = unsafe { base.add(offset) };
        // SAFETY: KVM places `count * size` bytes at `data_offset` inside the
        // mmap'd kvm_run area (bounds checked above), which this vCPU owns.
        let data = unsafe { std::slice::from_raw_parts_mut(start, total) };
        for chunk in data.chunks_exact_mut(size) {
            if u32::from(io.direction) == KVM_EXIT_IO_IN {
                f(io.port, IoOp::Read(chunk));
            } else {
                f(io.port, IoOp::Write(chunk));
            }
        }
        Ok(())
    }

    fn handle_mmio(&mut self, f: &mut dyn FnMut(u64, IoOp<'_>)) -> Result<(), HvError> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_MMIO {
            return Err(HvError::Guest(
                "handle_mmio without a pending MMIO exit".into(),
            ));
        }
        // SAFETY: exit_reason is KVM_EXIT_MMIO, so `mmio` is the active field.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(mmio.data.len());
        if mmio.is_write != 0 {
            f(mmio.phys_addr, IoOp::Write(&mmio.data[..len]));
        } else {
            f(mmio.phys_addr, IoOp::Read(&mut mmio.data[..len]));
        }
        Ok(())
    }

    fn regs(&self) -> Result<Regs, HvError> {
        self.fd
            .get_regs()
            .map(|r| regs::from_kvm_regs(&r))
            .map_err(call_err("KVM_GET_REGS"))
    }

    fn set_regs(&mut self, r: &Regs) -> Result<(), HvError> {
        self.fd
            .set_regs(&regs::to_kvm_regs(r))
            .map_err(call_err("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<Sregs, HvError> {
        self.fd
            .get_sregs()
            .map(|s| regs::from_kvm_sregs(&s))
            .map_err(call_err("KVM_GET_SREGS"))
    }

    fn set_sregs(&mut self, s: &Sregs) -> Result<(), HvError> {
        let mut k = self.fd.get_sregs().map_err(call_err("KVM_GET_SREGS"))?;
        regs::apply_sregs(&mut k, s);
        self.fd.set_sregs(&k).map_err(call_err("KVM_SET_SREGS"))
    }

    fn set_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<(), HvError> {
        let entries: Vec<kvm_bindings::kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list = kvm_bindings::Msrs::from_entries(&entries)
            .map_err(|_| HvError::Guest(format!("too many MSRs ({})", entries.len())))?;
        let n = self.fd.set_msrs(&list).map_err(call_err("KVM_SET_MSRS"))?;
        if n != entries.len() {
            return Err(HvError::Guest(format!(
                "KVM rejected MSR {:#x}",
                entries.get(n).map_or(0, |e| e.index)
            )));
        }
        Ok(())
    }

    fn translate_gva(&self, gva: u64, _write: bool) -> Result<Option<u64>, HvError> {
        let t = self
            .fd
            .translate_gva(gva)
            .map_err(call_err("KVM_TRANSLATE"))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }

    fn kicker(&self) -> Arc<dyn Kick> {
        self.kick.clone()
    }

    fn save_state(&mut self) -> Result<VcpuState, HvError> {
        state::save(&mut self.fd, &self.msr_index)
    }

    fn restore_state(&mut self, s: &VcpuState) -> Result<(), HvError> {
        state::restore(&mut self.fd, s)
    }
}
