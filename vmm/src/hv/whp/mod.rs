//! Windows Hypervisor Platform backend.
//!
//! The platform-neutral parts (the ABI constants and exit-context parser,
//! register conversion, the Hyper-V CPUID/MSR policy and MSI conversion)
//! compile everywhere and are unit-tested on Linux. The calls into
//! winhvplatform.dll live in `sys`, which exists only on Windows; the DLL
//! is loaded at run time (LoadLibraryExW from System32 + GetProcAddress), so
//! `krypton.exe` starts on any Windows and [`open`] explains what is missing.

pub mod abi;
pub mod policy;
pub mod regs;
pub mod state;
#[cfg(windows)]
mod sys;
#[cfg(not(windows))]
#[path = "unsupported.rs"]
mod sys;
#[cfg(test)]
mod tests;

use super::{HvError, Hypervisor};

/// Message when winhvplatform.dll cannot be loaded.
pub const NOT_INSTALLED: &str = "the Windows Hypervisor Platform is not installed: run \
    `Dism /Online /Enable-Feature /FeatureName:HypervisorPlatform` as administrator (or Settings → \
    Optional features → More Windows features → 'Windows Hypervisor Platform') and reboot";

/// Message when the DLL loads but no hypervisor is running.
pub const NOT_RUNNING: &str = "the Windows Hypervisor Platform is installed but the hypervisor is not \
    running: enable virtualization (VT-x/AMD-V) in the firmware, run `bcdedit /set hypervisorlaunchtype \
    auto` and reboot, or, inside a VM, enable nested virtualization";

/// Opens WHP, or explains why it cannot be used on this host.
pub fn open() -> Result<Box<dyn Hypervisor>, HvError> {
    sys::open()
}
