//! Virtio devices and the virtio-mmio transport.
//!
//! The transport (`mmio.rs`) owns register state and queue configuration.
//! When the driver sets DRIVER_OK it builds the queues and calls
//! [`VirtioDevice::activate`]; a QueueNotify write signals the device's
//! [`Event`], which the device's worker thread waits on. Devices raise
//! interrupts through [`VirtioInterrupt`], which the transport implements
//! (InterruptStatus bits plus the IOAPIC line).

pub mod blk;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
#[doc(hidden)]
pub mod testing;
pub mod vsock;
pub mod worker;

pub use fs::VirtioFs;

use std::sync::Arc;

use crate::GuestMem;
use crate::event::Event;

/// Why a queue or configuration interrupt is raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device used buffers in a queue (InterruptStatus bit 0).
    Queue,
    /// The device's configuration space changed (InterruptStatus bit 1).
    Config,
}

/// Raised by a device; implemented by the transport.
pub trait VirtioInterrupt: Send + Sync {
    /// Sets the matching InterruptStatus bit and asserts the interrupt line.
    fn trigger(&self, kind: InterruptKind);
}

/// What a device receives when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMem,
    /// Interrupt toward the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The configured queues, in queue-index order.
    pub queues: Vec<virtio_queue::Queue>,
    /// Signalled by the transport on every QueueNotify of this device.
    pub notify: Arc<Event>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

impl std::fmt::Debug for dyn VirtioInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VirtioInterrupt")
    }
}

/// Errors a device can report when activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured a different number of queues than the device has.
    #[error("expected {expected} queues, driver set up {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// Starting the device's worker failed.
    #[error("starting the device worker")]
    Worker(#[source] std::io::Error),
}

/// A virtio device behind the transport. Small and transport-only.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 = network, 2 = block, 4 = entropy, 19 = vsock, 26 = filesystem).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn device_features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space. Default: ignored.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device on the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device's worker and returns it to the pre-activation state.
    fn reset(&mut self);
}
