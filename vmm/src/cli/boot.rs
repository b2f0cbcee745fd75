//! `krypton boot`: boot a kernel (ELF vmlinux, bzImage) or an ELF test guest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use krypton_boot::cpu::CpuState;
use krypton_boot::kernel::{BootProtocol, ImageSource, KernelConfig, load_kernel};
use krypton_boot::mptable::{Polarity, Trigger};
use krypton_devices::virtio::vsock::VsockHost;

use super::devices::{self, DeviceArgs};
use super::snapshot::{LineWatch, identity_key};
use super::{fail, one_line, status};
use crate::machine::{Machine, MachineConfig, MachineError, Outcome, SerialOut};
use crate::snapshot::{MachineState, Snapshot};

/// Options of `krypton boot`.
#[derive(clap::Args, Debug)]
pub struct BootArgs {
    /// Kernel: ELF vmlinux (PVH note or 64-bit entry), bzImage, or an ELF test guest.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Kernel command line, replacing the default. Device announcements
    /// (virtio_mmio.device=...) are always appended.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Where COM1 output goes: stdio, none, or a file path.
    #[arg(long, default_value = "stdio")]
    pub serial: String,
    /// Stop the VM after this many seconds (exit status 124).
    #[arg(long, allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Hide a CPUID bit from the guest: LEAF:SUBLEAF:REG:BIT, e.g. 0x7:0:edx:29.
    #[arg(long = "hide-cpuid", value_parser = parse_cpuid_bit)]
    pub hide_cpuid: Vec<(u32, u32, u8, u8)>,
    /// Boot an ELF vmlinux through the 64-bit boot protocol even if it has a PVH note.
    #[arg(long)]
    pub linux64: bool,
    /// Virtio devices.
    #[command(flatten)]
    pub devices: DeviceArgs,
    /// Save the VM to this snapshot file and stop, when --snapshot-on or
    /// --snapshot-after says.
    #[arg(long)]
    pub snapshot_out: Option<PathBuf>,
    /// Save as soon as the console prints a line containing this text.
    #[arg(long, requires = "snapshot_out")]
    pub snapshot_on: Option<String>,
    /// Save this many seconds after the VM starts.
    #[arg(long, requires = "snapshot_out")]
    pub snapshot_after: Option<f64>,
    /// Start from this snapshot instead of booting. Give the same kernel,
    /// initrd, command line, memory, vCPUs and devices it was made with.
    #[arg(long, conflicts_with = "snapshot_out")]
    pub restore: Option<PathBuf>,
}

fn parse_num(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("'{s}' is not a number"))
}

/// Parses LEAF:SUBLEAF:REG:BIT.
pub fn parse_cpuid_bit(s: &str) -> Result<(u32, u32, u8, u8), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [leaf, sub, reg, bit] = parts.as_slice() else {
        return Err("expected LEAF:SUBLEAF:REG:BIT".into());
    };
    let reg = match reg.to_ascii_lowercase().as_str() {
        "eax" => 0,
        "ebx" => 1,
        "ecx" => 2,
        "edx" => 3,
        other => return Err(format!("'{other}' is not eax, ebx, ecx or edx")),
    };
    let bit = parse_num(bit)?;
    if bit > 31 {
        return Err(format!("bit {bit} is out of range 0-31"));
    }
    Ok((parse_num(leaf)?, parse_num(sub)?, reg, bit as u8))
}

fn serial_out(s: &str) -> SerialOut {
    match s {
        "stdio" => SerialOut::Stdout,
        "none" => SerialOut::Null,
        path => SerialOut::File(PathBuf::from(path)),
    }
}

/// Maps how the guest ended to the process exit status.
pub fn exit_status(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::DebugExit(v) => ((v << 1) | 1) as u8,
        Outcome::Reset
        | Outcome::Shutdown
        | Outcome::Halted
        | Outcome::Stopped
        | Outcome::Snapshotted => status::OK,
        Outcome::Panic => status::GUEST_PANIC,
        Outcome::Timeout => status::TIMEOUT,
    }
}

/// Runs `krypton boot`.
pub fn run(args: BootArgs) -> ExitCode {
    match boot(args) {
        Ok(outcome) => {
            log::info!("guest ended: {outcome:?}");
            ExitCode::from(exit_status(outcome))
        }
        Err(msg) => fail(&msg),
    }
}

/// Everything needed to assemble a VM from the command line.
pub(super) struct VmSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: Option<String>,
    pub mem: u64,
    pub cpus: u8,
    pub serial: SerialOut,
    pub hide_cpuid: Vec<(u32, u32, u8, u8)>,
    pub linux64: bool,
    pub devices: &'a DeviceArgs,
}

/// How a prepared VM starts.
pub(super) enum VmStart {
    /// At the kernel's entry point.
    Boot(CpuState),
    /// Where a snapshot left off.
    Resume(MachineState),
}

/// A VM ready to run.
pub(super) struct PreparedVm {
    pub machine: Machine,
    pub start: VmStart,
    pub vsock: VsockHost,
    /// The network helper (passt), stopped when dropped after the VM.
    pub net: Option<Box<dyn std::fmt::Debug + Send>>,
}

impl PreparedVm {
    /// Runs the machine (see [`Machine::run`]); the vsock host must be kept
    /// by the caller.
    pub fn run(
        machine: Machine,
        start: VmStart,
        timeout: Option<Duration>,
    ) -> Result<Outcome, MachineError> {
        match start {
            VmStart::Boot(state) => machine.run(state, timeout),
            VmStart::Resume(state) => machine.resume(state, timeout),
        }
    }
}

/// Opens the hypervisor, builds the machine and its devices, and loads the
/// kernel, or with `restore`, maps the snapshot's memory instead.
pub(super) fn prepare(spec: VmSpec<'_>, restore: Option<Snapshot>) -> Result<PreparedVm, String> {
    if let Err(e) = std::fs::metadata(spec.kernel) {
        return Err(format!("cannot read kernel {}: {e}", spec.kernel.display()));
    }
    if let Some(initrd) = spec.initrd {
        std::fs::metadata(initrd)
            .map_err(|e| format!("cannot read initrd {}: {e}", initrd.display()))?;
    }
    let hv = crate::hv::new(crate::hv::Backend::host_default()).map_err(|e| one_line(&e))?;
    let cfg = MachineConfig {
        mem_mib: spec.mem,
        cpus: spec.cpus,
        serial: spec.serial,
        hide_cpuid: spec.hide_cpuid,
    };
    if let Some(snap) = restore {
        let mut machine =
            Machine::from_snapshot(hv.as_ref(), cfg, &snap).map_err(|e| one_line(&e))?;
        let attached = devices::add_all(&mut machine, spec.devices)?;
        return Ok(PreparedVm {
            machine,
            start: VmStart::Resume(snap.state),
            vsock: attached.vsock,
            net: attached.net,
        });
    }
    let mut machine = Machine::new(hv.as_ref(), cfg).map_err(|e| one_line(&e))?;
    let attached = devices::add_all(&mut machine, spec.devices)?;
    let ram = krypton_boot::layout::ram_regions(spec.mem << 20);
    let mut kcfg = KernelConfig::new(
        ImageSource::File(spec.kernel.to_path_buf()),
        machine.cpus(),
        ram,
    );
    kcfg.initrd = spec.initrd.map(|p| ImageSource::File(p.to_path_buf()));
    if let Some(c) = spec.cmdline {
        kcfg.cmdline = c;
    }
    kcfg.virtio_devices = machine.virtio_devices().to_vec();
    // The transport pulses its line on every interrupt (edge, active high).
    kcfg.virtio_trigger = Trigger::Edge;
    kcfg.virtio_polarity = Polarity::ActiveHigh;
    if spec.linux64 {
        kcfg.protocol = BootProtocol::ForceLinux64;
    }
    let state = load_kernel(machine.memory(), &kcfg).map_err(|e| one_line(&e))?;
    log::info!("kernel command line: {}", kcfg.full_cmdline());
    Ok(PreparedVm {
        machine,
        start: VmStart::Boot(state),
        vsock: attached.vsock,
        net: attached.net,
    })
}

fn boot(args: BootArgs) -> Result<Outcome, String> {
    let timeout = parse_timeout(args.timeout)?;
    let snapshot_after = parse_timeout(args.snapshot_after)?;
    let mut serial = serial_out(&args.serial);
    let mut seen = None;
    if let Some(needle) = &args.snapshot_on {
        let inner = crate::machine::serial_writer(serial).map_err(|e| one_line(&e))?;
        let (w, flag) = LineWatch::new(inner, needle);
        serial = SerialOut::Writer(Box::new(w));
        seen = Some(flag);
    }
    let spec = VmSpec {
        kernel: &args.kernel,
        initrd: args.initrd.as_deref(),
        cmdline: args.cmdline.clone(),
        mem: args.mem,
        cpus: args.cpus,
        serial,
        hide_cpuid: args.hide_cpuid.clone(),
        linux64: args.linux64,
        devices: &args.devices,
    };
    let key = match (&args.snapshot_out, &args.restore) {
        (None, None) => 0,
        _ => identity_key(&spec)?,
    };
    let restore = match &args.restore {
        Some(path) => {
            let snap = Snapshot::open(path).map_err(|e| one_line(&e))?;
            snap.check_identity(crate::hv::Backend::host_default(), key, args.mem, args.cpus)
                .map_err(|e| one_line(&e))?;
            Some(snap)
        }
        None => None,
    };
    let mut vm = prepare(spec, restore)?;
    if let Some(out) = &args.snapshot_out {
        vm.machine.snapshot_on_request(out.clone(), key);
        watch_for_snapshot(vm.machine.exit_signal(), seen, snapshot_after);
    }
    // The vsock host (and its socket) lives until the VM has stopped.
    let _vsock = vm.vsock;
    let _net = vm.net;
    if args.serial == "stdio" {
        forward_stdin(vm.machine.serial_input());
    }
    PreparedVm::run(vm.machine, vm.start, timeout).map_err(|e| one_line(&e))
}

/// Requests the snapshot when the console line was seen or the delay
/// passed, whichever comes first.
fn watch_for_snapshot(
    exit: std::sync::Arc<krypton_devices::exit::ExitSignal>,
    seen: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    after: Option<Duration>,
) {
    let start = std::time::Instant::now();
    let spawned = std::thread::Builder::new()
        .name("snapshot-watch".into())
        .spawn(move || {
            loop {
                let now_seen = seen
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
                if now_seen || after.is_some_and(|a| start.elapsed() >= a) {
                    exit.request(krypton_devices::exit::GuestExit::HostSnapshot);
                    return;
                }
                if exit.get().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    if let Err(e) = spawned {
        log::warn!("no snapshot will be taken: cannot start its thread: {e}");
    }
}

/// Feeds this process's stdin to COM1 on a detached thread (a blocking
/// read cannot be cancelled; the thread ends with the process or at EOF).
/// Input waits while the guest's receive FIFO is full, so none is dropped.
fn forward_stdin(serial: std::sync::Arc<std::sync::Mutex<krypton_devices::serial::Serial>>) {
    use std::io::Read;
    let spawned = std::thread::Builder::new()
        .name("serial-in".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .enqueue_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("serial input disabled: cannot start its thread: {e}");
    }
}

/// Validates a `--timeout` in seconds.
pub(super) fn parse_timeout(t: Option<f64>) -> Result<Option<Duration>, String> {
    match t {
        Some(t) if !(t.is_finite() && t > 0.0 && t < 1e9) => Err(format!(
            "--timeout {t} must be a positive number of seconds"
        )),
        t => Ok(t.map(Duration::from_secs_f64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_bits_parse_and_reject_bad_input() {
        assert_eq!(parse_cpuid_bit("0x7:0:edx:29"), Ok((7, 0, 3, 29)));
        assert_eq!(parse_cpuid_bit("1:0:ECX:13"), Ok((1, 0, 2, 13)));
        assert!(parse_cpuid_bit("1:0:ecx").is_err());
        assert!(parse_cpuid_bit("1:0:esi:1").is_err());
        assert!(parse_cpuid_bit("1:0:ecx:32").is_err());
        assert!(parse_cpuid_bit("x:0:ecx:1").is_err());
    }

    #[test]
    fn debug_exit_status_matches_qemu() {
        assert_eq!(exit_status(Outcome::DebugExit(0)), 1);
        assert_eq!(exit_status(Outcome::DebugExit(0x31)), 0x63);
        assert_eq!(exit_status(Outcome::Reset), 0);
        assert_eq!(exit_status(Outcome::Timeout), 124);
        assert_ne!(exit_status(Outcome::Panic), 0);
    }
}
