//! Saving a running machine to a snapshot and starting one from it.

use std::path::PathBuf;
use std::sync::PoisonError;
use std::time::Duration;

use krypton_boot::layout;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::{Machine, MachineConfig, MachineError, Outcome, Start};
use crate::hv::{HvError, Hypervisor, Vcpu, VcpuState};
use crate::snapshot::{self, MachineState, Snapshot};

impl Machine {
    /// Creates a VM whose guest RAM is mapped copy-on-write from `snap`.
    /// Add the same devices, in the same order, as the snapshotted VM had,
    /// then call [`Machine::resume`].
    pub fn from_snapshot(
        hv: &dyn Hypervisor,
        cfg: MachineConfig,
        snap: &Snapshot,
    ) -> Result<Machine, MachineError> {
        let ranges = layout::ram_regions(cfg.mem_mib << 20);
        let mem = snapshot::map_guest_memory(snap, &ranges)?;
        let machine = Self::with_memory(hv, cfg, Some(mem))?;
        // The platform devices now, before the caller can feed COM1 input
        // that a later restore would drop.
        let state = &snap.state;
        if let Some(io) = &state.ioapic {
            machine
                .ioapic
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .restore(io);
        }
        machine
            .serial
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .restore(&state.serial)
            .map_err(|e| MachineError::SnapshotDevices(e.to_string()))?;
        Ok(machine)
    }

    /// When the host requests a snapshot (`GuestExit::HostSnapshot` on the
    /// exit signal), the VM stops and is saved to `path` with identity `key`.
    pub fn snapshot_on_request(&mut self, path: PathBuf, key: u64) {
        self.snapshot_out = Some((path, key));
    }

    /// Runs a machine made by [`Machine::from_snapshot`] from `state`.
    pub fn resume(
        self,
        state: MachineState,
        timeout: Option<Duration>,
    ) -> Result<Outcome, MachineError> {
        self.start(Start::Restore(state), timeout)
    }

    pub(super) fn restore_state(
        &mut self,
        state: &MachineState,
        vcpus: &mut [Box<dyn Vcpu>],
    ) -> Result<(), MachineError> {
        let misfit = |what: String| MachineError::SnapshotDevices(what);
        if state.vcpus.len() != vcpus.len() {
            return Err(misfit(format!(
                "{} saved vCPUs, {} here",
                state.vcpus.len(),
                vcpus.len()
            )));
        }
        if state.transports.len() != self.transports.len() {
            return Err(misfit(format!(
                "{} saved virtio devices, {} here",
                state.transports.len(),
                self.transports.len()
            )));
        }
        self.vm.restore_state(&state.vm)?;
        for (id, (vcpu, s)) in vcpus.iter_mut().zip(&state.vcpus).enumerate() {
            vcpu.restore_state(s).map_err(|source| MachineError::Vcpu {
                id: id as u8,
                source,
            })?;
        }
        // IOAPIC and COM1 were restored by `from_snapshot`.
        for (slot, (t, s)) in self.transports.iter().zip(&state.transports).enumerate() {
            t.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .restore_state(s)
                .map_err(|e| misfit(format!("virtio slot {slot}: {e}")))?;
        }
        Ok(())
    }

    /// Saves the stopped machine: vCPU states from their threads, then the
    /// VM, the platform devices and the virtio transports (stopping their
    /// workers), then guest memory.
    pub(super) fn save_snapshot(
        &mut self,
        mut saved: Vec<(u8, Result<VcpuState, HvError>)>,
    ) -> Result<(), MachineError> {
        let Some((path, key)) = self.snapshot_out.clone() else {
            return Err(MachineError::SnapshotDevices(
                "a snapshot was requested but no file was given".into(),
            ));
        };
        if saved.len() != usize::from(self.cpus) {
            return Err(MachineError::SnapshotDevices(format!(
                "only {} of {} vCPUs stopped to be saved",
                saved.len(),
                self.cpus
            )));
        }
        saved.sort_by_key(|(id, _)| *id);
        let mut vcpus = Vec::with_capacity(saved.len());
        for (id, s) in saved {
            vcpus.push(s.map_err(|source| MachineError::Vcpu { id, source })?);
        }
        let state = MachineState {
            vm: self.vm.save_state()?,
            vcpus,
            ioapic: Some(
                self.ioapic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .state(),
            ),
            serial: self
                .serial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state(),
            transports: self
                .transports
                .iter()
                .map(|t| {
                    t.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .save_state()
                })
                .collect(),
        };
        let regions: Vec<&[u8]> = self
            .mem
            .iter()
            .map(|r| {
                // SAFETY: every vCPU and device worker has stopped, so
                // nothing writes guest RAM while this shared view lives; the
                // mapping is `len` bytes and owned by `self.mem`.
                unsafe { std::slice::from_raw_parts(r.as_ptr().cast_const(), r.len() as usize) }
            })
            .collect();
        snapshot::write(&path, self.backend, key, &state, &regions)?;
        log::info!("VM saved to {}", path.display());
        Ok(())
    }
}
