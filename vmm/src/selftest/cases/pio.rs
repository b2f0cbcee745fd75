//! Port I/O of every size, with the DX and immediate-port forms, and string
//! I/O (`rep outsb`, `rep insw`).

use super::compare_log;
use crate::hv::Hypervisor;
use crate::selftest::CaseFailure;
use crate::selftest::guest::{GuestAsm, Mode, addr};
use crate::selftest::runner::{self, Setup};
use crate::selftest::testdev::{Access, pattern_value};
use iced_x86::code_asm::*;

/// Base port of the PIO test device (below 0x100 so `in al, imm8` reaches it).
pub const PORT: u16 = 0xe0;
/// Ports the device claims.
const LEN: u16 = 16;

/// The accesses the `pio` guest makes, in order.
pub fn pio_expected() -> Vec<Access> {
    vec![
        Access::read(1, 1),
        Access::read(2, 2),
        Access::read(4, 4),
        Access::read(8, 1),
        Access::read(12, 4),
        Access::write(1, &[0x5a]),
        Access::write(2, &0x1234u16.to_le_bytes()),
        Access::write(4, &0xdead_beefu32.to_le_bytes()),
        Access::write(8, &[0x3c]),
        Access::write(10, &0xbeefu16.to_le_bytes()),
        Access::write(12, &0xcafe_f00du32.to_le_bytes()),
    ]
}

/// Guest for the `pio` case.
pub fn pio_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let p = u32::from(PORT);
    let mut g = GuestAsm::new(mode)?;
    g.a.mov(dx, p + 1)?;
    g.a.in_(al, dx)?;
    g.expect_al(pattern_value(1, 1) as u8, "in al, dx")?;
    g.a.mov(dx, p + 2)?;
    g.a.in_(ax, dx)?;
    g.expect_ax(pattern_value(2, 2) as u16, "in ax, dx")?;
    g.a.mov(dx, p + 4)?;
    g.a.in_(eax, dx)?;
    g.expect_eax(pattern_value(4, 4) as u32, "in eax, dx")?;
    g.a.in_(al, p + 8)?;
    g.expect_al(pattern_value(8, 1) as u8, "in al, imm8")?;
    g.a.in_(eax, p + 12)?;
    g.expect_eax(pattern_value(12, 4) as u32, "in eax, imm8")?;

    g.a.mov(dx, p + 1)?;
    g.a.mov(al, 0x5a_u32)?;
    g.a.out(dx, al)?;
    g.a.mov(dx, p + 2)?;
    g.a.mov(ax, 0x1234_u32)?;
    g.a.out(dx, ax)?;
    g.a.mov(dx, p + 4)?;
    g.a.mov(eax, 0xdead_beef_u32)?;
    g.a.out(dx, eax)?;
    g.a.mov(al, 0x3c_u32)?;
    g.a.out(p + 8, al)?;
    g.a.mov(ax, 0xbeef_u32)?;
    g.a.out(p + 10, ax)?;
    g.a.mov(eax, 0xcafe_f00d_u32)?;
    g.a.out(p + 12, eax)?;
    g.pass()?;
    Ok(g)
}

/// `in`/`out` of 1, 2 and 4 bytes: values checked by the guest (reads) and
/// by the host's recording device (writes, offsets and sizes).
pub fn pio(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let dev = runner::new_dev();
    let setup = Setup {
        pio: vec![(PORT, LEN, dev.clone())],
        ..Setup::default()
    };
    runner::run_to_pass(hv, &pio_guest(mode)?.assemble()?, setup)?;
    compare_log("port I/O", &runner::log_of(&dev), &pio_expected())
}

/// Bytes `rep outsb` sends.
const OUTS: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
/// Words `rep insw` reads.
const INS_COUNT: u32 = 3;

/// The accesses the `pio-string` guest makes, in order.
pub fn pio_string_expected() -> Vec<Access> {
    let mut v: Vec<Access> = OUTS.iter().map(|b| Access::write(0, &[*b])).collect();
    v.extend((0..INS_COUNT).map(|_| Access::read(2, 2)));
    v
}

/// Guest for the `pio-string` case.
pub fn pio_string_guest(mode: Mode) -> Result<GuestAsm, CaseFailure> {
    let buf = addr::DATA as u32;
    let mut g = GuestAsm::new(mode)?;
    g.a.cld()?;
    g.a.mov(dword_ptr(addr::DATA), u32::from_le_bytes(OUTS))?;
    g.a.mov(esi, buf)?;
    g.a.mov(ecx, OUTS.len() as u32)?;
    g.a.mov(dx, u32::from(PORT))?;
    g.a.rep().outsb()?;
    g.a.mov(edi, buf + 0x40)?;
    g.a.mov(ecx, INS_COUNT)?;
    g.a.mov(dx, u32::from(PORT) + 2)?;
    g.a.rep().insw()?;
    for i in 0..INS_COUNT {
        g.a.mov(ax, word_ptr(addr::DATA + 0x40 + u64::from(i) * 2))?;
        g.expect_ax(pattern_value(2, 2) as u16, &format!("rep insw word {i}"))?;
    }
    g.a.mov(eax, ecx)?;
    g.expect_eax(0, "ECX after rep insw")?;
    g.pass()?;
    Ok(g)
}

/// String port I/O: each element is one access of the element size.
pub fn pio_string(hv: &dyn Hypervisor, mode: Mode) -> Result<(), CaseFailure> {
    let dev = runner::new_dev();
    let setup = Setup {
        pio: vec![(PORT, LEN, dev.clone())],
        ..Setup::default()
    };
    runner::run_to_pass(hv, &pio_string_guest(mode)?.assemble()?, setup)?;
    compare_log(
        "string port I/O",
        &runner::log_of(&dev),
        &pio_string_expected(),
    )
}
