//! `krypton run`: boot the utility VM (kernel, initramfs with the agent,
//! read-only rootfs disk), wait for the agent's hello over in-process vsock,
//! run one command in a container, stream its stdio and return its status.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use krypton_devices::exit::GuestExit;
use krypton_protocol::{AGENT_VSOCK_PORT, Limits};

use super::boot::{VmSpec, parse_timeout, prepare};
use super::devices::{DeviceArgs, DiskArg};
use super::{fail, one_line, status};
use crate::machine::{MachineError, Outcome, SerialOut};
use crate::run::{RunOptions, run_command};

/// How long the guest may take from power-on to the agent's first answer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Console bytes kept to explain a failed boot.
const CONSOLE_TAIL: usize = 4096;

/// Options of `krypton run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Root filesystem image (ext4) for the container; default: the built busybox rootfs.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Keep stdin open and forward it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal (stdout and stderr merged).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_parser = parse_env)]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User to run as: UID[:GID].
    #[arg(short = 'u', long = "user", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// Container memory limit in MiB (the VM gets 128 MiB more).
    #[arg(long)]
    pub memory: Option<u64>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Give up after this many seconds (exit status 124).
    #[arg(long, allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Guest kernel; default: the built product kernel.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs holding the agent; default: the built one.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Show the guest's console on stderr.
    #[arg(long)]
    pub console: bool,
    /// Extra kernel command-line arguments, appended to the default.
    #[arg(long)]
    pub append: Option<String>,
    /// Hide a CPUID bit from the guest: LEAF:SUBLEAF:REG:BIT (as for `boot`).
    #[arg(long = "hide-cpuid", value_parser = super::boot::parse_cpuid_bit)]
    pub hide_cpuid: Vec<(u32, u32, u8, u8)>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains('\0') => Ok(s.to_string()),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let num = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| format!("'{x}' is not a numeric id"))
    };
    match s.split_once(':') {
        Some((u, g)) => Ok((num(u)?, num(g)?)),
        None => num(s).map(|u| (u, u)),
    }
}

/// Where the default guest (built by `cargo xtask images` and
/// `cargo xtask kernel`) lives: `$KRYPTON_CACHE`, else `~/.cache/krypton`
/// (`%LOCALAPPDATA%\krypton` on Windows).
pub fn asset_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KRYPTON_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if cfg!(windows) {
        return std::env::var_os("LOCALAPPDATA").map(|d| PathBuf::from(d).join("krypton"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("krypton"))
}

fn default_asset(given: Option<PathBuf>, rel: &str, what: &str) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let dir = asset_dir()
        .ok_or_else(|| format!("no {what} given and no cache directory (set KRYPTON_CACHE)"))?;
    let p = dir.join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "no {what} at {} (build the default guest with `cargo xtask run`, or pass one)",
            p.display()
        ))
    }
}

/// Keeps the last bytes of the console so a failed boot can be explained.
#[derive(Clone, Default)]
struct ConsoleTail {
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Write for ConsoleTail {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.echo {
            let _ = std::io::stderr().write_all(data);
        }
        let mut b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        b.extend_from_slice(data);
        if b.len() > CONSOLE_TAIL {
            let cut = b.len() - CONSOLE_TAIL;
            b.drain(..cut);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleTail {
    fn last_line_with(&self, needle: &str) -> Option<String> {
        let b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&b);
        text.lines()
            .rev()
            .find(|l| l.contains(needle))
            .map(|l| l.trim().to_string())
    }
}

/// Runs `krypton run`.
pub fn run(args: RunArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => fail(&msg),
    }
}

fn run_inner(args: RunArgs) -> Result<u8, String> {
    let timeout = parse_timeout(args.timeout)?;
    let kernel = default_asset(args.kernel, "kernel/product-latest/vmlinux", "kernel")?;
    let initrd = default_asset(args.initrd, "images/initramfs.cpio", "initramfs")?;
    let rootfs = default_asset(args.rootfs, "images/rootfs.ext4", "rootfs")?;
    let mem_limit = args
        .memory
        .map(|m| m.checked_mul(1 << 20).ok_or("--memory is too large"))
        .transpose()?;
    let vm_mem = args.memory.map_or(512, |m| m.saturating_add(128).max(256));
    let devices = DeviceArgs {
        disks: vec![DiskArg {
            path: rootfs,
            read_only: true,
        }],
        ..DeviceArgs::default()
    };
    let console = ConsoleTail {
        echo: args.console,
        ..ConsoleTail::default()
    };
    let mut cmdline = krypton_boot::cmdline::default_cmdline();
    if !args.console {
        cmdline.push_str(" quiet");
    }
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let vm = prepare(VmSpec {
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: Some(cmdline),
        mem: vm_mem,
        cpus: args.cpus,
        serial: SerialOut::Writer(Box::new(console.clone())),
        hide_cpuid: args.hide_cpuid,
        linux64: false,
        devices: &devices,
    })?;
    let opts = RunOptions {
        argv: args.command,
        env: args.env,
        cwd: args.workdir.unwrap_or_default(),
        uid: args.user.map_or(0, |u| u.0),
        gid: args.user.map_or(0, |u| u.1),
        tty: args.tty,
        interactive: args.interactive,
        rootfs: "/dev/vda".into(),
        hostname: args.hostname.unwrap_or_default(),
        limits: Limits {
            memory_bytes: mem_limit,
            ..Limits::default()
        },
        timeout,
    };

    let exit = vm.machine.exit_signal();
    let (done_tx, done_rx) = mpsc::channel();
    let machine = vm.machine;
    let state = vm.state;
    let vm_thread = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || {
            let r = machine.run(state, None);
            let _ = done_tx.send(());
            r
        })
        .map_err(|e| format!("cannot start the VM thread: {e}"))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let host = vm.vsock;
    let result = rt.block_on(async {
        let started = Instant::now();
        let stream = loop {
            match host.connect_in_process(AGENT_VSOCK_PORT).await {
                Ok(s) => break Ok(s),
                Err(e) => {
                    if done_rx.try_recv().is_ok() {
                        break Err(None);
                    }
                    if started.elapsed() > timeout.unwrap_or(BOOT_TIMEOUT).min(BOOT_TIMEOUT) {
                        break Err(Some(format!(
                            "the guest agent did not answer within {BOOT_TIMEOUT:?}: {e}"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        match stream {
            Ok(s) => Ok(run_command(s, &opts).await),
            Err(e) => Err(e),
        }
    });
    exit.request(GuestExit::HostStop);
    let outcome = vm_thread
        .join()
        .map_err(|_| "the VM thread panicked".to_string())?;
    finish(result, outcome, &console)
}

/// Decides the exit status from the command's result and how the VM ended.
fn finish(
    result: Result<Result<i32, crate::run::RunError>, Option<String>>,
    outcome: Result<Outcome, MachineError>,
    console: &ConsoleTail,
) -> Result<u8, String> {
    let outcome = outcome.map_err(|e| format!("the VM failed: {}", one_line(&e)))?;
    if outcome == Outcome::Panic {
        let line = console.last_line_with("Kernel panic").unwrap_or_default();
        eprintln!("krypton: error: the guest kernel panicked: {line}");
        return Ok(status::GUEST_PANIC);
    }
    match result {
        Ok(Ok(code)) => Ok(u8::try_from(code).unwrap_or(status::VMM_ERROR)),
        Ok(Err(e)) => {
            eprintln!("krypton: error: {}", one_line(&e));
            Ok(u8::try_from(e.exit_code()).unwrap_or(status::VMM_ERROR))
        }
        Err(Some(msg)) => Err(msg),
        Err(None) => Err(format!(
            "the guest stopped before its agent answered ({outcome:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_user_parsing() {
        assert_eq!(parse_env("A=1"), Ok("A=1".into()));
        assert_eq!(parse_env("A="), Ok("A=".into()));
        assert!(parse_env("=1").is_err());
        assert!(parse_env("A").is_err());
        assert_eq!(parse_user("1000"), Ok((1000, 1000)));
        assert_eq!(parse_user("1000:50"), Ok((1000, 50)));
        assert!(parse_user("root").is_err());
        assert!(parse_user("1:x").is_err());
    }

    #[test]
    fn missing_default_assets_say_how_to_build_them() {
        let err = default_asset(None, "definitely/not/here", "kernel").expect_err("absent");
        assert!(
            err.contains("cargo xtask run") || err.contains("KRYPTON_CACHE"),
            "{err}"
        );
        let p = PathBuf::from("/x/y");
        assert_eq!(default_asset(Some(p.clone()), "k", "kernel"), Ok(p));
    }
}
