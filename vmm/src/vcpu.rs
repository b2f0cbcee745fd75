//! The one vCPU loop. `handle_exit` is a free function so synthetic exits
//! can be unit-tested without a hypervisor.
//!
//! Hops for a guest MMIO write: this loop matches `VcpuExit::Mmio` → the
//! backend's `handle_mmio` decodes it and calls the closure → `Bus::write`
//! finds the device → the device's `BusDevice::write`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::bus::Bus;

use crate::hv::{HvError, Vcpu, VcpuExit};
use crate::mmio_check::{self, MmioCheck};

/// What a vCPU's exits are dispatched to.
pub struct ExitContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Forwards a level-triggered EOI (vector) to the IOAPIC.
    pub eoi: Box<dyn Fn(u8) + Send + Sync>,
    /// Differential check of the MMIO emulator, when enabled.
    pub mmio_check: Option<MmioCheck>,
}

impl std::fmt::Debug for ExitContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitContext")
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish_non_exhaustive()
    }
}

/// Why a vCPU stopped running.
#[derive(Debug)]
pub enum VcpuStop {
    /// The VMM asked it to stop (guest exit request, timeout, another vCPU ended).
    Requested,
    /// Triple fault or shutdown.
    Shutdown,
    /// HLT with nothing left to wake the vCPU.
    Halted,
    /// An exit the VMM does not handle.
    Unhandled(&'static str),
    /// The hypervisor failed.
    Error(HvError),
}

/// Continue running, or stop for this reason.
#[derive(Debug)]
pub enum Flow {
    /// Run again.
    Continue,
    /// Leave the loop.
    Stop(VcpuStop),
}

/// Handles one exit.
pub fn handle_exit(
    exit: VcpuExit,
    vcpu: &mut dyn Vcpu,
    ctx: &ExitContext,
    stop: &AtomicBool,
) -> Result<Flow, HvError> {
    match exit {
        VcpuExit::Io => vcpu.handle_io(&mut |port, op| ctx.pio.access(u64::from(port), op))?,
        VcpuExit::Mmio => match &ctx.mmio_check {
            None => vcpu.handle_mmio(&mut |addr, op| ctx.mmio.access(addr, op))?,
            Some(check) => {
                let mut first = None;
                vcpu.handle_mmio(&mut |addr, op| {
                    first.get_or_insert_with(|| mmio_check::exit_of(addr, &op));
                    ctx.mmio.access(addr, op);
                })?;
                if let Some(exit) = first {
                    check.check(vcpu, exit);
                }
            }
        },
        VcpuExit::IoapicEoi(vector) => (ctx.eoi)(vector),
        VcpuExit::Canceled => {
            if stop.load(Ordering::SeqCst) {
                return Ok(Flow::Stop(VcpuStop::Requested));
            }
        }
        VcpuExit::Halt => return Ok(Flow::Stop(VcpuStop::Halted)),
        VcpuExit::Shutdown => return Ok(Flow::Stop(VcpuStop::Shutdown)),
        VcpuExit::Unhandled(what) => return Ok(Flow::Stop(VcpuStop::Unhandled(what))),
    }
    Ok(Flow::Continue)
}

/// Runs `vcpu` until it stops or `stop` is set (and the vCPU kicked).
pub fn run_loop(vcpu: &mut dyn Vcpu, ctx: &ExitContext, stop: &AtomicBool) -> VcpuStop {
    loop {
        if stop.load(Ordering::SeqCst) {
            return VcpuStop::Requested;
        }
        let flow = vcpu
            .run()
            .and_then(|exit| handle_exit(exit, vcpu, ctx, stop));
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop(why)) => return why,
            Err(e) => return VcpuStop::Error(e),
        }
    }
}

#[cfg(test)]
mod tests;
