//! Krypton's boot crate: everything written into guest memory or vCPU
//! registers before the first instruction runs. It knows nothing about any
//! hypervisor backend and builds for every host OS.
//!
//! Public API (everything else is reachable through the modules):
//!
//! - Linux: [`load_kernel`]`(&mem, &`[`KernelConfig`]`) -> Result<CpuState, BootError>`
//!   loads an ELF vmlinux or a bzImage (auto-detected by
//!   [`parse_kernel_image`], which never panics), the initrd, the command
//!   line ([`KernelConfig::full_cmdline`] = `cmdline` + one
//!   `virtio_mmio.device=4K@0x..:IRQ` per [`VirtioMmioDevice`]), the memory
//!   map and the MP table, then returns the entry state with
//!   [`entry::boot_msrs`] in `msrs`. ELF with a PVH note → PVH entry (32-bit
//!   protected mode, EBX = `hvm_start_info`); ELF without one, or with
//!   [`BootProtocol::ForceLinux64`], and every bzImage → 64-bit boot protocol
//!   (long mode, RSI = zero page). [`default_cmdline`] documents each switch.
//! - Test guests: [`test_guest::load_flat`], [`test_guest::load_elf`] and the
//!   entry-state builders [`test_guest::real_mode_state`],
//!   [`test_guest::protected_mode_state`], [`test_guest::long_mode_state`].
//! - [`mptable::write`] / [`mptable::MptableConfig`] for an MP table on its own.
//! - Guest addresses of every boot structure: [`layout`].
//!
//! The vCPU state does not include FPU state: backends should set FCW =
//! 0x37f and MXCSR = 0x1f80 (the reset values) themselves.

pub mod bzimage;
pub mod cmdline;
pub mod cpu;
pub mod elf;
pub mod entry;
mod error;
pub mod kernel;
pub mod layout;
pub mod memmap;
mod memory;
pub mod mptable;
pub mod pvh;
pub mod test_guest;
#[cfg(test)]
mod testutil;
pub mod zeropage;

pub use cmdline::{VirtioMmioDevice, default_cmdline};
pub use error::BootError;
pub use kernel::{
    BootProtocol, ImageSource, KernelConfig, KernelKind, load_kernel, parse_kernel_image,
};
