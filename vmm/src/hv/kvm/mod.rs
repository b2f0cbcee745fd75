//! Linux KVM backend.

use super::{HvError, Hypervisor, Vm, VmConfig};
use std::sync::Arc;

/// An open /dev/kvm.
#[derive(Debug)]
pub struct Kvm;

impl Kvm {
    /// Opens /dev/kvm.
    pub fn open() -> Result<Self, HvError> {
        Ok(Kvm)
    }
}

impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }
    fn create_vm(&self, _config: &VmConfig) -> Result<Arc<dyn Vm>, HvError> {
        Err(HvError::Unavailable("not yet".into()))
    }
}
