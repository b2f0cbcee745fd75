//! Live differential test of the MMIO emulator in 64-bit long mode: a guest
//! runs on the host's hypervisor (KVM here) and every MMIO exit's
//! instruction is decoded by our emulator, which must agree with the
//! hypervisor's address, size, direction and data (`krypton::mmio_check`).
//! Complements the lead's 32-bit `mmio_check.rs` with REX registers, qword
//! forms, RIP-relative and moffs64 addressing, FS/0x67 prefixes and
//! descending string instructions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use krypton::machine::{Machine, MachineConfig, Outcome, SerialOut};
use vm_memory::{Bytes, GuestAddress};

mod support;
use support::{Scratch, hypervisor};

/// Device within ±2 GiB of the code, so RIP-relative operands reach it.
const MMIO: u64 = 0x4000_0000;
const CODE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;

/// Register/immediate forms with REX, SIB and all sizes, RMW and string
/// forms; returns how many MMIO exits they make.
fn part1(a: &mut CodeAssembler) -> Result<u64, IcedError> {
    let mut exits = 0;
    a.mov(rbx, MMIO)?;
    a.mov(rax, 0x1122_3344_5566_7788u64)?;
    a.mov(r9, 0x99aa_bbcc_ddee_ff00u64)?;
    a.mov(r10, rax)?;
    a.mov(r11, r9)?;
    a.mov(byte_ptr(rbx), 0x11)?;
    a.mov(word_ptr(rbx + 2), 0x2233)?;
    a.mov(dword_ptr(rbx + 4), 0x4455_6677)?;
    a.mov(qword_ptr(rbx + 8), -2)?;
    a.mov(qword_ptr(rbx + 16), rax)?;
    a.mov(dword_ptr(rbx + 24), eax)?;
    a.mov(word_ptr(rbx + 28), ax)?;
    a.mov(byte_ptr(rbx + 30), al)?;
    a.mov(byte_ptr(rbx + 31), ah)?;
    a.mov(qword_ptr(rbx + 32), r9)?;
    a.mov(dword_ptr(rbx + 40), r9d)?;
    a.mov(word_ptr(rbx + 44), r10w)?;
    a.mov(byte_ptr(rbx + 46), r11b)?;
    a.mov(byte_ptr(rbx + 47), sil)?;
    exits += 14;
    a.mov(r12, rbx)?;
    a.mov(qword_ptr(r12 + 48), rax)?;
    a.mov(r13, rbx)?;
    a.mov(dword_ptr(r13), eax)?;
    a.mov(rcx, 2u64)?;
    a.mov(qword_ptr(rbx + rcx * 8 + 0x40), rax)?;
    a.mov(qword_ptr(rbx + rcx * 4 - 8 + 0x60), r9)?;
    exits += 4;
    a.mov(rcx, qword_ptr(rbx + 16))?;
    a.mov(edx, dword_ptr(rbx + 4))?;
    a.mov(si, word_ptr(rbx + 2))?;
    a.mov(dil, byte_ptr(rbx))?;
    a.mov(r15, qword_ptr(rbx + 8))?;
    a.mov(r14d, dword_ptr(rbx + 4))?;
    a.movzx(eax, byte_ptr(rbx + 16))?;
    a.movzx(rax, word_ptr(rbx + 16))?;
    a.movsx(rax, byte_ptr(rbx + 23))?;
    a.movsx(r9, word_ptr(rbx + 22))?;
    a.movsxd(r10, dword_ptr(rbx + 20))?;
    exits += 11;
    a.mov(rax, qword_ptr(MMIO + 0x50))?; // moffs64
    a.mov(qword_ptr(MMIO + 0x58), rax)?;
    a.mov(al, byte_ptr(MMIO + 0x51))?;
    exits += 3;
    // read-modify-write and compare forms (one exit per direction)
    a.mov(r8, 0x0102_0304_0506_0708u64)?;
    a.xchg(qword_ptr(rbx + 0x80), r8)?;
    a.or(qword_ptr(rbx + 0x88), 0x10)?;
    a.and(byte_ptr(rbx + 0x89), 0x7f)?;
    a.xor(word_ptr(rbx + 0x8a), r10w)?;
    a.add(dword_ptr(rbx + 0x90), eax)?;
    a.sub(rax, qword_ptr(rbx + 0x90))?;
    a.cmp(qword_ptr(rbx + 0x80), rcx)?;
    a.test(word_ptr(rbx + 0x8a), 1)?;
    exits += 5 * 2 + 3;
    // strings: ascending qwords to the device, descending dwords from it,
    // lods from it
    a.cld()?;
    a.mov(rdi, MMIO + 0x100)?;
    a.mov(rax, 0x5a5a_5a5a_5a5a_5a5au64)?;
    a.mov(rcx, 4u64)?;
    a.rep().stosq()?;
    a.mov(rsi, DATA)?;
    a.mov(rdi, MMIO + 0x200)?;
    a.mov(rcx, 3u64)?;
    a.rep().movsq()?;
    a.std()?;
    a.mov(rsi, MMIO + 0x20c)?;
    a.mov(rdi, DATA + 0x10c)?;
    a.mov(rcx, 3u64)?;
    a.rep().movsd()?;
    a.cld()?;
    a.mov(rsi, MMIO + 0x100)?;
    a.lodsq()?;
    a.movsb()?; // rsi = MMIO+0x108, rdi = DATA+0x100 (RAM)
    exits += 4 + 3 + 3 + 1 + 1; // movsb: device → RAM, one read
    Ok(exits)
}

/// Raw encodings the assembler does not emit: FS override, 0x67 string,
/// RIP-relative load and store. `at` is where they are placed.
fn part2(at: u64) -> (Vec<u8>, u64) {
    let mut b = Vec::new();
    // mov rbx, MMIO ; mov eax, fs:[rbx+8]
    b.extend_from_slice(&[0x48, 0xbb]);
    b.extend_from_slice(&MMIO.to_le_bytes());
    b.extend_from_slice(&[0x64, 0x8b, 0x43, 0x08]);
    // mov edi, MMIO+0x300 ; mov ecx, 2 ; a32 rep stosb
    b.push(0xbf);
    b.extend_from_slice(&((MMIO + 0x300) as u32).to_le_bytes());
    b.extend_from_slice(&[0xb9, 2, 0, 0, 0]);
    b.extend_from_slice(&[0x67, 0xf3, 0xaa]);
    // mov eax, [rip+d] ; mov [rip+d], eax (both at MMIO+0x400)
    for op in [0x8bu8, 0x89] {
        let next = at + b.len() as u64 + 6;
        let disp = (MMIO + 0x400).wrapping_sub(next) as i64;
        b.extend_from_slice(&[op, 0x05]);
        b.extend_from_slice(&(disp as i32).to_le_bytes());
    }
    (b, 1 + 2 + 2)
}

#[test]
fn emulator_agrees_with_kvm_in_long_mode() {
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
    m.add_mmio_device(MMIO, 0x1000, Arc::new(Mutex::new(Scratch::new(4096))))
        .expect("device");
    let stats = m.enable_mmio_check();

    let mut a = CodeAssembler::new(64).expect("assembler");
    let mut expected = part1(&mut a).expect("part1");
    let mut code = a.assemble(CODE).expect("assemble");
    let (raw, n) = part2(CODE + code.len() as u64);
    code.extend_from_slice(&raw);
    expected += n;
    let mut end = CodeAssembler::new(64).expect("assembler");
    end.mov(al, 0x42).expect("mov");
    end.out(0xf4, al).expect("out");
    end.hlt().expect("hlt");
    code.extend(end.assemble(CODE + code.len() as u64).expect("assemble"));

    m.memory()
        .write_slice(&code, GuestAddress(CODE))
        .expect("load");
    m.memory()
        .write_slice(&[7u8; 0x200], GuestAddress(DATA))
        .expect("data");
    let state = krypton_boot::entry::long_mode_state(m.memory(), CODE, 0).expect("state");
    let out = m.run(state, Some(Duration::from_secs(30))).expect("run");
    assert_eq!(out, Outcome::DebugExit(0x42));
    eprintln!(
        "{} MMIO exits checked (expected {expected}), {} mismatches",
        stats.checked(),
        stats.mismatched()
    );
    assert_eq!(
        stats.checked(),
        expected,
        "every MMIO access must have been checked"
    );
    assert_eq!(
        stats.mismatched(),
        0,
        "{} of {} exits disagreed (see warnings)",
        stats.mismatched(),
        stats.checked()
    );
}
