//! `cargo xtask <task>`: everything that is not `cargo build`: the guest
//! kernel, initramfs and rootfs images, the test and benchmark drivers.

mod bench;
mod bench_agent;
mod bench_fs;
mod bench_image;
mod bench_net;
mod bench_oci;
mod bench_pull;
mod bench_snapshot;
mod cache;
mod cpio;
mod debian;
mod fuzz;
mod images;
mod kernel;
mod pvm_kernel;
mod setup;
mod test;
mod testlog;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Krypton build and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, build everything and run the main job.
    Run,
    /// Install what is missing and run every test (what CI runs).
    Test,
    /// Build (or reuse from the cache) the guest kernel.
    Kernel(kernel::KernelArgs),
    /// Build the initramfs (agent as /init) and the default rootfs image.
    Images,
    /// Build (or find, cached) the Debian minbase test image tar.
    Debian,
    /// Run every fuzz target for a bounded time (what CI does).
    Fuzz,
    /// Run the benchmarks and print ratios against their peers.
    Bench(bench::BenchArgs),
    /// Only the podman part: krypton vs crun (or runc) as podman's runtime.
    BenchOci {
        /// The krypton binary (default: a release build).
        #[arg(long)]
        krypton: Option<std::path::PathBuf>,
    },
}

/// Every benchmark, each against its peer or floor measured in the same
/// run: the VMM against QEMU microvm, virtio-blk against raw pread,
/// vsock against raw Unix sockets, the agent's exec round trip against
/// a local fork+exec, layer conversion against mkfs.erofs and mkfs.ext4,
/// `krypton pull` against `skopeo copy`,
/// a container start from the template snapshot against a cold boot,
/// virtio-fs against QEMU's virtio-9p, TCP through passt against QEMU
/// with passt.
fn bench_all(args: &bench::BenchArgs) -> Result<()> {
    if args.image_only {
        bench_image::run_bench()?;
        return bench_pull::run(&bench::krypton_binary(args)?);
    }
    if args.fs_only {
        return bench_fs::run(&bench::krypton_binary(args)?, &args.qemu);
    }
    if args.net_only {
        return bench_net::run(&bench::krypton_binary(args)?, &args.qemu);
    }
    bench::run(args)?;
    for example in ["blk_bench", "vsock_bench"] {
        eprintln!("\n== {example} ==");
        cache::run(
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .current_dir(cache::workspace_root())
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "-p",
                    "krypton-devices",
                    "--example",
                    example,
                ]),
        )?;
    }
    eprintln!("\n== layer conversion: tar → EROFS against mkfs.erofs and mkfs.ext4 -d ==");
    bench_image::run_bench()?;
    eprintln!("\n== krypton pull against skopeo copy ==");
    bench_pull::run(&bench::krypton_binary(args)?)?;
    eprintln!("\n== agent exec round trip ==");
    bench_agent::run()?;
    eprintln!("\n== container start from the template snapshot ==");
    let krypton = bench::krypton_binary(args)?;
    // The VM size `krypton run` picks: 256 MiB on kvm_pvm hosts, else 512.
    let mem = if setup::host_is_pvm() { 256.0 } else { 512.0 };
    bench_snapshot::run(&krypton, mem)?;
    eprintln!("\n== host directories: virtio-fs against QEMU's virtio-9p ==");
    bench_fs::run(&krypton, &args.qemu)?;
    eprintln!("\n== TCP throughput through passt ==");
    bench_net::run(&krypton, &args.qemu)?;
    eprintln!("\n== podman with krypton as its OCI runtime ==");
    bench_oci::run(&krypton)
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Run => setup::run_main_job(),
        Task::Test => test::run_all(),
        Task::Kernel(args) => kernel::build(&args).map(|_| ()),
        Task::Images => images::build_all().map(|_| ()),
        Task::Debian => debian::run(),
        Task::Bench(args) => bench_all(&args),
        Task::BenchOci { krypton } => match krypton {
            Some(k) => bench_oci::run(&k),
            None => bench_oci::run(&bench::release_krypton()?),
        },
        Task::Fuzz => fuzz::run_bounded().map(|_| ()),
    }
}
