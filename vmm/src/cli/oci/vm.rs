//! The utility VM of one OCI container: the same kernel, initramfs and
//! template snapshot as `krypton run`, with the bundle's shares attached.

use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use krypton_devices::exit::{ExitSignal, GuestExit};
use krypton_devices::virtio::vsock::VsockHost;
use krypton_protocol::AGENT_VSOCK_PORT;
use tokio::io::DuplexStream;

use super::spec::Plan;
use crate::cli::boot::{PreparedVm, VmSpec, prepare};
use crate::cli::console::ConsoleTail;
use crate::cli::devices::{DeviceArgs, DiskArg};
use crate::cli::run::{HostProfile, default_asset};
use crate::cli::template::template_for;
use crate::machine::{MachineError, Outcome, SerialOut};
use crate::run::Timeline;

/// A running utility VM whose agent accepts connections.
pub struct AgentVm {
    vsock: VsockHost,
    exit: Arc<ExitSignal>,
    thread: Option<JoinHandle<Result<Outcome, MachineError>>>,
    done: std::sync::Mutex<mpsc::Receiver<()>>,
    console: ConsoleTail,
    boot_timeout: Duration,
    /// Started from the template snapshot (the agent must reseed).
    pub restored: bool,
    _net: std::sync::Mutex<Option<Box<dyn std::fmt::Debug + Send>>>,
}

impl std::fmt::Debug for AgentVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentVm")
            .field("restored", &self.restored)
            .finish()
    }
}

/// Builds (from the template where possible) and starts the VM for `plan`.
pub fn start(plan: &Plan, timeline: &Timeline) -> Result<AgentVm, String> {
    let host = HostProfile::detect(None)?;
    let default_kernel = if host.pvm {
        "kernel/pvm-test-latest/vmlinux"
    } else {
        "kernel/product-latest/vmlinux"
    };
    let mut hide_cpuid = Vec::new();
    let mut cmdline = krypton_boot::cmdline::default_cmdline();
    if host.pvm {
        cmdline.push(' ');
        cmdline.push_str(&crate::pvm::cmdline());
        hide_cpuid.extend(crate::pvm::cpuid_hides());
    }
    cmdline.push_str(" quiet");
    let kernel = default_asset(None, default_kernel, "kernel")?;
    let initrd = default_asset(None, "images/initramfs.cpio", "initramfs")?;
    // The same disks as `krypton run` (its rootfs stays unused), so that
    // both share templates.
    let rootfs = default_asset(None, "images/rootfs.ext4", "rootfs")?;
    let base_mem = if host.pvm { 256 } else { 512 };
    let mem = plan.vm_mem_mib.unwrap_or(base_mem);
    let devices = DeviceArgs {
        disks: vec![DiskArg {
            path: rootfs,
            read_only: true,
        }],
        shares: plan.shares.clone(),
        layers: Some(Vec::new()),
        ..DeviceArgs::default()
    };
    let console = ConsoleTail::new(false, timeline.clone());
    let spec = |serial: SerialOut| VmSpec {
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: Some(cmdline.clone()),
        mem,
        cpus: 1,
        serial,
        hide_cpuid: hide_cpuid.clone(),
        linux64: false,
        devices: &devices,
    };
    let template = template_for(&spec, host.boot_timeout, false)?;
    let restored = template.is_some();
    let vm = prepare(spec(SerialOut::Writer(Box::new(console.clone()))), template)?;
    timeline.mark(if restored { "vm restored" } else { "vm built" });
    let exit = vm.machine.exit_signal();
    let (done_tx, done) = mpsc::channel();
    let (machine, vm_start) = (vm.machine, vm.start);
    let thread = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || {
            let r = PreparedVm::run(machine, vm_start, None);
            let _ = done_tx.send(());
            r
        })
        .map_err(|e| format!("cannot start the VM thread: {e}"))?;
    Ok(AgentVm {
        vsock: vm.vsock,
        exit,
        thread: Some(thread),
        done: std::sync::Mutex::new(done),
        console,
        boot_timeout: host.boot_timeout,
        restored,
        _net: std::sync::Mutex::new(vm.net),
    })
}

impl AgentVm {
    /// A new connection to the agent, waiting for it to listen (a cold
    /// boot) within the boot timeout.
    pub async fn connect(&self) -> Result<DuplexStream, String> {
        let started = Instant::now();
        let answer_within = self.boot_timeout.min(Duration::from_secs(30));
        let mut pause = Duration::from_millis(20);
        loop {
            match self
                .vsock
                .connect_in_process_within(AGENT_VSOCK_PORT, answer_within)
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) => {
                    let stopped = self.done.lock().is_ok_and(|d| d.try_recv().is_ok());
                    if stopped {
                        return Err(format!(
                            "the VM stopped before its agent answered; last console line: {}",
                            self.console.last_line()
                        ));
                    }
                    let quiet = self.console.last_output().elapsed();
                    if quiet > self.boot_timeout && started.elapsed() > self.boot_timeout {
                        return Err(format!(
                            "the guest agent did not answer within {:.0} s: {e}",
                            self.boot_timeout.as_secs_f64()
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    /// Stops the VM and waits for its thread.
    pub fn stop(&mut self) {
        self.exit.request(GuestExit::HostStop);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(Outcome::Panic)) => log::error!(
                    "the guest kernel panicked: {}",
                    self.console
                        .last_line_with("Kernel panic")
                        .unwrap_or_default()
                ),
                Ok(Err(e)) => log::error!("the VM failed: {}", crate::cli::one_line(&e)),
                Ok(Ok(_)) => {}
                Err(_) => log::error!("the VM thread panicked"),
            }
        }
    }
}

impl Drop for AgentVm {
    fn drop(&mut self) {
        self.stop();
    }
}
