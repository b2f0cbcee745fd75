//! Conformance guests: the entry modes, the fixed low-memory layout every
//! guest uses, and a thin wrapper over iced-x86's code assembler that adds
//! "check this register, else exit with a numbered failure code".

use super::CaseFailure;
use crate::hv::CpuState;
use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::*;
use krypton_boot::entry;
use krypton_boot::layout::DEBUG_EXIT_PORT;
use vm_memory::GuestMemoryMmap;

/// The CPU mode a conformance guest starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit real mode, CS=0x1000 (code at 0x10000).
    Real,
    /// 32-bit flat protected mode, paging off (PVH-style).
    Protected,
    /// 64-bit long mode with identity-mapped 2 MiB pages over 4 GiB.
    Long,
}

impl Mode {
    /// Short name used in case names ("real", "prot", "long").
    pub fn short(self) -> &'static str {
        match self {
            Mode::Real => "real",
            Mode::Protected => "prot",
            Mode::Long => "long",
        }
    }

    fn bitness(self) -> u32 {
        match self {
            Mode::Real => 16,
            Mode::Protected => 32,
            Mode::Long => 64,
        }
    }
}

/// Low-memory layout shared by all guests. The GDT, the long-mode page
/// tables and the boot stack are the boot crate's (`krypton_boot::entry`,
/// below 0x600 and at 0x9000-0xefff); the guest's own areas avoid them.
pub mod addr {
    /// The IDT (protected and long mode; 256 gates).
    pub const IDT: u64 = 0x2000;
    /// Variables the guest and its interrupt handlers share (markers, counters).
    pub const DATA: u64 = 0x6000;
    /// Interrupt count kept by the handlers of the interrupt cases.
    pub const COUNT: u64 = DATA + 8;
    /// Where a failing check stores the value it saw (8 bytes).
    pub const ACTUAL: u64 = 0x6100;
    /// Ten zero bytes: an IDT pseudo-descriptor with limit 0.
    pub const NULL_IDTR: u64 = 0x6200;
    /// The pseudo-descriptor the prologue loads with `lidt`.
    pub const IDTR: u64 = 0x6300;
    /// A GDT with a flat 4 GiB data descriptor at selector 0x08, for
    /// "big real mode", and its pseudo-descriptor after it.
    pub const BIG_REAL_GDT: u64 = 0x6400;
    /// The pseudo-descriptor of `BIG_REAL_GDT`.
    pub const BIG_REAL_GDTR: u64 = 0x6440;
    /// Stack pointer set by the prologue (grows down).
    pub const STACK_TOP: u64 = 0x8000;
    /// Guest code.
    pub const CODE: u64 = 0x1_0000;
    /// Real-mode code segment (base `CODE`).
    pub const REAL_CS: u16 = (CODE >> 4) as u16;
}

/// The value a guest writes to the debug-exit port when every check passed.
pub const PASS: u32 = 0x600d;
/// First failure code; check `n` fails with `FAIL_BASE + n`.
pub const FAIL_BASE: u32 = 0x1000;
/// First "cannot run here" code; reason `n` exits with `SKIP_BASE + n`.
pub const SKIP_BASE: u32 = 0x2000;

/// A guest program under construction.
pub struct GuestAsm {
    /// The underlying assembler; cases emit instructions into it directly.
    pub a: CodeAssembler,
    /// The entry mode.
    pub mode: Mode,
    checks: Vec<String>,
    skips: Vec<String>,
    vectors: Vec<(u8, CodeLabel)>,
}

impl std::fmt::Debug for GuestAsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAsm")
            .field("mode", &self.mode)
            .field("checks", &self.checks)
            .finish()
    }
}

/// An assembled guest, ready to load.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The entry mode.
    pub mode: Mode,
    /// Machine code, loaded at [`addr::CODE`].
    pub code: Vec<u8>,
    /// Interrupt vectors and the handler's offset from `addr::CODE`.
    pub vectors: Vec<(u8, u64)>,
    /// What each numbered check tested.
    pub checks: Vec<String>,
    /// Why each numbered skip code would be taken.
    pub skips: Vec<String>,
}

/// What the debug-exit value of a guest means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestVerdict {
    /// Every check passed.
    Pass,
    /// This check failed.
    Failed(String),
    /// The guest found it cannot run here (for example a missing CPUID bit).
    Skipped(String),
    /// A value the guest program never writes.
    Unknown(u32),
}

impl Assembled {
    /// Interprets a debug-exit value written by this guest.
    pub fn verdict(&self, value: u32) -> GuestVerdict {
        if value == PASS {
            return GuestVerdict::Pass;
        }
        let find = |base: u32, list: &[String]| {
            value
                .checked_sub(base)
                .and_then(|n| list.get(n as usize))
                .cloned()
        };
        if let Some(c) = find(FAIL_BASE, &self.checks) {
            return GuestVerdict::Failed(c);
        }
        if let Some(s) = find(SKIP_BASE, &self.skips) {
            return GuestVerdict::Skipped(s);
        }
        GuestVerdict::Unknown(value)
    }
}

impl GuestAsm {
    /// Starts a guest program for `mode` with its prologue: in real mode
    /// flat data segments at 0 (the boot state has them equal to CS), then
    /// the stack pointer and `lidt` of the guest's own IVT/IDT.
    pub fn new(mode: Mode) -> Result<Self, CaseFailure> {
        let mut a = CodeAssembler::new(mode.bitness())?;
        if mode == Mode::Real {
            a.xor(ax, ax)?;
            a.mov(ds, ax)?;
            a.mov(es, ax)?;
            a.mov(ss, ax)?;
        }
        // In long mode a 32-bit move zero-extends into RSP.
        a.mov(esp, addr::STACK_TOP as u32)?;
        a.lidt(ptr(addr::IDTR))?;
        Ok(GuestAsm {
            a,
            mode,
            checks: Vec::new(),
            skips: Vec::new(),
            vectors: Vec::new(),
        })
    }

    /// Writes `value` to the debug-exit port, then halts forever.
    pub fn exit(&mut self, value: u32) -> Result<(), CaseFailure> {
        self.a.mov(eax, value)?;
        self.a.out(u32::from(DEBUG_EXIT_PORT), eax)?;
        let mut again = self.a.create_label();
        self.a.set_label(&mut again)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.a.jmp(again)?;
        Ok(())
    }

    /// Exits with [`PASS`].
    pub fn pass(&mut self) -> Result<(), CaseFailure> {
        self.exit(PASS)
    }

    /// Registers a new check and returns its failure code.
    fn new_check(&mut self, what: String) -> u32 {
        self.checks.push(what);
        FAIL_BASE + (self.checks.len() as u32 - 1)
    }

    /// Emits the "branch if equal, else store the value and fail" tail after
    /// a `cmp`. `store` saves the compared register at [`addr::ACTUAL`].
    fn fail_unless_equal(
        &mut self,
        what: String,
        store: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> Result<(), CaseFailure> {
        let code = self.new_check(what);
        let mut ok = self.a.create_label();
        self.a.je(ok)?;
        store(&mut self.a)?;
        self.exit(code)?;
        self.a.set_label(&mut ok)?;
        Ok(())
    }

    /// Fails unless AL == `v`.
    pub fn expect_al(&mut self, v: u8, what: &str) -> Result<(), CaseFailure> {
        self.a.cmp(al, u32::from(v))?;
        self.fail_unless_equal(format!("{what}: expected AL={v:#04x}"), |a| {
            a.mov(byte_ptr(addr::ACTUAL), al)
        })
    }

    /// Fails unless AX == `v`.
    pub fn expect_ax(&mut self, v: u16, what: &str) -> Result<(), CaseFailure> {
        self.a.cmp(ax, u32::from(v))?;
        self.fail_unless_equal(format!("{what}: expected AX={v:#06x}"), |a| {
            a.mov(word_ptr(addr::ACTUAL), ax)
        })
    }

    /// Fails unless EAX == `v`.
    pub fn expect_eax(&mut self, v: u32, what: &str) -> Result<(), CaseFailure> {
        self.a.cmp(eax, v)?;
        self.fail_unless_equal(format!("{what}: expected EAX={v:#010x}"), |a| {
            a.mov(dword_ptr(addr::ACTUAL), eax)
        })
    }

    /// Fails unless RAX == `v` (long mode only; clobbers RCX).
    pub fn expect_rax(&mut self, v: u64, what: &str) -> Result<(), CaseFailure> {
        self.a.mov(rcx, v)?;
        self.a.cmp(rax, rcx)?;
        self.fail_unless_equal(format!("{what}: expected RAX={v:#018x}"), |a| {
            a.mov(qword_ptr(addr::ACTUAL), rax)
        })
    }

    /// Fails unconditionally (code reached only if something did not happen).
    pub fn fail(&mut self, what: &str) -> Result<(), CaseFailure> {
        let code = self.new_check(what.to_string());
        self.exit(code)
    }

    /// Exits with a skip code whose reason is `why`.
    pub fn skip(&mut self, why: &str) -> Result<(), CaseFailure> {
        self.skips.push(why.to_string());
        self.exit(SKIP_BASE + (self.skips.len() as u32 - 1))
    }

    /// Makes `label` the handler of interrupt `vector`.
    pub fn vector(&mut self, vector: u8, label: CodeLabel) {
        self.vectors.push((vector, label));
    }

    /// A memory operand `[base + off]` where the base register (EBX/RBX)
    /// holds a 32-bit address loaded by [`GuestAsm::load_base`].
    pub fn at(&self, off: i32) -> AsmMemoryOperand {
        match self.mode {
            Mode::Long => rbx + off,
            _ => ebx + off,
        }
    }

    /// Loads `base` (below 4 GiB) into EBX/RBX for [`GuestAsm::at`].
    pub fn load_base(&mut self, base: u64) -> Result<(), CaseFailure> {
        let base = u32::try_from(base).map_err(|_| CaseFailure::Fail("base above 4 GiB".into()))?;
        // In long mode a 32-bit move zero-extends into RBX.
        self.a.mov(ebx, base)?;
        Ok(())
    }

    /// Returns from an interrupt handler with the mode's IRET form.
    pub fn iret(&mut self) -> Result<(), CaseFailure> {
        match self.mode {
            Mode::Real => self.a.iret()?,
            Mode::Protected => self.a.iretd()?,
            Mode::Long => self.a.iretq()?,
        }
        Ok(())
    }

    /// In real mode, switches to "big real mode" so 32-bit addresses reach
    /// the MMIO hole and the APICs: DS and ES are loaded with a flat 4 GiB
    /// descriptor while CR0.PE is briefly set, and are not reloaded after
    /// PE is cleared (bases stay 0). Clobbers EAX and BX. No-op otherwise.
    pub fn big_real_mode(&mut self) -> Result<(), CaseFailure> {
        if self.mode != Mode::Real {
            return Ok(());
        }
        self.a.cli()?;
        self.a.lgdt(ptr(addr::BIG_REAL_GDTR))?;
        self.a.mov(eax, cr0)?;
        self.a.or(al, 1)?;
        self.a.mov(cr0, eax)?;
        self.a.mov(bx, 0x08_u32)?;
        self.a.mov(ds, bx)?;
        self.a.mov(es, bx)?;
        self.a.and(al, 0xfe_u32 as i32)?;
        self.a.mov(cr0, eax)?;
        Ok(())
    }

    /// Returns from a hardware-interrupt handler. Same as [`GuestAsm::iret`]
    /// except in 32-bit protected mode, which uses the equivalent
    /// `push [esp+8]; popfd; retf 4` (same privilege, so the frame is EIP,
    /// CS, EFLAGS): KVM's instruction emulator, which runs 32-bit guests on
    /// kvm_pvm hosts, does not implement protected-mode IRET, and these
    /// cases test interrupt delivery, not IRET (the `iret` case does).
    pub fn return_from_interrupt(&mut self) -> Result<(), CaseFailure> {
        if self.mode != Mode::Protected {
            return self.iret();
        }
        self.a.push(dword_ptr(esp + 8))?;
        self.a.popfd()?;
        self.a.retf_1(4)?;
        Ok(())
    }

    /// Assembles for loading at [`addr::CODE`].
    pub fn assemble(mut self) -> Result<Assembled, CaseFailure> {
        // Real mode runs with CS base = CODE, so offsets start at 0.
        let ip = if self.mode == Mode::Real {
            0
        } else {
            addr::CODE
        };
        let res = self
            .a
            .assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        let mut vectors = Vec::new();
        for (v, label) in &self.vectors {
            vectors.push((*v, res.label_ip(label)? - ip));
        }
        let code = res.inner.code_buffer;
        Ok(Assembled {
            mode: self.mode,
            code,
            vectors,
            checks: self.checks,
            skips: self.skips,
        })
    }
}

/// The low-memory image a guest needs besides its code and what the boot
/// crate writes: IVT or IDT gates and the IDTR pseudo-descriptor.
pub fn memory_image(g: &Assembled) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let (idt_base, idt_limit) = match g.mode {
        Mode::Real => (0u64, 0x3ffu16),
        Mode::Protected => (addr::IDT, 256 * 8 - 1),
        Mode::Long => (addr::IDT, 256 * 16 - 1),
    };
    let mut idtr = idt_limit.to_le_bytes().to_vec();
    idtr.extend_from_slice(&idt_base.to_le_bytes());
    out.push((addr::IDTR, idtr));
    if g.mode == Mode::Real {
        let flat_data = 0x00cf_9200_0000_ffff_u64;
        let gdt: Vec<u8> = [0, flat_data]
            .iter()
            .flat_map(|e: &u64| e.to_le_bytes())
            .collect();
        let mut gdtr = 15u16.to_le_bytes().to_vec();
        gdtr.extend_from_slice(&(addr::BIG_REAL_GDT as u32).to_le_bytes());
        out.push((addr::BIG_REAL_GDT, gdt));
        out.push((addr::BIG_REAL_GDTR, gdtr));
    }
    for (v, off) in &g.vectors {
        let v = u64::from(*v);
        let target = addr::CODE + off;
        match g.mode {
            Mode::Real => {
                let mut e = (*off as u16).to_le_bytes().to_vec();
                e.extend_from_slice(&addr::REAL_CS.to_le_bytes());
                out.push((v * 4, e));
            }
            Mode::Protected => {
                let e = gate_low(target, entry::CODE32_SELECTOR);
                out.push((addr::IDT + v * 8, e.to_le_bytes().to_vec()));
            }
            Mode::Long => {
                let mut e = gate_low(target, entry::CODE64_SELECTOR)
                    .to_le_bytes()
                    .to_vec();
                e.extend_from_slice(&(target >> 32).to_le_bytes());
                out.push((addr::IDT + v * 16, e));
            }
        }
    }
    out
}

/// The low 8 bytes of a present ring-0 interrupt gate.
fn gate_low(target: u64, selector: u16) -> u64 {
    (target & 0xffff)
        | (u64::from(selector) << 16)
        | (0x8e << 40)
        | (((target >> 16) & 0xffff) << 48)
}

/// Highest address used by the code (for sizing RAM).
pub fn image_end(g: &Assembled) -> u64 {
    addr::CODE + g.code.len() as u64
}

/// The boot vCPU's entry state for a guest in `mode`, from the boot crate's
/// builders (which also write the GDT and, for long mode, page tables).
pub fn entry_state(mem: &GuestMemoryMmap, mode: Mode) -> Result<CpuState, CaseFailure> {
    Ok(match mode {
        Mode::Real => entry::real_mode_state(addr::REAL_CS, 0),
        Mode::Protected => entry::protected_mode_state(mem, addr::CODE as u32, 0)?,
        Mode::Long => entry::long_mode_state(mem, addr::CODE, 0)?,
    })
}
