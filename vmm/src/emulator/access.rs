//! Memory accesses during emulation: linear → physical translation (with
//! the exit's GPA as a hint), page splitting, RAM versus MMIO routing.

use super::{EmulatorCpu, EmulatorError};
use crate::hv::IoOp;

const PAGE: u64 = 4096;
const CACHE: usize = 4;

/// Routes one instruction's memory accesses.
pub(crate) struct Mem<'a, 'f> {
    mmio: &'a mut (dyn FnMut(u64, IoOp<'_>) + 'f),
    /// (linear page, physical page) pairs already known.
    pages: Vec<(u64, u64)>,
}

impl<'a, 'f> Mem<'a, 'f> {
    pub(crate) fn new(mmio: &'a mut (dyn FnMut(u64, IoOp<'_>) + 'f)) -> Self {
        Mem {
            mmio,
            pages: Vec::with_capacity(CACHE),
        }
    }

    /// Records that linear `la` is physical `gpa` (the faulting access) when
    /// their page offsets agree, so the common case needs no translation.
    pub(crate) fn hint(&mut self, la: u64, gpa: u64) {
        if la % PAGE == gpa % PAGE {
            self.remember(la, gpa);
        }
    }

    fn remember(&mut self, la: u64, gpa: u64) {
        if self.pages.len() == CACHE {
            self.pages.remove(0);
        }
        self.pages.push((la & !(PAGE - 1), gpa & !(PAGE - 1)));
    }

    fn gpa(
        &mut self,
        cpu: &mut dyn EmulatorCpu,
        la: u64,
        write: bool,
    ) -> Result<u64, EmulatorError> {
        let page = la & !(PAGE - 1);
        if let Some((_, g)) = self.pages.iter().find(|(l, _)| *l == page) {
            return Ok(g | (la % PAGE));
        }
        let gpa = cpu.translate(la, write)?;
        self.remember(la, gpa);
        Ok(gpa)
    }

    /// Splits `[la, la+len)` at page boundaries into (linear, offset, len).
    fn chunks(la: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let first = ((PAGE - la % PAGE) as usize).min(len);
        [
            (la, 0, first),
            (la.wrapping_add(first as u64), first, len - first),
        ]
        .into_iter()
        .filter(|c| c.2 > 0)
    }

    /// Reads `buf.len()` bytes at linear `la`.
    pub(crate) fn read(
        &mut self,
        cpu: &mut dyn EmulatorCpu,
        la: u64,
        buf: &mut [u8],
    ) -> Result<(), EmulatorError> {
        for (l, off, n) in Self::chunks(la, buf.len()) {
            let gpa = self.gpa(cpu, l, false)?;
            let part = &mut buf[off..off + n];
            if !cpu.read_ram(gpa, part) {
                (self.mmio)(gpa, IoOp::Read(part));
            }
        }
        Ok(())
    }

    /// Writes `buf` at linear `la`.
    pub(crate) fn write(
        &mut self,
        cpu: &mut dyn EmulatorCpu,
        la: u64,
        buf: &[u8],
    ) -> Result<(), EmulatorError> {
        for (l, off, n) in Self::chunks(la, buf.len()) {
            let gpa = self.gpa(cpu, l, true)?;
            let part = &buf[off..off + n];
            if !cpu.write_ram(gpa, part) {
                (self.mmio)(gpa, IoOp::Write(part));
            }
        }
        Ok(())
    }

    /// Reads a `size`-byte little-endian value.
    pub(crate) fn read_value(
        &mut self,
        cpu: &mut dyn EmulatorCpu,
        la: u64,
        size: usize,
    ) -> Result<u64, EmulatorError> {
        let mut b = [0u8; 8];
        self.read(cpu, la, &mut b[..size.min(8)])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes the low `size` bytes of `value`.
    pub(crate) fn write_value(
        &mut self,
        cpu: &mut dyn EmulatorCpu,
        la: u64,
        size: usize,
        value: u64,
    ) -> Result<(), EmulatorError> {
        self.write(cpu, la, &value.to_le_bytes()[..size.min(8)])
    }
}
