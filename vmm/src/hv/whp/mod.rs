//! Windows Hypervisor Platform backend. Platform-neutral parts (register
//! conversion, CPUID policy) compile everywhere so they are unit-tested on
//! Linux; the calls into winhvplatform.dll exist only on Windows.

use super::{HvError, Hypervisor};

/// Opens WHP, or explains why it cannot be used on this host.
pub fn open() -> Result<Box<dyn Hypervisor>, HvError> {
    Err(HvError::Unavailable(
        "the Windows Hypervisor Platform backend is only available on Windows".into(),
    ))
}
