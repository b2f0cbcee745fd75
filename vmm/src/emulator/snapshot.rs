//! [`SnapshotCpu`]: an [`EmulatorCpu`] over plain `Regs`/`Sregs` values, for
//! backends that load the whole register file per exit (WHP) and for the
//! KVM differential check.

use super::{CpuMode, EmulatorCpu, EmulatorError};
use crate::hv::{Regs, Sregs};
use iced_x86::Register;

/// Translates a linear address (`None`: no mapping).
pub type TranslateFn<'a> = Box<dyn FnMut(u64, bool) -> Option<u64> + Send + 'a>;
/// Reads guest RAM (`false`: not RAM).
pub type ReadFn<'a> = Box<dyn FnMut(u64, &mut [u8]) -> bool + Send + 'a>;
/// Writes guest RAM (`false`: not RAM).
pub type WriteFn<'a> = Box<dyn FnMut(u64, &[u8]) -> bool + Send + 'a>;

/// Registers by value plus memory callbacks. Without callbacks, linear
/// addresses translate to themselves and no address is RAM.
pub struct SnapshotCpu<'a> {
    /// General-purpose registers, RIP and RFLAGS (updated by emulation).
    pub regs: Regs,
    /// Segment and control registers (read only).
    pub sregs: Sregs,
    translate: Option<TranslateFn<'a>>,
    read: Option<ReadFn<'a>>,
    write: Option<WriteFn<'a>>,
}

impl std::fmt::Debug for SnapshotCpu<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCpu")
            .field("regs", &self.regs)
            .field("sregs", &self.sregs)
            .finish_non_exhaustive()
    }
}

impl<'a> SnapshotCpu<'a> {
    /// A snapshot with identity translation and no RAM.
    pub fn new(regs: Regs, sregs: Sregs) -> Self {
        SnapshotCpu {
            regs,
            sregs,
            translate: None,
            read: None,
            write: None,
        }
    }

    /// Uses `f` for linear → physical translation.
    pub fn with_translate(mut self, f: TranslateFn<'a>) -> Self {
        self.translate = Some(f);
        self
    }

    /// Uses `read`/`write` for guest RAM.
    pub fn with_ram(mut self, read: ReadFn<'a>, write: WriteFn<'a>) -> Self {
        self.read = Some(read);
        self.write = Some(write);
        self
    }
}

/// The `Regs` field holding 64-bit GPR `r`.
pub fn gpr_mut(regs: &mut Regs, r: Register) -> Option<&mut u64> {
    Some(match r {
        Register::RAX => &mut regs.rax,
        Register::RBX => &mut regs.rbx,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        _ => return None,
    })
}

/// The mode a vCPU with these registers executes in.
pub fn mode_of(regs: &Regs, sregs: &Sregs) -> CpuMode {
    CpuMode::from_state(
        sregs.cr0 & 1 != 0,
        sregs.efer & (1 << 10) != 0,
        regs.rflags & (1 << 17) != 0,
        sregs.cs.l,
        sregs.cs.db,
    )
}

impl EmulatorCpu for SnapshotCpu<'_> {
    fn mode(&self) -> CpuMode {
        mode_of(&self.regs, &self.sregs)
    }
    fn reg(&self, r: Register) -> u64 {
        let mut regs = self.regs;
        gpr_mut(&mut regs, r).map_or(0, |v| *v)
    }
    fn set_reg(&mut self, r: Register, value: u64) {
        if let Some(v) = gpr_mut(&mut self.regs, r) {
            *v = value;
        }
    }
    fn rip(&self) -> u64 {
        self.regs.rip
    }
    fn rflags(&self) -> u64 {
        self.regs.rflags
    }
    fn set_rflags(&mut self, value: u64) {
        self.regs.rflags = value;
    }
    fn segment_base(&self, seg: Register) -> u64 {
        let s = &self.sregs;
        match seg {
            Register::ES => s.es.base,
            Register::CS => s.cs.base,
            Register::SS => s.ss.base,
            Register::DS => s.ds.base,
            Register::FS => s.fs.base,
            Register::GS => s.gs.base,
            _ => 0,
        }
    }
    fn translate(&mut self, gva: u64, write: bool) -> Result<u64, EmulatorError> {
        match &mut self.translate {
            Some(f) => f(gva, write).ok_or(EmulatorError::Translate(gva)),
            None => Ok(gva),
        }
    }
    fn read_ram(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read.as_mut().is_some_and(|f| f(gpa, buf))
    }
    fn write_ram(&mut self, gpa: u64, buf: &[u8]) -> bool {
        self.write.as_mut().is_some_and(|f| f(gpa, buf))
    }
}
