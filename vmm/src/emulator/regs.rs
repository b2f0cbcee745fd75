//! Sub-register reads and writes on top of [`EmulatorCpu`]'s 64-bit view.

use super::{CpuMode, EmulatorCpu};
use iced_x86::Register;

/// The 64-bit register containing `r`, or `None` if `r` is not a GPR.
pub(crate) fn full_gpr(r: Register) -> Option<Register> {
    if !r.is_gpr() {
        return None;
    }
    let full = r.full_register();
    full.is_gpr64().then_some(full)
}

/// True for AH, CH, DH and BH (bits 15:8 of their register).
fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

/// Mask of the low `size` bytes (1, 2, 4 or 8).
pub(crate) fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
pub(crate) fn sign_extend(v: u64, size: usize) -> u64 {
    if size >= 8 {
        return v;
    }
    let shift = 64 - size as u32 * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// Reads GPR `r` of any size; `None` if `r` is not a GPR.
pub(crate) fn read(cpu: &dyn EmulatorCpu, r: Register) -> Option<u64> {
    let full = full_gpr(r)?;
    let v = cpu.reg(full);
    Some(if is_high_byte(r) {
        (v >> 8) & 0xff
    } else {
        v & mask(r.size())
    })
}

/// Writes GPR `r` of any size with x86 semantics: 8- and 16-bit writes
/// merge, 32-bit writes zero the upper half. Returns false if `r` is not a GPR.
pub(crate) fn write(cpu: &mut dyn EmulatorCpu, r: Register, value: u64) -> bool {
    let Some(full) = full_gpr(r) else {
        return false;
    };
    let old = cpu.reg(full);
    let new = if is_high_byte(r) {
        (old & !0xff00) | ((value & 0xff) << 8)
    } else {
        match r.size() {
            1 => (old & !0xff) | (value & 0xff),
            2 => (old & !0xffff) | (value & 0xffff),
            4 => value & 0xffff_ffff,
            _ => value,
        }
    };
    cpu.set_reg(full, new);
    true
}

/// Register value callback for `Instruction::virtual_address`: GPRs of any
/// size and segment bases (zero for ES/CS/SS/DS in 64-bit mode).
pub(crate) fn address_operand(cpu: &dyn EmulatorCpu, r: Register) -> Option<u64> {
    if r.is_segment_register() {
        let flat = cpu.mode() == CpuMode::Bits64
            && matches!(r, Register::ES | Register::CS | Register::SS | Register::DS);
        return Some(if flat { 0 } else { cpu.segment_base(r) });
    }
    read(cpu, r)
}

/// Writes the counter or index register of a string instruction with the
/// given address size (2, 4 or 8): CX/ECX/RCX and so on.
pub(crate) fn write_sized(cpu: &mut dyn EmulatorCpu, full: Register, addr_size: usize, value: u64) {
    let old = cpu.reg(full);
    let new = match addr_size {
        2 => (old & !0xffff) | (value & 0xffff),
        4 => value & 0xffff_ffff,
        _ => value,
    };
    cpu.set_reg(full, new);
}
