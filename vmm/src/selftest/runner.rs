//! Runs one assembled guest on a fresh machine and interprets the result.

use super::CaseFailure;
use super::guest::{self, Assembled, GuestVerdict, addr};
use super::testdev::TestDevice;
use crate::hv::Hypervisor;
use crate::machine::{Machine, MachineConfig, Outcome, SerialOut};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM for every conformance guest.
const MEM_MIB: u64 = 16;
/// Default limit for one guest run.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Serial output captured in memory.
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Shared handle to a test device.
pub type Dev = Arc<Mutex<TestDevice>>;

/// What a guest needs besides its code.
#[derive(Debug, Default)]
pub struct Setup {
    /// Port-I/O test devices: (base, length, device).
    pub pio: Vec<(u16, u16, Dev)>,
    /// MMIO test devices: (base, length, device).
    pub mmio: Vec<(u64, u64, Dev)>,
    /// Wire this device's interrupt to this IOAPIC pin.
    pub irq: Option<(u8, Dev)>,
    /// Capture COM1 output here (otherwise it is discarded).
    pub serial: Option<Capture>,
    /// Bytes queued on COM1's receive side before the guest starts.
    pub serial_input: Vec<u8>,
    /// Extra memory contents: (guest address, bytes).
    pub memory: Vec<(u64, Vec<u8>)>,
    /// vCPUs (default 1).
    pub cpus: Option<u8>,
    /// Run limit (default [`TIMEOUT`]).
    pub timeout: Option<Duration>,
}

/// What came out of a run.
#[derive(Debug)]
pub struct Ran {
    /// How the machine stopped.
    pub outcome: Outcome,
    /// The value a failing guest check stored at `addr::ACTUAL`.
    pub actual: u64,
    /// The interrupt count the guest's handlers keep at `addr::COUNT`.
    pub count: u32,
}

/// Builds a machine for `g`, loads it and runs it to completion.
pub fn run(hv: &dyn Hypervisor, g: &Assembled, setup: Setup) -> Result<Ran, CaseFailure> {
    let serial = match setup.serial {
        Some(c) => SerialOut::Writer(Box::new(c)),
        None => SerialOut::Null,
    };
    let cpus = setup.cpus.unwrap_or(1);
    let cfg = MachineConfig {
        mem_mib: MEM_MIB,
        cpus,
        serial,
        hide_cpuid: Vec::new(),
    };
    let mut m = Machine::new(hv, cfg)?;
    for (base, len, dev) in setup.pio {
        m.add_pio_device(base, len, dev)?;
    }
    for (base, len, dev) in setup.mmio {
        m.add_mmio_device(base, len, dev)?;
    }
    if let Some((pin, dev)) = setup.irq {
        dev.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_irq(m.irq_line(pin));
    }
    if !setup.serial_input.is_empty() {
        let queued = m
            .serial_input()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .enqueue_input(&setup.serial_input);
        if queued != setup.serial_input.len() {
            return Err(CaseFailure::Fail(format!(
                "COM1 accepted {queued} of {} input bytes",
                setup.serial_input.len()
            )));
        }
    }
    let mem = m.memory().clone();
    if guest::image_end(g) > MEM_MIB << 20 {
        return Err(CaseFailure::Fail("guest does not fit in RAM".into()));
    }
    for (at, bytes) in guest::memory_image(g) {
        mem.write_slice(&bytes, GuestAddress(at))?;
    }
    mem.write_slice(&g.code, GuestAddress(addr::CODE))?;
    for (at, bytes) in &setup.memory {
        mem.write_slice(bytes, GuestAddress(*at))?;
    }
    let boot = guest::entry_state(&mem, g.mode)?;
    let outcome = m.run(boot, Some(setup.timeout.unwrap_or(TIMEOUT)))?;
    let actual = mem.read_obj::<u64>(GuestAddress(addr::ACTUAL))?;
    let count = mem.read_obj::<u32>(GuestAddress(addr::COUNT))?;
    Ok(Ran {
        outcome,
        actual,
        count,
    })
}

/// Turns a run into pass / fail / skip for guests that end in debug-exit.
pub fn expect_pass(g: &Assembled, ran: &Ran) -> Result<(), CaseFailure> {
    match ran.outcome {
        Outcome::DebugExit(v) => match g.verdict(v) {
            GuestVerdict::Pass => Ok(()),
            GuestVerdict::Failed(check) => {
                Err(CaseFailure::Fail(format!("{check}, saw {:#x}", ran.actual)))
            }
            GuestVerdict::Skipped(why) => Err(CaseFailure::Skip(why)),
            GuestVerdict::Unknown(v) => Err(CaseFailure::Fail(format!(
                "unexpected debug-exit value {v:#x}"
            ))),
        },
        Outcome::Timeout => Err(CaseFailure::Fail(format!(
            "timed out before debug-exit (guest interrupt count {})",
            ran.count
        ))),
        other => Err(CaseFailure::Fail(format!(
            "expected debug-exit, got {other:?}"
        ))),
    }
}

/// Runs `g` and requires it to pass.
pub fn run_to_pass(hv: &dyn Hypervisor, g: &Assembled, setup: Setup) -> Result<(), CaseFailure> {
    let ran = run(hv, g, setup)?;
    expect_pass(g, &ran)
}

/// A fresh shared test device.
pub fn new_dev() -> Dev {
    Arc::new(Mutex::new(TestDevice::new()))
}

/// The accesses `dev` recorded.
pub fn log_of(dev: &Dev) -> Vec<super::testdev::Access> {
    dev.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .log()
        .to_vec()
}
