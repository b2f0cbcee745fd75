//! The benchmark's stub guests: 32-bit code assembled with iced-x86 and
//! wrapped in a minimal ELF64 with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY), so
//! both `krypton boot` and QEMU's `-kernel` start it in 32-bit protected
//! mode with paging off.

use anyhow::{Context, Result};
use iced_x86::code_asm::*;
use std::path::Path;

/// Where the code is loaded and entered (1 MiB, the usual PVH load address).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// isa-debug-exit (QEMU) / debug-exit (Krypton) port.
const DEBUG_EXIT_PORT: u32 = 0xf4;
/// A port neither VMM claims, for the PIO round-trip loop.
pub const UNCLAIMED_PORT: u32 = 0x2e0;
/// XEN_ELFNOTE_PHYS32_ENTRY.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Which stub to build.
#[derive(Debug, Clone, Copy)]
pub enum Stub {
    /// Writes 0 to the debug-exit port at once (status 1).
    Exit,
    /// `count` byte writes to [`UNCLAIMED_PORT`], then exits like `Exit`.
    PioLoop(u32),
    /// `hlt` forever with interrupts off: an idle guest.
    Idle,
}

/// Assembles the stub's 32-bit code for [`LOAD_ADDR`].
pub fn code(stub: Stub) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32)?;
    match stub {
        Stub::Exit => {}
        Stub::PioLoop(count) => {
            let mut top = a.create_label();
            let mut done = a.create_label();
            a.mov(ecx, count)?;
            a.mov(edx, UNCLAIMED_PORT)?;
            a.test(ecx, ecx)?;
            a.jz(done)?;
            a.set_label(&mut top)?;
            a.out(dx, al)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.set_label(&mut done)?;
        }
        Stub::Idle => {
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.hlt()?;
            a.jmp(top)?;
        }
    }
    a.xor(eax, eax)?;
    a.out(DEBUG_EXIT_PORT, eax)?;
    let mut forever = a.create_label();
    a.set_label(&mut forever)?;
    a.hlt()?;
    a.jmp(forever)?;
    Ok(a.assemble(LOAD_ADDR)?)
}

fn push16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// A program header.
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    addr: u64,
    size: u64,
    align: u64,
}

fn push_phdr(v: &mut Vec<u8>, p: &Phdr) {
    push32(v, p.p_type);
    push32(v, p.flags);
    push64(v, p.offset);
    push64(v, p.addr); // p_vaddr
    push64(v, p.addr); // p_paddr
    push64(v, p.size); // p_filesz
    push64(v, p.size); // p_memsz
    push64(v, p.align);
}

/// An ELF64 executable: one PT_LOAD with `code` at [`LOAD_ADDR`] (file
/// offset 0x1000), one PT_NOTE with the PVH entry point = `LOAD_ADDR`.
pub fn elf(code: &[u8]) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    const CODE_OFF: u64 = 0x1000;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    push32(&mut note, 4); // namesz ("Xen\0")
    push32(&mut note, 4); // descsz (32-bit entry point)
    push32(&mut note, XEN_ELFNOTE_PHYS32_ENTRY);
    note.extend_from_slice(b"Xen\0");
    push32(&mut note, LOAD_ADDR as u32);

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV ABI
    f.extend_from_slice(&[0; 8]);
    push16(&mut f, 2); // ET_EXEC
    push16(&mut f, 62); // EM_X86_64
    push32(&mut f, 1); // e_version
    push64(&mut f, LOAD_ADDR); // e_entry
    push64(&mut f, EHDR); // e_phoff
    push64(&mut f, 0); // e_shoff
    push32(&mut f, 0); // e_flags
    push16(&mut f, EHDR as u16);
    push16(&mut f, PHDR as u16);
    push16(&mut f, 2); // e_phnum
    push16(&mut f, 64); // e_shentsize
    push16(&mut f, 0); // e_shnum
    push16(&mut f, 0); // e_shstrndx
    let load = Phdr {
        p_type: 1,
        flags: 5,
        offset: CODE_OFF,
        addr: LOAD_ADDR,
        size: code.len() as u64,
        align: 0x1000,
    };
    push_phdr(&mut f, &load);
    let pnote = Phdr {
        p_type: 4,
        flags: 4,
        offset: note_off,
        addr: 0,
        size: note.len() as u64,
        align: 4,
    };
    push_phdr(&mut f, &pnote);
    f.extend_from_slice(&note);
    f.resize(CODE_OFF as usize, 0);
    f.extend_from_slice(code);
    f
}

/// Builds `stub` and writes it to `path`.
pub fn write(stub: Stub, path: &Path) -> Result<()> {
    let image = elf(&code(stub)?);
    std::fs::write(path, image).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    #[test]
    fn elf_has_a_pvh_note_pointing_at_the_code() {
        let code = code(Stub::Exit).expect("asm");
        let f = elf(&code);
        assert_eq!(&f[..4], b"\x7fELF");
        // Second program header is the note; follow it.
        let ph = 64 + 56;
        assert_eq!(u32_at(&f, ph), 4, "PT_NOTE");
        let off = u64::from_le_bytes(f[ph + 8..ph + 16].try_into().expect("8 bytes")) as usize;
        assert_eq!(u32_at(&f, off + 8), XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(&f[off + 12..off + 16], b"Xen\0");
        assert_eq!(u64::from(u32_at(&f, off + 16)), LOAD_ADDR);
        assert_eq!(&f[0x1000..], &code[..]);
    }

    #[test]
    fn pio_loop_writes_the_port_then_exits() {
        let code = code(Stub::PioLoop(5)).expect("asm");
        let m: Vec<Mnemonic> = Decoder::with_ip(32, &code, LOAD_ADDR, DecoderOptions::NONE)
            .into_iter()
            .map(|i| i.mnemonic())
            .take_while(|m| *m != Mnemonic::Hlt)
            .collect();
        assert_eq!(m.iter().filter(|x| **x == Mnemonic::Out).count(), 2);
        assert!(m.contains(&Mnemonic::Jne));
    }
}
