//! The case bodies. Each assembles its guest for the given mode, runs it on
//! a fresh machine and checks what the host saw.

pub(super) mod irq;
pub(super) mod mmio;
pub(super) mod pio;
pub(super) mod smp;

pub use irq::{
    ioapic_irq, ioapic_level, serial_irq, timer_oneshot, timer_periodic, timer_tsc_deadline,
};
pub use mmio::mmio;
pub use pio::{pio, pio_string};
pub use smp::smp;

use super::CaseFailure;
use super::guest::{GuestAsm, Mode, addr};
use super::runner::{self, Capture, Setup};
use crate::hv::Hypervisor;
use crate::machine::Outcome;
use iced_x86::code_asm::*;
use krypton_boot::layout::{COM1_PORT, I8042_CMD_PORT};

/// The smallest guest: exits with PASS. Proves the mode can be entered.
pub fn entry(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    g.pass()?;
    runner::run_to_pass(hv, &g.assemble()?, Setup::default())
}

/// Vector of the software interrupt in the `soft-int` case.
const SOFT_VECTOR: u32 = 0x41;

/// `int n` through the mode's IVT/IDT, twice, and back.
pub fn soft_int(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let count = addr::DATA + 0x10;
    let mut g = GuestAsm::new(mode)?;
    g.a.mov(esi, 0x1234_abcd_u32)?;
    g.a.int(SOFT_VECTOR)?;
    g.a.int(SOFT_VECTOR)?;
    g.a.mov(eax, dword_ptr(count))?;
    g.expect_eax(2, "software interrupts handled")?;
    g.a.mov(eax, esi)?;
    g.expect_eax(0x1234_abcd, "ESI preserved across int/iret")?;
    g.pass()?;
    let mut handler = g.a.create_label();
    g.a.set_label(&mut handler)?;
    g.a.inc(dword_ptr(count))?;
    g.return_from_interrupt()?;
    g.vector(SOFT_VECTOR as u8, handler);
    runner::run_to_pass(hv, &g.assemble()?, Setup::default())
}

/// The mode's IRET on a hand-built same-privilege frame (`call` pushes the
/// return address on top of the flags and CS pushed before it).
pub fn iret(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    let mut do_iret = g.a.create_label();
    g.a.mov(esi, 0x1234_abcd_u32)?;
    match mode {
        Mode::Real => {
            g.a.pushf()?;
            g.a.push(cs)?;
        }
        Mode::Protected => {
            g.a.pushfd()?;
            g.a.push(cs)?;
        }
        Mode::Long => {
            g.a.mov(rcx, rsp)?;
            g.a.mov(eax, ss)?;
            g.a.push(rax)?;
            g.a.push(rcx)?;
            g.a.pushfq()?;
            g.a.mov(eax, cs)?;
            g.a.push(rax)?;
        }
    }
    g.a.call(do_iret)?;
    g.a.mov(eax, esi)?;
    g.expect_eax(0x1234_abcd, "ESI after iret")?;
    g.a.mov(eax, esp)?;
    g.expect_eax(addr::STACK_TOP as u32, "stack pointer after iret")?;
    g.pass()?;
    g.a.set_label(&mut do_iret)?;
    g.iret()?;
    runner::run_to_pass(hv, &g.assemble()?, Setup::default())
}

/// The value written by the debug-exit case.
const EXIT_VALUE: u32 = 0x1234_5678;

/// debug-exit with a chosen 32-bit value reaches the host unchanged.
pub fn debug_exit(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    g.exit(EXIT_VALUE)?;
    let ran = runner::run(hv, &g.assemble()?, Setup::default())?;
    match ran.outcome {
        Outcome::DebugExit(EXIT_VALUE) => Ok(()),
        other => Err(CaseFailure::Fail(format!(
            "expected DebugExit({EXIT_VALUE:#x}), got {other:?}"
        ))),
    }
}

/// Writing 0xfe to the i8042 command port resets the machine.
pub fn i8042_reset(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    g.a.mov(al, 0xfe_u32)?;
    g.a.out(u32::from(I8042_CMD_PORT), al)?;
    g.a.nop()?;
    g.fail("the guest kept running after the i8042 reset command")?;
    expect_outcome(hv, g, Outcome::Reset)
}

/// An exception with an empty IDT triple-faults: the machine shuts down.
pub fn triple_fault(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    g.a.lidt(ptr(addr::NULL_IDTR))?;
    g.a.ud2()?;
    g.fail("the guest kept running after a triple fault")?;
    expect_outcome(hv, g, Outcome::Shutdown)
}

fn expect_outcome(hv: &dyn Hypervisor, g: GuestAsm, want: Outcome) -> Result<(), CaseFailure> {
    let g = g.assemble()?;
    let ran = runner::run(hv, &g, Setup::default())?;
    if ran.outcome == want {
        return Ok(());
    }
    if let Outcome::DebugExit(_) = ran.outcome {
        // The guest's fallback after the instruction that should have ended it.
        let why = runner::expect_pass(&g, &ran)
            .err()
            .map_or_else(String::new, |e| e.to_string());
        return Err(CaseFailure::Fail(format!("expected {want:?}: {why}")));
    }
    Err(CaseFailure::Fail(format!(
        "expected {want:?}, got {:?}",
        ran.outcome
    )))
}

/// The text the serial case prints.
pub const SERIAL_TEXT: &[u8] = b"Krypton selftest: serial OK\r\n";

/// COM1 is idle (LSR 0x60) and transmits every byte written while THRE is
/// polled.
pub fn serial(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    const LSR: u32 = COM1_PORT as u32 + 5;
    const THRE: u32 = 0x20;
    let mut g = GuestAsm::new(mode)?;
    g.a.mov(dx, LSR)?;
    g.a.in_(al, dx)?;
    g.expect_al(0x60, "idle COM1 LSR")?;
    for &b in SERIAL_TEXT {
        let mut wait = g.a.create_label();
        g.a.mov(dx, LSR)?;
        g.a.set_label(&mut wait)?;
        g.a.in_(al, dx)?;
        g.a.test(al, THRE)?;
        g.a.jz(wait)?;
        g.a.mov(dx, u32::from(COM1_PORT))?;
        g.a.mov(al, u32::from(b))?;
        g.a.out(dx, al)?;
    }
    g.pass()?;
    let cap = Capture::default();
    let setup = Setup {
        serial: Some(cap.clone()),
        ..Setup::default()
    };
    runner::run_to_pass(hv, &g.assemble()?, setup)?;
    let got = cap.bytes();
    if got != SERIAL_TEXT {
        return Err(CaseFailure::Fail(format!(
            "serial output {:?}, expected {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(SERIAL_TEXT)
        )));
    }
    Ok(())
}

/// What the host queues on COM1 for the `serial-input` case.
pub const SERIAL_INPUT: &[u8] = b"ping";

/// Bytes the host queued on COM1 are read by polling LSR.DR and RBR.
pub fn serial_input(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    const RBR: u32 = COM1_PORT as u32;
    const LSR: u32 = COM1_PORT as u32 + 5;
    const DR: u32 = 0x01;
    let mut g = GuestAsm::new(mode)?;
    for (i, &b) in SERIAL_INPUT.iter().enumerate() {
        g.a.mov(dx, LSR)?;
        g.a.in_(al, dx)?;
        g.a.and(al, DR)?;
        g.expect_al(DR as u8, &format!("LSR.DR before input byte {i}"))?;
        g.a.mov(dx, RBR)?;
        g.a.in_(al, dx)?;
        g.expect_al(b, &format!("RBR input byte {i}"))?;
    }
    g.a.mov(dx, LSR)?;
    g.a.in_(al, dx)?;
    g.a.and(al, DR)?;
    g.expect_al(0, "LSR.DR after the last input byte")?;
    g.pass()?;
    let setup = Setup {
        serial_input: SERIAL_INPUT.to_vec(),
        ..Setup::default()
    };
    runner::run_to_pass(hv, &g.assemble()?, setup)
}

/// Compares two access logs and names the first difference.
pub(super) fn compare_log(
    what: &str,
    got: &[super::testdev::Access],
    want: &[super::testdev::Access],
) -> Result<(), CaseFailure> {
    for (i, w) in want.iter().enumerate() {
        match got.get(i) {
            Some(g) if g == w => {}
            Some(g) => {
                return Err(CaseFailure::Fail(format!(
                    "{what}: access {i} was {g:x?}, expected {w:x?}"
                )));
            }
            None => {
                return Err(CaseFailure::Fail(format!(
                    "{what}: only {} accesses, expected {} (missing {w:x?})",
                    got.len(),
                    want.len()
                )));
            }
        }
    }
    if got.len() > want.len() {
        return Err(CaseFailure::Fail(format!(
            "{what}: {} extra accesses, first {:x?}",
            got.len() - want.len(),
            got[want.len()]
        )));
    }
    Ok(())
}
