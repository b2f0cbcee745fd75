//! MMIO reads and writes with mov of every size, movzx/movsx, and string
//! stores (`rep stosb`, `rep stosd`, `stosw`) to the recording device.

use super::compare_log;
use crate::hv::Hypervisor;
use crate::selftest::CaseFailure;
use crate::selftest::guest::{GuestAsm, Mode};
use crate::selftest::runner::{self, Setup};
use crate::selftest::testdev::{Access, pattern, pattern_value};
use iced_x86::code_asm::*;
use iced_x86::{Instruction, RepPrefixKind};
use krypton_boot::layout::MMIO_HOLE_START;

/// Base of the MMIO test device.
pub const BASE: u64 = MMIO_HOLE_START;
/// Its size.
pub const LEN: u64 = 0x1000;

/// Sign-extends the `n`-byte pattern at `off` to 32 bits.
fn sext32(off: u64, n: u64) -> u32 {
    let v = pattern_value(off, n);
    let shift = 64 - 8 * n;
    (((v << shift) as i64) >> shift) as u32
}

/// First offset >= `from` whose `n`-byte pattern is negative.
fn negative_at(from: u64, n: u64) -> u64 {
    (from..from + 256)
        .find(|o| pattern(o + n - 1) >= 0x80)
        .unwrap_or(from)
}

const STOSB_COUNT: u64 = 4;
const STOSD_COUNT: u64 = 3;
const STOSD_VALUE: u32 = 0x1122_3344;

/// The accesses the `mmio` guest makes in `mode`, in order.
pub fn mmio_expected(mode: Mode) -> Vec<Access> {
    let long = mode == Mode::Long;
    let mut v = vec![
        Access::write(0x10, &[0x11]),
        Access::write(0x20, &0x2233u16.to_le_bytes()),
        Access::write(0x30, &0x4455_6677u32.to_le_bytes()),
        Access::write(0x40, &0x8899_aabbu32.to_le_bytes()),
        Access::write(0x48, &[0xcc]),
    ];
    if long {
        v.push(Access::write(0x50, &0x0123_4567_89ab_cdefu64.to_le_bytes()));
    }
    v.extend([Access::read(1, 1), Access::read(2, 2), Access::read(4, 4)]);
    if long {
        v.push(Access::read(8, 8));
    }
    v.extend([
        Access::read(0x61, 1),
        Access::read(0x62, 2),
        Access::read(negative_at(0x70, 1), 1),
        Access::read(negative_at(0x78, 2), 2),
    ]);
    if long {
        v.push(Access::read(negative_at(0x80, 4), 4));
    }
    v.extend((0..STOSB_COUNT).map(|i| Access::write(0x100 + i, &[0xab])));
    v.extend((0..STOSD_COUNT).map(|i| Access::write(0x200 + 4 * i, &STOSD_VALUE.to_le_bytes())));
    v.push(Access::write(0x300, &0x5566u16.to_le_bytes()));
    v
}

/// Guest for the `mmio` case.
pub fn mmio_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let long = mode == Mode::Long;
    // String instructions with the address size that reaches the hole.
    let asize = if long { 64 } else { 32 };
    let mut g = GuestAsm::new(mode)?;
    g.big_real_mode()?;
    g.load_base(BASE)?;
    // Stores: immediate and register forms of every size.
    g.a.mov(byte_ptr(g.at(0x10)), 0x11_u32)?;
    g.a.mov(word_ptr(g.at(0x20)), 0x2233_u32)?;
    g.a.mov(dword_ptr(g.at(0x30)), 0x4455_6677_u32)?;
    g.a.mov(eax, 0x8899_aabb_u32)?;
    g.a.mov(dword_ptr(g.at(0x40)), eax)?;
    g.a.mov(al, 0xcc_u32)?;
    g.a.mov(byte_ptr(g.at(0x48)), al)?;
    if long {
        g.a.mov(rax, 0x0123_4567_89ab_cdef_u64)?;
        g.a.mov(qword_ptr(g.at(0x50)), rax)?;
    }
    // Loads of every size.
    g.a.mov(al, byte_ptr(g.at(1)))?;
    g.expect_al(pattern_value(1, 1) as u8, "mov al, [mmio]")?;
    g.a.mov(ax, word_ptr(g.at(2)))?;
    g.expect_ax(pattern_value(2, 2) as u16, "mov ax, [mmio]")?;
    g.a.mov(eax, dword_ptr(g.at(4)))?;
    g.expect_eax(pattern_value(4, 4) as u32, "mov eax, [mmio]")?;
    if long {
        g.a.mov(rax, qword_ptr(g.at(8)))?;
        g.expect_rax(pattern_value(8, 8), "mov rax, [mmio]")?;
    }
    // Zero and sign extension.
    g.a.mov(eax, 0xffff_ffff_u32)?;
    g.a.movzx(eax, byte_ptr(g.at(0x61)))?;
    g.expect_eax(pattern_value(0x61, 1) as u32, "movzx eax, byte [mmio]")?;
    g.a.mov(eax, 0xffff_ffff_u32)?;
    g.a.movzx(eax, word_ptr(g.at(0x62)))?;
    g.expect_eax(pattern_value(0x62, 2) as u32, "movzx eax, word [mmio]")?;
    let (b, w) = (negative_at(0x70, 1), negative_at(0x78, 2));
    g.a.movsx(eax, byte_ptr(g.at(b as i32)))?;
    g.expect_eax(sext32(b, 1), "movsx eax, byte [mmio]")?;
    g.a.movsx(eax, word_ptr(g.at(w as i32)))?;
    g.expect_eax(sext32(w, 2), "movsx eax, word [mmio]")?;
    if long {
        let d = negative_at(0x80, 4);
        g.a.movsxd(rax, dword_ptr(g.at(d as i32)))?;
        let want = pattern_value(d, 4) as u32 as i32 as i64 as u64;
        g.expect_rax(want, "movsxd rax, dword [mmio]")?;
    }
    // String stores.
    g.a.cld()?;
    g.a.mov(edi, (BASE + 0x100) as u32)?;
    g.a.mov(ecx, STOSB_COUNT as u32)?;
    g.a.mov(al, 0xab_u32)?;
    g.a.add_instruction(Instruction::with_rep_stosb(asize)?)?;
    g.a.mov(eax, ecx)?;
    g.expect_eax(0, "ECX after rep stosb")?;
    g.a.mov(edi, (BASE + 0x200) as u32)?;
    g.a.mov(ecx, STOSD_COUNT as u32)?;
    g.a.mov(eax, STOSD_VALUE)?;
    g.a.add_instruction(Instruction::with_rep_stosd(asize)?)?;
    g.a.mov(edi, (BASE + 0x300) as u32)?;
    g.a.mov(ax, 0x5566_u32)?;
    g.a.add_instruction(Instruction::with_stosw(asize, RepPrefixKind::None)?)?;
    g.a.mov(eax, edi)?;
    g.expect_eax((BASE + 0x302) as u32, "EDI after stosw")?;
    g.pass()?;
    Ok(g)
}

/// MMIO with mov, movzx/movsx and stos: read values checked by the guest,
/// every access (offset, size, data) checked by the host.
pub fn mmio(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let dev = runner::new_dev();
    let setup = Setup {
        mmio: vec![(BASE, LEN, dev.clone())],
        ..Setup::default()
    };
    runner::run_to_pass(hv, &mmio_guest(mode)?.assemble()?, setup)?;
    compare_log("MMIO", &runner::log_of(&dev), &mmio_expected(mode))
}
