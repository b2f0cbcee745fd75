//! Arithmetic and RFLAGS for the ALU forms.

use super::decode::AluOp;
use super::regs::mask;

/// Carry flag.
pub(crate) const CF: u64 = 1 << 0;
/// Parity flag.
pub(crate) const PF: u64 = 1 << 2;
/// Auxiliary-carry flag.
pub(crate) const AF: u64 = 1 << 4;
/// Zero flag.
pub(crate) const ZF: u64 = 1 << 6;
/// Sign flag.
pub(crate) const SF: u64 = 1 << 7;
/// Direction flag.
pub(crate) const DF: u64 = 1 << 10;
/// Overflow flag.
pub(crate) const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// Computes `a op b` on `size` bytes. Returns the result (for `cmp`/`test`
/// the value that would have been stored) and the new RFLAGS; flags the
/// SDM leaves undefined (AF for logic ops) are cleared.
pub(crate) fn alu(op: AluOp, a: u64, b: u64, size: usize, rflags: u64) -> (u64, u64) {
    let m = mask(size);
    let sign = 1u64 << (size * 8 - 1);
    let (a, b) = (a & m, b & m);
    let (r, mut f) = match op {
        AluOp::And | AluOp::Test => (a & b, 0),
        AluOp::Or => (a | b, 0),
        AluOp::Xor => (a ^ b, 0),
        AluOp::Add => {
            let r = a.wrapping_add(b) & m;
            let mut f = 0;
            if (a as u128 + b as u128) > m as u128 {
                f |= CF;
            }
            if (a ^ r) & (b ^ r) & sign != 0 {
                f |= OF;
            }
            (r, f | ((a ^ b ^ r) & AF))
        }
        AluOp::Sub | AluOp::Cmp => {
            let r = a.wrapping_sub(b) & m;
            let mut f = 0;
            if a < b {
                f |= CF;
            }
            if (a ^ b) & (a ^ r) & sign != 0 {
                f |= OF;
            }
            (r, f | ((a ^ b ^ r) & AF))
        }
    };
    if r == 0 {
        f |= ZF;
    }
    if r & sign != 0 {
        f |= SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    (r, (rflags & !STATUS) | f)
}

/// Whether the ALU op stores its result.
pub(crate) fn writes_result(op: AluOp) -> bool {
    !matches!(op, AluOp::Cmp | AluOp::Test)
}
