//! Executing a classified instruction against [`EmulatorCpu`] and the bus.

use super::access::Mem;
use super::decode::{self, Ext, Form, Src, StrKind};
use super::flags::{self, DF};
use super::{EmulatorCpu, EmulatorError, MAX_REP_ITERATIONS, regs};
use crate::hv::IoOp;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

fn value(cpu: &dyn EmulatorCpu, src: Src, size: usize) -> u64 {
    match src {
        Src::Reg(r) => regs::read(cpu, r).unwrap_or(0) & regs::mask(size),
        Src::Imm(v) => v & regs::mask(size),
    }
}

/// Executes `instr`, which faulted on MMIO address `gpa`; returns the new RIP.
pub(crate) fn execute(
    cpu: &mut dyn EmulatorCpu,
    instr: &Instruction,
    bytes: &[u8],
    gpa: u64,
    mmio: &mut dyn FnMut(u64, IoOp<'_>),
) -> Result<u64, EmulatorError> {
    let form = decode::classify(instr, bytes)?;
    let mut mem = Mem::new(mmio);
    if let Form::Str {
        kind,
        size,
        addr_size,
        rep,
    } = form
    {
        let (src, dst) = decode::string_addresses(cpu, instr, addr_size);
        match kind {
            StrKind::Stos => mem.hint(dst, gpa),
            StrKind::Lods => mem.hint(src, gpa),
            // Either operand may be the device; hint only an unambiguous one.
            StrKind::Movs if !(src ^ gpa).is_multiple_of(4096) => mem.hint(dst, gpa),
            StrKind::Movs if !(dst ^ gpa).is_multiple_of(4096) => mem.hint(src, gpa),
            StrKind::Movs => {}
        }
        return string_op(cpu, instr, &mut mem, kind, size, addr_size, rep);
    }
    let unsupported = || EmulatorError::Unsupported {
        mnemonic: format!("{:?}", instr.mnemonic()),
        bytes: bytes.get(..instr.len()).unwrap_or(bytes).to_vec(),
    };
    let la = decode::mem_operand_address(cpu, instr).ok_or_else(unsupported)?;
    mem.hint(la, gpa);
    match form {
        Form::Load { dst, size, ext } => {
            let v = mem.read_value(cpu, la, size)?;
            let v = if ext == Ext::Sign {
                regs::sign_extend(v, size)
            } else {
                v
            };
            regs::write(cpu, dst, v);
        }
        Form::Store { size, src } => {
            let v = value(cpu, src, size);
            mem.write_value(cpu, la, size, v)?;
        }
        Form::Alu {
            op,
            size,
            mem_dst,
            other,
        } => {
            let m = mem.read_value(cpu, la, size)?;
            let o = value(cpu, other, size);
            let (a, b) = if mem_dst { (m, o) } else { (o, m) };
            let (r, rflags) = flags::alu(op, a, b, size, cpu.rflags());
            cpu.set_rflags(rflags);
            if flags::writes_result(op) {
                match (mem_dst, other) {
                    (true, _) => mem.write_value(cpu, la, size, r)?,
                    (false, Src::Reg(reg)) => {
                        regs::write(cpu, reg, r);
                    }
                    (false, Src::Imm(_)) => return Err(unsupported()),
                }
            }
        }
        Form::Xchg { reg, size } => {
            let old = mem.read_value(cpu, la, size)?;
            let v = value(cpu, Src::Reg(reg), size);
            mem.write_value(cpu, la, size, v)?;
            regs::write(cpu, reg, old);
        }
        Form::Str { .. } => return Err(unsupported()),
    }
    Ok(instr.next_ip())
}

/// Count, SI and DI of a string instruction in flight.
struct StrState {
    count: u64,
    si: u64,
    di: u64,
}

fn string_op(
    cpu: &mut dyn EmulatorCpu,
    instr: &Instruction,
    mem: &mut Mem<'_, '_>,
    kind: StrKind,
    size: usize,
    addr_size: usize,
    rep: bool,
) -> Result<u64, EmulatorError> {
    let am = regs::mask(addr_size);
    let mut st = StrState {
        count: if rep { cpu.reg(Register::RCX) & am } else { 1 },
        si: cpu.reg(Register::RSI) & am,
        di: cpu.reg(Register::RDI) & am,
    };
    let step = if cpu.rflags() & DF != 0 {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let mut result = Ok(());
    let mut done = 0;
    while st.count > 0 && done < MAX_REP_ITERATIONS {
        // Addresses come from the current SI/DI, so write them first.
        if let Err(e) = string_step(cpu, instr, mem, kind, size, addr_size) {
            result = Err(e);
            break;
        }
        st.si = st.si.wrapping_add(step) & am;
        st.di = st.di.wrapping_add(step) & am;
        st.count -= 1;
        done += 1;
        if kind != StrKind::Stos {
            regs::write_sized(cpu, Register::RSI, addr_size, st.si);
        }
        if kind != StrKind::Lods {
            regs::write_sized(cpu, Register::RDI, addr_size, st.di);
        }
    }
    if rep {
        regs::write_sized(cpu, Register::RCX, addr_size, st.count);
    }
    result?;
    Ok(if rep && st.count > 0 {
        cpu.rip()
    } else {
        instr.next_ip()
    })
}

fn string_step(
    cpu: &mut dyn EmulatorCpu,
    instr: &Instruction,
    mem: &mut Mem<'_, '_>,
    kind: StrKind,
    size: usize,
    addr_size: usize,
) -> Result<(), EmulatorError> {
    let (src, dst) = decode::string_addresses(cpu, instr, addr_size);
    match kind {
        StrKind::Movs => {
            let v = mem.read_value(cpu, src, size)?;
            mem.write_value(cpu, dst, size, v)
        }
        StrKind::Stos => {
            let v = cpu.reg(Register::RAX);
            mem.write_value(cpu, dst, size, v)
        }
        StrKind::Lods => {
            let v = mem.read_value(cpu, src, size)?;
            let acc = match size {
                1 => Register::AL,
                2 => Register::AX,
                4 => Register::EAX,
                _ => Register::RAX,
            };
            regs::write(cpu, acc, v);
            Ok(())
        }
    }
}

/// Emulates a string port-I/O instruction (`ins`/`outs`, with `rep`, bounded
/// like [`emulate_mmio`](super::emulate_mmio)); the port is DX. Returns the
/// new RIP.
pub fn emulate_string_io(
    cpu: &mut dyn EmulatorCpu,
    insn: &[u8],
    io: &mut dyn FnMut(u16, IoOp<'_>),
) -> Result<u64, EmulatorError> {
    let instr = decode::decode(cpu, insn)?;
    let ins = matches!(
        instr.mnemonic(),
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd
    );
    let outs = matches!(
        instr.mnemonic(),
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd
    );
    let mem_op = if ins { 0 } else { 1 };
    let addr_size = match instr.op_kind(mem_op) {
        OpKind::MemoryESDI | OpKind::MemorySegSI => 2,
        OpKind::MemoryESEDI | OpKind::MemorySegESI => 4,
        OpKind::MemoryESRDI | OpKind::MemorySegRSI => 8,
        _ => 0,
    };
    let size = instr.memory_size().size();
    if !(ins || outs) || addr_size == 0 || !matches!(size, 1 | 2 | 4) {
        return Err(EmulatorError::Unsupported {
            mnemonic: format!("{:?}", instr.mnemonic()),
            bytes: insn.to_vec(),
        });
    }
    let port = cpu.reg(Register::RDX) as u16;
    let am = regs::mask(addr_size);
    let rep = instr.has_rep_prefix();
    let mut count = if rep { cpu.reg(Register::RCX) & am } else { 1 };
    let step = if cpu.rflags() & DF != 0 {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let (idx, full) = if ins {
        (Register::RDI, Register::RDI)
    } else {
        (Register::RSI, Register::RSI)
    };
    let mut noop = |_: u64, _: IoOp<'_>| {};
    let mut mem = Mem::new(&mut noop);
    let mut done = 0;
    let mut result = Ok(());
    while count > 0 && done < MAX_REP_ITERATIONS {
        let (src, dst) = decode::string_addresses(cpu, &instr, addr_size);
        let mut buf = [0u8; 4];
        let data = &mut buf[..size];
        let r = if ins {
            io(port, IoOp::Read(data));
            mem.write(cpu, dst, data)
        } else {
            mem.read(cpu, src, data)
                .map(|()| io(port, IoOp::Write(data)))
        };
        if let Err(e) = r {
            result = Err(e);
            break;
        }
        let next = (cpu.reg(idx) & am).wrapping_add(step) & am;
        regs::write_sized(cpu, full, addr_size, next);
        count -= 1;
        done += 1;
    }
    if rep {
        regs::write_sized(cpu, Register::RCX, addr_size, count);
    }
    result?;
    Ok(if rep && count > 0 {
        cpu.rip()
    } else {
        instr.next_ip()
    })
}
