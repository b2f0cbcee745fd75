//! Krypton's emulated devices. This crate never depends on a hypervisor
//! backend: devices see guest memory, an interrupt line and the bus access
//! (`BusDevice`), so the same code runs under KVM and WHP and unit-tests on
//! any host.

pub mod bus;
pub mod debug_exit;
pub mod event;
pub mod exit;
pub mod i8042;
pub mod interrupt;
pub mod ioapic;
pub mod ratelimit;
pub mod serial;
pub mod virtio;

/// Guest memory as every device sees it.
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;
