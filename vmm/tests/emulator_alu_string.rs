//! The MMIO emulator's ALU forms (results and flags) and string
//! instructions (`stos`/`movs`/`lods`, `rep`, direction, bounds, `ins`/`outs`).

mod emulator_support;

use emulator_support::*;
use krypton::emulator::{CpuMode, MAX_REP_ITERATIONS, Register::*, emulate_string_io};
use krypton::hv::IoOp;

const CF: u64 = 1;
const PF: u64 = 4;
const ZF: u64 = 0x40;
const SF: u64 = 0x80;
const OF: u64 = 0x800;
const DF: u64 = 0x400;

/// Device that reads `value` at MMIO.
fn dev_with(value: u64, size: usize) -> Dev {
    let mut d = Dev::default();
    for i in 0..size {
        d.mem.insert(MMIO + i as u64, (value >> (8 * i)) as u8);
    }
    d
}

fn alu(bytes: &[u8], mem: u64, size: usize, rbx: u64) -> (FakeCpu, Dev) {
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.set(RAX, MMIO).set(RBX, rbx);
    c.regs.rflags = 2 | CF | OF; // stale flags that logic ops must clear
    let mut d = dev_with(mem, size);
    let next = krypton::emulator::emulate_mmio(&mut c, bytes, MMIO, &mut |a, op| d.handle(a, op))
        .unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    assert_eq!(next, 0x1000 + bytes.len() as u64);
    (c, d)
}

fn mem_u32(d: &Dev) -> u32 {
    u32::from_le_bytes([0, 1, 2, 3].map(|i| d.mem[&(MMIO + i)]))
}

#[test]
fn logic_ops_memory_destination() {
    let (c, d) = alu(&[0x21, 0x18], 0xff00_ff00, 4, 0x0ff0_0ff0); // and [rax], ebx
    assert_eq!(mem_u32(&d), 0x0f00_0f00);
    assert_eq!(c.regs.rflags & (CF | OF | ZF | SF), 0);
    let (c, d) = alu(&[0x09, 0x18], 0x8000_0000, 4, 1); // or [rax], ebx
    assert_eq!(mem_u32(&d), 0x8000_0001);
    assert_eq!(c.regs.rflags & (SF | ZF | CF | OF), SF);
    let (c, d) = alu(&[0x31, 0x18], 0x1234_5678, 4, 0x1234_5678); // xor [rax], ebx
    assert_eq!(mem_u32(&d), 0);
    assert_eq!(c.regs.rflags & (ZF | PF), ZF | PF);
    // and dword [rax], 0xfffffff0 (imm8 sign-extended)
    let (_, d) = alu(&[0x83, 0x20, 0xf0], 0x1234_5678, 4, 0);
    assert_eq!(mem_u32(&d), 0x1234_5670);
    // or byte [rax], 0x81
    let (_, d) = alu(&[0x80, 0x08, 0x81], 0x02, 1, 0);
    assert_eq!(d.mem[&MMIO], 0x83);
    // The device sees a read then a write of the same size.
    let (_, d) = alu(&[0x66, 0x81, 0x30, 0xff, 0x00], 0x1234, 2, 0); // xor word [rax], 0xff
    assert_eq!(
        d.log.iter().map(|a| (a.1.len(), a.2)).collect::<Vec<_>>(),
        vec![(2, false), (2, true)]
    );
    assert_eq!(d.log[1].1, vec![0xcb, 0x12]);
}

#[test]
fn logic_ops_register_destination() {
    let (c, d) = alu(&[0x23, 0x18], 0xf0f0_f0f0, 4, 0xffff_ffff_0000_ffff); // and ebx, [rax]
    assert_eq!(c.get(RBX), 0xf0f0); // 32-bit result zero-extends
    assert!(
        d.log.iter().all(|a| !a.2),
        "register destination must not write the device"
    );
    let (c, _) = alu(&[0x48, 0x0b, 0x18], 0x8000_0000_0000_0000, 8, 1); // or rbx, [rax]
    assert_eq!(c.get(RBX), 0x8000_0000_0000_0001);
    assert_ne!(c.regs.rflags & SF, 0);
    let (c, _) = alu(&[0x32, 0x18], 0xff, 1, 0x1234_5678_9abc_def0); // xor bl, [rax]
    assert_eq!(c.get(RBX), 0x1234_5678_9abc_de0f);
}

#[test]
fn cmp_and_test_set_flags_without_writing() {
    let check = |bytes: &[u8], mem: u64, size: usize, rbx: u64, set: u64, clear: u64| {
        let (c, d) = alu(bytes, mem, size, rbx);
        assert!(d.log.iter().all(|a| !a.2), "{bytes:02x?} wrote");
        assert_eq!(c.get(RBX), rbx, "{bytes:02x?} changed rbx");
        assert_eq!(
            c.regs.rflags & set,
            set,
            "{bytes:02x?} flags {:#x}",
            c.regs.rflags
        );
        assert_eq!(
            c.regs.rflags & clear,
            0,
            "{bytes:02x?} flags {:#x}",
            c.regs.rflags
        );
    };
    check(&[0x39, 0x18], 5, 4, 5, ZF | PF, CF | SF | OF); // cmp [rax], ebx: equal
    check(&[0x39, 0x18], 3, 4, 5, CF | SF, ZF | OF); // 3 - 5: borrow, negative
    check(&[0x3b, 0x18], 3, 4, 5, 0, CF | ZF | SF | OF); // cmp ebx, [rax]: 5 - 3
    check(&[0x39, 0x18], 0x8000_0000, 4, 1, OF, CF | ZF | SF); // INT_MIN - 1 overflows
    check(&[0x83, 0x38, 0x05], 5, 4, 0, ZF, CF); // cmp dword [rax], 5
    check(&[0x80, 0x38, 0xff], 0x7f, 1, 0, CF | SF | OF, ZF); // cmp byte 0x7f, 0xff
    check(&[0x48, 0x39, 0x18], 1, 8, 2, CF | SF, ZF | OF); // cmp [rax], rbx (64-bit)
    check(&[0x85, 0x18], 0xf0, 4, 0x0f, ZF | PF, SF | CF | OF); // test [rax], ebx = 0
    check(&[0xf6, 0x00, 0x80], 0x80, 1, 0, SF, ZF | CF | OF); // test byte [rax], 0x80
    check(&[0x66, 0xf7, 0x00, 0x01, 0x00], 0x0003, 2, 0, 0, ZF | SF); // test word [rax], 1: PF odd
}

#[test]
fn add_and_sub() {
    let (c, d) = alu(&[0x01, 0x18], 0xffff_ffff, 4, 1); // add [rax], ebx
    assert_eq!(mem_u32(&d), 0);
    assert_eq!(c.regs.rflags & (CF | ZF), CF | ZF);
    let (c, _) = alu(&[0x2b, 0x18], 1, 4, 0x8000_0000); // sub ebx, [rax]
    assert_eq!(c.get(RBX), 0x7fff_ffff);
    assert_ne!(c.regs.rflags & OF, 0);
    let (c, d) = alu(&[0x29, 0x18], 0, 4, 1); // sub [rax], ebx
    assert_eq!(mem_u32(&d), 0xffff_ffff);
    assert_eq!(c.regs.rflags & (CF | SF), CF | SF);
}

#[test]
fn stos_all_sizes_and_rep() {
    for (bytes, size) in [
        (&[0xaa][..], 1usize),
        (&[0x66, 0xab][..], 2),
        (&[0xab][..], 4),
        (&[0x48, 0xab][..], 8),
    ] {
        let mut c = FakeCpu::new(CpuMode::Bits64);
        c.set(RDI, MMIO).set(RAX, 0x0807_0605_0403_0201);
        let log = run_ok(&mut c, bytes, MMIO);
        assert_eq!(
            log,
            vec![(MMIO, (1..=size as u8).collect::<Vec<_>>(), true)],
            "{bytes:02x?}"
        );
        assert_eq!(c.get(RDI), MMIO + size as u64);
        // rep stos with DF=1 walks down and stops at RCX=0.
        let mut c = FakeCpu::new(CpuMode::Bits64);
        c.set(RDI, MMIO + 0x100).set(RAX, 0).set(RCX, 3);
        c.regs.rflags |= DF;
        let mut rep = vec![0xf3];
        rep.extend_from_slice(bytes);
        let log = run_ok(&mut c, &rep, MMIO + 0x100);
        let addrs: Vec<u64> = log.iter().map(|a| a.0).collect();
        let s = size as u64;
        assert_eq!(
            addrs,
            vec![MMIO + 0x100, MMIO + 0x100 - s, MMIO + 0x100 - 2 * s]
        );
        assert_eq!(c.get(RCX), 0);
        assert_eq!(c.get(RDI), MMIO + 0x100 - 3 * s);
    }
}

#[test]
fn rep_is_bounded_per_exit_and_resumes() {
    let mut c = FakeCpu::new(CpuMode::Bits64);
    let total = MAX_REP_ITERATIONS + 10;
    c.set(RDI, MMIO).set(RCX, total).set(RAX, 0xee);
    let (r, log) = run(&mut c, &[0xf3, 0xaa], MMIO);
    assert_eq!(r.expect("emulates"), 0x1000, "RIP stays while RCX != 0");
    assert_eq!(log.len() as u64, MAX_REP_ITERATIONS);
    assert_eq!(c.get(RCX), 10);
    let (r, log) = run(&mut c, &[0xf3, 0xaa], MMIO + MAX_REP_ITERATIONS);
    assert_eq!(r.expect("emulates"), 0x1002);
    assert_eq!(log.len(), 10);
    assert_eq!(c.get(RDI), MMIO + total);
    // rep with RCX = 0 does nothing and completes.
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.set(RDI, MMIO);
    let (r, log) = run(&mut c, &[0xf3, 0xaa], MMIO);
    assert_eq!((r.expect("emulates"), log.len()), (0x1002, 0));
}

#[test]
fn rep_with_32_bit_address_size() {
    // 0x67 in 64-bit mode: ECX/EDI count and index, upper halves cleared.
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.set(RDI, 0xffff_ffff_0000_0000 | MMIO)
        .set(RCX, 0xffff_ffff_0000_0002)
        .set(RAX, 0x11);
    let log = run_ok(&mut c, &[0x67, 0xf3, 0xaa], MMIO);
    assert_eq!(
        log.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![MMIO, MMIO + 1]
    );
    assert_eq!(c.get(RCX), 0);
    assert_eq!(c.get(RDI), MMIO + 2);
    // 16-bit addressing in real mode: DI wraps at 64 KiB, ES base applies.
    let mut c = FakeCpu::new(CpuMode::Bits16);
    c.sregs.es.base = 0xa_0000;
    c.set(RDI, 0xffff).set(RCX, 2).set(RAX, 0x22);
    let log = run_ok(&mut c, &[0xf3, 0xaa], 0xa_ffff);
    assert_eq!(
        log.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![0xa_ffff, 0xa_0000]
    );
    assert_eq!(c.get(RDI), 1);
}

#[test]
fn movs_between_ram_and_device() {
    // Device → RAM (memcpy_fromio), dwords, rep 4.
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.set(RSI, MMIO).set(RDI, RAM_BASE + 0x200).set(RCX, 4);
    let log = run_ok(&mut c, &[0xf3, 0xa5], MMIO);
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|a| !a.2 && a.1.len() == 4));
    let expect: Vec<u8> = (0..16).map(|i| pattern(MMIO + i)).collect();
    assert_eq!(&c.ram[0x200..0x210], &expect[..]);
    assert_eq!(
        (c.get(RSI), c.get(RDI), c.get(RCX)),
        (MMIO + 16, RAM_BASE + 0x210, 0)
    );
    // RAM → device (memcpy_toio), bytes, with the same page offset on both
    // sides so the emulator must translate to tell them apart.
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.ram[0x300..0x303].copy_from_slice(&[9, 8, 7]);
    c.set(RSI, RAM_BASE + 0x300)
        .set(RDI, MMIO + 0x300)
        .set(RCX, 3);
    let log = run_ok(&mut c, &[0xf3, 0xa4], MMIO + 0x300);
    assert_eq!(
        log,
        vec![
            (MMIO + 0x300, vec![9], true),
            (MMIO + 0x301, vec![8], true),
            (MMIO + 0x302, vec![7], true)
        ]
    );
    // movsq with a segment override on the source in 32-bit mode is movsd.
    let mut c = FakeCpu::new(CpuMode::Bits32);
    c.sregs.fs.base = 0x100;
    c.set(RSI, MMIO - 0x100).set(RDI, RAM_BASE);
    run_ok(&mut c, &[0x64, 0xa5], MMIO);
    assert_eq!(
        &c.ram[..4],
        &(0..4).map(|i| pattern(MMIO + i)).collect::<Vec<_>>()[..]
    );
}

#[test]
fn string_ops_translate_linear_addresses() {
    // Guest-virtual = physical + offset: each page is translated, and the
    // exit's GPA is used for the faulting operand.
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.virt_offset = 0xffff_8000_0000_0000;
    c.set(RDI, c.virt_offset + MMIO + 0xffe)
        .set(RCX, 4)
        .set(RAX, 0x5a);
    let log = run_ok(&mut c, &[0xf3, 0xaa], MMIO + 0xffe);
    assert_eq!(
        log.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![MMIO + 0xffe, MMIO + 0xfff, MMIO + 0x1000, MMIO + 0x1001]
    );
    assert_eq!(
        c.translations, 1,
        "only the second page needs a translation"
    );
}

#[test]
fn lods_loads_accumulator() {
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.set(RSI, MMIO).set(RAX, u64::MAX);
    run_ok(&mut c, &[0x66, 0xad], MMIO); // lodsw
    assert_eq!(c.get(RAX), 0xffff_ffff_ffff_0000 | pattern_value(MMIO, 2));
    assert_eq!(c.get(RSI), MMIO + 2);
}

#[test]
fn string_port_io() {
    // rep outsb from RAM to port 0x3f8.
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.ram[..3].copy_from_slice(b"abc");
    c.set(RSI, RAM_BASE).set(RCX, 3).set(RDX, 0x3f8);
    let mut out = Vec::new();
    let next = emulate_string_io(&mut c, &[0xf3, 0x6e], &mut |port, op| {
        if let IoOp::Write(b) = op {
            out.push((port, b.to_vec()));
        }
    })
    .expect("outsb");
    assert_eq!(next, 0x1002);
    assert_eq!(
        out,
        vec![
            (0x3f8, b"a".to_vec()),
            (0x3f8, b"b".to_vec()),
            (0x3f8, b"c".to_vec())
        ]
    );
    // insw into RAM.
    let mut c = FakeCpu::new(CpuMode::Bits64);
    c.set(RDI, RAM_BASE + 8).set(RDX, 0x1f0);
    emulate_string_io(&mut c, &[0x66, 0x6d], &mut |_, op| {
        if let IoOp::Read(b) = op {
            b.copy_from_slice(&[0x34, 0x12]);
        }
    })
    .expect("insw");
    assert_eq!(&c.ram[8..10], &[0x34, 0x12]);
    assert_eq!(c.get(RDI), RAM_BASE + 10);
    // Not a string I/O instruction.
    assert!(emulate_string_io(&mut c, &[0xec], &mut |_, _| {}).is_err());
}
