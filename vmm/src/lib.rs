//! Krypton's VMM crate: the hypervisor layer (`hv`), the single vCPU loop,
//! the bus, the VM builder and the CLI. `main.rs` only calls [`cli::main`].

pub mod bus;
pub mod cli;
pub mod emulator;
pub mod hv;
pub mod machine;
pub mod mmio_check;
pub mod net;
pub mod pvm;
pub mod run;
pub mod selftest;
pub mod snapshot;
pub mod vcpu;
