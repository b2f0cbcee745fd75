//! Krypton's boot crate: everything written into guest memory or vCPU
//! registers before the first instruction runs. It knows nothing about any
//! hypervisor backend and builds for every host OS.

pub mod cpu;
pub mod layout;
