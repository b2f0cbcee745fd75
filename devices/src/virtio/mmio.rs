//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! One [`MmioTransport`] per 4 KiB slot. It owns the register state: status
//! (transitions checked against [`VALID_TRANSITIONS`]), 64-bit feature
//! negotiation through the select registers, per-queue configuration, the
//! interrupt status and the configuration space at 0x100, which it forwards
//! to the device. On DRIVER_OK it builds `virtio_queue::Queue`s and calls
//! [`VirtioDevice::activate`]; QueueNotify signals the device's [`Event`].
//!
//! Interrupts are **edge-triggered**: every [`VirtioInterrupt::trigger`] sets
//! the InterruptStatus bit and pulses the line once. The VMM must describe
//! virtio pins as edge / active-high (ISA conforming) in the MP table. A
//! pulse that arrives while the driver is still in its handler is latched by
//! the LAPIC, so no interrupt is lost.
//!
//! Misbehaving drivers never panic the VMM: invalid writes are ignored (with
//! a rate-limited warning), and a queue configuration the device cannot use
//! sets DEVICE_NEEDS_RESET.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_config::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{ActivateContext, InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::GuestMem;
use crate::bus::BusDevice;
use crate::event::Event;
use crate::interrupt::IrqLine;
use crate::warn_ratelimited;

/// Register offsets (all 32-bit).
pub mod reg {
    /// "virt" magic.
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Transport version (2).
    pub const VERSION: u64 = 0x004;
    /// Virtio device ID.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor ID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// 32 feature bits selected by DEVICE_FEATURES_SEL.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Selects the device feature word.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// 32 accepted feature bits selected by DRIVER_FEATURES_SEL.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Selects the driver feature word.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Selects the queue the QUEUE_* registers refer to.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Selected queue ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification: the value is the queue index.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Pending interrupt causes.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Acknowledges interrupt causes.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low half.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high half.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available (driver) ring address, low half.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Available (driver) ring address, high half.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used (device) ring address, low half.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used (device) ring address, high half.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Shared memory region select.
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory length, low half (all ones: no region).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory length, high half.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory base, low half.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory base, high half.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Configuration atomicity value.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    /// Guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// Guest has a driver.
    pub const DRIVER: u32 = 2;
    /// Driver is set up.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error the driver must reset to clear.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

use status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK};

/// "virt", little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Transport version implemented.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported: "KRYP" little-endian.
pub const MMIO_VENDOR: u32 = 0x5059_524b;

/// Allowed driver-initiated status changes (from, to). Writing 0 (reset) and
/// setting FAILED are always allowed and handled separately.
pub const VALID_TRANSITIONS: &[(u32, u32)] = &[
    (0, ACKNOWLEDGE),
    (ACKNOWLEDGE, ACKNOWLEDGE | DRIVER),
    (ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | FEATURES_OK),
    (
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    ),
];

/// Feature bits the transport itself always offers.
const TRANSPORT_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1;

/// InterruptStatus bit for used buffers.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit for a configuration change.
pub const INT_CONFIG: u32 = 2;

/// The transport's [`VirtioInterrupt`]: InterruptStatus plus an edge pulse.
pub struct MmioInterrupt {
    status: AtomicU32,
    irq: Arc<dyn IrqLine>,
}

impl std::fmt::Debug for MmioInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioInterrupt")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        let bit = match kind {
            InterruptKind::Queue => INT_VRING,
            InterruptKind::Config => INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.pulse();
    }
}

/// Driver-written configuration of one queue.
#[derive(Debug, Clone, Copy, Default)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    interrupt: Arc<MmioInterrupt>,
    notify: Arc<Event>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    shm_sel: u32,
    activated: bool,
    /// Activations so far; only the first is logged at info level (a guest
    /// can reset and re-activate at will).
    activations: u64,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the device's (edge-triggered) IOAPIC pin.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMem, irq: Arc<dyn IrqLine>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max_size| QueueConfig {
                max_size,
                ..QueueConfig::default()
            })
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                irq,
            }),
            notify: Arc::new(Event::new()),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            shm_sel: 0,
            activated: false,
            activations: 0,
            config_generation: 0,
        }
    }

    /// The event QueueNotify signals; a backend fast path (KVM ioeventfd)
    /// may signal it directly.
    pub fn notify_event(&self) -> Arc<Event> {
        Arc::clone(&self.notify)
    }

    /// Current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn offered_features(&self) -> u64 {
        (self.device.device_features() | TRANSPORT_FEATURES) & !(1 << VIRTIO_F_ACCESS_PLATFORM)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The selected queue, if the driver may change its configuration now.
    fn configurable_queue(&mut self) -> Option<&mut QueueConfig> {
        let (sel, locked) = (self.queue_sel, self.status & DRIVER_OK != 0);
        match self.queues.get_mut(sel as usize) {
            Some(q) if !locked && !q.ready => Some(q),
            _ => {
                warn_ratelimited!("virtio-mmio: queue {sel} not configurable now");
                None
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig {
                max_size: q.max_size,
                ..QueueConfig::default()
            };
        }
        self.interrupt.status.store(0, Ordering::SeqCst);
    }

    fn set_needs_reset(&mut self) {
        self.status |= DEVICE_NEEDS_RESET;
        if self.status & DRIVER_OK != 0 {
            self.interrupt.trigger(InterruptKind::Config);
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit; the driver cannot change it.
        let value = (value & !DEVICE_NEEDS_RESET) | (self.status & DEVICE_NEEDS_RESET);
        if value & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        let from = self.status & !DEVICE_NEEDS_RESET;
        let to = value & !DEVICE_NEEDS_RESET;
        if from == to {
            return;
        }
        if !VALID_TRANSITIONS.contains(&(from, to)) || self.status & DEVICE_NEEDS_RESET != 0 {
            warn_ratelimited!("virtio-mmio: invalid status change {from:#x} -> {to:#x}");
            return;
        }
        if to & FEATURES_OK != 0 && from & FEATURES_OK == 0 && !self.features_acceptable() {
            // Leave FEATURES_OK clear: the driver reads it back and fails.
            warn_ratelimited!(
                "virtio-mmio: driver features {:#x} rejected (offered {:#x})",
                self.driver_features,
                self.offered_features()
            );
            return;
        }
        self.status = value;
        if to & DRIVER_OK != 0 && from & DRIVER_OK == 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let acked = self.driver_features;
        acked & !self.offered_features() == 0 && acked & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn build_queues(&self) -> Result<Vec<Queue>, String> {
        let event_idx = self.driver_features
            & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0;
        let mut out = Vec::new();
        // Queues are handed over in index order, stopping at the first one
        // the driver did not enable, so indices never shift.
        for (i, qc) in self.queues.iter().enumerate().take_while(|(_, q)| q.ready) {
            let mut q = Queue::new(qc.max_size).map_err(|e| format!("queue {i}: {e}"))?;
            q.try_set_size(qc.size)
                .map_err(|e| format!("queue {i} size: {e}"))?;
            q.try_set_desc_table_address(GuestAddress(qc.desc))
                .map_err(|e| format!("queue {i} desc: {e}"))?;
            q.try_set_avail_ring_address(GuestAddress(qc.driver))
                .map_err(|e| format!("queue {i} driver area: {e}"))?;
            q.try_set_used_ring_address(GuestAddress(qc.device))
                .map_err(|e| format!("queue {i} device area: {e}"))?;
            q.set_event_idx(event_idx);
            q.set_ready(true);
            if !q.is_valid(&self.mem) {
                return Err(format!("queue {i} lies outside guest memory"));
            }
            out.push(q);
        }
        Ok(out)
    }

    fn activate(&mut self) {
        match self.build_queues() {
            Ok(q) => self.start_device(q),
            Err(e) => {
                warn_ratelimited!("virtio-mmio: cannot activate: {e}");
                self.set_needs_reset();
            }
        }
    }

    fn start_device(&mut self, queues: Vec<Queue>) {
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: Arc::clone(&self.interrupt) as Arc<dyn VirtioInterrupt>,
            queues,
            notify: Arc::clone(&self.notify),
            acked_features: self.driver_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => {
                self.activated = true;
                self.activations += 1;
                let (ty, features) = (self.device.device_type(), self.driver_features);
                if self.activations == 1 {
                    log::info!(
                        "virtio-mmio: device type {ty} activated by the guest driver (features {features:#x})"
                    );
                } else {
                    log::debug!(
                        "virtio-mmio: device type {ty} re-activated (features {features:#x})"
                    );
                }
            }
            Err(e) => {
                warn_ratelimited!("virtio-mmio: device activation failed: {e}");
                self.set_needs_reset();
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                warn_ratelimited!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & (DRIVER | FEATURES_OK) != DRIVER {
                    warn_ratelimited!("virtio-mmio: feature write in status {:#x}", self.status);
                    return;
                }
                let v = u64::from(value);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    sel if value != 0 => {
                        warn_ratelimited!("virtio-mmio: features {value:#x} in word {sel}");
                        // Bits we never offered: FEATURES_OK will be refused.
                        self.driver_features |= 1 << 63;
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    q.size = u16::try_from(value).unwrap_or(0);
                }
            }
            reg::QUEUE_READY => match value {
                // Linux clears ready while tearing down; allow it unless running.
                0 if !self.activated => {
                    if let Some(q) = self.selected_queue() {
                        q.ready = false;
                    }
                }
                1 => {
                    if let Some(q) = self.configurable_queue() {
                        q.ready = true;
                    }
                }
                _ => warn_ratelimited!("virtio-mmio: QueueReady={value} ignored"),
            },
            reg::QUEUE_DESC_LOW => self.set_queue_addr(|q| &mut q.desc, value, false),
            reg::QUEUE_DESC_HIGH => self.set_queue_addr(|q| &mut q.desc, value, true),
            reg::QUEUE_DRIVER_LOW => self.set_queue_addr(|q| &mut q.driver, value, false),
            reg::QUEUE_DRIVER_HIGH => self.set_queue_addr(|q| &mut q.driver, value, true),
            reg::QUEUE_DEVICE_LOW => self.set_queue_addr(|q| &mut q.device, value, false),
            reg::QUEUE_DEVICE_HIGH => self.set_queue_addr(|q| &mut q.device, value, true),
            reg::QUEUE_NOTIFY => {
                if (value as usize) >= self.queues.len() {
                    warn_ratelimited!("virtio-mmio: notify for nonexistent queue {value}");
                } else if self.activated {
                    self.notify.signal();
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            reg::STATUS => self.write_status(value),
            reg::SHM_SEL => self.shm_sel = value,
            _ => warn_ratelimited!("virtio-mmio: write of {value:#x} to register {offset:#x}"),
        }
    }

    fn set_queue_addr(&mut self, field: fn(&mut QueueConfig) -> &mut u64, value: u32, high: bool) {
        if let Some(q) = self.configurable_queue() {
            let f = field(q);
            *f = if high {
                (*f & 0xffff_ffff) | (u64::from(value) << 32)
            } else {
                (*f & !0xffff_ffff) | u64::from(value)
            };
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            data.fill(0);
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            warn_ratelimited!("virtio-mmio: bad read at {offset:#x} size {}", data.len());
            data.fill(0);
            return;
        }
        let v = self.read_register(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(b) if offset & 3 == 0 => self.write_register(offset, u32::from_le_bytes(b)),
            _ => warn_ratelimited!("virtio-mmio: bad write at {offset:#x} size {}", data.len()),
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

mod state;
#[cfg(test)]
mod tests;

pub use state::{QueueState, TransportState, TransportStateError};
