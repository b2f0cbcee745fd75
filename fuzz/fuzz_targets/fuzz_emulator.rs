//! libFuzzer target: arbitrary instruction bytes, registers and modes fed to
//! the MMIO instruction emulator, its pure decoder and the string-I/O path.
//! Nothing the guest controls may panic. `cargo +nightly fuzz run fuzz_emulator`.
#![no_main]

use krypton::emulator::Register;
use krypton::emulator::{
    EmulatorCpu, SnapshotCpu, decode_access, emulate_mmio, emulate_string_io, gpr_mut,
};
use krypton::hv::{IoOp, Regs, Sregs};
use std::sync::Mutex;

const RAM: u64 = 0x1000;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 16 + 8 * 20 {
        return;
    }
    let (insn, rest) = data.split_at(16);
    let word = |i: usize| u64::from_le_bytes(rest[8 * i..8 * i + 8].try_into().unwrap_or_default());
    let mut regs = Regs::default();
    let gprs = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];
    for (i, r) in gprs.into_iter().enumerate() {
        if let Some(v) = gpr_mut(&mut regs, r) {
            *v = word(i);
        }
    }
    regs.rip = word(16);
    regs.rflags = word(17);
    let mut sregs = Sregs::default();
    let sel = word(18);
    sregs.cr0 = sel & 1;
    sregs.efer = sel & 0x400;
    sregs.cs.l = sel & 2 != 0;
    sregs.cs.db = sel & 4 != 0;
    sregs.fs.base = word(19);
    let len = (sel >> 8) as usize % 17;
    let ram = Mutex::new(rest[8 * 20..].to_vec());
    let read = |gpa: u64, buf: &mut [u8]| {
        let ram = ram.lock().unwrap_or_else(|e| e.into_inner());
        let off = gpa.wrapping_sub(RAM) as usize;
        match ram.get(off..off.saturating_add(buf.len())) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    };
    let write = |gpa: u64, buf: &[u8]| {
        let mut ram = ram.lock().unwrap_or_else(|e| e.into_inner());
        let off = gpa.wrapping_sub(RAM) as usize;
        match ram.get_mut(off..off.saturating_add(buf.len())) {
            Some(s) => {
                s.copy_from_slice(buf);
                true
            }
            None => false,
        }
    };
    let translate = move |gva: u64, _w: bool| (sel & 8 == 0).then_some(gva ^ (sel & 0xf000));
    let mut cpu = SnapshotCpu::new(regs, sregs)
        .with_translate(Box::new(translate))
        .with_ram(Box::new(read), Box::new(write));
    let _ = decode_access(&cpu, &insn[..len]);
    let mut mmio = |_: u64, op: IoOp<'_>| {
        if let IoOp::Read(b) = op {
            b.fill(0xa5);
        }
    };
    let _ = emulate_mmio(&mut cpu, &insn[..len], word(19), &mut mmio);
    let mut io = |_: u16, op: IoOp<'_>| {
        if let IoOp::Read(b) = op {
            b.fill(0x5a);
        }
    };
    let _ = emulate_string_io(&mut cpu, &insn[..len], &mut io);
    let _ = cpu.rip();
});
