//! The `krypton` command line. Every failure becomes one line on stderr
//! and exit status 125; guest outcomes map to the statuses in [`status`].

mod boot;
mod console;
mod devices;
mod image;
mod image_run;
#[cfg(target_os = "linux")]
pub mod oci;
mod run;
mod scratch;
mod snapshot;
mod template;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit statuses shared by every subcommand.
pub mod status {
    /// The guest shut down or reset cleanly.
    pub const OK: u8 = 0;
    /// The guest kernel panicked. Even, so it never collides with a
    /// debug-exit status ((v << 1) | 1).
    pub const GUEST_PANIC: u8 = 120;
    /// The time limit passed.
    pub const TIMEOUT: u8 = 124;
    /// The VMM failed, or the input was bad.
    pub const VMM_ERROR: u8 = 125;
}

#[derive(Parser, Debug)]
#[command(
    name = "krypton",
    version,
    about = "A micro-VMM for Linux guests on WHP and KVM"
)]
struct Cli {
    /// Log level for the VMM's own messages (error, warn, info, debug, trace, off);
    /// default warn (off for selftest).
    #[arg(long, global = true, value_parser = ["error", "warn", "info", "debug", "trace", "off"])]
    log_level: Option<String>,
    /// OCI runtime: state directory (default /run/krypton).
    #[arg(long, global = true)]
    root: Option<std::path::PathBuf>,
    /// OCI runtime: append errors (and, for monitors, warnings) to this file.
    #[arg(long, global = true)]
    log: Option<std::path::PathBuf>,
    /// OCI runtime: format of --log records.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// OCI runtime: accepted; the guest's cgroups are the VM's own (see README).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a kernel or test guest and run it until it exits.
    Boot(boot::BootArgs),
    /// Run a command in a Linux container inside a fresh micro-VM.
    Run(run::RunArgs),
    /// Run the conformance guests against this host's hypervisor.
    Selftest(SelftestArgs),
    /// Manage the VM templates `krypton run` starts containers from.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Pull an image from a registry into the image store.
    Pull(image::PullArgs),
    /// Load images from a docker save archive or an OCI image layout.
    Load(image::LoadArgs),
    /// List the images in the store.
    Images,
    /// Remove image references (blobs stay until prune).
    Rmi(image::RmiArgs),
    /// Remove blobs and converted layers no image references.
    Prune,
    /// OCI runtime: create a container from a bundle (not started).
    #[cfg(target_os = "linux")]
    Create(oci::CreateArgs),
    /// OCI runtime: start a created container's process.
    #[cfg(target_os = "linux")]
    Start(oci::IdArgs),
    /// OCI runtime: print a container's state (JSON).
    #[cfg(target_os = "linux")]
    State(oci::IdArgs),
    /// OCI runtime: signal a container's process.
    #[cfg(target_os = "linux")]
    Kill(oci::KillArgs),
    /// OCI runtime: remove a container's state (and VM).
    #[cfg(target_os = "linux")]
    Delete(oci::DeleteArgs),
    /// OCI runtime: run a process in a running container.
    #[cfg(target_os = "linux")]
    Exec(oci::ExecArgs),
    /// OCI runtime: list a container's host processes.
    #[cfg(target_os = "linux")]
    Ps(oci::PsArgs),
    /// OCI runtime: print the supported features (JSON).
    #[cfg(target_os = "linux")]
    Features,
    /// The per-container monitor `create` starts.
    #[cfg(target_os = "linux")]
    #[command(name = "oci-monitor", hide = true)]
    OciMonitor(oci::MonitorArgs),
    /// The detached half of `exec --detach`.
    #[cfg(target_os = "linux")]
    #[command(name = "oci-exec", hide = true)]
    OciExec(oci::ExecChildArgs),
}

#[derive(clap::Args, Debug)]
struct SelftestArgs {
    /// Run only cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
}

/// Formats an error and its causes on one line: "outer: cause: cause".
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !msg.is_empty() && !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

/// Clap's error text on one line: the first line, plus the items it lists
/// when that line ends with a colon; usage and tips dropped.
fn clap_one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    if out.ends_with(':') {
        let items: Vec<&str> = lines
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("tip:"))
            .collect();
        out.push(' ');
        out.push_str(&items.join(", "));
    }
    out
}

/// Prints `msg` as the single error line and returns 125.
pub fn fail(msg: &str) -> ExitCode {
    eprintln!("krypton: error: {msg}");
    ExitCode::from(status::VMM_ERROR)
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::from(status::OK);
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                return fail(
                    "a subcommand is required: boot, run, pull, images or selftest (see 'krypton --help')",
                );
            }
            return fail(&format!(
                "{} (see 'krypton --help')",
                clap_one_line(&e.to_string())
            ));
        }
    };
    let mut logger = env_logger::Builder::new();
    // `selftest` reports each case's failure itself, so the VMM's own
    // error lines for expected failures would only be noise there.
    logger
        .parse_filters(cli.log_level.as_deref().unwrap_or(match cli.command {
            Command::Selftest(_) => "off",
            _ => "warn",
        }))
        .parse_env("KRYPTON_LOG")
        .format_target(false);
    #[cfg(target_os = "linux")]
    let globals = oci::Globals {
        root: oci::state::Root(cli.root.clone().unwrap_or_else(|| oci::DEFAULT_ROOT.into())),
        log: cli.log.clone(),
        json: cli.log_format == "json",
        systemd_cgroup: cli.systemd_cgroup,
    };
    #[cfg(target_os = "linux")]
    match &cli.command {
        // Their stderr is the container's: the VMM's messages go to --log,
        // else to ROOT/ID/monitor.log.
        Command::OciMonitor(a) => oci::route_log(&mut logger, &globals, Some(&a.id)),
        Command::OciExec(a) => oci::route_log(&mut logger, &globals, Some(&a.id)),
        _ => {}
    }
    logger.init();
    match cli.command {
        Command::Boot(args) => boot::run(args),
        Command::Run(args) => run::run(args),
        Command::Selftest(args) => selftest(args),
        Command::Snapshot(cmd) => snapshot::run(cmd),
        Command::Pull(args) => image::pull(args),
        Command::Load(args) => image::load(args),
        Command::Images => image::images(),
        Command::Rmi(args) => image::rmi(args),
        Command::Prune => image::prune(),
        #[cfg(target_os = "linux")]
        Command::Create(a) => oci::create(&globals, a),
        #[cfg(target_os = "linux")]
        Command::Start(a) => oci::start(&globals, a),
        #[cfg(target_os = "linux")]
        Command::State(a) => oci::state(&globals, a),
        #[cfg(target_os = "linux")]
        Command::Kill(a) => oci::kill(&globals, a),
        #[cfg(target_os = "linux")]
        Command::Delete(a) => oci::delete(&globals, a),
        #[cfg(target_os = "linux")]
        Command::Exec(a) => oci::exec::exec(&globals, a),
        #[cfg(target_os = "linux")]
        Command::Ps(a) => oci::ps(&globals, a),
        #[cfg(target_os = "linux")]
        Command::Features => oci::features(&globals),
        #[cfg(target_os = "linux")]
        Command::OciMonitor(a) => oci::monitor(&globals, a),
        #[cfg(target_os = "linux")]
        Command::OciExec(a) => oci::exec::exec_child(&globals, a),
    }
}

fn selftest(args: SelftestArgs) -> ExitCode {
    let hv = match crate::hv::new(crate::hv::Backend::host_default()) {
        Ok(hv) => hv,
        Err(e) => return fail(&one_line(&e)),
    };
    let report = crate::selftest::run_all(hv.as_ref(), args.filter.as_deref());
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    if report.failed() == 0 {
        ExitCode::from(status::OK)
    } else {
        ExitCode::from(1)
    }
}
