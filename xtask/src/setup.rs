//! Set-up and the main job (owned by the lead).

use anyhow::Result;

/// Installs prerequisites, builds, runs the main job.
pub fn run_main_job() -> Result<()> {
    anyhow::bail!("not written yet")
}
