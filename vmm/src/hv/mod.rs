//! The backend-neutral hypervisor layer.
//!
//! A backend (KVM on Linux, WHP on Windows) implements [`Hypervisor`], [`Vm`]
//! and [`Vcpu`]. Exits carry no data: the vCPU loop sees `VcpuExit::Io` or
//! `VcpuExit::Mmio` and calls `handle_io`/`handle_mmio` with a closure that
//! performs the bus access; the backend decodes the access, calls the closure
//! and completes the instruction. `cfg` appears only on the module lines below.

#[cfg(target_os = "linux")]
pub mod kvm;
pub mod state;
pub mod whp;

use std::sync::Arc;

pub use krypton_boot::cpu::{CpuState, DescriptorTable, Regs, Segment, Sregs};
pub use krypton_devices::interrupt::{Msi, MsiSink};
pub use state::{MpState, VcpuEvents, VcpuState, VmState};

/// One port-I/O or MMIO access, seen from the device side.
#[derive(Debug)]
pub enum IoOp<'a> {
    /// The guest reads; fill the buffer (its length is the access size).
    Read(&'a mut [u8]),
    /// The guest writes these bytes.
    Write(&'a [u8]),
}

/// Why `Vcpu::run` returned. Data-less: ask the vCPU for details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuExit {
    /// Port I/O pending: call [`Vcpu::handle_io`].
    Io,
    /// MMIO pending: call [`Vcpu::handle_mmio`].
    Mmio,
    /// HLT with interrupts disabled or nothing left to wake the vCPU.
    Halt,
    /// The local APIC signalled EOI for this vector of a level-triggered
    /// interrupt; forward it to the IOAPIC.
    IoapicEoi(u8),
    /// Triple fault or processor shutdown.
    Shutdown,
    /// The run was cancelled by a [`Kick`].
    Canceled,
    /// Anything the loop does not handle; the text names it.
    Unhandled(&'static str),
}

/// Errors from the hypervisor layer.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// The hypervisor is missing, disabled or not accessible to this user.
    #[error("{0}")]
    Unavailable(String),
    /// A hypervisor call failed.
    #[error("{call} failed")]
    Call {
        /// The call that failed (for example `KVM_RUN`).
        call: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The guest did something the backend cannot complete (for example an
    /// MMIO instruction the emulator does not know).
    #[error("{0}")]
    Guest(String),
    /// Saved state this backend cannot hold (for example a snapshot field
    /// with no register on this hypervisor).
    #[error("{0}")]
    State(String),
}

/// Static configuration of a VM, fixed at creation.
#[derive(Debug, Clone, Default)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub cpus: u8,
    /// CPUID feature bits to hide from the guest, as (leaf, subleaf,
    /// register index 0=EAX..3=EDX, bit). Used by the test-platform kernel.
    pub hide_cpuid: Vec<(u32, u32, u8, u8)>,
}

/// A hypervisor we can create VMs on.
pub trait Hypervisor: Send + Sync {
    /// Backend name for messages ("kvm", "whp").
    fn name(&self) -> &'static str;
    /// Which backend this is (snapshots are tagged with it).
    fn backend(&self) -> Backend;
    /// Creates an empty VM with its interrupt controller set up.
    fn create_vm(&self, config: &VmConfig) -> Result<Arc<dyn Vm>, HvError>;
}

/// A VM: guest memory mappings, vCPUs and interrupt injection.
pub trait Vm: Send + Sync + MsiSink {
    /// Maps host memory into the guest physical address space.
    ///
    /// # Safety
    /// `host` must point to `size` bytes that stay mapped, and are not
    /// otherwise freed, for the VM's lifetime.
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        host: *mut u8,
        size: usize,
    ) -> Result<(), HvError>;
    /// Creates vCPU `id`. vCPU 0 is the boot processor; the others wait for
    /// INIT/SIPI from it.
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, HvError>;
    /// Saves VM-wide hypervisor state (the paravirtual clock).
    fn save_state(&self) -> Result<VmState, HvError>;
    /// Restores what [`Vm::save_state`] saved, before any vCPU runs.
    fn restore_state(&self, state: &VmState) -> Result<(), HvError>;
}

/// Makes a running vCPU return `VcpuExit::Canceled` soon. Cheap and callable
/// from any thread; a kick before `run` makes the next `run` return at once.
pub trait Kick: Send + Sync {
    /// Requests the exit.
    fn kick(&self);
}

/// One virtual processor, driven from a single thread.
pub trait Vcpu: Send {
    /// Runs until the next exit.
    fn run(&mut self) -> Result<VcpuExit, HvError>;
    /// Completes a pending `VcpuExit::Io` by calling `f(port, op)`.
    fn handle_io(&mut self, f: &mut dyn FnMut(u16, IoOp<'_>)) -> Result<(), HvError>;
    /// Completes a pending `VcpuExit::Mmio` by calling `f(address, op)`
    /// once per access (string instructions may make several).
    fn handle_mmio(&mut self, f: &mut dyn FnMut(u64, IoOp<'_>)) -> Result<(), HvError>;
    /// Reads the general-purpose registers.
    fn regs(&self) -> Result<Regs, HvError>;
    /// Writes the general-purpose registers.
    fn set_regs(&mut self, regs: &Regs) -> Result<(), HvError>;
    /// Reads the segment and control registers.
    fn sregs(&self) -> Result<Sregs, HvError>;
    /// Writes the segment and control registers.
    fn set_sregs(&mut self, sregs: &Sregs) -> Result<(), HvError>;
    /// Writes MSRs.
    fn set_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<(), HvError>;
    /// Translates a guest-virtual address with the vCPU's current paging
    /// state; `None` when it is not mapped.
    fn translate_gva(&self, gva: u64, write: bool) -> Result<Option<u64>, HvError>;
    /// A handle that cancels `run` from another thread.
    fn kicker(&self) -> Arc<dyn Kick>;
    /// Saves the state of a vCPU that is not running (after its loop
    /// stopped), completing any I/O whose result was still pending.
    fn save_state(&mut self) -> Result<VcpuState, HvError>;
    /// Restores a freshly created vCPU to `state`.
    fn restore_state(&mut self, state: &VcpuState) -> Result<(), HvError>;
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Linux KVM.
    Kvm,
    /// Windows Hypervisor Platform.
    Whp,
}

impl Backend {
    /// The backend native to this host OS.
    pub fn host_default() -> Self {
        if cfg!(windows) {
            Backend::Whp
        } else {
            Backend::Kvm
        }
    }
}

/// Opens the chosen backend. The only place the backends are named.
pub fn new(backend: Backend) -> Result<Box<dyn Hypervisor>, HvError> {
    match backend {
        #[cfg(target_os = "linux")]
        Backend::Kvm => Ok(Box::new(kvm::Kvm::open()?)),
        Backend::Whp => whp::open(),
        #[allow(unreachable_patterns)]
        _ => Err(HvError::Unavailable(format!(
            "{backend:?} is not available on this OS"
        ))),
    }
}
