//! Differential test against iced-x86's assembler: every MMIO form we
//! support is assembled (CodeAssembler) in 32- and 64-bit mode with many
//! base/index/displacement combinations and data registers, and the
//! emulator's decoded access (address, size, direction, data) and its actual
//! device accesses must match what was assembled.

mod emulator_support;

use emulator_support::*;
use iced_x86::code_asm::*;
use krypton::emulator::{
    AccessKind, CpuMode, MemAccess, Register, decode_access, emulate_mmio, gpr_mut,
};

/// A data register of one size.
#[derive(Clone, Copy)]
enum R {
    B(AsmRegister8),
    W(AsmRegister16),
    D(AsmRegister32),
    Q(AsmRegister64),
}

impl R {
    fn reg(self) -> Register {
        match self {
            R::B(r) => r.into(),
            R::W(r) => r.into(),
            R::D(r) => r.into(),
            R::Q(r) => r.into(),
        }
    }
    fn size(self) -> usize {
        self.reg().size()
    }
}

fn ptr(size: usize, m: AsmMemoryOperand) -> AsmMemoryOperand {
    match size {
        1 => byte_ptr(m),
        2 => word_ptr(m),
        4 => dword_ptr(m),
        _ => qword_ptr(m),
    }
}

/// Distinct, recognisable initial register values.
fn init_regs(c: &mut FakeCpu) {
    for (i, r) in gprs64().into_iter().enumerate() {
        *gpr_mut(&mut c.regs, r).expect("gpr") =
            0x8877_6655_4433_2211u64.rotate_left(8 * i as u32) ^ i as u64;
    }
}

fn gprs64() -> Vec<Register> {
    use Register::*;
    vec![
        RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15,
    ]
}

/// Value of any-size GPR in `c` (AH..BH are bits 15:8).
fn value(c: &FakeCpu, r: Register) -> u64 {
    let full = c.get(r.full_register());
    match r {
        Register::AH | Register::CH | Register::DH | Register::BH => (full >> 8) & 0xff,
        _ if r.size() == 8 => full,
        _ => full & ((1u64 << (8 * r.size())) - 1),
    }
}

fn data_regs(bits: u32) -> Vec<R> {
    let mut v = vec![R::B(bl), R::B(ch), R::W(dx), R::W(bp), R::D(esi), R::D(eax)];
    if bits == 64 {
        v.extend([
            R::B(sil),
            R::B(r9b),
            R::W(r10w),
            R::D(r11d),
            R::Q(rbx),
            R::Q(r12),
            R::Q(rax),
        ]);
    }
    v
}

/// A memory operand: base, optional index with scale, displacement.
type Shape = (Register, Option<(Register, u32)>, i32);

/// The memory operand shapes tried in each mode.
fn shapes(bits: u32) -> Vec<Shape> {
    use Register::*;
    let mut v = Vec::new();
    let bases: &[Register] = if bits == 64 {
        &[RAX, RSP, RBP, R12, R13, R15, RDI]
    } else {
        &[EAX, ESP, EBP, EDI]
    };
    for &b in bases {
        for disp in [0, 0x10, -0x20, 0x12345] {
            v.push((b, Option::None, disp));
        }
    }
    let idx = if bits == 64 { (RCX, R9) } else { (ECX, EDX) };
    v.push((bases[0], Some((idx.0, 4)), 8));
    v.push((bases[1], Some((idx.1, 8)), -4));
    v.push((bases[3], Some((idx.0, 1)), 0));
    v
}

fn asm_reg64(r: Register) -> AsmRegister64 {
    use Register::*;
    match r {
        RAX => rax,
        RCX => rcx,
        RDX => rdx,
        RBX => rbx,
        RSP => rsp,
        RBP => rbp,
        RSI => rsi,
        RDI => rdi,
        R8 => r8,
        R9 => r9,
        R12 => r12,
        R13 => r13,
        _ => r15,
    }
}

fn asm_reg32(r: Register) -> AsmRegister32 {
    use Register::*;
    match r {
        EAX => eax,
        ECX => ecx,
        EDX => edx,
        EBX => ebx,
        ESP => esp,
        EBP => ebp,
        ESI => esi,
        _ => edi,
    }
}

fn mem_operand(
    bits: u32,
    base: Register,
    index: Option<(Register, u32)>,
    disp: i32,
) -> AsmMemoryOperand {
    let mut m = if bits == 64 {
        asm_reg64(base) + disp
    } else {
        asm_reg32(base) + disp
    };
    if let Some((i, s)) = index {
        m = m + if bits == 64 {
            asm_reg64(i) * s
        } else {
            asm_reg32(i) * s
        };
    }
    m
}

struct Case {
    bits: u32,
    what: String,
    bytes: Vec<u8>,
    cpu: FakeCpu,
    expect: Vec<MemAccess>,
}

const RIP: u64 = 0x4000;

fn assemble(bits: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).expect("assembler");
    f(&mut a).expect("assembles");
    a.assemble(RIP).expect("assemble")
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for bits in [32u32, 64] {
        let mode = if bits == 64 {
            CpuMode::Bits64
        } else {
            CpuMode::Bits32
        };
        for (n, (base, index, disp)) in shapes(bits).into_iter().enumerate() {
            // Place the operand at MMIO + k and solve for the base register.
            let target = MMIO + 0x100 + 8 * n as u64;
            let mut cpu = FakeCpu::new(mode);
            cpu.regs.rip = RIP;
            init_regs(&mut cpu);
            let idx_val = index.map_or(0, |(i, s)| value(&cpu, i).wrapping_mul(u64::from(s)));
            let base_val = target
                .wrapping_sub(disp as i64 as u64)
                .wrapping_sub(idx_val);
            let full = base.full_register();
            let old = cpu.get(full);
            cpu.set(
                full,
                if bits == 64 {
                    base_val
                } else {
                    (old & !0xffff_ffff) | (base_val & 0xffff_ffff)
                },
            );
            if index.is_some_and(|(i, _)| i.full_register() == full) {
                continue;
            }
            let m = || mem_operand(bits, base, index, disp);
            let acc = |size: usize, kind, data| MemAccess {
                linear: target,
                size: size as u8,
                kind,
                data,
            };
            let mut push = |what: String, bytes: Vec<u8>, expect: Vec<MemAccess>| {
                out.push(Case {
                    bits,
                    what,
                    bytes,
                    cpu: cpu.clone(),
                    expect,
                });
            };
            for r in data_regs(bits) {
                // A data register that is the base/index changes the address.
                if r.reg().full_register() == full
                    || index.is_some_and(|(i, _)| i.full_register() == r.reg().full_register())
                {
                    continue;
                }
                // AH..BH cannot be encoded with a REX prefix (R8..R15).
                let rex = |x: Register| {
                    x.full_register() >= Register::R8 && x.full_register() <= Register::R15
                };
                let high = matches!(
                    r.reg(),
                    Register::AH | Register::CH | Register::DH | Register::BH
                );
                if high && (rex(base) || index.is_some_and(|(i, _)| rex(i))) {
                    continue;
                }
                let (s, v) = (r.size(), value(&cpu, r.reg()));
                let name = format!("{:?} [{base:?}+{index:?}+{disp:#x}]", r.reg());
                let b = assemble(bits, |a| match r {
                    R::B(x) => a.mov(ptr(1, m()), x),
                    R::W(x) => a.mov(ptr(2, m()), x),
                    R::D(x) => a.mov(ptr(4, m()), x),
                    R::Q(x) => a.mov(ptr(8, m()), x),
                });
                push(
                    format!("mov m, {name}"),
                    b,
                    vec![acc(s, AccessKind::Write, Some(v))],
                );
                let b = assemble(bits, |a| match r {
                    R::B(x) => a.mov(x, ptr(1, m())),
                    R::W(x) => a.mov(x, ptr(2, m())),
                    R::D(x) => a.mov(x, ptr(4, m())),
                    R::Q(x) => a.mov(x, ptr(8, m())),
                });
                push(
                    format!("mov {name}, m"),
                    b,
                    vec![acc(s, AccessKind::Read, None)],
                );
                let b = assemble(bits, |a| match r {
                    R::B(x) => a.xchg(ptr(1, m()), x),
                    R::W(x) => a.xchg(ptr(2, m()), x),
                    R::D(x) => a.xchg(ptr(4, m()), x),
                    R::Q(x) => a.xchg(ptr(8, m()), x),
                });
                push(
                    format!("xchg m, {name}"),
                    b,
                    vec![acc(s, AccessKind::ReadWrite, Some(v))],
                );
                let b = assemble(bits, |a| match r {
                    R::B(x) => a.cmp(ptr(1, m()), x),
                    R::W(x) => a.cmp(ptr(2, m()), x),
                    R::D(x) => a.cmp(ptr(4, m()), x),
                    R::Q(x) => a.cmp(ptr(8, m()), x),
                });
                push(
                    format!("cmp m, {name}"),
                    b,
                    vec![acc(s, AccessKind::Read, None)],
                );
                let b = assemble(bits, |a| match r {
                    R::B(x) => a.or(ptr(1, m()), x),
                    R::W(x) => a.or(ptr(2, m()), x),
                    R::D(x) => a.or(ptr(4, m()), x),
                    R::Q(x) => a.or(ptr(8, m()), x),
                });
                push(
                    format!("or m, {name}"),
                    b,
                    vec![acc(s, AccessKind::ReadWrite, None)],
                );
            }
            // Immediates: mov, and, test.
            for (s, imm) in [(1usize, 0x5ai32), (2, 0x1234), (4, -2), (8, -0x7654_3211)] {
                if s == 8 && bits == 32 {
                    continue;
                }
                let mask = if s == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * s)) - 1
                };
                let b = assemble(bits, |a| a.mov(ptr(s, m()), imm));
                push(
                    format!("mov m{s}, {imm}"),
                    b,
                    vec![acc(s, AccessKind::Write, Some(imm as i64 as u64 & mask))],
                );
                let b = assemble(bits, |a| a.and(ptr(s, m()), imm));
                push(
                    format!("and m{s}, {imm}"),
                    b,
                    vec![acc(s, AccessKind::ReadWrite, None)],
                );
                let b = assemble(bits, |a| a.test(ptr(s, m()), imm));
                push(
                    format!("test m{s}, {imm}"),
                    b,
                    vec![acc(s, AccessKind::Read, None)],
                );
            }
            // movzx / movsx / movsxd.
            let loads: Vec<(&str, usize, Vec<u8>)> = {
                let mut v = vec![
                    (
                        "movzx ecx, m8",
                        1,
                        assemble(bits, |a| a.movzx(ecx, ptr(1, m()))),
                    ),
                    (
                        "movzx dx, m8",
                        1,
                        assemble(bits, |a| a.movzx(dx, ptr(1, m()))),
                    ),
                    (
                        "movzx esi, m16",
                        2,
                        assemble(bits, |a| a.movzx(esi, ptr(2, m()))),
                    ),
                    (
                        "movsx ecx, m8",
                        1,
                        assemble(bits, |a| a.movsx(ecx, ptr(1, m()))),
                    ),
                    (
                        "movsx esi, m16",
                        2,
                        assemble(bits, |a| a.movsx(esi, ptr(2, m()))),
                    ),
                ];
                if bits == 64 {
                    v.push((
                        "movzx r9, m16",
                        2,
                        assemble(bits, |a| a.movzx(r9, ptr(2, m()))),
                    ));
                    v.push((
                        "movsx r10, m8",
                        1,
                        assemble(bits, |a| a.movsx(r10, ptr(1, m()))),
                    ));
                    v.push((
                        "movsxd r11, m32",
                        4,
                        assemble(bits, |a| a.movsxd(r11, ptr(4, m()))),
                    ));
                }
                v
            };
            for (what, s, b) in loads {
                push(what.to_string(), b, vec![acc(s, AccessKind::Read, None)]);
            }
        }
        // String instructions, with and without rep, both directions.
        for df in [false, true] {
            let mut cpu = FakeCpu::new(mode);
            cpu.regs.rip = RIP;
            init_regs(&mut cpu);
            cpu.set(Register::RSI, RAM_BASE + 0x800)
                .set(Register::RDI, MMIO + 0x800)
                .set(Register::RCX, 3);
            if df {
                cpu.regs.rflags |= 0x400;
            }
            let acc_v = cpu.get(Register::RAX);
            let mut strs: Vec<(&str, usize, Vec<u8>)> = vec![
                ("stosb", 1, assemble(bits, |a| a.stosb())),
                ("stosw", 2, assemble(bits, |a| a.stosw())),
                ("rep stosd", 4, assemble(bits, |a| a.rep().stosd())),
                ("movsb", 1, assemble(bits, |a| a.movsb())),
                ("rep movsw", 2, assemble(bits, |a| a.rep().movsw())),
                ("movsd", 4, assemble(bits, |a| a.movsd())),
                ("lodsb", 1, assemble(bits, |a| a.lodsb())),
                ("rep lodsd", 4, assemble(bits, |a| a.rep().lodsd())),
            ];
            if bits == 64 {
                strs.push(("rep stosq", 8, assemble(bits, |a| a.rep().stosq())));
                strs.push(("movsq", 8, assemble(bits, |a| a.movsq())));
            }
            for (what, s, b) in strs {
                // lods reads the device; movs copies RAM to the device.
                let src = if what.contains("lods") {
                    MMIO + 0x900
                } else {
                    RAM_BASE + 0x800
                };
                cpu.set(Register::RSI, src);
                let (src, dst) = (cpu.get(Register::RSI), MMIO + 0x800);
                let mask = if s == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * s)) - 1
                };
                let a = |linear, kind, data| MemAccess {
                    linear,
                    size: s as u8,
                    kind,
                    data,
                };
                let expect = if what.contains("stos") {
                    vec![a(dst, AccessKind::Write, Some(acc_v & mask))]
                } else if what.contains("movs") {
                    vec![
                        a(src, AccessKind::Read, None),
                        a(dst, AccessKind::Write, None),
                    ]
                } else {
                    vec![a(src, AccessKind::Read, None)]
                };
                out.push(Case {
                    bits,
                    what: format!("{what} df={df}"),
                    bytes: b,
                    cpu: cpu.clone(),
                    expect,
                });
            }
        }
    }
    out
}

#[test]
fn decoded_accesses_match_the_assembler() {
    let cases = cases();
    assert!(cases.len() > 1000, "only {} cases", cases.len());
    for c in &cases {
        let d = decode_access(&c.cpu, &c.bytes)
            .unwrap_or_else(|e| panic!("{}-bit {}: {e}", c.bits, c.what));
        assert_eq!(
            d.len,
            c.bytes.len(),
            "{}-bit {} {:02x?}",
            c.bits,
            c.what,
            c.bytes
        );
        assert_eq!(
            d.accesses, c.expect,
            "{}-bit {} {:02x?}",
            c.bits, c.what, c.bytes
        );
    }
    eprintln!("{} assembled instructions checked", cases.len());
}

#[test]
fn emulated_device_accesses_match_the_assembler() {
    for c in cases() {
        let mut cpu = c.cpu.clone();
        // The faulting access is the one at MMIO (a string source is RAM).
        let mmio = c
            .expect
            .iter()
            .find(|a| a.linear >= MMIO)
            .expect("an MMIO access");
        let mut dev = Dev::default();
        let next = emulate_mmio(&mut cpu, &c.bytes, mmio.linear, &mut |a, op| {
            dev.handle(a, op)
        })
        .unwrap_or_else(|e| panic!("{}-bit {}: {e}", c.bits, c.what));
        let ctx = format!("{}-bit {} {:02x?}: {:x?}", c.bits, c.what, c.bytes, dev.log);
        assert_eq!(next, RIP + c.bytes.len() as u64, "{ctx}");
        let kinds: Vec<(u64, usize, bool)> =
            dev.log.iter().map(|(a, b, w)| (*a, b.len(), *w)).collect();
        let size = usize::from(mmio.size);
        let iterations = if c.what.starts_with("rep") { 3 } else { 1 };
        let step = if c.what.contains("df=true") {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let mut want = Vec::new();
        for i in 0..iterations {
            let at = mmio.linear.wrapping_add(step.wrapping_mul(i));
            match mmio.kind {
                AccessKind::Read => want.push((at, size, false)),
                AccessKind::Write => want.push((at, size, true)),
                AccessKind::ReadWrite => want.extend([(at, size, false), (at, size, true)]),
            }
        }
        assert_eq!(kinds, want, "{ctx}");
        if let (AccessKind::Write, Some(data)) = (mmio.kind, mmio.data) {
            assert_eq!(
                dev.log[0].1,
                data.to_le_bytes()[..usize::from(mmio.size)].to_vec(),
                "{ctx}"
            );
        }
    }
}
