//! `krypton run`: boot the utility VM (kernel, initramfs with the agent,
//! read-only rootfs disk), wait for the agent's hello over in-process vsock,
//! run one command in a container, stream its stdio and return its status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use krypton_devices::exit::GuestExit;
use krypton_protocol::{AGENT_VSOCK_PORT, Limits};

use super::boot::{PreparedVm, VmSpec, parse_timeout, prepare};
use super::console::ConsoleTail;
use super::devices::{DeviceArgs, DiskArg, ShareArg};
use super::image_run::{self, ImageDefaults, Overrides};
use super::template::template_for;
use super::{fail, one_line, status};
use crate::machine::{MachineError, Outcome, SerialOut};
use crate::run::{RunOptions, Timeline, run_command};

/// Default wait for the agent, counted from the guest's last console
/// output, with hardware virtualization (boots take well under a second).
const BOOT_TIMEOUT_HW: Duration = Duration::from_secs(60);
/// The same on kvm_pvm hosts, where the guest kernel is emulated and a boot
/// to the agent takes about a minute of mostly silent console.
const BOOT_TIMEOUT_PVM: Duration = Duration::from_secs(300);

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
    /// User to run as: NAME|UID[:GROUP|GID], names looked up in the
    /// container's /etc/passwd and /etc/group.
    #[arg(short = 'u', long = "user", value_parser = parse_user)]
    pub user: Option<String>,
    /// Replace the image's Entrypoint (docker's --entrypoint; "" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Run on these read-only EROFS layer images, bottom first (repeatable),
    /// stacked under a tmpfs upper layer, instead of the default rootfs.
    #[arg(long = "layer", conflicts_with = "image")]
    pub layers: Vec<PathBuf>,
    /// Put the container's writable layer on a fresh scratch disk of this
    /// size (512M, 4G; k/m/g/t suffixes, binary) instead of tmpfs: an
    /// empty ext2 filesystem made for this run and removed after it. Needs
    /// IMAGE or --layer.
    #[arg(long, value_name = "SIZE", value_parser = super::scratch::parse_size)]
    pub scratch: Option<u64>,
    /// The image to run (`krypton pull`/`load` put it in the store; see
    /// `krypton images`); without one, the default busybox rootfs.
    pub image: Option<String>,
    /// Container memory limit in MiB (the VM gets 128 MiB more; without
    /// it the VM has 512 MiB, 256 MiB on kvm_pvm hosts).
    #[arg(long)]
    pub memory: Option<u64>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Stop the command after it has run this many seconds (exit status
    /// 124); the boot is not counted (see --boot-timeout).
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
    #[arg(long, allow_hyphen_values = true)]
    pub append: Option<String>,
    /// Hide a CPUID bit from the guest: LEAF:SUBLEAF:REG:BIT (as for `boot`).
    #[arg(long = "hide-cpuid", value_parser = super::boot::parse_cpuid_bit)]
    pub hide_cpuid: Vec<(u32, u32, u8, u8)>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Seconds to wait for the guest agent, counted from the guest's last
    /// console output (default 60; 300 on kvm_pvm hosts; also
    /// KRYPTON_BOOT_TIMEOUT).
    #[arg(long)]
    pub boot_timeout: Option<f64>,
    /// Print how long each start-up phase took (VM built, kernel entry,
    /// /init, agent ready, exec, exit) on stderr at the end.
    #[arg(long)]
    pub timings: bool,
    /// Boot the VM from scratch instead of starting it from the template
    /// snapshot (which is made on first use, in $KRYPTON_CACHE/snapshots).
    #[arg(long)]
    pub no_snapshot: bool,
    /// Host directory in the container: HOST:GUEST or HOST:GUEST:ro
    /// (virtio-fs served by krypton; GUEST is an absolute path). Repeatable.
    #[arg(short = 'v', long = "volume", value_parser = parse_volume)]
    pub volumes: Vec<Volume>,
    /// Network (--net, -p).
    #[command(flatten)]
    pub net: super::devices::NetArgs,
    /// The command and its arguments (after `--`); with an image, its
    /// Entrypoint and Cmd by default.
    #[arg(last = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains('\0') => Ok(s.to_string()),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_user(s: &str) -> Result<String, String> {
    let ok = |x: &str| !x.is_empty() && x.len() <= 64 && !x.contains(['\0', ':', '/', '\n']);
    let valid = match s.split_once(':') {
        Some((u, g)) => ok(u) && ok(g),
        None => ok(s),
    };
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!("'{s}' is not NAME|UID[:GROUP|GID]"))
    }
}

/// One `-v HOST:GUEST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Host directory.
    pub host: PathBuf,
    /// Absolute path in the container.
    pub guest: String,
    /// Read-only (enforced by the host).
    pub read_only: bool,
}

/// Parses `HOST:GUEST[:ro|:rw]`: HOST must be an existing directory, GUEST
/// an absolute path without `..` (HOST may hold ':', as `C:\x` does).
fn parse_volume(s: &str) -> Result<Volume, String> {
    let (rest, read_only) = match s.rsplit_once(':') {
        Some((r, "ro")) => (r, true),
        Some((r, "rw")) => (r, false),
        _ => (s, false),
    };
    let Some((host, guest)) = rest.rsplit_once(':').filter(|(h, _)| !h.is_empty()) else {
        return Err(format!("'{s}' is not HOST:GUEST[:ro]"));
    };
    let mount = krypton_protocol::Mount {
        tag: "t".into(),
        target: guest.to_owned(),
        read_only,
    };
    if mount.check().is_err() {
        return Err(format!(
            "volume '{s}': the guest path '{guest}' must be absolute, not '/', without '..'"
        ));
    }
    let host = PathBuf::from(host);
    super::devices::check_dir(&host)?;
    Ok(Volume {
        host,
        guest: guest.to_owned(),
        read_only,
    })
}

/// The virtio-fs tag of the `i`th volume.
fn volume_tag(i: usize) -> String {
    format!("krypton-v{i}")
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

pub(super) fn default_asset(
    given: Option<PathBuf>,
    rel: &str,
    what: &str,
) -> Result<PathBuf, String> {
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

/// Runs `krypton run`.
pub fn run(args: RunArgs) -> ExitCode {
    match run_inner(args, false) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => fail(&msg),
    }
}

/// What this host needs: the kvm_pvm workarounds, or nothing.
pub(super) struct HostProfile {
    pub pvm: bool,
    pub boot_timeout: Duration,
}

impl HostProfile {
    pub(super) fn detect(boot_timeout: Option<f64>) -> Result<Self, String> {
        let pvm = crate::pvm::host_is_pvm();
        let from_env = || {
            std::env::var("KRYPTON_BOOT_TIMEOUT")
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.parse::<f64>()
                        .map_err(|_| format!("KRYPTON_BOOT_TIMEOUT={v} is not a number of seconds"))
                })
                .transpose()
        };
        let boot_timeout = match boot_timeout.map_or_else(from_env, |s| Ok(Some(s)))? {
            Some(s) if s.is_finite() && s > 0.0 && s < 1e7 => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(format!(
                    "--boot-timeout {s} is not a positive number of seconds"
                ));
            }
            None if pvm => BOOT_TIMEOUT_PVM,
            None => BOOT_TIMEOUT_HW,
        };
        Ok(HostProfile { pvm, boot_timeout })
    }
}

/// `krypton snapshot create`: makes (or finds) the template `krypton run`
/// with these options starts from, and prints its path.
pub(super) fn make_template(args: RunArgs) -> Result<(), String> {
    if args.no_snapshot {
        return Err("--no-snapshot and snapshot create contradict each other".into());
    }
    run_inner(args, true).map(|_| ())
}

fn run_inner(args: RunArgs, template_only: bool) -> Result<u8, String> {
    if args.scratch.is_some() && args.image.is_none() && args.layers.is_empty() {
        return Err("--scratch needs an image root: IMAGE or --layer".into());
    }
    if let Some(size) = args.scratch {
        use krypton_image::ext2::{MAX_SIZE, MIN_SIZE};
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(format!(
                "--scratch {size} bytes is out of bounds (16M to 1T)"
            ));
        }
    }
    let timeline = Timeline::default();
    let timeout = parse_timeout(args.timeout)?;
    let host = HostProfile::detect(args.boot_timeout)?;
    let default_kernel = if host.pvm {
        "kernel/pvm-test-latest/vmlinux"
    } else {
        "kernel/product-latest/vmlinux"
    };
    let mut hide_cpuid = args.hide_cpuid;
    let mut cmdline = krypton_boot::cmdline::default_cmdline();
    if host.pvm {
        if args.kernel.is_none() {
            eprintln!(
                "krypton: notice: /dev/kvm here is kvm_pvm (software virtualization, no VT-x/AMD-V): \
                 using the pvm-test guest kernel, whose every instruction is emulated; a boot takes about a minute"
            );
        }
        if args.cpus > 1 {
            eprintln!(
                "krypton: notice: {} vCPUs on kvm_pvm: about one exec in 40-75 crashes at start-up with more \
                 than one vCPU here (see guest/kernel/README.md); 1 vCPU is the default",
                args.cpus
            );
        }
        cmdline.push(' ');
        cmdline.push_str(&crate::pvm::cmdline());
        hide_cpuid.extend(crate::pvm::cpuid_hides());
    }
    let net_mode = match &args.net.mode {
        Some(m) => m.clone(),
        None => crate::net::run_default(!args.net.publish.is_empty()),
    };
    let kernel = default_asset(args.kernel, default_kernel, "kernel")?;
    let initrd = default_asset(args.initrd, "images/initramfs.cpio", "initramfs")?;
    let rootfs = default_asset(args.rootfs, "images/rootfs.ext4", "rootfs")?;
    let mem_limit = args
        .memory
        .map(|m| m.checked_mul(1 << 20).ok_or("--memory is too large"))
        .transpose()?;
    // Guest RAM costs boot time where the kernel is emulated (struct page
    // set-up and freeing every page: ~7 s per 256 MiB on kvm_pvm).
    let base_mem = if host.pvm { 256 } else { 512 };
    let vm_mem = args
        .memory
        .map_or(base_mem, |m| m.saturating_add(128).max(256));
    if !template_only && args.image.is_none() && args.layers.is_empty() && args.command.is_empty() {
        return Err("no command: krypton run [IMAGE] [-- COMMAND [ARG...]]".into());
    }
    // The image's layers (converted once, on first use) and config.
    let (layer_files, image_config) = match &args.image {
        Some(r) if !template_only => image_run::from_store(r)?,
        _ => (args.layers.clone(), ImageDefaults::default()),
    };
    // Removed (with its directory) when this returns, on every path.
    let scratch = args
        .scratch
        .map(super::scratch::Scratch::create)
        .transpose()?;
    let devices = DeviceArgs {
        disks: vec![DiskArg {
            path: rootfs,
            read_only: true,
        }],
        shares: args
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| ShareArg {
                tag: volume_tag(i),
                dir: v.host.clone(),
                read_only: v.read_only,
            })
            .collect(),
        net: super::devices::NetArgs {
            mode: Some(net_mode.clone()),
            publish: args.net.publish.clone(),
        },
        layers: Some(layer_files.clone()),
        scratch: scratch.as_ref().map(|s| s.path.clone()),
        ..DeviceArgs::default()
    };
    let image = if layer_files.is_empty() {
        None
    } else {
        let mut root =
            image_run::image_root(image_run::guest_disk(devices.disks.len())?, &layer_files)?;
        if scratch.is_some() {
            // Right after the layer disk.
            root.scratch = image_run::guest_disk(devices.disks.len() + 1)?;
        }
        Some(root)
    };
    let process = if template_only {
        image_run::Process::default()
    } else {
        image_run::process(
            &image_config,
            &Overrides {
                entrypoint: args.entrypoint.as_deref(),
                command: &args.command,
                env: &args.env,
                workdir: args.workdir.as_deref(),
                user: args.user.as_deref(),
            },
        )?
    };
    let mounts = args
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| krypton_protocol::Mount {
            tag: volume_tag(i),
            target: v.guest.clone(),
            read_only: v.read_only,
        })
        .collect();
    let console = ConsoleTail::new(args.console, timeline.clone());
    // Before --append, so the user's krypton.net= (the last one) wins.
    if let Some(net) = crate::net::guest_cmdline(&net_mode) {
        cmdline.push(' ');
        cmdline.push_str(&net);
    }
    if !args.console {
        cmdline.push_str(" quiet");
    }
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let spec = |serial: SerialOut| VmSpec {
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: Some(cmdline.clone()),
        mem: vm_mem,
        cpus: args.cpus,
        serial,
        hide_cpuid: hide_cpuid.clone(),
        linux64: false,
        devices: &devices,
    };
    let template = if args.no_snapshot {
        None
    } else {
        let t = template_for(&spec, host.boot_timeout, args.console)?;
        timeline.mark("template ready");
        t
    };
    if template_only {
        let t = template.ok_or("no template was made (see the notice above)")?;
        use std::io::Write;
        writeln!(std::io::stdout(), "{}", t.path.display())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
        return Ok(status::OK);
    }
    let restored = template.is_some();
    let template_path = template.as_ref().map(|t| t.path.clone());
    let vm = prepare(spec(SerialOut::Writer(Box::new(console.clone()))), template)?;
    timeline.mark(if restored { "vm restored" } else { "vm built" });
    let opts = RunOptions {
        argv: process.argv,
        env: process.env,
        cwd: process.cwd,
        uid: 0,
        gid: 0,
        user: process.user,
        tty: args.tty,
        interactive: args.interactive,
        rootfs: if image.is_some() {
            String::new()
        } else {
            "/dev/vda".into()
        },
        image,
        hostname: args.hostname.unwrap_or_default(),
        limits: Limits {
            memory_bytes: mem_limit,
            ..Limits::default()
        },
        mounts,
        timeout,
        timeline: Some(timeline.clone()),
        restored,
        oci: None,
        started: None,
    };

    let exit = vm.machine.exit_signal();
    let (done_tx, done_rx) = mpsc::channel();
    let machine = vm.machine;
    let start = vm.start;
    let vm_timeline = timeline.clone();
    let vm_thread = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || {
            vm_timeline.mark(if restored {
                "vcpus resumed"
            } else {
                "kernel entry"
            });
            let r = PreparedVm::run(machine, start, None);
            let _ = done_tx.send(());
            r
        })
        .map_err(|e| format!("cannot start the VM thread: {e}"))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let vsock = vm.vsock;
    // passt (if any) is stopped after the VM, when this is dropped.
    let _net = vm.net;
    let started = Instant::now();
    let result = rt.block_on(async {
        // The guest may answer a connection request slowly (emulated
        // kernel) but refuses at once while the agent is not listening yet.
        let answer_within = host.boot_timeout.min(Duration::from_secs(30));
        let mut pause = Duration::from_millis(20);
        let stream = loop {
            match vsock
                .connect_in_process_within(AGENT_VSOCK_PORT, answer_within)
                .await
            {
                Ok(s) => break Ok(s),
                Err(e) => {
                    if done_rx.try_recv().is_ok() {
                        break Err(None);
                    }
                    let quiet_for = console.last_output().elapsed();
                    if quiet_for > host.boot_timeout && started.elapsed() > host.boot_timeout {
                        break Err(Some(BootWait::NoAgent(format!(
                            "the guest agent did not answer, and the guest console has been silent for {:.0} s \
                             (raise --boot-timeout, now {:.0} s): {e}",
                            quiet_for.as_secs_f64(),
                            host.boot_timeout.as_secs_f64()
                        ))));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
        };
        match stream {
            Ok(s) => {
                timeline.mark("agent connected");
                Ok(run_command(s, &opts).await)
            }
            Err(e) => Err(e),
        }
    });
    // Sampled while the VM still exists: what this VM added to the template.
    let ram = template_path
        .as_deref()
        .and_then(crate::snapshot::rss::ram_usage);
    exit.request(GuestExit::HostStop);
    let outcome = vm_thread
        .join()
        .map_err(|_| "the VM thread panicked".to_string())?;
    timeline.mark("vm stopped");
    if args.timings {
        eprint!("{}", timeline.report());
        if let Some(r) = ram {
            eprintln!(
                "guest RAM ({vm_mem} MiB, restored): {:.1} MiB resident, {:.1} MiB private copies, {:.1} MiB shared with the template",
                r.rss_kib as f64 / 1024.0,
                r.private_kib as f64 / 1024.0,
                r.shared_kib() as f64 / 1024.0
            );
        }
    }
    finish(result, outcome, &console)
}

/// Why `krypton run` stopped waiting for the agent.
enum BootWait {
    /// No agent and no progress on the console.
    NoAgent(String),
}

/// Decides the exit status from the command's result and how the VM ended.
fn finish(
    result: Result<Result<i32, crate::run::RunError>, Option<BootWait>>,
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
        Err(Some(BootWait::NoAgent(msg))) => Err(msg),
        Err(None) => Err(format!(
            "the guest stopped before its agent answered ({outcome:?}); last console line: {}",
            console.last_line()
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
        assert_eq!(parse_user("1000").as_deref(), Ok("1000"));
        assert_eq!(parse_user("app:staff").as_deref(), Ok("app:staff"));
        for bad in ["", ":0", "0:", "a:b:c", "a/b", "x\0"] {
            assert!(parse_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn volume_parsing() {
        let dir = std::env::temp_dir();
        let d = dir.display();
        assert_eq!(
            parse_volume(&format!("{d}:/data:ro")),
            Ok(Volume {
                host: dir.clone(),
                guest: "/data".into(),
                read_only: true
            })
        );
        assert_eq!(
            parse_volume(&format!("{d}:/a/b")).map(|v| (v.guest, v.read_only)),
            Ok(("/a/b".into(), false))
        );
        for bad in [
            format!("{d}:data"),
            format!("{d}:/"),
            format!("{d}:/a/../etc"),
            format!("{d}"),
            ":/data".to_string(),
        ] {
            assert!(parse_volume(&bad).is_err(), "{bad}");
        }
        let err = parse_volume("/definitely/not/here:/data").expect_err("missing host dir");
        assert!(err.contains("/definitely/not/here"), "{err}");
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
