//! WHP on a host that is not Windows.

use crate::hv::{HvError, Hypervisor};

/// Always unavailable off Windows.
pub fn open() -> Result<Box<dyn Hypervisor>, HvError> {
    Err(HvError::Unavailable(
        "the Windows Hypervisor Platform backend is only available on Windows".into(),
    ))
}
