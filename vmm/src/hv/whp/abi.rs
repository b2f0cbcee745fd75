//! The parts of the WHP ABI we use, as plain constants and byte-offset
//! parsers, so they compile and are tested on every host. Values are those
//! of the Windows SDK (`WinHvPlatformDefs.h`, as generated in windows-sys
//! 0.61); `sys.rs` asserts the layouts against windows-sys on Windows.

/// A `WHV_REGISTER_VALUE` (16 bytes) in a 16-byte-aligned wrapper: the SDK
/// declares the union `DECLSPEC_ALIGN(16)`, windows-sys generates align 8,
/// and unaligned arrays crash inside winhvplatform.dll on some builds.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegValue(pub [u64; 2]);

impl RegValue {
    /// A 64-bit register value.
    pub fn u64(v: u64) -> Self {
        RegValue([v, 0])
    }
}

/// `WHV_REGISTER_NAME` values.
#[allow(missing_docs)]
pub mod reg {
    pub const RAX: i32 = 0;
    pub const RIP: i32 = 16;
    pub const RFLAGS: i32 = 17;
    pub const ES: i32 = 18;
    pub const CS: i32 = 19;
    pub const SS: i32 = 20;
    pub const DS: i32 = 21;
    pub const FS: i32 = 22;
    pub const GS: i32 = 23;
    pub const LDTR: i32 = 24;
    pub const TR: i32 = 25;
    pub const IDTR: i32 = 26;
    pub const GDTR: i32 = 27;
    pub const CR0: i32 = 28;
    pub const CR2: i32 = 29;
    pub const CR3: i32 = 30;
    pub const CR4: i32 = 31;
    pub const CR8: i32 = 32;
    pub const TSC: i32 = 0x2000;
    pub const EFER: i32 = 0x2001;
    pub const KERNEL_GS_BASE: i32 = 0x2002;
    pub const APIC_BASE: i32 = 0x2003;
    pub const PAT: i32 = 0x2004;
    pub const SYSENTER_CS: i32 = 0x2005;
    pub const SYSENTER_EIP: i32 = 0x2006;
    pub const SYSENTER_ESP: i32 = 0x2007;
    pub const STAR: i32 = 0x2008;
    pub const LSTAR: i32 = 0x2009;
    pub const CSTAR: i32 = 0x200a;
    pub const SFMASK: i32 = 0x200b;
    pub const MTRR_DEF_TYPE: i32 = 0x200e;
    pub const DR0: i32 = 33;
    pub const DR1: i32 = 34;
    pub const DR2: i32 = 35;
    pub const DR3: i32 = 36;
    pub const DR6: i32 = 37;
    pub const DR7: i32 = 38;
    pub const XCR0: i32 = 39;
    pub const TSC_AUX: i32 = 0x207b;
    pub const PENDING_INTERRUPTION: i32 = 0x8000_0000_u32 as i32;
    pub const INTERRUPT_STATE: i32 = 0x8000_0001_u32 as i32;
    pub const PENDING_EVENT: i32 = 0x8000_0002_u32 as i32;
    pub const DELIVERABILITY_NOTIFICATIONS: i32 = 0x8000_0004_u32 as i32;
    pub const INTERNAL_ACTIVITY_STATE: i32 = 0x8000_0005_u32 as i32;
}

/// `WHV_RUN_VP_EXIT_REASON` values.
#[allow(missing_docs)]
pub mod exit {
    pub const NONE: u32 = 0;
    pub const MEMORY_ACCESS: u32 = 1;
    pub const IO_PORT_ACCESS: u32 = 2;
    pub const UNRECOVERABLE_EXCEPTION: u32 = 4;
    pub const INVALID_VP_REGISTER_VALUE: u32 = 5;
    pub const UNSUPPORTED_FEATURE: u32 = 6;
    pub const INTERRUPT_WINDOW: u32 = 7;
    pub const HALT: u32 = 8;
    pub const APIC_EOI: u32 = 9;
    pub const MSR_ACCESS: u32 = 0x1000;
    pub const CPUID: u32 = 0x1001;
    pub const EXCEPTION: u32 = 0x1002;
    pub const CANCELED: u32 = 0x2001;
}

/// Capability and partition property codes, and property values.
#[allow(missing_docs)]
pub mod prop {
    pub const CAP_HYPERVISOR_PRESENT: i32 = 0;
    pub const CAP_PROCESSOR_CLOCK_FREQUENCY: i32 = 0x1004;
    pub const CAP_INTERRUPT_CLOCK_FREQUENCY: i32 = 0x1005;
    pub const EXTENDED_VM_EXITS: i32 = 1;
    pub const X64_MSR_EXIT_BITMAP: i32 = 5;
    pub const CPUID_EXIT_LIST: i32 = 0x1003;
    pub const CPUID_RESULT_LIST: i32 = 0x1004;
    pub const LOCAL_APIC_EMULATION_MODE: i32 = 0x1005;
    pub const PROCESSOR_COUNT: i32 = 0x1fff;
    /// `WHV_EXTENDED_VM_EXITS` bits.
    pub const EXIT_X64_CPUID: u64 = 1 << 0;
    pub const EXIT_X64_MSR: u64 = 1 << 1;
    /// `WHV_X64_MSR_EXIT_BITMAP.UnhandledMsrs`.
    pub const MSR_EXIT_UNHANDLED: u64 = 1 << 0;
    pub const LAPIC_MODE_XAPIC: u32 = 1;
    pub const MAP_READ: i32 = 1;
    pub const MAP_WRITE: i32 = 2;
    pub const MAP_EXECUTE: i32 = 4;
    pub const TRANSLATE_VALIDATE_READ: i32 = 1;
    pub const TRANSLATE_VALIDATE_WRITE: i32 = 2;
    pub const TRANSLATE_PRIVILEGE_EXEMPT: i32 = 8;
    /// `WHV_E_UNKNOWN_PROPERTY`: an older Windows without this property.
    pub const E_UNKNOWN_PROPERTY: i32 = 0x8037_0302_u32 as i32;
    /// `WHV_E_INSUFFICIENT_BUFFER`: the state buffer is too small.
    pub const E_INSUFFICIENT_BUFFER: i32 = 0x8037_0301_u32 as i32;
    /// `WHV_VIRTUAL_PROCESSOR_STATE_TYPE`: the XSAVE area.
    pub const STATE_XSAVE: i32 = 0x1001;
    /// `WHV_VIRTUAL_PROCESSOR_STATE_TYPE`: the local APIC (InterruptControllerState2).
    pub const STATE_LAPIC: i32 = 0x1000;
}

/// Size of `WHV_RUN_VP_EXIT_CONTEXT`.
pub const EXIT_CONTEXT_SIZE: usize = 224;

/// Byte offsets inside `WHV_RUN_VP_EXIT_CONTEXT`.
pub mod off {
    /// `VpContext.ExecutionState` (u16).
    pub const EXECUTION_STATE: usize = 8;
    /// `VpContext` instruction length (low 4 bits) / CR8 byte.
    pub const INSTRUCTION_LENGTH: usize = 10;
    /// `VpContext.Cs` (16-byte segment).
    pub const CS: usize = 16;
    /// `VpContext.Rip`.
    pub const RIP: usize = 32;
    /// `VpContext.Rflags`.
    pub const RFLAGS: usize = 40;
    /// Start of the reason-specific union.
    pub const UNION: usize = 48;
}

/// The exit context buffer handed to `WHvRunVirtualProcessor`.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy)]
pub struct ExitBuf(pub [u8; EXIT_CONTEXT_SIZE]);

impl Default for ExitBuf {
    fn default() -> Self {
        ExitBuf([0; EXIT_CONTEXT_SIZE])
    }
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        out.copy_from_slice(s);
    }
    out
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(le(b, at))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(le(b, at))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(le(b, at))
}

/// A `WHV_X64_SEGMENT_REGISTER`: base, limit, selector, attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WhvSegment {
    /// Base.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Packed attributes (type, S, DPL, P, AVL, L, D/B, G).
    pub attributes: u16,
}

impl WhvSegment {
    /// From its register value.
    pub fn from_value(v: RegValue) -> Self {
        WhvSegment {
            base: v.0[0],
            limit: v.0[1] as u32,
            selector: (v.0[1] >> 32) as u16,
            attributes: (v.0[1] >> 48) as u16,
        }
    }
    /// As a register value.
    pub fn to_value(self) -> RegValue {
        RegValue([
            self.base,
            u64::from(self.limit)
                | (u64::from(self.selector) << 32)
                | (u64::from(self.attributes) << 48),
        ])
    }
    fn from_bytes(b: &[u8], at: usize) -> Self {
        WhvSegment {
            base: u64_at(b, at),
            limit: u32_at(b, at + 8),
            selector: u16_at(b, at + 12),
            attributes: u16_at(b, at + 14),
        }
    }
}

/// The common part of every exit (`WHV_VP_EXIT_CONTEXT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VpContext {
    /// `WHV_X64_VP_EXECUTION_STATE` bits (CPL 1:0, CR0.PE 2, EFER.LMA 4, ...).
    pub execution_state: u16,
    /// Length of the exiting instruction (0 if not applicable).
    pub instruction_length: u8,
    /// CS at the exit.
    pub cs: WhvSegment,
    /// RIP at the exit (of the exiting instruction).
    pub rip: u64,
    /// RFLAGS at the exit.
    pub rflags: u64,
}

impl VpContext {
    /// CR0.PE at the exit.
    pub fn cr0_pe(&self) -> bool {
        self.execution_state & (1 << 2) != 0
    }
    /// EFER.LMA at the exit.
    pub fn efer_lma(&self) -> bool {
        self.execution_state & (1 << 4) != 0
    }
    /// An event was being delivered when the exit happened.
    pub fn interruption_pending(&self) -> bool {
        self.execution_state & (1 << 6) != 0
    }
}

/// `WHV_MEMORY_ACCESS_CONTEXT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryAccess {
    /// Valid bytes in `insn`.
    pub insn_len: u8,
    /// The instruction bytes the hypervisor fetched.
    pub insn: [u8; 16],
    /// 0 read, 1 write, 2 execute.
    pub access_type: u8,
    /// The GPA is not mapped at all (true MMIO).
    pub gpa_unmapped: bool,
    /// `gva` is valid.
    pub gva_valid: bool,
    /// Faulting guest-physical address.
    pub gpa: u64,
    /// Faulting guest-virtual address (if `gva_valid`).
    pub gva: u64,
}

impl MemoryAccess {
    /// The instruction bytes reported (at most 16).
    pub fn insn_bytes(&self) -> &[u8] {
        &self.insn[..usize::from(self.insn_len).min(16)]
    }
}

/// `WHV_X64_IO_PORT_ACCESS_CONTEXT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoAccess {
    /// Valid bytes in `insn`.
    pub insn_len: u8,
    /// The instruction bytes.
    pub insn: [u8; 16],
    /// OUT/OUTS.
    pub is_write: bool,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// INS/OUTS.
    pub string: bool,
    /// With a REP prefix.
    pub rep: bool,
    /// Port.
    pub port: u16,
    /// RAX at the exit.
    pub rax: u64,
}

/// `WHV_X64_MSR_ACCESS_CONTEXT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsrAccess {
    /// WRMSR.
    pub is_write: bool,
    /// MSR index (ECX).
    pub msr: u32,
    /// RAX (low half of a write).
    pub rax: u64,
    /// RDX (high half of a write).
    pub rdx: u64,
}

/// `WHV_X64_CPUID_ACCESS_CONTEXT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidAccess {
    /// Leaf (EAX) and subleaf (ECX).
    pub leaf: u32,
    /// Subleaf.
    pub subleaf: u32,
    /// The hypervisor's answer: EAX, EBX, ECX, EDX.
    pub default: [u32; 4],
}

/// A decoded exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// MMIO (or an access to unmapped memory).
    Memory(MemoryAccess),
    /// Port I/O.
    Io(IoAccess),
    /// RDMSR/WRMSR the hypervisor does not handle.
    Msr(MsrAccess),
    /// CPUID for a leaf in the exit list.
    Cpuid(CpuidAccess),
    /// EOI of a level-triggered vector.
    ApicEoi(u8),
    /// HLT (only without the in-hypervisor APIC).
    Halt,
    /// WHvCancelRunVirtualProcessor.
    Canceled,
    /// Interrupt window opened.
    InterruptWindow,
    /// Triple fault and similar.
    UnrecoverableException,
    /// The register state is invalid.
    InvalidVpRegisterValue,
    /// The guest used a feature WHP does not support.
    UnsupportedFeature,
    /// Any other reason (raw value).
    Other(u32),
}

/// Parses an exit context buffer.
pub fn parse_exit(b: &[u8]) -> (VpContext, Exit) {
    let vp = VpContext {
        execution_state: u16_at(b, off::EXECUTION_STATE),
        instruction_length: le::<1>(b, off::INSTRUCTION_LENGTH)[0] & 0xf,
        cs: WhvSegment::from_bytes(b, off::CS),
        rip: u64_at(b, off::RIP),
        rflags: u64_at(b, off::RFLAGS),
    };
    let u = off::UNION;
    let exit = match u32_at(b, 0) {
        exit::MEMORY_ACCESS => {
            let info = u32_at(b, u + 20);
            Exit::Memory(MemoryAccess {
                insn_len: le::<1>(b, u)[0],
                insn: le(b, u + 4),
                access_type: (info & 3) as u8,
                gpa_unmapped: info & 4 != 0,
                gva_valid: info & 8 != 0,
                gpa: u64_at(b, u + 24),
                gva: u64_at(b, u + 32),
            })
        }
        exit::IO_PORT_ACCESS => {
            let info = u32_at(b, u + 20);
            Exit::Io(IoAccess {
                insn_len: le::<1>(b, u)[0],
                insn: le(b, u + 4),
                is_write: info & 1 != 0,
                size: ((info >> 1) & 7) as u8,
                string: info & (1 << 4) != 0,
                rep: info & (1 << 5) != 0,
                port: u16_at(b, u + 24),
                rax: u64_at(b, u + 32),
            })
        }
        exit::MSR_ACCESS => Exit::Msr(MsrAccess {
            is_write: u32_at(b, u) & 1 != 0,
            msr: u32_at(b, u + 4),
            rax: u64_at(b, u + 8),
            rdx: u64_at(b, u + 16),
        }),
        exit::CPUID => Exit::Cpuid(CpuidAccess {
            leaf: u64_at(b, u) as u32,
            subleaf: u64_at(b, u + 8) as u32,
            // DefaultResultRax, Rcx, Rdx, Rbx are at 32, 40, 48, 56.
            default: [
                u64_at(b, u + 32) as u32,
                u64_at(b, u + 56) as u32,
                u64_at(b, u + 40) as u32,
                u64_at(b, u + 48) as u32,
            ],
        }),
        exit::APIC_EOI => Exit::ApicEoi(u32_at(b, u) as u8),
        exit::HALT => Exit::Halt,
        exit::CANCELED => Exit::Canceled,
        exit::INTERRUPT_WINDOW => Exit::InterruptWindow,
        exit::UNRECOVERABLE_EXCEPTION => Exit::UnrecoverableException,
        exit::INVALID_VP_REGISTER_VALUE => Exit::InvalidVpRegisterValue,
        exit::UNSUPPORTED_FEATURE => Exit::UnsupportedFeature,
        other => Exit::Other(other),
    };
    (vp, exit)
}

/// RAX after an IN of `size` bytes returning `data` (AL/AX merge, EAX
/// zero-extends, as on hardware).
pub fn rax_after_in(rax: u64, size: u8, data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = usize::from(size).min(4).min(data.len());
    b[..n].copy_from_slice(&data[..n]);
    let v = u64::from_le_bytes(b);
    match size {
        1 => (rax & !0xff) | (v & 0xff),
        2 => (rax & !0xffff) | (v & 0xffff),
        _ => v & 0xffff_ffff,
    }
}
