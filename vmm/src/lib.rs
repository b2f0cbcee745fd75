//! Krypton's VMM crate: the hypervisor layer (`hv`), the single vCPU loop,
//! the bus, the VM builder and the CLI. `main.rs` only calls [`cli::main`].

pub mod hv;
