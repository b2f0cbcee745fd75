//! Live differential test of the MMIO instruction emulator: guests run on
//! the host's real hypervisor, and every MMIO exit's instruction is decoded
//! by our emulator, which must agree with the hypervisor's address, size,
//! direction and data (see `krypton::mmio_check`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use krypton::machine::{Machine, MachineConfig, Outcome, SerialOut};
use vm_memory::{Bytes, GuestAddress};

mod support;
use support::{Scratch, hypervisor};

const MMIO: u64 = 0xd000_0000;
const CODE: u64 = 0x1000;
const DATA: u64 = 0x8000;

/// Every MMIO form the emulator supports, in 32-bit protected mode.
fn program32() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    a.mov(ebx, MMIO as u32)?;
    a.mov(byte_ptr(ebx), 0x11)?;
    a.mov(word_ptr(ebx + 2), 0x2233)?;
    a.mov(dword_ptr(ebx + 4), 0x4455_6677)?;
    a.mov(eax, 0x8899_aabb_u32)?;
    a.mov(dword_ptr(ebx + 8), eax)?;
    a.mov(word_ptr(ebx + 12), ax)?;
    a.mov(byte_ptr(ebx + 14), ah)?;
    a.mov(ecx, dword_ptr(ebx + 4))?;
    a.mov(dx, word_ptr(ebx + 2))?;
    a.mov(dl, byte_ptr(ebx))?;
    a.movzx(esi, byte_ptr(ebx + 8))?;
    a.movzx(esi, word_ptr(ebx + 8))?;
    a.movsx(edi, byte_ptr(ebx + 9))?;
    a.movsx(edi, word_ptr(ebx + 10))?;
    a.mov(eax, dword_ptr(MMIO as u32 + 0x20))?; // moffs form
    a.mov(dword_ptr(MMIO as u32 + 0x24), eax)?;
    a.xchg(dword_ptr(ebx + 0x30), ecx)?;
    a.or(dword_ptr(ebx + 0x34), 0x10)?;
    a.and(byte_ptr(ebx + 0x35), 0x7f)?;
    a.cmp(dword_ptr(ebx + 0x30), ecx)?;
    a.test(byte_ptr(ebx + 0x31), 1)?;
    // rep stos and movs between RAM and MMIO
    a.cld()?;
    a.mov(edi, MMIO as u32 + 0x40)?;
    a.mov(eax, 0x5a5a_5a5a_u32)?;
    a.mov(ecx, 4)?;
    a.rep().stosd()?;
    a.mov(esi, DATA as u32)?;
    a.mov(edi, MMIO as u32 + 0x60)?;
    a.mov(ecx, 3)?;
    a.rep().movsd()?;
    a.mov(esi, MMIO as u32 + 0x60)?;
    a.mov(edi, DATA as u32 + 0x100)?;
    a.mov(ecx, 2)?;
    a.rep().movsw()?;
    a.mov(al, 0x42)?;
    a.out(0xf4, al)?;
    a.hlt()?;
    a.assemble(CODE)
}

#[test]
fn emulator_agrees_with_kvm_on_every_mmio_exit() {
    let _ = env_logger::builder()
        .is_test(true)
        .filter_level(log::LevelFilter::Warn)
        .try_init();
    let Some(hv) = hypervisor() else { return };
    let cfg = MachineConfig {
        mem_mib: 16,
        cpus: 1,
        serial: SerialOut::Null,
        hide_cpuid: vec![],
    };
    let mut m = Machine::new(hv.as_ref(), cfg).expect("machine");
    m.add_mmio_device(MMIO, 0x1000, Arc::new(Mutex::new(Scratch::new(256))))
        .expect("device");
    let stats = m.enable_mmio_check();
    let code = program32().expect("assemble");
    m.memory()
        .write_slice(&code, GuestAddress(CODE))
        .expect("load");
    m.memory()
        .write_slice(&[7u8; 64], GuestAddress(DATA))
        .expect("data");
    let state =
        krypton_boot::entry::protected_mode_state(m.memory(), CODE as u32, 0).expect("state");
    let out = m.run(state, Some(Duration::from_secs(20))).expect("run");
    assert_eq!(out, Outcome::DebugExit(0x42));
    // 21 single accesses + 4 stosd + 3 movsd + 2 movsw, plus the read half
    // of xchg/or/and (KVM exits once per direction).
    assert!(
        stats.checked() >= 30,
        "only {} MMIO exits checked",
        stats.checked()
    );
    assert_eq!(
        stats.mismatched(),
        0,
        "{} of {} exits disagreed (see warnings)",
        stats.mismatched(),
        stats.checked()
    );
}
