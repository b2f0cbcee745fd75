//! Known limitations of the host platform.
//!
//! Some hosts cannot run some guests at all, independent of the VMM: on
//! kvm_pvm (software "Pagetable-based Virtual Machine") every non-PVM guest
//! runs in KVM's instruction emulator. A case that fails on such a host is
//! reported as skipped, with the limitation *and the observed failure*, and
//! only if the case is listed here: the same failure anywhere else is a
//! failure.

use std::path::Path;

/// True if the loaded KVM is kvm_pvm.
fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A case a platform cannot run: case-name prefix, a text the observed
/// failure must contain (any other failure stays a failure), and why.
type Limitation = (&'static str, &'static str, &'static str);

/// Cases that fail on kvm_pvm for reasons outside the VMM. Each was observed
/// on the development machine: real and 32-bit protected mode run in KVM's
/// instruction emulator there (KVM_EXIT_INTERNAL_ERROR, suberror 1 =
/// emulation failure, on instructions it lacks).
const KVM_PVM: &[Limitation] = &[
    (
        "iret-prot",
        "KVM internal error",
        "KVM's instruction emulator (which runs 32-bit guests on kvm_pvm) has no protected-mode IRET",
    ),
    (
        "soft-int-prot",
        "KVM internal error",
        "KVM's instruction emulator (which runs 32-bit guests on kvm_pvm) implements INT n only in real mode",
    ),
    (
        "soft-int-long",
        "KVM internal error",
        "INT n from the (deprivileged) 64-bit guest kernel traps to KVM's instruction emulator, \
         which implements INT n only in real mode",
    ),
    (
        "ioapic-level-irq",
        "timed out before debug-exit (guest interrupt count 1)",
        "kvm_pvm sends no KVM_EXIT_IOAPIC_EOI with a split irqchip, so a level-triggered pin \
         still asserted at EOI is never delivered again (QEMU microvm shows the same with \
         kernel-irqchip=split; kernel-irqchip=on works)",
    ),
    (
        "triple-fault-real",
        "KVM internal error",
        "KVM's instruction emulator (which runs real mode on kvm_pvm) fails on an exception with an \
         empty IVT instead of shutting down",
    ),
];

/// If `case` failed with `observed` on a host known to be unable to run
/// it, why.
pub fn known_limitation(case: &str, observed: &str) -> Option<String> {
    if !is_kvm_pvm() {
        return None;
    }
    limitation_in(KVM_PVM, case, observed).map(|why| format!("kvm_pvm host: {why}"))
}

fn limitation_in(table: &[Limitation], case: &str, observed: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(prefix, symptom, _)| case.starts_with(prefix) && observed.contains(symptom))
        .map(|(_, _, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_cases_have_limitations() {
        let t = [("triple-fault", "internal error", "no shutdown exit")];
        let why = limitation_in(&t, "triple-fault-long", "vCPU 0: KVM internal error");
        assert_eq!(why, Some("no shutdown exit"));
        assert_eq!(
            limitation_in(&t, "triple-fault-long", "expected Shutdown, got Reset"),
            None
        );
        assert_eq!(limitation_in(&t, "pio-long", "KVM internal error"), None);
    }
}
