//! A fake vCPU and device shared by the emulator tests.
#![allow(dead_code)]

use krypton::emulator::{
    CpuMode, EmulatorCpu, EmulatorError, Register, emulate_mmio, gpr_mut, mode_of,
};
use krypton::hv::{IoOp, Regs, Segment, Sregs};
use std::collections::HashMap;

/// Guest-physical base of the fake RAM.
pub const RAM_BASE: u64 = 0x10_0000;
/// Size of the fake RAM.
pub const RAM_SIZE: usize = 0x4000;
/// Guest-physical base of the fake device.
pub const MMIO: u64 = 0xd000_0000;

/// One device access: (address, bytes, is_write).
pub type Access = (u64, Vec<u8>, bool);

/// Registers, a RAM window and a linear→physical offset.
#[derive(Debug, Clone)]
pub struct FakeCpu {
    pub regs: Regs,
    pub sregs: Sregs,
    pub ram: Vec<u8>,
    /// linear = physical + virt_offset for every mapped address.
    pub virt_offset: u64,
    pub translations: usize,
}

/// Segments for a mode.
pub fn sregs_for(mode: CpuMode) -> Sregs {
    let seg = |l: bool, db: bool| Segment {
        limit: 0xffff_ffff,
        present: true,
        s: true,
        l,
        db,
        ..Default::default()
    };
    let mut s = Sregs::default();
    match mode {
        CpuMode::Bits64 => {
            s.cr0 = 0x8000_0001;
            s.efer = 0x500;
            s.cs = seg(true, false);
        }
        CpuMode::Bits32 => {
            s.cr0 = 1;
            s.cs = seg(false, true);
        }
        CpuMode::Bits16 => s.cs = seg(false, false),
    }
    s.ds = seg(false, true);
    s.es = s.ds;
    s.ss = s.ds;
    s.fs = s.ds;
    s.gs = s.ds;
    s
}

impl FakeCpu {
    pub fn new(mode: CpuMode) -> Self {
        let regs = Regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        let cpu = FakeCpu {
            regs,
            sregs: sregs_for(mode),
            ram: vec![0; RAM_SIZE],
            virt_offset: 0,
            translations: 0,
        };
        assert_eq!(cpu.mode(), mode);
        cpu
    }

    /// Sets a 64-bit register.
    pub fn set(&mut self, r: Register, v: u64) -> &mut Self {
        *gpr_mut(&mut self.regs, r).expect("64-bit GPR") = v;
        self
    }

    /// Gets a 64-bit register.
    pub fn get(&self, r: Register) -> u64 {
        self.reg(r)
    }

    fn ram_range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = usize::try_from(gpa.checked_sub(RAM_BASE)?).ok()?;
        (off + len <= self.ram.len()).then_some(off..off + len)
    }
}

impl EmulatorCpu for FakeCpu {
    fn mode(&self) -> CpuMode {
        mode_of(&self.regs, &self.sregs)
    }
    fn reg(&self, r: Register) -> u64 {
        let mut regs = self.regs;
        *gpr_mut(&mut regs, r).expect("emulator asked for a 64-bit GPR")
    }
    fn set_reg(&mut self, r: Register, value: u64) {
        *gpr_mut(&mut self.regs, r).expect("emulator set a 64-bit GPR") = value;
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
        match seg {
            Register::ES => self.sregs.es.base,
            Register::CS => self.sregs.cs.base,
            Register::SS => self.sregs.ss.base,
            Register::DS => self.sregs.ds.base,
            Register::FS => self.sregs.fs.base,
            Register::GS => self.sregs.gs.base,
            other => panic!("segment_base({other:?})"),
        }
    }
    fn translate(&mut self, gva: u64, _write: bool) -> Result<u64, EmulatorError> {
        self.translations += 1;
        gva.checked_sub(self.virt_offset)
            .ok_or(EmulatorError::Translate(gva))
    }
    fn read_ram(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.ram_range(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.ram[r]);
                true
            }
            None => false,
        }
    }
    fn write_ram(&mut self, gpa: u64, buf: &[u8]) -> bool {
        match self.ram_range(gpa, buf.len()) {
            Some(r) => {
                self.ram[r].copy_from_slice(buf);
                true
            }
            None => false,
        }
    }
}

/// A device whose unwritten bytes read as `pattern(address)`.
#[derive(Debug, Default)]
pub struct Dev {
    pub mem: HashMap<u64, u8>,
    pub log: Vec<Access>,
}

/// The byte an unwritten device address reads as.
pub fn pattern(addr: u64) -> u8 {
    (addr as u8).wrapping_mul(7) ^ 0xa5
}

/// `pattern` over `len` bytes at `addr`, little-endian.
pub fn pattern_value(addr: u64, len: usize) -> u64 {
    (0..len).fold(0u64, |v, i| {
        v | (u64::from(pattern(addr + i as u64)) << (8 * i))
    })
}

impl Dev {
    pub fn handle(&mut self, addr: u64, op: IoOp<'_>) {
        match op {
            IoOp::Read(buf) => {
                for (i, b) in buf.iter_mut().enumerate() {
                    let a = addr + i as u64;
                    *b = self.mem.get(&a).copied().unwrap_or_else(|| pattern(a));
                }
                self.log.push((addr, buf.to_vec(), false));
            }
            IoOp::Write(buf) => {
                for (i, b) in buf.iter().enumerate() {
                    self.mem.insert(addr + i as u64, *b);
                }
                self.log.push((addr, buf.to_vec(), true));
            }
        }
    }
}

/// Emulates `bytes` faulting at `gpa`; returns the new RIP (or error) and
/// the device log.
pub fn run(cpu: &mut FakeCpu, bytes: &[u8], gpa: u64) -> (Result<u64, EmulatorError>, Vec<Access>) {
    let mut dev = Dev::default();
    let r = emulate_mmio(cpu, bytes, gpa, &mut |a, op| dev.handle(a, op));
    (r, dev.log)
}

/// Like `run` but expects success and returns the log.
pub fn run_ok(cpu: &mut FakeCpu, bytes: &[u8], gpa: u64) -> Vec<Access> {
    let rip = cpu.regs.rip;
    let (r, log) = run(cpu, bytes, gpa);
    let next = r.unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    assert!(
        next > rip && next <= rip + 15,
        "{bytes:02x?}: next rip {next:#x}"
    );
    cpu.regs.rip = next;
    log
}
