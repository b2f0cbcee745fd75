//! Interrupts: HLT woken by an IOAPIC-routed device interrupt, and the
//! local APIC timer in one-shot, periodic and TSC-deadline modes.
//!
//! Every guest enables its local APIC (SVR), points one vector at a handler
//! that counts interrupts and writes EOI, then waits with the race-free
//! `cli; check; sti; hlt` loop until the count is reached.

use super::mmio;
use crate::hv::Hypervisor;
use crate::selftest::CaseFailure;
use crate::selftest::guest::{GuestAsm, Mode, addr};
use crate::selftest::runner::{self, Setup};
use crate::selftest::testdev::{IRQ_LEVEL_REG, IRQ_REG};
use iced_x86::code_asm::*;
use krypton_boot::layout::{COM1_IRQ, COM1_PORT, IOAPIC_BASE, IOAPIC_PINS, LAPIC_BASE};

/// The vector every interrupt case uses.
const VECTOR: u32 = 0x40;
/// Interrupt count, incremented by the handler.
const COUNT: u64 = addr::COUNT;
/// IOAPIC pin of the test device.
pub const TEST_PIN: u8 = 10;
/// Delay between the guest's request and the device interrupt.
const IRQ_DELAY_MS: u32 = 20;

// Local APIC registers (offsets from LAPIC_BASE).
const APIC_EOI: i32 = 0xb0;
const APIC_SVR: i32 = 0xf0;
const APIC_LVT_TIMER: i32 = 0x320;
const APIC_TIMER_INIT: i32 = 0x380;
const APIC_TIMER_CURRENT: i32 = 0x390;
const APIC_TIMER_DIVIDE: i32 = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const LVT_TSC_DEADLINE: u32 = 2 << 17;
const MSR_TSC_DEADLINE: u32 = 0x6e0;

fn push_base(g: &mut GuestAsm) -> Result<(), CaseFailure> {
    match g.mode {
        Mode::Long => g.a.push(rbx)?,
        _ => g.a.push(ebx)?,
    }
    Ok(())
}

fn pop_base(g: &mut GuestAsm) -> Result<(), CaseFailure> {
    match g.mode {
        Mode::Long => g.a.pop(rbx)?,
        _ => g.a.pop(ebx)?,
    }
    Ok(())
}

/// Emits the handler for [`VECTOR`]: count, EOI, return.
fn emit_handler(g: &mut GuestAsm) -> Result<(), CaseFailure> {
    let mut h = g.a.create_label();
    g.a.set_label(&mut h)?;
    push_base(g)?;
    g.a.inc(dword_ptr(COUNT))?;
    g.load_base(LAPIC_BASE)?;
    g.a.mov(dword_ptr(g.at(APIC_EOI)), 0_u32)?;
    pop_base(g)?;
    g.return_from_interrupt()?;
    g.vector(VECTOR as u8, h);
    Ok(())
}

/// Software-enables the local APIC (SVR bit 8, spurious vector 0xff);
/// leaves EBX/RBX pointing at it. Real mode switches to big real mode
/// first to reach it.
fn enable_lapic(g: &mut GuestAsm) -> Result<(), CaseFailure> {
    g.big_real_mode()?;
    g.load_base(LAPIC_BASE)?;
    g.a.mov(dword_ptr(g.at(APIC_SVR)), 0x1ff_u32)?;
    Ok(())
}

/// Halts until the handler has run `n` times; returns with IF=0.
fn wait_for(g: &mut GuestAsm, n: u32) -> Result<(), CaseFailure> {
    let mut wait = g.a.create_label();
    let mut done = g.a.create_label();
    g.a.set_label(&mut wait)?;
    g.a.cli()?;
    g.a.cmp(dword_ptr(COUNT), n)?;
    g.a.jae(done)?;
    // STI's interrupt shadow covers HLT: no wake-up is lost in between.
    g.a.sti()?;
    g.a.hlt()?;
    g.a.jmp(wait)?;
    g.a.set_label(&mut done)?;
    Ok(())
}

/// Guest for the IOAPIC case.
pub fn ioapic_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let pin = u32::from(TEST_PIN);
    let mut g = GuestAsm::new(mode)?;
    enable_lapic(&mut g)?;
    g.load_base(IOAPIC_BASE)?;
    // IOAPIC version register: bits 23:16 = highest redirection entry.
    g.a.mov(dword_ptr(g.at(0)), 1_u32)?;
    g.a.mov(eax, dword_ptr(g.at(0x10)))?;
    g.a.shr(eax, 16)?;
    g.a.and(eax, 0xff)?;
    g.expect_eax(
        u32::from(IOAPIC_PINS) - 1,
        "IOAPIC version: highest redirection entry",
    )?;
    // Redirection entry: vector, fixed, physical, edge, unmasked, to APIC 0.
    route_test_pin(&mut g, 0)?;
    g.a.mov(dword_ptr(g.at(0)), 0x10 + 2 * pin)?;
    g.a.mov(eax, dword_ptr(g.at(0x10)))?;
    // Ignore the read-only delivery-status and remote-IRR bits.
    g.a.and(eax, 0x1_afff)?;
    g.expect_eax(VECTOR, "IOAPIC redirection entry read back")?;
    // Ask the device for an interrupt in IRQ_DELAY_MS, then sleep.
    g.load_base(mmio::BASE)?;
    g.a.mov(dword_ptr(g.at(IRQ_REG as i32)), IRQ_DELAY_MS)?;
    wait_for(&mut g, 1)?;
    g.a.mov(eax, dword_ptr(COUNT))?;
    g.expect_eax(1, "interrupts received")?;
    g.pass()?;
    emit_handler(&mut g)?;
    Ok(g)
}

/// HLT with IF=1 is woken by a device interrupt routed through the IOAPIC.
pub fn ioapic_irq(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let dev = runner::new_dev();
    let setup = Setup {
        mmio: vec![(mmio::BASE, mmio::LEN, dev.clone())],
        irq: Some((TEST_PIN, dev)),
        ..Setup::default()
    };
    runner::run_to_pass(hv, &ioapic_guest(mode)?.assemble()?, setup)
}

/// Points the test pin's redirection entry at [`VECTOR`] (fixed, physical,
/// APIC 0), with `flags` (bit 15 = level) in the low dword.
fn route_test_pin(g: &mut GuestAsm, flags: u32) -> Result<(), CaseFailure> {
    route_pin(g, TEST_PIN, flags)
}

/// Points IOAPIC `pin` at [`VECTOR`] (fixed, physical, APIC 0) with `flags`.
fn route_pin(g: &mut GuestAsm, pin: u8, flags: u32) -> Result<(), CaseFailure> {
    let pin = u32::from(pin);
    g.load_base(IOAPIC_BASE)?;
    g.a.mov(dword_ptr(g.at(0)), 0x11 + 2 * pin)?;
    g.a.mov(dword_ptr(g.at(0x10)), 0_u32)?;
    g.a.mov(dword_ptr(g.at(0)), 0x10 + 2 * pin)?;
    g.a.mov(dword_ptr(g.at(0x10)), VECTOR | flags)?;
    Ok(())
}

/// Guest for the level-triggered IOAPIC case: the handler EOIs the first
/// interrupt with the line still high (the IOAPIC must deliver again), and
/// lowers the line before the second EOI (no third may follow).
pub fn ioapic_level_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    const LEVEL: u32 = 1 << 15;
    let mut g = GuestAsm::new(mode)?;
    enable_lapic(&mut g)?;
    route_test_pin(&mut g, LEVEL)?;
    g.load_base(mmio::BASE)?;
    g.a.mov(dword_ptr(g.at(IRQ_LEVEL_REG as i32)), 1_u32)?;
    wait_for(&mut g, 2)?;
    // Interrupts on for a while: a third delivery would show up here.
    let mut spin = g.a.create_label();
    g.a.sti()?;
    g.a.mov(ecx, 20_000_u32)?;
    g.a.set_label(&mut spin)?;
    g.a.dec(ecx)?;
    g.a.jnz(spin)?;
    g.a.cli()?;
    g.a.mov(eax, dword_ptr(COUNT))?;
    g.expect_eax(2, "level-triggered interrupts received")?;
    g.pass()?;

    let mut h = g.a.create_label();
    let mut eoi = g.a.create_label();
    g.a.set_label(&mut h)?;
    push_base(&mut g)?;
    g.a.inc(dword_ptr(COUNT))?;
    g.a.cmp(dword_ptr(COUNT), 2_u32)?;
    g.a.jb(eoi)?;
    g.load_base(mmio::BASE)?;
    g.a.mov(dword_ptr(g.at(IRQ_LEVEL_REG as i32)), 0_u32)?;
    g.a.set_label(&mut eoi)?;
    g.load_base(LAPIC_BASE)?;
    g.a.mov(dword_ptr(g.at(APIC_EOI)), 0_u32)?;
    pop_base(&mut g)?;
    g.return_from_interrupt()?;
    g.vector(VECTOR as u8, h);
    Ok(g)
}

/// A level-triggered IOAPIC pin redelivers after EOI while the line is
/// high, and stops once it is low (remote IRR and EOI forwarding).
pub fn ioapic_level(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let dev = runner::new_dev();
    let setup = Setup {
        mmio: vec![(mmio::BASE, mmio::LEN, dev.clone())],
        irq: Some((TEST_PIN, dev)),
        // Milliseconds when it works; a lost re-delivery shows as a timeout.
        timeout: Some(std::time::Duration::from_millis(1500)),
        ..Setup::default()
    };
    runner::run_to_pass(hv, &ioapic_level_guest(mode)?.assemble()?, setup)
}

/// Guest for the serial interrupt case: COM1's "transmitter empty"
/// interrupt (IER.THRI) arrives through IOAPIC pin 4, and IIR names it.
pub fn serial_irq_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    const IER: u32 = COM1_PORT as u32 + 1;
    const IIR: u32 = COM1_PORT as u32 + 2;
    const IER_THRI: u32 = 0x02;
    const IIR_THRI: u8 = 0x02;
    let mut g = GuestAsm::new(mode)?;
    enable_lapic(&mut g)?;
    route_pin(&mut g, COM1_IRQ, 0)?;
    g.a.mov(dx, IER)?;
    g.a.mov(al, IER_THRI)?;
    g.a.out(dx, al)?;
    wait_for(&mut g, 1)?;
    g.a.mov(dx, IIR)?;
    g.a.in_(al, dx)?;
    g.a.and(al, 0x0f_u32)?;
    g.expect_al(IIR_THRI, "COM1 IIR identifies the THR-empty interrupt")?;
    g.a.mov(dx, IIR)?;
    g.a.in_(al, dx)?;
    g.a.and(al, 0x0f_u32)?;
    g.expect_al(
        0x01,
        "COM1 IIR after the interrupt was identified (none pending)",
    )?;
    g.pass()?;
    emit_handler(&mut g)?;
    Ok(g)
}

/// COM1's interrupt reaches the guest through IOAPIC pin 4.
pub fn serial_irq(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    runner::run_to_pass(hv, &serial_irq_guest(mode)?.assemble()?, Setup::default())
}

/// Guest for the one-shot timer case.
pub fn oneshot_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    enable_lapic(&mut g)?;
    g.a.mov(dword_ptr(g.at(APIC_TIMER_DIVIDE)), 0xb_u32)?; // divide by 1
    g.a.mov(dword_ptr(g.at(APIC_LVT_TIMER)), VECTOR)?;
    g.a.mov(dword_ptr(g.at(APIC_TIMER_INIT)), 1_000_000_u32)?;
    wait_for(&mut g, 1)?;
    g.load_base(LAPIC_BASE)?;
    g.a.mov(eax, dword_ptr(g.at(APIC_TIMER_CURRENT)))?;
    g.expect_eax(0, "LAPIC timer current count after the one-shot fired")?;
    g.pass()?;
    emit_handler(&mut g)?;
    Ok(g)
}

/// The LAPIC timer in one-shot mode wakes HLT once.
pub fn timer_oneshot(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    runner::run_to_pass(hv, &oneshot_guest(mode)?.assemble()?, Setup::default())
}

/// Guest for the periodic timer case.
pub fn periodic_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    enable_lapic(&mut g)?;
    g.a.mov(dword_ptr(g.at(APIC_TIMER_DIVIDE)), 0xb_u32)?;
    g.a.mov(dword_ptr(g.at(APIC_LVT_TIMER)), VECTOR | LVT_PERIODIC)?;
    g.a.mov(dword_ptr(g.at(APIC_TIMER_INIT)), 500_000_u32)?;
    wait_for(&mut g, 3)?;
    g.load_base(LAPIC_BASE)?;
    g.a.mov(dword_ptr(g.at(APIC_LVT_TIMER)), VECTOR | LVT_MASKED)?;
    g.pass()?;
    emit_handler(&mut g)?;
    Ok(g)
}

/// The LAPIC timer in periodic mode fires repeatedly.
pub fn timer_periodic(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    runner::run_to_pass(hv, &periodic_guest(mode)?.assemble()?, Setup::default())
}

/// Guest for the TSC-deadline case (skips itself if CPUID lacks the bit).
pub fn tsc_deadline_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    let mut have = g.a.create_label();
    g.a.mov(eax, 1_u32)?;
    g.a.cpuid()?;
    g.a.bt(ecx, 24)?;
    g.a.jc(have)?;
    g.skip("CPUID.01H:ECX[24] (TSC-deadline timer) is clear")?;
    g.a.set_label(&mut have)?;
    enable_lapic(&mut g)?;
    g.a.mov(dword_ptr(g.at(APIC_LVT_TIMER)), VECTOR | LVT_TSC_DEADLINE)?;
    g.a.rdtsc()?;
    g.a.add(eax, 2_000_000)?;
    g.a.adc(edx, 0)?;
    g.a.mov(ecx, MSR_TSC_DEADLINE)?;
    g.a.wrmsr()?;
    wait_for(&mut g, 1)?;
    g.a.mov(ecx, MSR_TSC_DEADLINE)?;
    g.a.rdmsr()?;
    g.a.or(eax, edx)?;
    g.expect_eax(0, "IA32_TSC_DEADLINE after the deadline fired")?;
    g.pass()?;
    emit_handler(&mut g)?;
    Ok(g)
}

/// The LAPIC timer in TSC-deadline mode (if CPUID advertises it).
pub fn timer_tsc_deadline(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    runner::run_to_pass(hv, &tsc_deadline_guest(mode)?.assemble()?, Setup::default())
}
