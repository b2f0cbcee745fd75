//! Guest kernel build (owned by the kernel task).

use anyhow::Result;
use std::path::PathBuf;

/// Options for `cargo xtask kernel`.
#[derive(clap::Args, Debug)]
pub struct KernelArgs {}

/// Builds the kernel, returns the path of the artifact directory.
pub fn build(_args: &KernelArgs) -> Result<PathBuf> {
    anyhow::bail!("kernel build not written yet")
}
