//! Initramfs and rootfs images (owned by the kernel task).

use anyhow::Result;
use std::path::PathBuf;

/// Builds the initramfs and default rootfs; returns their directory.
pub fn build_all() -> Result<PathBuf> {
    anyhow::bail!("image build not written yet")
}
