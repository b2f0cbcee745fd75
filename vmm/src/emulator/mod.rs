//! A small, platform-neutral x86 instruction emulator for MMIO exits.
//!
//! WHP (and MSHV) report an MMIO access as "this instruction touched an
//! unmapped guest-physical address" plus the instruction bytes; the VMM has
//! to decode and complete the instruction itself. This module does that with
//! `iced-x86` for the subset Linux drivers use on device memory: `mov` in all
//! forms and sizes, `movzx`/`movsx`/`movsxd`, `stos`/`movs`/`lods` (with
//! `rep`, bounded per exit), `xchg`, and the ALU forms `and`/`or`/`xor`/
//! `add`/`sub`/`cmp`/`test` with a memory operand.
//!
//! The emulator sees the vCPU only through [`EmulatorCpu`], so it is unit
//! tested on every host. Unknown instructions are an [`EmulatorError`], never
//! a panic: the instruction bytes come from a hostile guest.

mod access;
mod check;
mod decode;
mod exec;
mod flags;
mod regs;
mod snapshot;

pub use check::{Mismatch, MmioExit, check_against, check_kvm_exit};
pub use decode::{AccessKind, DecodedAccess, MemAccess, decode_access};
pub use exec::emulate_string_io;
pub use iced_x86::Register;
pub use snapshot::{ReadFn, SnapshotCpu, TranslateFn, WriteFn, gpr_mut, mode_of};

use crate::hv::{HvError, IoOp};

/// Longest x86 instruction in bytes.
pub const MAX_INSN_LEN: usize = 15;

/// Iterations of a `rep` string instruction completed per exit. The rest
/// run after the guest re-executes the instruction (RIP is not advanced
/// while RCX is non-zero), so one exit stays short and interrupts can be
/// taken in between, as on hardware.
pub const MAX_REP_ITERATIONS: u64 = 256;

/// The vCPU's execution mode, which fixes the default operand and address
/// sizes used to decode an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Real mode, virtual-8086 mode or a 16-bit protected-mode segment.
    Bits16,
    /// 32-bit protected mode or compatibility mode.
    Bits32,
    /// 64-bit long mode.
    Bits64,
}

impl CpuMode {
    /// Derives the mode from CR0.PE, EFER.LMA, RFLAGS.VM and CS.L / CS.D.
    pub fn from_state(
        cr0_pe: bool,
        efer_lma: bool,
        rflags_vm: bool,
        cs_l: bool,
        cs_db: bool,
    ) -> Self {
        if !cr0_pe || (rflags_vm && !efer_lma) {
            CpuMode::Bits16
        } else if efer_lma && cs_l {
            CpuMode::Bits64
        } else if cs_db {
            CpuMode::Bits32
        } else {
            CpuMode::Bits16
        }
    }

    /// The decoder bitness (16, 32 or 64).
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Bits16 => 16,
            CpuMode::Bits32 => 32,
            CpuMode::Bits64 => 64,
        }
    }
}

/// The vCPU as the emulator sees it. The backend implements this over its
/// register cache; register accessors cannot fail (the backend loads the
/// registers before emulating).
pub trait EmulatorCpu {
    /// Execution mode at the faulting instruction.
    fn mode(&self) -> CpuMode;
    /// Value of a 64-bit general-purpose register (`Register::RAX` ..
    /// `Register::R15`). The emulator does the sub-register slicing.
    fn reg(&self, r: Register) -> u64;
    /// Sets a 64-bit general-purpose register.
    fn set_reg(&mut self, r: Register, value: u64);
    /// RIP of the faulting instruction.
    fn rip(&self) -> u64;
    /// RFLAGS.
    fn rflags(&self) -> u64;
    /// Sets RFLAGS.
    fn set_rflags(&mut self, value: u64);
    /// Base address of a segment register (`Register::ES` .. `Register::GS`).
    /// The emulator ignores ES/CS/SS/DS bases in 64-bit mode itself.
    fn segment_base(&self, seg: Register) -> u64;
    /// Translates a linear (guest-virtual) address to guest-physical for an
    /// access of the given direction. Used for string instructions and for
    /// fetching instruction bytes the exit did not carry.
    fn translate(&mut self, gva: u64, write: bool) -> Result<u64, EmulatorError>;
    /// Reads guest RAM at `gpa`; returns false if `gpa` is not RAM (then the
    /// access goes to the MMIO handler).
    fn read_ram(&mut self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Writes guest RAM at `gpa`; returns false if `gpa` is not RAM.
    fn write_ram(&mut self, gpa: u64, buf: &[u8]) -> bool;
}

/// Errors from decoding or emulating an MMIO instruction.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The bytes do not form a valid instruction in this mode.
    #[error("invalid instruction bytes {bytes:02x?} at rip {rip:#x}")]
    Decode {
        /// RIP of the instruction.
        rip: u64,
        /// The bytes that were tried.
        bytes: Vec<u8>,
    },
    /// A valid instruction this emulator does not handle on MMIO.
    #[error("MMIO instruction {mnemonic} ({bytes:02x?}) is not emulated")]
    Unsupported {
        /// iced-x86's name for the instruction.
        mnemonic: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// A linear address did not translate.
    #[error("guest address {0:#x} does not translate")]
    Translate(u64),
    /// The instruction bytes could not be fetched from guest memory.
    #[error("cannot fetch instruction bytes at guest address {0:#x}")]
    Fetch(u64),
}

impl From<EmulatorError> for HvError {
    fn from(e: EmulatorError) -> Self {
        HvError::Guest(e.to_string())
    }
}

/// Emulates the instruction in `insn` (as many bytes as the exit carried,
/// more are fetched through `cpu` if needed) that faulted on the MMIO
/// address `gpa`. Device accesses go to `mmio(address, op)`; RAM operands of
/// string instructions go through `cpu`. Registers and flags are updated
/// through `cpu`; the new RIP is returned (unchanged while a `rep` count
/// remains).
pub fn emulate_mmio(
    cpu: &mut dyn EmulatorCpu,
    insn: &[u8],
    gpa: u64,
    mmio: &mut dyn FnMut(u64, IoOp<'_>),
) -> Result<u64, EmulatorError> {
    let instr = decode::decode(cpu, insn)?;
    exec::execute(cpu, &instr, insn, gpa, mmio)
}
