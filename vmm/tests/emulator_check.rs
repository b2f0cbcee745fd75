//! `check_against` / `check_kvm_exit`: the comparison used for the live
//! differential test under KVM, fed with KVM-style exits built by hand
//! (reads before execution; writes after KVM's write-back).

mod emulator_support;

use emulator_support::*;
use krypton::emulator::{CpuMode, Mismatch, MmioExit, Register::*, check_against, check_kvm_exit};

const CODE: u64 = RAM_BASE + 0x10;

fn exit(gpa: u64, len: u8, is_write: bool, data: u64) -> MmioExit {
    MmioExit {
        gpa,
        len,
        is_write,
        data: data.to_le_bytes(),
    }
}

/// A 64-bit vCPU with `code` at CODE and RIP = CODE + `rip_off`.
fn cpu_with_code(code: &[u8], rip_off: u64) -> FakeCpu {
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.ram[0x10..0x10 + code.len()].copy_from_slice(code);
    c.regs.rip = CODE + rip_off;
    c
}

#[test]
fn read_exit_before_execution() {
    let code = [0x8b, 0x43, 0x08]; // mov eax, [rbx+8]
    let mut c = cpu_with_code(&code, 0);
    c.set(RBX, MMIO);
    check_kvm_exit(&mut c, &exit(MMIO + 8, 4, false, 0)).expect("matches");
    check_against(&mut c, &exit(MMIO + 8, 4, false, 0), &code).expect("matches");
    for wrong in [
        exit(MMIO + 4, 4, false, 0),
        exit(MMIO + 8, 2, false, 0),
        exit(MMIO + 8, 4, true, 0),
    ] {
        let r = check_kvm_exit(&mut c, &wrong);
        assert!(r.is_err(), "{wrong:x?} accepted");
    }
}

#[test]
fn write_exit_after_writeback() {
    let code = [0x89, 0x0b]; // mov [rbx], ecx
    let mut c = cpu_with_code(&code, 2);
    c.set(RBX, MMIO).set(RCX, 0x1234_5678);
    check_kvm_exit(&mut c, &exit(MMIO, 4, true, 0x1234_5678)).expect("matches");
    match check_kvm_exit(&mut c, &exit(MMIO, 4, true, 0x1234_5679)) {
        Err(Mismatch::NoMatch { mnemonic, .. }) => assert_eq!(mnemonic, "Mov"),
        other => panic!("wrong data accepted: {other:?}"),
    }
}

#[test]
fn rip_relative_write_after_writeback() {
    // mov dword [rip+0x100], 7 (10 bytes); the address is relative to its end.
    let code = [0xc7, 0x05, 0x00, 0x01, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00];
    let mut c = cpu_with_code(&code, 10);
    check_kvm_exit(&mut c, &exit(CODE + 10 + 0x100, 4, true, 7)).expect("matches");
    assert!(check_kvm_exit(&mut c, &exit(CODE + 0x100, 4, true, 7)).is_err());
}

#[test]
fn rep_stos_in_progress_and_last_iteration() {
    let code = [0xf3, 0xab]; // rep stosd
    // In progress: RIP still at the instruction, one iteration written back.
    let mut c = cpu_with_code(&code, 0);
    c.set(RDI, MMIO + 4).set(RCX, 5).set(RAX, 0xaabb_ccdd);
    check_kvm_exit(&mut c, &exit(MMIO, 4, true, 0xaabb_ccdd)).expect("in progress");
    assert!(check_kvm_exit(&mut c, &exit(MMIO + 4, 4, true, 0xaabb_ccdd)).is_err());
    // Last iteration: RCX = 0 and RIP past the instruction.
    let mut c = cpu_with_code(&code, 2);
    c.set(RDI, MMIO + 8).set(RCX, 0).set(RAX, 0xaabb_ccdd);
    check_kvm_exit(&mut c, &exit(MMIO + 4, 4, true, 0xaabb_ccdd)).expect("last");
    // With DF set the index walks down.
    let mut c = cpu_with_code(&code, 0);
    c.regs.rflags |= 0x400;
    c.set(RDI, MMIO + 0x10 - 4).set(RCX, 1).set(RAX, 1);
    check_kvm_exit(&mut c, &exit(MMIO + 0x10, 4, true, 1)).expect("df");
}

#[test]
fn movs_read_from_device() {
    let code = [0xf3, 0xa4]; // rep movsb, device → RAM
    let mut c = cpu_with_code(&code, 0);
    c.set(RSI, MMIO + 3).set(RDI, RAM_BASE + 0x800).set(RCX, 9);
    check_kvm_exit(&mut c, &exit(MMIO + 3, 1, false, 0)).expect("matches");
}

#[test]
fn xchg_write_skips_the_clobbered_data() {
    let code = [0x87, 0x03]; // xchg [rbx], eax: eax already holds the old value
    let mut c = cpu_with_code(&code, 2);
    c.set(RBX, MMIO).set(RAX, 0x5555);
    check_kvm_exit(&mut c, &exit(MMIO, 4, true, 0x1111)).expect("address and size still checked");
    assert!(check_kvm_exit(&mut c, &exit(MMIO + 1, 4, true, 0x1111)).is_err());
}

#[test]
fn translated_code_and_data() {
    let mut c = cpu_with_code(&[0x88, 0x01], 0); // mov [rcx], al
    c.virt_offset = 0xffff_8000_0000_0000;
    c.regs.rip += c.virt_offset;
    c.set(RCX, c.virt_offset + MMIO + 0x40).set(RAX, 0x7f);
    // A read of the same instruction is the wrong direction.
    assert!(check_kvm_exit(&mut c, &exit(MMIO + 0x40, 1, false, 0)).is_err());
    c.regs.rip += 2;
    check_kvm_exit(&mut c, &exit(MMIO + 0x40, 1, true, 0x7f)).expect("matches");
}

#[test]
fn unsupported_instruction_is_a_mismatch() {
    let code = [0x0f, 0x28, 0x03]; // movaps xmm0, [rbx]
    let mut c = cpu_with_code(&code, 0);
    c.set(RBX, MMIO);
    match check_kvm_exit(&mut c, &exit(MMIO, 8, false, 0)) {
        Err(Mismatch::Decode(e)) => assert!(e.to_string().contains("Movaps"), "{e}"),
        other => panic!("{other:?}"),
    }
}
