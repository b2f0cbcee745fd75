//! Benchmarks (owned by the benchmark task).

use anyhow::Result;

/// Options for `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs the benchmarks.
pub fn run(_args: &BenchArgs) -> Result<()> {
    anyhow::bail!("benchmarks not written yet")
}
