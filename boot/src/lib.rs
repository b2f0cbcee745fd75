//! Krypton's boot crate: everything written into guest memory or vCPU
//! registers before the first instruction runs. It knows nothing about any
//! hypervisor backend and builds for every host OS.
//!
//! Public API:
//! - [`test_guest`]: `load_flat`, `load_elf`, and the entry-state builders
//!   `real_mode_state`, `protected_mode_state`, `long_mode_state`.
//! - [`entry`]: the same builders plus the GDT/page-table helpers, selectors
//!   and [`entry::boot_msrs`].
//! - Guest addresses of every boot structure: [`layout`].

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

pub use error::BootError;
