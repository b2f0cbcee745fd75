//! The Windows side of the WHP backend: partition, memory, interrupts.

mod api;
mod layout;
mod vcpu;

use super::abi::prop;
use super::policy::{self, DEFAULT_APIC_HZ};
use crate::hv::{HvError, Hypervisor, Msi, MsiSink, Vcpu, Vm, VmConfig, VmState};
use api::{Api, check};
use krypton_devices::warn_ratelimited;
use std::ffi::c_void;
use std::sync::{Arc, RwLock};
use windows_sys::Win32::System::Hypervisor::{
    WHV_INTERRUPT_CONTROL, WHV_PARTITION_HANDLE, WHV_X64_CPUID_RESULT,
    WHvCapabilityCodeInterruptClockFrequency, WHvCapabilityCodeProcessorClockFrequency,
};

/// Opens WHP: loads winhvplatform.dll and checks that a hypervisor runs.
pub fn open() -> Result<Box<dyn Hypervisor>, HvError> {
    Ok(Box::new(Whp { api: api::api()? }))
}

/// The WHP hypervisor.
struct Whp {
    api: &'static Api,
}

impl std::fmt::Debug for Whp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Whp")
    }
}

/// One mapped RAM range.
#[derive(Debug, Clone, Copy)]
struct Region {
    gpa: u64,
    host: usize,
    size: u64,
}

/// A WHP partition; deleted when the last VM, vCPU or kick handle drops, so
/// a cancel can never race `WHvDeletePartition`.
pub(crate) struct Partition {
    handle: WHV_PARTITION_HANDLE,
    api: &'static Api,
    regions: RwLock<Vec<Region>>,
    tsc_hz: u64,
    apic_hz: u64,
    hide_cpuid: Vec<(u32, u32, u8, u8)>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // SAFETY: the handle came from WHvCreatePartition and is deleted once.
        let hr = unsafe { (self.api.delete_partition)(self.handle) };
        if hr < 0 {
            log::warn!("WHvDeletePartition failed: {hr:#010x}");
        }
    }
}

impl Partition {
    fn set_property<T>(&self, code: i32, value: &[T]) -> Result<(), HvError> {
        let size = std::mem::size_of_val(value) as u32;
        // SAFETY: `value` is `size` readable bytes for the duration of the call.
        let hr = unsafe {
            (self.api.set_partition_property)(self.handle, code, value.as_ptr().cast(), size)
        };
        check("WHvSetPartitionProperty", hr)
    }

    /// Copies guest RAM at `gpa` into `buf`; false if not entirely RAM.
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(src) = self.ram_ptr(gpa, buf.len()) else {
            return false;
        };
        // SAFETY: `ram_ptr` checked that [gpa, gpa+len) lies in a region the
        // caller of `map_memory` keeps mapped for the VM's lifetime.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copies `buf` into guest RAM at `gpa`; false if not entirely RAM.
    fn write_ram(&self, gpa: u64, buf: &[u8]) -> bool {
        let Some(dst) = self.ram_ptr(gpa, buf.len()) else {
            return false;
        };
        // SAFETY: as in `read_ram`; the region is writable host memory.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        true
    }

    fn ram_ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let end = gpa.checked_add(len as u64)?;
        let r = regions
            .iter()
            .find(|r| gpa >= r.gpa && end <= r.gpa + r.size)?;
        Some((r.host + (gpa - r.gpa) as usize) as *mut u8)
    }
}

impl Hypervisor for Whp {
    fn backend(&self) -> crate::hv::Backend {
        crate::hv::Backend::Whp
    }

    fn name(&self) -> &'static str {
        "whp"
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Arc<dyn Vm>, HvError> {
        let api = self.api;
        let mut handle: WHV_PARTITION_HANDLE = 0;
        // SAFETY: `handle` is a writable partition handle.
        check("WHvCreatePartition", unsafe {
            (api.create_partition)(&raw mut handle)
        })?;
        let tsc_hz =
            api::capability_u64(api, WHvCapabilityCodeProcessorClockFrequency).unwrap_or(0);
        let apic_hz = api::capability_u64(api, WHvCapabilityCodeInterruptClockFrequency)
            .unwrap_or(DEFAULT_APIC_HZ);
        let part = Partition {
            handle,
            api,
            regions: RwLock::new(Vec::new()),
            tsc_hz,
            apic_hz,
            hide_cpuid: config.hide_cpuid.clone(),
        };
        part.set_property(prop::PROCESSOR_COUNT, &[u32::from(config.cpus.max(1))])?;
        part.set_property(prop::LOCAL_APIC_EMULATION_MODE, &[prop::LAPIC_MODE_XAPIC])?;
        let exit_leaves = policy::cpuid_exit_leaves(&config.hide_cpuid);
        let mut exits = prop::EXIT_X64_MSR;
        if !exit_leaves.is_empty() {
            exits |= prop::EXIT_X64_CPUID;
        }
        part.set_property(prop::EXTENDED_VM_EXITS, &[exits])?;
        // Newer builds: make sure MSRs the hypervisor does not implement exit.
        match part.set_property(prop::X64_MSR_EXIT_BITMAP, &[prop::MSR_EXIT_UNHANDLED]) {
            Ok(()) => {}
            Err(e) => log::info!("WHP X64MsrExitBitmap not set (older Windows?): {e}"),
        }
        let leaves: Vec<WHV_X64_CPUID_RESULT> = policy::hyperv_leaves(tsc_hz != 0)
            .into_iter()
            .map(|l| WHV_X64_CPUID_RESULT {
                Function: l.leaf,
                Reserved: [0; 3],
                Eax: l.regs[0],
                Ebx: l.regs[1],
                Ecx: l.regs[2],
                Edx: l.regs[3],
            })
            .collect();
        part.set_property(prop::CPUID_RESULT_LIST, &leaves)?;
        if !exit_leaves.is_empty() {
            part.set_property(prop::CPUID_EXIT_LIST, &exit_leaves)?;
        }
        // SAFETY: the handle is a configured, not yet set-up partition.
        check("WHvSetupPartition", unsafe {
            (api.setup_partition)(handle)
        })?;
        log::info!(
            "WHP partition: {} vCPUs, TSC {tsc_hz} Hz, APIC timer {apic_hz} Hz",
            config.cpus.max(1)
        );
        Ok(Arc::new(WhpVm {
            part: Arc::new(part),
        }))
    }
}

/// A WHP VM.
#[derive(Debug)]
struct WhpVm {
    part: Arc<Partition>,
}

impl MsiSink for WhpVm {
    fn deliver(&self, msi: Msi) {
        let Some(ic) = policy::msi_to_interrupt(msi) else {
            warn_ratelimited!("WHP cannot deliver MSI {msi:x?} (delivery mode)");
            return;
        };
        let ctl = WHV_INTERRUPT_CONTROL {
            _bitfield: ic.control,
            Destination: ic.destination,
            Vector: ic.vector,
        };
        let size = std::mem::size_of::<WHV_INTERRUPT_CONTROL>() as u32;
        // SAFETY: `ctl` is a valid WHV_INTERRUPT_CONTROL of `size` bytes.
        let hr =
            unsafe { (self.part.api.request_interrupt)(self.part.handle, &raw const ctl, size) };
        if hr < 0 {
            warn_ratelimited!("WHvRequestInterrupt {msi:x?} failed: {hr:#010x}");
        }
    }
}

impl Vm for WhpVm {
    unsafe fn map_memory(
        &self,
        _slot: u32,
        guest_addr: u64,
        host: *mut u8,
        size: usize,
    ) -> Result<(), HvError> {
        let flags = prop::MAP_READ | prop::MAP_WRITE | prop::MAP_EXECUTE;
        let p = &self.part;
        // SAFETY: the caller guarantees `host` maps `size` bytes for the VM's lifetime.
        let hr = unsafe {
            (p.api.map_gpa_range)(
                p.handle,
                host.cast::<c_void>(),
                guest_addr,
                size as u64,
                flags,
            )
        };
        check("WHvMapGpaRange", hr)?;
        let mut regions = p.regions.write().unwrap_or_else(|e| e.into_inner());
        regions.push(Region {
            gpa: guest_addr,
            host: host as usize,
            size: size as u64,
        });
        Ok(())
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, HvError> {
        vcpu::WhpVcpu::create(self.part.clone(), u32::from(id))
            .map(|v| Box::new(v) as Box<dyn Vcpu>)
    }

    /// WHP has no VM-wide clock to save: the guest's time is each vCPU's
    /// TSC, saved with its registers.
    fn save_state(&self) -> Result<VmState, HvError> {
        Ok(VmState::default())
    }

    /// Suspends partition time before the vCPUs' TSCs are set, so they are
    /// restored as one: WHP resumes it when the first vCPU runs (as QEMU's
    /// WHPX `whpx_set_tsc` relies on; not checked here). Without the call
    /// (older Windows) the TSCs may differ by the time between the sets.
    fn restore_state(&self, _: &VmState) -> Result<(), HvError> {
        let p = &self.part;
        match p.api.suspend_partition_time {
            // SAFETY: plain call on a set-up partition whose vCPUs do not run.
            Some(f) => check("WHvSuspendPartitionTime", unsafe { f(p.handle) }),
            None => {
                log::warn!("WHvSuspendPartitionTime is missing; vCPU TSCs may drift apart");
                Ok(())
            }
        }
    }
}
