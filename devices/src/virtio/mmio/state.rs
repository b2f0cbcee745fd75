//! Saving and restoring a transport for snapshots.
//!
//! Every Krypton device completes each chain it takes from a queue before
//! its worker waits again, so once the worker is stopped, the queue's
//! progress is the used ring's index in guest memory: the device took and
//! returned exactly that many chains. The snapshot therefore needs no help
//! from the device, and a restore starts the device on queues whose next
//! available and next used index are that value.

use std::sync::atomic::Ordering;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::{DRIVER_OK, MmioTransport, QueueConfig};
use crate::warn_ratelimited;

/// One queue's configuration and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueState {
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
    /// Chains taken and returned so far (the used ring's index).
    pub progress: u16,
}

/// A transport's registers and its queues.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransportState {
    /// Virtio device ID, checked on restore.
    pub device_type: u32,
    /// Device status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// SHMSel.
    pub shm_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue of the device, in index order.
    pub queues: Vec<QueueState>,
}

/// Why a saved transport cannot be restored onto this one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportStateError {
    /// A different kind of device sits in this slot.
    #[error("saved device type {saved} but this slot holds device type {here}")]
    DeviceType {
        /// In the snapshot.
        saved: u32,
        /// Here.
        here: u32,
    },
    /// The device has a different number of queues.
    #[error("saved {saved} queues but the device has {here}")]
    QueueCount {
        /// In the snapshot.
        saved: usize,
        /// Here.
        here: usize,
    },
    /// The device could not be started on the saved queues.
    #[error("the device does not start on the saved queues")]
    Activate,
}

impl MmioTransport {
    /// Stops the device's worker and saves the transport. The device stays
    /// stopped: the VM this came from must not run again.
    pub fn save_state(&mut self) -> TransportState {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        let queues = self
            .queues
            .iter()
            .map(|q| QueueState {
                size: q.size,
                ready: q.ready,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
                progress: if q.ready { self.used_index(q) } else { 0 },
            })
            .collect();
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            config_generation: self.config_generation,
            queues,
        }
    }

    fn used_index(&self, q: &QueueConfig) -> u16 {
        // The used ring starts with flags (u16) then idx (u16).
        match self
            .mem
            .read_obj::<u16>(GuestAddress(q.device.wrapping_add(2)))
        {
            Ok(v) => u16::from_le(v),
            Err(e) => {
                warn_ratelimited!("virtio-mmio: reading used idx for a snapshot: {e}");
                0
            }
        }
    }

    /// Puts this (fresh) transport in the saved state and, when the driver
    /// had set DRIVER_OK, starts the device where it left off.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), TransportStateError> {
        let here = self.device.device_type();
        if s.device_type != here {
            return Err(TransportStateError::DeviceType {
                saved: s.device_type,
                here,
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(TransportStateError::QueueCount {
                saved: s.queues.len(),
                here: self.queues.len(),
            });
        }
        self.reset();
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.shm_sel = s.shm_sel;
        self.config_generation = s.config_generation;
        self.interrupt
            .status
            .store(s.interrupt_status, Ordering::SeqCst);
        for (q, saved) in self.queues.iter_mut().zip(&s.queues) {
            q.size = saved.size;
            q.ready = saved.ready;
            q.desc = saved.desc;
            q.driver = saved.driver;
            q.device = saved.device;
        }
        if s.status & DRIVER_OK == 0 {
            return Ok(());
        }
        let progress: Vec<u16> = s.queues.iter().map(|q| q.progress).collect();
        let queues = self.build_queues().map_err(|e| {
            warn_ratelimited!("virtio-mmio: restoring queues: {e}");
            TransportStateError::Activate
        })?;
        let queues = queues
            .into_iter()
            .zip(progress)
            .map(|(mut q, p)| {
                q.set_next_avail(p);
                q.set_next_used(p);
                q
            })
            .collect();
        self.start_device(queues);
        if self.activated {
            Ok(())
        } else {
            Err(TransportStateError::Activate)
        }
    }
}
