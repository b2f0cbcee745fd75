//! `krypton selftest`: conformance guests that exercise the hypervisor
//! backend and the platform devices on the real hypervisor.
//!
//! Each case assembles a tiny guest with iced-x86 at run time (no external
//! assembler), starts it in real, protected or long mode on a fresh
//! [`Machine`](crate::machine::Machine), and checks the outcome host-side:
//! the debug-exit value (guest-side checks report numbered failure codes),
//! the accesses a recording test device saw, and captured serial output.
//!
//! A case that cannot run on this host is reported as skipped with the
//! reason, never passed: either the guest itself finds a feature missing
//! (CPUID), or the case failed in a way the host platform is known to cause
//! (see [`platform`]), in which case the observed failure is in the reason.

mod cases;
pub mod guest;
mod platform;
mod report;
mod runner;
pub mod testdev;

#[cfg(test)]
mod tests;

pub use report::{CaseReport, SelftestReport, Status};

use crate::hv::Hypervisor;
use guest::Mode;
use std::time::Instant;

/// Why a case did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CaseFailure {
    /// A check failed; the text says which and what was seen.
    #[error("{0}")]
    Fail(String),
    /// The case cannot run on this host; the text says why.
    #[error("{0}")]
    Skip(String),
    /// The guest program could not be assembled.
    #[error("assembling the guest")]
    Asm(#[from] iced_x86::IcedError),
    /// The VM could not be built or run.
    #[error("machine")]
    Machine(#[from] crate::machine::MachineError),
    /// The boot crate could not write the entry structures.
    #[error("entry state")]
    Boot(#[from] krypton_boot::BootError),
    /// Guest memory could not be written or read.
    #[error("guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

impl CaseFailure {
    /// The failure and all its causes on one line.
    fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
        }
        s
    }
}

/// One conformance case: a body run in one entry mode.
struct Case {
    base: &'static str,
    mode: Mode,
    body: fn(&dyn Hypervisor, Mode) -> Result<(), CaseFailure>,
}

impl Case {
    fn name(&self) -> String {
        format!("{}-{}", self.base, self.mode.short())
    }
}

/// Every case, in the order run. `entry-*` come first: if a mode cannot be
/// entered, the other cases of that mode are skipped with that reason.
fn all_cases() -> Vec<Case> {
    use Mode::{Long, Protected, Real};
    let mut v = Vec::new();
    let mut add = |base, modes: &[Mode], body| {
        for &mode in modes {
            v.push(Case { base, mode, body });
        }
    };
    add("entry", &[Real, Protected, Long], cases::entry);
    add("pio", &[Real, Protected, Long], cases::pio);
    add("pio-string", &[Real, Protected, Long], cases::pio_string);
    add("mmio", &[Real, Protected, Long], cases::mmio);
    add("iret", &[Real, Protected, Long], cases::iret);
    add("soft-int", &[Real, Protected, Long], cases::soft_int);
    add(
        "ioapic-irq-hlt",
        &[Real, Protected, Long],
        cases::ioapic_irq,
    );
    add(
        "ioapic-level-irq",
        &[Real, Protected, Long],
        cases::ioapic_level,
    );
    add(
        "lapic-timer-oneshot",
        &[Real, Protected, Long],
        cases::timer_oneshot,
    );
    add(
        "lapic-timer-periodic",
        &[Real, Protected, Long],
        cases::timer_periodic,
    );
    add(
        "lapic-timer-tsc-deadline",
        &[Real, Protected, Long],
        cases::timer_tsc_deadline,
    );
    add("serial", &[Real, Protected, Long], cases::serial);
    add(
        "serial-input",
        &[Real, Protected, Long],
        cases::serial_input,
    );
    add("serial-irq", &[Real, Protected, Long], cases::serial_irq);
    add("smp-init-sipi", &[Real, Protected, Long], cases::smp);
    add("debug-exit", &[Real, Protected, Long], cases::debug_exit);
    add("i8042-reset", &[Real, Protected, Long], cases::i8042_reset);
    add(
        "triple-fault",
        &[Real, Protected, Long],
        cases::triple_fault,
    );
    v
}

/// The names of every case, in run order.
pub fn case_names() -> Vec<String> {
    all_cases().iter().map(Case::name).collect()
}

/// Runs every case whose name contains `filter` (all if `None`).
pub fn run_all(hv: &dyn Hypervisor, filter: Option<&str>) -> SelftestReport {
    let start = Instant::now();
    let mut report = SelftestReport {
        backend: hv.name(),
        cases: Vec::new(),
        total: Default::default(),
    };
    // Entry modes that could not be entered, with the reason.
    let mut broken_modes: Vec<(Mode, String)> = Vec::new();
    for case in all_cases() {
        let name = case.name();
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let t = Instant::now();
        let blocked = broken_modes.iter().find(|(m, _)| *m == case.mode);
        let status = if let Some((_, why)) = blocked {
            Status::Skip(format!("{} mode unavailable: {why}", case.mode.short()))
        } else {
            match (case.body)(hv, case.mode) {
                Ok(()) => Status::Pass,
                Err(CaseFailure::Skip(why)) => Status::Skip(why),
                Err(e) => {
                    let observed = e.chain();
                    match platform::known_limitation(&name, &observed) {
                        Some(limit) => Status::Skip(format!("{limit} (observed: {observed})")),
                        None => Status::Fail(observed),
                    }
                }
            }
        };
        if case.base == "entry" {
            match &status {
                Status::Pass => {}
                Status::Fail(why) | Status::Skip(why) => {
                    broken_modes.push((case.mode, why.clone()))
                }
            }
        }
        log::info!("selftest {name}: {status:?}");
        report.cases.push(CaseReport {
            name,
            status,
            duration: t.elapsed(),
        });
    }
    report.total = start.elapsed();
    report
}
