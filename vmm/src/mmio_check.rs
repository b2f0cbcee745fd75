//! Differential check of the MMIO instruction emulator (used by the WHP
//! backend) against the hypervisor's own decoding: on every MMIO exit, the
//! instruction at RIP is fetched from guest memory and decoded by
//! `emulator::check_kvm_exit`, which must find the same address, size,
//! direction and data the backend reported.
//!
//! Off by default; `Machine::enable_mmio_check` or `KRYPTON_CHECK_MMIO=1`
//! turns it on (tests, and the real-kernel boot).

use std::sync::atomic::{AtomicU64, Ordering};

use krypton_devices::GuestMem;
use krypton_devices::warn_ratelimited;
use vm_memory::{Bytes, GuestAddress};

use crate::emulator::{MmioExit, SnapshotCpu, check_kvm_exit};
use crate::hv::{IoOp, Vcpu};

/// Counters of a run's checks.
#[derive(Debug, Default)]
pub struct MmioCheckStats {
    checked: AtomicU64,
    mismatched: AtomicU64,
}

impl MmioCheckStats {
    /// MMIO exits checked so far.
    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// Exits whose decoding disagreed.
    pub fn mismatched(&self) -> u64 {
        self.mismatched.load(Ordering::Relaxed)
    }
}

/// What the check needs besides the vCPU.
#[derive(Debug)]
pub struct MmioCheck {
    /// Guest RAM, to fetch instruction bytes.
    pub mem: GuestMem,
    /// Shared counters.
    pub stats: std::sync::Arc<MmioCheckStats>,
}

/// Whether the environment asks for the check.
pub fn requested_by_env() -> bool {
    std::env::var_os("KRYPTON_CHECK_MMIO").is_some_and(|v| v == "1")
}

/// The access as the hypervisor reported it: address, size, direction and,
/// for writes, the data (at most 8 bytes, as KVM's MMIO exit carries).
pub fn exit_of(addr: u64, op: &IoOp<'_>) -> MmioExit {
    let (is_write, bytes) = match op {
        IoOp::Read(d) => (false, &d[..]),
        IoOp::Write(d) => (true, *d),
    };
    let n = bytes.len().min(8);
    let mut data = [0u8; 8];
    if is_write {
        data[..n].copy_from_slice(&bytes[..n]);
    }
    MmioExit {
        gpa: addr,
        len: n as u8,
        is_write,
        data,
    }
}

impl MmioCheck {
    /// Checks one exit (`vcpu` still at the exit's state).
    pub fn check(&self, vcpu: &mut dyn Vcpu, exit: MmioExit) {
        let (Ok(regs), Ok(sregs)) = (vcpu.regs(), vcpu.sregs()) else {
            return;
        };
        let mem = &self.mem;
        let mut cpu = SnapshotCpu::new(regs, sregs)
            .with_translate(Box::new(move |gva, write| {
                vcpu.translate_gva(gva, write).ok().flatten()
            }))
            .with_ram(
                Box::new(|gpa, buf| mem.read_slice(buf, GuestAddress(gpa)).is_ok()),
                Box::new(|_, _| false),
            );
        self.stats.checked.fetch_add(1, Ordering::Relaxed);
        if let Err(m) = check_kvm_exit(&mut cpu, &exit) {
            self.stats.mismatched.fetch_add(1, Ordering::Relaxed);
            warn_ratelimited!(
                "MMIO emulator disagrees with the hypervisor at rip {:#x}: {m}",
                regs.rip
            );
        }
    }
}
