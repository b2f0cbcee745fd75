//! Multiprocessor bring-up: the boot vCPU starts the second vCPU with
//! INIT-SIPI-SIPI through its local APIC's ICR; the second vCPU runs a
//! real-mode trampoline that records its initial APIC ID (CPUID.01H:EBX).

use crate::hv::Hypervisor;
use crate::selftest::CaseFailure;
use crate::selftest::guest::{GuestAsm, Mode, addr};
use crate::selftest::runner::{self, Setup};
use iced_x86::code_asm::*;
use krypton_boot::layout::LAPIC_BASE;

/// Where the AP starts: SIPI vector 0x08 = CS 0x0800, IP 0.
const TRAMPOLINE: u64 = 0x8000;
/// Set to the AP's APIC ID + 1 by the trampoline.
const AP_FLAG: u64 = addr::DATA + 0x20;

const APIC_SVR: i32 = 0xf0;
const APIC_ICR_LOW: i32 = 0x300;
const APIC_ICR_HIGH: i32 = 0x310;
/// ICR: INIT, level assert, physical destination.
const ICR_INIT: u32 = 0x4500;
/// ICR: start-up with the trampoline's page number.
const ICR_SIPI: u32 = 0x4600 | (TRAMPOLINE >> 12) as u32;

/// The AP's 16-bit trampoline.
pub fn trampoline() -> Result<Vec<u8>, CaseFailure> {
    let mut a = CodeAssembler::new(16)?;
    let mut forever = a.create_label();
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(eax, 1_u32)?;
    a.cpuid()?;
    a.shr(ebx, 24)?;
    a.inc(ebx)?;
    a.mov(dword_ptr(AP_FLAG), ebx)?;
    a.set_label(&mut forever)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(forever)?;
    Ok(a.assemble(0)?)
}

/// Guest (boot vCPU) for the SMP case.
pub fn smp_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let mut g = GuestAsm::new(mode)?;
    let mut delay = g.a.create_label();
    let mut wait = g.a.create_label();
    let mut seen = g.a.create_label();
    g.big_real_mode()?;
    g.load_base(LAPIC_BASE)?;
    g.a.mov(dword_ptr(g.at(APIC_SVR)), 0x1ff_u32)?;
    g.a.mov(dword_ptr(g.at(APIC_ICR_HIGH)), 1_u32 << 24)?;
    g.a.mov(dword_ptr(g.at(APIC_ICR_LOW)), ICR_INIT)?;
    g.a.mov(ecx, 10_000_u32)?;
    g.a.set_label(&mut delay)?;
    g.a.pause()?;
    g.a.dec(ecx)?;
    g.a.jnz(delay)?;
    g.a.mov(dword_ptr(g.at(APIC_ICR_HIGH)), 1_u32 << 24)?;
    g.a.mov(dword_ptr(g.at(APIC_ICR_LOW)), ICR_SIPI)?;
    // Wait (the host's timeout bounds this) for the AP's flag.
    g.a.set_label(&mut wait)?;
    g.a.pause()?;
    g.a.cmp(dword_ptr(AP_FLAG), 0_u32)?;
    g.a.jne(seen)?;
    g.a.jmp(wait)?;
    g.a.set_label(&mut seen)?;
    g.a.mov(eax, dword_ptr(AP_FLAG))?;
    g.expect_eax(2, "AP's initial APIC ID + 1")?;
    g.pass()?;
    Ok(g)
}

/// The boot vCPU wakes vCPU 1 with INIT-SIPI; vCPU 1 runs real-mode code
/// and reports APIC ID 1.
pub fn smp(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let setup = Setup {
        cpus: Some(2),
        memory: vec![(TRAMPOLINE, trampoline()?)],
        timeout: Some(std::time::Duration::from_secs(5)),
        ..Setup::default()
    };
    runner::run_to_pass(hv, &smp_guest(mode)?.assemble()?, setup)
}
