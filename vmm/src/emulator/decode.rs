//! Decoding: bytes → iced `Instruction` → the emulator's [`Form`], and the
//! pure [`decode_access`] used by the differential test.

use super::{CpuMode, EmulatorCpu, EmulatorError, MAX_INSN_LEN, regs};
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

const PAGE: u64 = 4096;

/// The non-memory operand of a store or ALU instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    Reg(Register),
    Imm(u64),
}

/// Extension applied by a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ext {
    None,
    Zero,
    Sign,
}

/// ALU operations with a memory operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AluOp {
    And,
    Or,
    Xor,
    Add,
    Sub,
    Cmp,
    Test,
}

/// String instruction kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrKind {
    Movs,
    Stos,
    Lods,
}

/// What an instruction does with its memory operand, sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Memory → register, with extension from `size` to the register size.
    Load {
        dst: Register,
        size: usize,
        ext: Ext,
    },
    /// Register or immediate → memory.
    Store { size: usize, src: Src },
    /// `mem op= other` (`mem_dst`) or `reg op= mem`.
    Alu {
        op: AluOp,
        size: usize,
        mem_dst: bool,
        other: Src,
    },
    /// Swap memory and a register.
    Xchg { reg: Register, size: usize },
    /// movs/stos/lods; `addr_size` selects SI/DI/CX width.
    Str {
        kind: StrKind,
        size: usize,
        addr_size: usize,
        rep: bool,
    },
}

fn unsupported(instr: &Instruction, bytes: &[u8]) -> EmulatorError {
    EmulatorError::Unsupported {
        mnemonic: format!("{:?}", instr.mnemonic()),
        bytes: bytes.get(..instr.len()).unwrap_or(bytes).to_vec(),
    }
}

/// Decodes one instruction at the vCPU's RIP from `bytes`, fetching the
/// rest from guest memory when the exit carried too few bytes.
pub(crate) fn decode(
    cpu: &mut dyn EmulatorCpu,
    bytes: &[u8],
) -> Result<Instruction, EmulatorError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN + 1)];
    match decode_at(cpu.mode(), cpu.rip(), bytes) {
        Err(DecoderError::NoMoreBytes) if bytes.len() < MAX_INSN_LEN => {
            let rip = cpu.rip();
            let fetched = fetch_code(cpu, rip)?;
            decode_at(cpu.mode(), cpu.rip(), &fetched).map_err(|_| EmulatorError::Decode {
                rip: cpu.rip(),
                bytes: fetched.clone(),
            })
        }
        Err(_) => Err(EmulatorError::Decode {
            rip: cpu.rip(),
            bytes: bytes.to_vec(),
        }),
        Ok(i) => Ok(i),
    }
}

/// Decodes one instruction at `rip` in `mode`.
pub(crate) fn decode_at(
    mode: CpuMode,
    rip: u64,
    bytes: &[u8],
) -> Result<Instruction, DecoderError> {
    let mut decoder = Decoder::with_ip(mode.bitness(), bytes, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        Err(decoder.last_error())
    } else {
        Ok(instr)
    }
}

/// Reads up to 15 code bytes at CS:`rip` from guest memory (stopping early
/// at an untranslatable second page).
pub(crate) fn fetch_code(cpu: &mut dyn EmulatorCpu, rip: u64) -> Result<Vec<u8>, EmulatorError> {
    let mut la = regs::address_operand(cpu, Register::CS)
        .unwrap_or(0)
        .wrapping_add(rip);
    if cpu.mode() != CpuMode::Bits64 {
        la &= 0xffff_ffff;
    }
    let mut out = vec![0u8; MAX_INSN_LEN];
    let first = ((PAGE - la % PAGE) as usize).min(MAX_INSN_LEN);
    let gpa = cpu.translate(la, false)?;
    if !cpu.read_ram(gpa, &mut out[..first]) {
        return Err(EmulatorError::Fetch(la));
    }
    if first < MAX_INSN_LEN {
        let next = la.wrapping_add(first as u64);
        let ok = cpu
            .translate(next, false)
            .map(|gpa| cpu.read_ram(gpa, &mut out[first..]));
        if !matches!(ok, Ok(true)) {
            out.truncate(first);
        }
    }
    Ok(out)
}

fn string_addr_size(kind: OpKind) -> Option<usize> {
    match kind {
        OpKind::MemorySegSI | OpKind::MemoryESDI => Some(2),
        OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(4),
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(8),
        _ => None,
    }
}

fn src_of(instr: &Instruction, op: u32, size: usize) -> Option<Src> {
    match instr.op_kind(op) {
        OpKind::Register => {
            let r = instr.op_register(op);
            regs::full_gpr(r).map(|_| Src::Reg(r))
        }
        _ => instr
            .try_immediate(op)
            .ok()
            .map(|v| Src::Imm(v & regs::mask(size))),
    }
}

fn gpr_op(instr: &Instruction, op: u32) -> Option<Register> {
    (instr.op_kind(op) == OpKind::Register)
        .then(|| instr.op_register(op))
        .filter(|r| regs::full_gpr(*r).is_some())
}

/// Classifies `instr`, or returns `Unsupported` naming it.
pub(crate) fn classify(instr: &Instruction, bytes: &[u8]) -> Result<Form, EmulatorError> {
    let size = instr.memory_size().size();
    let mem0 = instr.op_count() == 2 && instr.op_kind(0) == OpKind::Memory;
    let mem1 = instr.op_count() == 2 && instr.op_kind(1) == OpKind::Memory;
    let rep = instr.has_rep_prefix();
    let alu = match instr.mnemonic() {
        Mnemonic::And => Some(AluOp::And),
        Mnemonic::Or => Some(AluOp::Or),
        Mnemonic::Xor => Some(AluOp::Xor),
        Mnemonic::Add => Some(AluOp::Add),
        Mnemonic::Sub => Some(AluOp::Sub),
        Mnemonic::Cmp => Some(AluOp::Cmp),
        Mnemonic::Test => Some(AluOp::Test),
        _ => None,
    };
    let str_kind = match instr.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => {
            Some(StrKind::Movs)
        }
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => {
            Some(StrKind::Stos)
        }
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => {
            Some(StrKind::Lods)
        }
        _ => None,
    };
    let form = if !matches!(size, 1 | 2 | 4 | 8) {
        None
    } else if let Some(kind) = str_kind {
        // `movsd xmm, m64` shares the mnemonic; only the string form has
        // a DI/SI operand.
        let op = if kind == StrKind::Lods { 1 } else { 0 };
        string_addr_size(instr.op_kind(op)).map(|addr_size| Form::Str {
            kind,
            size,
            addr_size,
            rep,
        })
    } else if let Some(op) = alu {
        if mem0 {
            src_of(instr, 1, size).map(|other| Form::Alu {
                op,
                size,
                mem_dst: true,
                other,
            })
        } else if mem1 {
            gpr_op(instr, 0).map(|r| Form::Alu {
                op,
                size,
                mem_dst: false,
                other: Src::Reg(r),
            })
        } else {
            None
        }
    } else {
        match instr.mnemonic() {
            Mnemonic::Mov if mem0 => src_of(instr, 1, size).map(|src| Form::Store { size, src }),
            Mnemonic::Mov if mem1 => gpr_op(instr, 0).map(|dst| Form::Load {
                dst,
                size,
                ext: Ext::None,
            }),
            Mnemonic::Movzx if mem1 => gpr_op(instr, 0).map(|dst| Form::Load {
                dst,
                size,
                ext: Ext::Zero,
            }),
            Mnemonic::Movsx | Mnemonic::Movsxd if mem1 => gpr_op(instr, 0).map(|dst| Form::Load {
                dst,
                size,
                ext: Ext::Sign,
            }),
            Mnemonic::Xchg if mem0 => gpr_op(instr, 1).map(|reg| Form::Xchg { reg, size }),
            Mnemonic::Xchg if mem1 => gpr_op(instr, 0).map(|reg| Form::Xchg { reg, size }),
            _ => None,
        }
    };
    form.ok_or_else(|| unsupported(instr, bytes))
}

/// Linear address of the instruction's (only) general memory operand.
pub(crate) fn mem_operand_address(cpu: &dyn EmulatorCpu, instr: &Instruction) -> Option<u64> {
    let op = (0..instr.op_count()).find(|&i| instr.op_kind(i) == OpKind::Memory)?;
    let la = instr.virtual_address(op, 0, |r, _, _| regs::address_operand(cpu, r))?;
    Some(linear(cpu.mode(), la))
}

/// Truncates a linear address outside 64-bit mode.
pub(crate) fn linear(mode: CpuMode, la: u64) -> u64 {
    if mode == CpuMode::Bits64 {
        la
    } else {
        la & 0xffff_ffff
    }
}

/// Linear addresses of a string instruction's first source and destination.
pub(crate) fn string_addresses(
    cpu: &dyn EmulatorCpu,
    instr: &Instruction,
    addr_size: usize,
) -> (u64, u64) {
    let m = regs::mask(addr_size);
    let src_seg = regs::address_operand(cpu, instr.memory_segment()).unwrap_or(0);
    let es = regs::address_operand(cpu, Register::ES).unwrap_or(0);
    let si = cpu.reg(Register::RSI) & m;
    let di = cpu.reg(Register::RDI) & m;
    (
        linear(cpu.mode(), src_seg.wrapping_add(si)),
        linear(cpu.mode(), es.wrapping_add(di)),
    )
}

/// Direction of one decoded memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// The instruction only reads the operand.
    Read,
    /// The instruction only writes the operand.
    Write,
    /// Read, then written (ALU read-modify-write, `xchg`).
    ReadWrite,
}

/// One memory access an instruction makes, as decoded from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccess {
    /// Linear (guest-virtual) address.
    pub linear: u64,
    /// Size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// Direction.
    pub kind: AccessKind,
    /// For writes whose value is known before any read: the value written
    /// (low `size` bytes).
    pub data: Option<u64>,
}

/// The result of [`decode_access`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedAccess {
    /// Instruction length in bytes.
    pub len: usize,
    /// iced-x86's name for the instruction.
    pub mnemonic: String,
    /// Whether it is a string instruction (`movs`/`stos`/`lods`).
    pub string: bool,
    /// String instructions: address size in bytes (SI/DI/CX width); 0 otherwise.
    pub addr_size: usize,
    /// The accesses of one execution (of the first iteration for string
    /// instructions); empty for a `rep` instruction whose count is zero.
    pub accesses: Vec<MemAccess>,
}

/// Decodes the memory accesses the instruction in `bytes` would make at the
/// vCPU's current state, without touching memory or registers.
pub fn decode_access(cpu: &dyn EmulatorCpu, bytes: &[u8]) -> Result<DecodedAccess, EmulatorError> {
    let instr = decode_at(cpu.mode(), cpu.rip(), bytes).map_err(|_| EmulatorError::Decode {
        rip: cpu.rip(),
        bytes: bytes.to_vec(),
    })?;
    let form = classify(&instr, bytes)?;
    let mut out = DecodedAccess {
        len: instr.len(),
        mnemonic: format!("{:?}", instr.mnemonic()),
        string: matches!(form, Form::Str { .. }),
        addr_size: 0,
        accesses: Vec::new(),
    };
    let value = |src: Src, size: usize| match src {
        Src::Reg(r) => regs::read(cpu, r).map(|v| v & regs::mask(size)),
        Src::Imm(v) => Some(v),
    };
    let access = |linear, size: usize, kind, data| MemAccess {
        linear,
        size: size as u8,
        kind,
        data,
    };
    if let Form::Str {
        kind,
        size,
        addr_size,
        rep,
    } = form
    {
        out.addr_size = addr_size;
        if rep && cpu.reg(Register::RCX) & regs::mask(addr_size) == 0 {
            return Ok(out);
        }
        let (src, dst) = string_addresses(cpu, &instr, addr_size);
        let acc = cpu.reg(Register::RAX) & regs::mask(size);
        out.accesses = match kind {
            StrKind::Movs => vec![
                access(src, size, AccessKind::Read, None),
                access(dst, size, AccessKind::Write, None),
            ],
            StrKind::Stos => vec![access(dst, size, AccessKind::Write, Some(acc))],
            StrKind::Lods => vec![access(src, size, AccessKind::Read, None)],
        };
        return Ok(out);
    }
    let la = mem_operand_address(cpu, &instr).ok_or_else(|| unsupported(&instr, bytes))?;
    out.accesses.push(match form {
        Form::Load { size, .. } => access(la, size, AccessKind::Read, None),
        Form::Store { size, src } => access(la, size, AccessKind::Write, value(src, size)),
        Form::Alu {
            op: AluOp::Cmp | AluOp::Test,
            size,
            ..
        }
        | Form::Alu {
            mem_dst: false,
            size,
            ..
        } => access(la, size, AccessKind::Read, None),
        Form::Alu { size, .. } => access(la, size, AccessKind::ReadWrite, None),
        Form::Xchg { reg, size } => {
            access(la, size, AccessKind::ReadWrite, value(Src::Reg(reg), size))
        }
        Form::Str { .. } => return Err(unsupported(&instr, bytes)),
    });
    Ok(out)
}
