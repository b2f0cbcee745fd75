//! Linux KVM backend: split irqchip (LAPIC in the kernel, IOAPIC in
//! `krypton_devices::ioapic`), no PIT, one thread per vCPU.

mod cpuid;
mod regs;
mod state;
mod vcpu;

use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_enable_cap,
    kvm_irq_routing_entry, kvm_msi, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, VmFd};

use super::{HvError, Hypervisor, Msi, MsiSink, Vcpu, Vm, VmConfig, VmState};
use krypton_devices::warn_ratelimited;

pub use vcpu::KvmVcpu;

/// Pins reserved for the user-space IOAPIC in KVM's GSI space.
const IOAPIC_PINS: u64 = 24;
/// Where KVM puts its real-mode TSS (three pages), inside the MMIO hole.
const TSS_ADDRESS: usize = 0xfffb_d000;

fn call_err(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HvError {
    move |e| HvError::Call {
        call,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// An open /dev/kvm.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens /dev/kvm and checks the capabilities this backend needs.
    pub fn open() -> Result<Self, HvError> {
        // KRYPTON_KVM_DEVICE points elsewhere (tests use it to simulate a
        // host without KVM).
        let path = std::env::var_os("KRYPTON_KVM_DEVICE").unwrap_or_else(|| "/dev/kvm".into());
        let shown = std::path::Path::new(&path).display().to_string();
        let c_path = std::ffi::CString::new(path.as_encoded_bytes())
            .map_err(|_| HvError::Unavailable(format!("bad KVM device path {shown}")))?;
        let kvm = kvm_ioctls::Kvm::new_with_path(&c_path).map_err(|e| {
            let why = match e.errno() {
                libc::ENOENT => format!("{shown} does not exist (is the kvm module loaded?)"),
                libc::EACCES | libc::EPERM => {
                    format!("no permission to open {shown} (add yourself to the kvm group)")
                }
                n => format!(
                    "cannot open {shown}: {}",
                    std::io::Error::from_raw_os_error(n)
                ),
            };
            HvError::Unavailable(why)
        })?;
        for (cap, name) in [
            (Cap::SplitIrqchip, "split irqchip"),
            (Cap::SignalMsi, "KVM_SIGNAL_MSI"),
            (Cap::IrqRouting, "IRQ routing"),
            (Cap::ImmediateExit, "immediate exit"),
            (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(HvError::Unavailable(format!(
                    "KVM lacks the {name} capability"
                )));
            }
        }
        vcpu::install_kick_handler()?;
        Ok(Kvm { kvm })
    }
}

impl Hypervisor for Kvm {
    fn backend(&self) -> crate::hv::Backend {
        crate::hv::Backend::Kvm
    }

    fn name(&self) -> &'static str {
        "kvm"
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Arc<dyn Vm>, HvError> {
        let max = self.kvm.get_max_vcpus();
        if config.cpus == 0 || usize::from(config.cpus) > max {
            return Err(HvError::Unavailable(format!(
                "{} vCPUs requested; this KVM supports 1 to {max}",
                config.cpus
            )));
        }
        let fd = self.kvm.create_vm().map_err(call_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(call_err("KVM_SET_TSS_ADDR"))?;
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = IOAPIC_PINS;
        fd.enable_cap(&cap)
            .map_err(call_err("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))?;
        let cpuid = cpuid::build(&self.kvm, config)?;
        let msr_index = self
            .kvm
            .get_msr_index_list()
            .map_err(call_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(Arc::new(KvmVm {
            fd,
            cpuid,
            msr_index: Arc::new(msr_index),
            cpus: config.cpus,
            level_routes: Mutex::new(Vec::new()),
        }))
    }
}

/// A KVM VM.
#[derive(Debug)]
pub struct KvmVm {
    fd: VmFd,
    cpuid: kvm_bindings::CpuId,
    /// MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST).
    msr_index: Arc<Vec<u32>>,
    cpus: u8,
    /// Level-triggered MSIs seen so far, installed as routes on the
    /// IOAPIC-reserved GSIs so the kernel exits on their EOI.
    level_routes: Mutex<Vec<Msi>>,
}

impl KvmVm {
    /// Installs `msi` as a GSI route so KVM reports `KVM_EXIT_IOAPIC_EOI`
    /// for its vector. KVM only scans routes on the reserved IOAPIC GSIs.
    fn note_level_msi(&self, msi: Msi) {
        let mut routes = self
            .level_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if routes.contains(&msi) {
            return;
        }
        if routes.len() as u64 >= IOAPIC_PINS {
            // Replace the oldest: the guest reprogrammed more level entries
            // than there are pins, so the old ones are stale.
            routes.remove(0);
        }
        routes.push(msi);
        let Ok(mut table) = KvmIrqRouting::new(routes.len()) else {
            return;
        };
        for (entry, (gsi, m)) in table
            .as_mut_slice()
            .iter_mut()
            .zip(routes.iter().enumerate())
        {
            let mut e = kvm_irq_routing_entry {
                gsi: gsi as u32,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            *entry = e;
        }
        if let Err(e) = self.fd.set_gsi_routing(&table) {
            warn_ratelimited!("KVM_SET_GSI_ROUTING failed: {e}");
        }
    }
}

impl MsiSink for KvmVm {
    fn deliver(&self, msi: Msi) {
        const LEVEL: u32 = 1 << 15;
        if msi.data & LEVEL != 0 {
            self.note_level_msi(msi);
        }
        let m = kvm_msi {
            address_lo: msi.address as u32,
            address_hi: (msi.address >> 32) as u32,
            data: msi.data,
            ..Default::default()
        };
        if let Err(e) = self.fd.signal_msi(m) {
            warn_ratelimited!("KVM_SIGNAL_MSI {msi:x?} failed: {e}");
        }
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        host: *mut u8,
        size: usize,
    ) -> Result<(), HvError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: the caller guarantees `host..host+size` stays mapped for
        // the VM's lifetime; KVM checks the slot and ranges.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(call_err("KVM_SET_USER_MEMORY_REGION"))
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, HvError> {
        if id >= self.cpus {
            return Err(HvError::Unavailable(format!("vCPU {id} out of range")));
        }
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(call_err("KVM_CREATE_VCPU"))?;
        let cpuid = cpuid::for_vcpu(&self.cpuid, id, self.cpus);
        fd.set_cpuid2(&cpuid).map_err(call_err("KVM_SET_CPUID2"))?;
        Ok(Box::new(KvmVcpu::new(fd, id, self.msr_index.clone())))
    }

    fn save_state(&self) -> Result<VmState, HvError> {
        state::save_vm(&self.fd)
    }

    fn restore_state(&self, s: &VmState) -> Result<(), HvError> {
        state::restore_vm(&self.fd, s)
    }
}
