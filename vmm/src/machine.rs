//! The VM builder and runner: guest RAM, the platform devices every VM has
//! (IOAPIC, COM1, i8042, debug exit), extra devices, then one thread per
//! vCPU running the loop in `vcpu.rs` until the guest or the VMM ends it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use krypton_boot::cmdline::VirtioMmioDevice;
use krypton_boot::cpu::CpuState;
use krypton_boot::layout;
use krypton_devices::GuestMem;
use krypton_devices::bus::BusDevice;
use krypton_devices::debug_exit::DebugExit;
use krypton_devices::exit::{ExitSignal, GuestExit};
use krypton_devices::i8042::I8042;
use krypton_devices::interrupt::IrqLine;
use krypton_devices::ioapic::{Ioapic, ioapic_pin};
use krypton_devices::serial::{PanicWatch, Serial};
use krypton_devices::virtio::VirtioDevice;
use krypton_devices::virtio::mmio::MmioTransport;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::bus::{Bus, BusError};
use crate::hv::{Backend, HvError, Hypervisor, Kick, Vcpu, VcpuState, Vm, VmConfig};
use crate::mmio_check::{MmioCheck, MmioCheckStats};
use crate::snapshot::MachineState;
use crate::vcpu::{ExitContext, VcpuStop, run_loop};

/// Smallest and largest guest RAM accepted, in MiB.
pub const MEM_MIB_RANGE: std::ops::RangeInclusive<u64> = 2..=(1 << 20);
/// Most vCPUs a VM may have (the MP table and IOAPIC IDs are 8-bit).
pub const MAX_CPUS: u8 = 64;
/// How long stopped vCPUs get to leave `run` after a kick.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where COM1's output goes.
pub enum SerialOut {
    /// The VMM's standard output.
    Stdout,
    /// Discarded.
    Null,
    /// Appended to this file (created if missing).
    File(PathBuf),
    /// Any writer (tests capture output this way).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialOut::Stdout => f.write_str("Stdout"),
            SerialOut::Null => f.write_str("Null"),
            SerialOut::File(p) => write!(f, "File({})", p.display()),
            SerialOut::Writer(_) => f.write_str("Writer"),
        }
    }
}

/// What a VM is made of.
#[derive(Debug)]
pub struct MachineConfig {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// COM1 output.
    pub serial: SerialOut,
    /// CPUID bits to hide: (leaf, subleaf, register 0..3 = EAX..EDX, bit).
    pub hide_cpuid: Vec<(u32, u32, u8, u8)>,
}

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// The guest reset the machine (i8042, `reboot=k`).
    Reset,
    /// Triple fault or processor shutdown.
    Shutdown,
    /// The guest kernel panicked (seen on the console).
    Panic,
    /// Every vCPU halted with nothing left to wake it.
    Halted,
    /// The run's time limit passed.
    Timeout,
    /// The VMM stopped the VM on the host's request.
    Stopped,
    /// The VM was stopped and saved to a snapshot.
    Snapshotted,
}

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The hypervisor refused something.
    #[error(transparent)]
    Hv(#[from] HvError),
    /// RAM size out of range.
    #[error("guest memory of {0} MiB is out of range (2 MiB to 1 TiB, and at most the host's RAM)")]
    MemSize(u64),
    /// vCPU count out of range.
    #[error("{0} vCPUs requested; Krypton supports 1 to {MAX_CPUS}")]
    CpuCount(u8),
    /// Allocating guest RAM failed.
    #[error("cannot allocate {mib} MiB of guest memory")]
    Memory {
        /// Requested size.
        mib: u64,
        /// The allocator's error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Registering a device failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The serial output file could not be opened.
    #[error("cannot open serial output {path}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No IOAPIC pin is left for another virtio device.
    #[error("too many virtio devices (at most {MAX_VIRTIO_DEVICES})")]
    TooManyDevices,
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    /// Setting up or running a vCPU failed.
    #[error("vCPU {id}")]
    Vcpu {
        /// The vCPU.
        id: u8,
        /// The hypervisor error.
        #[source]
        source: HvError,
    },
    /// Saving or restoring a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A snapshot's device state does not fit this VM's devices.
    #[error("snapshot does not fit this VM: {0}")]
    SnapshotDevices(String),
    /// The guest made an exit the VMM cannot handle.
    #[error("vCPU {id} stopped on an unhandled exit: {what}")]
    Unhandled {
        /// The vCPU.
        id: u8,
        /// What the exit was.
        what: &'static str,
    },
}

/// A VM being assembled; `run` starts it.
pub struct Machine {
    vm: Arc<dyn Vm>,
    /// The backend `vm` runs on (named in snapshots).
    backend: Backend,
    mem: GuestMem,
    cpus: u8,
    pio: Bus,
    mmio: Bus,
    ioapic: Arc<Mutex<Ioapic>>,
    serial: Arc<Mutex<Serial>>,
    exit: Arc<ExitSignal>,
    virtio: Vec<VirtioMmioDevice>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    mmio_check: Option<Arc<MmioCheckStats>>,
    /// Where to save the VM when the host requests a snapshot, and the
    /// identity key to write.
    snapshot_out: Option<(PathBuf, u64)>,
}

/// Most virtio-mmio devices per VM (IOAPIC pins 5..=23).
pub const MAX_VIRTIO_DEVICES: usize = (layout::IOAPIC_PINS - layout::VIRTIO_IRQ_BASE) as usize;

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("cpus", &self.cpus)
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish_non_exhaustive()
    }
}

fn host_ram_mib() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if pages > 0 && size > 0 {
            return Some((pages as u64).saturating_mul(size as u64) >> 20);
        }
    }
    None
}

/// The writer COM1's output goes to.
pub fn serial_writer(out: SerialOut) -> Result<Box<dyn Write + Send>, MachineError> {
    Ok(match out {
        SerialOut::Stdout => Box::new(std::io::LineWriter::new(std::io::stdout())),
        SerialOut::Null => Box::new(std::io::sink()),
        SerialOut::File(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path);
            let f = f.map_err(|source| MachineError::SerialFile { path, source })?;
            Box::new(std::io::LineWriter::new(f))
        }
        SerialOut::Writer(w) => w,
    })
}

impl Machine {
    /// Creates the VM, its RAM and the platform devices.
    pub fn new(hv: &dyn Hypervisor, cfg: MachineConfig) -> Result<Machine, MachineError> {
        Self::with_memory(hv, cfg, None)
    }

    /// Creates the VM with guest RAM `memory` (laid out as
    /// `layout::ram_regions`), or fresh anonymous RAM when `None`.
    fn with_memory(
        hv: &dyn Hypervisor,
        cfg: MachineConfig,
        memory: Option<GuestMem>,
    ) -> Result<Machine, MachineError> {
        if !MEM_MIB_RANGE.contains(&cfg.mem_mib) || host_ram_mib().is_some_and(|h| cfg.mem_mib > h)
        {
            return Err(MachineError::MemSize(cfg.mem_mib));
        }
        if cfg.cpus == 0 || cfg.cpus > MAX_CPUS {
            return Err(MachineError::CpuCount(cfg.cpus));
        }
        let vm = hv.create_vm(&VmConfig {
            cpus: cfg.cpus,
            hide_cpuid: cfg.hide_cpuid,
        })?;
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(cfg.mem_mib << 20)
            .into_iter()
            .map(|(start, size)| (GuestAddress(start), size as usize))
            .collect();
        let mem = match memory {
            Some(m) => m,
            None => GuestMem::from_ranges(&ranges).map_err(|source| MachineError::Memory {
                mib: cfg.mem_mib,
                source,
            })?,
        };
        for (slot, region) in mem.iter().enumerate() {
            let host = region.as_ptr();
            // SAFETY: `mem` owns the mapping and is kept in the Machine (and
            // cloned into every device) for as long as the VM exists.
            unsafe {
                vm.map_memory(
                    slot as u32,
                    region.start_addr().0,
                    host,
                    region.len() as usize,
                )?
            };
        }

        let exit = Arc::new(ExitSignal::new());
        let sink: Arc<dyn krypton_devices::interrupt::MsiSink> = vm.clone();
        let ioapic = Arc::new(Mutex::new(Ioapic::new(sink)));
        let out = PanicWatch::new(serial_writer(cfg.serial)?, exit.clone());
        let serial = Arc::new(Mutex::new(Serial::new(
            ioapic_pin(&ioapic, layout::COM1_IRQ),
            Box::new(out),
        )));

        let mut pio = Bus::new("port");
        let mut mmio = Bus::new("MMIO");
        mmio.insert(layout::IOAPIC_BASE, layout::IOAPIC_SIZE, ioapic.clone())?;
        pio.insert(u64::from(layout::COM1_PORT), 8, serial.clone())?;
        pio.insert(
            u64::from(layout::I8042_DATA_PORT),
            5,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        pio.insert(
            u64::from(layout::DEBUG_EXIT_PORT),
            4,
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
        )?;
        let mmio_check = crate::mmio_check::requested_by_env().then(Arc::default);
        Ok(Machine {
            vm,
            backend: hv.backend(),
            mem,
            cpus: cfg.cpus,
            pio,
            mmio,
            ioapic,
            serial,
            exit,
            virtio: Vec::new(),
            transports: Vec::new(),
            mmio_check,
            snapshot_out: None,
        })
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// Number of vCPUs.
    pub fn cpus(&self) -> u8 {
        self.cpus
    }

    /// The exit signal devices use to end the VM.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Registers a port-I/O device at `[base, base + len)`.
    pub fn add_pio_device(
        &mut self,
        base: u16,
        len: u16,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), MachineError> {
        Ok(self.pio.insert(u64::from(base), u64::from(len), dev)?)
    }

    /// Registers an MMIO device at `[base, base + len)`.
    pub fn add_mmio_device(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), MachineError> {
        Ok(self.mmio.insert(base, len, dev)?)
    }

    /// An IOAPIC input line for a device.
    pub fn irq_line(&self, pin: u8) -> Arc<dyn IrqLine> {
        ioapic_pin(&self.ioapic, pin)
    }

    /// Puts `device` behind a virtio-mmio transport in the next free slot
    /// (4 KiB from `layout::VIRTIO_MMIO_BASE`, IOAPIC pins from
    /// `layout::VIRTIO_IRQ_BASE`) and returns what the kernel must be told.
    pub fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<VirtioMmioDevice, MachineError> {
        let index = self.virtio.len();
        if index >= MAX_VIRTIO_DEVICES {
            return Err(MachineError::TooManyDevices);
        }
        let slot = VirtioMmioDevice {
            base: layout::VIRTIO_MMIO_BASE + index as u64 * layout::VIRTIO_MMIO_SIZE,
            size: layout::VIRTIO_MMIO_SIZE,
            irq: layout::VIRTIO_IRQ_BASE + index as u8,
        };
        let transport = MmioTransport::new(device, self.mem.clone(), self.irq_line(slot.irq));
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(slot.base, slot.size, transport.clone())?;
        self.transports.push(transport);
        self.virtio.push(slot);
        Ok(slot)
    }

    /// Checks every MMIO exit's instruction with our emulator against the
    /// hypervisor's decoding (see `mmio_check`); returns the run's counters.
    pub fn enable_mmio_check(&mut self) -> Arc<MmioCheckStats> {
        self.mmio_check.get_or_insert_with(Arc::default).clone()
    }

    /// The virtio-mmio devices added so far, in slot order.
    pub fn virtio_devices(&self) -> &[VirtioMmioDevice] {
        &self.virtio
    }

    /// COM1, for feeding guest input.
    pub fn serial_input(&self) -> Arc<Mutex<Serial>> {
        self.serial.clone()
    }

    /// Boots vCPU 0 from `boot` (the others wait for INIT/SIPI) and runs
    /// until the guest ends the VM, a vCPU stops, or `timeout` passes.
    pub fn run(self, boot: CpuState, timeout: Option<Duration>) -> Result<Outcome, MachineError> {
        self.start(Start::Boot(boot), timeout)
    }

    fn start(mut self, how: Start, timeout: Option<Duration>) -> Result<Outcome, MachineError> {
        let mut vcpus: Vec<Box<dyn Vcpu>> = Vec::with_capacity(usize::from(self.cpus));
        for id in 0..self.cpus {
            vcpus.push(
                self.vm
                    .create_vcpu(id)
                    .map_err(|source| MachineError::Vcpu { id, source })?,
            );
        }
        match how {
            Start::Boot(boot) => set_boot_state(vcpus[0].as_mut(), &boot)?,
            Start::Restore(state) => self.restore_state(&state, &mut vcpus)?,
        }

        let stop = Arc::new(AtomicBool::new(false));
        let kickers: Arc<Vec<Arc<dyn Kick>>> = Arc::new(vcpus.iter().map(|v| v.kicker()).collect());
        let stop_all = {
            let (stop, kickers) = (stop.clone(), kickers.clone());
            move || {
                stop.store(true, Ordering::SeqCst);
                kickers.iter().for_each(|k| k.kick());
            }
        };
        self.exit.set_waker(Box::new(stop_all.clone()));

        let ioapic = self.ioapic.clone();
        let ctx = Arc::new(ExitContext {
            pio: Arc::new(std::mem::replace(&mut self.pio, Bus::new("port"))),
            mmio: Arc::new(std::mem::replace(&mut self.mmio, Bus::new("MMIO"))),
            eoi: Box::new(move |v| {
                ioapic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .end_of_interrupt(v)
            }),
            mmio_check: self.mmio_check.clone().map(|stats| MmioCheck {
                mem: self.mem.clone(),
                stats,
            }),
        });
        let (tx, rx) = mpsc::channel::<(u8, VcpuStop)>();
        let saved: Arc<Mutex<SavedVcpus>> = Arc::default();
        let mut threads = Vec::new();
        for (id, mut vcpu) in vcpus.into_iter().enumerate() {
            let (ctx, stop, tx, mem) = (ctx.clone(), stop.clone(), tx.clone(), self.mem.clone());
            let (exit, saved) = (self.exit.clone(), saved.clone());
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let why = run_loop(vcpu.as_mut(), &ctx, &stop);
                    log_stop(vcpu.as_ref(), id, &why, &mem);
                    if exit.get() == Some(GuestExit::HostSnapshot) {
                        let state = vcpu.save_state();
                        saved
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((id as u8, state));
                    }
                    let _ = tx.send((id as u8, why));
                })
                .map_err(MachineError::Thread);
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop_all();
                    return Err(e);
                }
            }
        }
        drop(tx);

        let first = match timeout {
            Some(t) => rx.recv_timeout(t).ok(),
            None => rx.recv().ok(),
        };
        stop_all();
        let deadline = Instant::now() + STOP_GRACE;
        let mut stops: Vec<(u8, VcpuStop)> = first.into_iter().collect();
        while stops.len() < threads.len() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(s) => stops.push(s),
                Err(_) => {
                    log::warn!(
                        "{} vCPU(s) did not stop within {STOP_GRACE:?}",
                        threads.len() - stops.len()
                    );
                    break;
                }
            }
        }
        if stops.len() == threads.len() {
            threads.into_iter().for_each(|t| {
                let _ = t.join();
            });
        }
        let _ = self
            .serial
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
        if self.exit.get() == Some(GuestExit::HostSnapshot) {
            let saved = std::mem::take(&mut *saved.lock().unwrap_or_else(PoisonError::into_inner));
            self.save_snapshot(saved)?;
        }
        if let Some(stats) = &self.mmio_check {
            log::info!(
                "MMIO emulator differential check: {} exits checked, {} mismatches",
                stats.checked(),
                stats.mismatched()
            );
        }
        outcome(self.exit.get(), stops)
    }
}

/// vCPU states saved by their threads for a snapshot, by vCPU ID.
type SavedVcpus = Vec<(u8, Result<VcpuState, HvError>)>;

/// How [`Machine::start`] starts the vCPUs.
enum Start {
    /// From the boot protocol's entry state (vCPU 0 only).
    Boot(CpuState),
    /// From a snapshot's saved state.
    Restore(MachineState),
}

fn set_boot_state(bsp: &mut dyn Vcpu, boot: &CpuState) -> Result<(), MachineError> {
    let setup = bsp
        .set_sregs(&boot.sregs)
        .and_then(|()| bsp.set_regs(&boot.regs));
    let setup = setup.and_then(|()| {
        if boot.msrs.is_empty() {
            Ok(())
        } else {
            bsp.set_msrs(&boot.msrs)
        }
    });
    setup.map_err(|source| MachineError::Vcpu { id: 0, source })
}

/// Logs where a vCPU stopped: at error level with the instruction bytes
/// when it stopped on an exit the VMM cannot handle (the usual way to find
/// which instruction a hypervisor's emulator refused), else at debug level.
fn log_stop(vcpu: &dyn Vcpu, id: usize, why: &VcpuStop, mem: &GuestMem) {
    let failed = matches!(why, VcpuStop::Unhandled(_) | VcpuStop::Error(_));
    if !failed && !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let (Ok(r), Ok(s)) = (vcpu.regs(), vcpu.sregs()) else {
        return;
    };
    let mut insn = [0u8; 15];
    let fetched = vcpu
        .translate_gva(s.cs.base.wrapping_add(r.rip), false)
        .ok()
        .flatten()
        .is_some_and(|gpa| vm_memory::Bytes::read_slice(mem, &mut insn, GuestAddress(gpa)).is_ok());
    let bytes = if fetched {
        format!("{insn:02x?}")
    } else {
        "unavailable".into()
    };
    let level = if failed {
        log::Level::Error
    } else {
        log::Level::Debug
    };
    log::log!(
        level,
        "vCPU {id} stopped ({why:?}) at rip={:#x} cs.base={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} efer={:#x}; bytes at rip: {bytes}",
        r.rip,
        s.cs.base,
        r.rsp,
        r.rflags,
        s.cr0,
        s.cr3,
        s.efer
    );
}

/// Decides the run's outcome: a guest exit request wins, then the first
/// vCPU's reason for stopping; no stop at all means the timeout passed.
fn outcome(
    requested: Option<GuestExit>,
    stops: Vec<(u8, VcpuStop)>,
) -> Result<Outcome, MachineError> {
    match requested {
        Some(GuestExit::DebugExit(v)) => return Ok(Outcome::DebugExit(v)),
        Some(GuestExit::Reset) => return Ok(Outcome::Reset),
        Some(GuestExit::Panic) => return Ok(Outcome::Panic),
        Some(GuestExit::HostStop) => return Ok(Outcome::Stopped),
        Some(GuestExit::HostSnapshot) => return Ok(Outcome::Snapshotted),
        None => {}
    }
    match stops.into_iter().next() {
        None | Some((_, VcpuStop::Requested)) => Ok(Outcome::Timeout),
        Some((_, VcpuStop::Shutdown)) => Ok(Outcome::Shutdown),
        Some((_, VcpuStop::Halted)) => Ok(Outcome::Halted),
        Some((id, VcpuStop::Unhandled(what))) => Err(MachineError::Unhandled { id, what }),
        Some((id, VcpuStop::Error(source))) => Err(MachineError::Vcpu { id, source }),
    }
}

mod snapshot;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_exit_request_wins_over_vcpu_reason() {
        let stops = vec![(0, VcpuStop::Requested)];
        assert_eq!(
            outcome(Some(GuestExit::DebugExit(7)), stops).ok(),
            Some(Outcome::DebugExit(7))
        );
        assert_eq!(
            outcome(None, vec![(1, VcpuStop::Shutdown)]).ok(),
            Some(Outcome::Shutdown)
        );
        assert_eq!(outcome(None, vec![]).ok(), Some(Outcome::Timeout));
        assert!(matches!(
            outcome(None, vec![(2, VcpuStop::Unhandled("x"))]),
            Err(MachineError::Unhandled { id: 2, what: "x" })
        ));
    }
}
