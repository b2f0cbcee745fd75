//! Test helpers: guest memory and hand-built ELF images.
#![allow(dead_code)]

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory laid out as `layout::ram_regions(size)`.
pub fn mem(size: u64) -> GuestMemoryMmap {
    let ranges: Vec<_> = crate::layout::ram_regions(size)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("test memory")
}

pub fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
    v
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

/// A minimal ELF executable: one PT_LOAD of `code` at `paddr` with `bss`
/// extra zero bytes, optionally a PT_NOTE with a Xen PHYS32_ENTRY note
/// (`note_desc` bytes, 4 or 8 long).
pub struct ElfSpec<'a> {
    pub is64: bool,
    pub entry: u64,
    pub paddr: u64,
    pub code: &'a [u8],
    pub bss: u64,
    pub note_desc: Option<Vec<u8>>,
}

pub fn build_elf(s: &ElfSpec<'_>) -> Vec<u8> {
    let (ehsize, phsize) = if s.is64 { (64usize, 56usize) } else { (52, 32) };
    let phnum = if s.note_desc.is_some() { 2 } else { 1 };
    let mut note = Vec::new();
    if let Some(desc) = &s.note_desc {
        // A decoy note first, as vmlinux has several.
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&1u32.to_le_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&[1, 2, 3, 4]);
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(desc);
        while note.len() % 4 != 0 {
            note.push(0);
        }
    }
    let phoff = ehsize;
    let note_off = phoff + phnum * phsize;
    let code_off = note_off + note.len();
    let mut b = vec![0u8; ehsize];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = if s.is64 { 2 } else { 1 };
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&(if s.is64 { 62u16 } else { 3 }).to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    let ph = |p_type: u32, off: usize, paddr: u64, filesz: u64, memsz: u64| {
        let mut e = vec![0u8; phsize];
        e[..4].copy_from_slice(&p_type.to_le_bytes());
        if s.is64 {
            e[8..16].copy_from_slice(&(off as u64).to_le_bytes());
            e[16..24].copy_from_slice(&paddr.to_le_bytes());
            e[24..32].copy_from_slice(&paddr.to_le_bytes());
            e[32..40].copy_from_slice(&filesz.to_le_bytes());
            e[40..48].copy_from_slice(&memsz.to_le_bytes());
        } else {
            e[4..8].copy_from_slice(&(off as u32).to_le_bytes());
            e[8..12].copy_from_slice(&(paddr as u32).to_le_bytes());
            e[12..16].copy_from_slice(&(paddr as u32).to_le_bytes());
            e[16..20].copy_from_slice(&(filesz as u32).to_le_bytes());
            e[20..24].copy_from_slice(&(memsz as u32).to_le_bytes());
        }
        e
    };
    let load = ph(
        1,
        code_off,
        s.paddr,
        s.code.len() as u64,
        s.code.len() as u64 + s.bss,
    );
    let notes = s
        .note_desc
        .as_ref()
        .map(|_| ph(4, note_off, 0, note.len() as u64, note.len() as u64));
    if s.is64 {
        b[24..32].copy_from_slice(&s.entry.to_le_bytes());
        b[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(ehsize as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(phsize as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    } else {
        b[24..28].copy_from_slice(&(s.entry as u32).to_le_bytes());
        b[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
        b[40..42].copy_from_slice(&(ehsize as u16).to_le_bytes());
        b[42..44].copy_from_slice(&(phsize as u16).to_le_bytes());
        b[44..46].copy_from_slice(&(phnum as u16).to_le_bytes());
    }
    b.extend_from_slice(&load);
    if let Some(n) = notes {
        b.extend_from_slice(&n);
    }
    b.extend_from_slice(&note);
    b.extend_from_slice(s.code);
    b
}

/// Fields of a synthetic bzImage.
pub struct BzSpec {
    pub setup_sects: u8,
    pub syssize_paras: u32,
    pub version: u16,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub init_size: u32,
    pub initrd_addr_max: u32,
}

impl Default for BzSpec {
    fn default() -> Self {
        BzSpec {
            setup_sects: 2,
            syssize_paras: 64,
            version: 0x020f,
            xloadflags: 0x3,
            cmdline_size: 2047,
            init_size: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
        }
    }
}

/// A bzImage with a real-looking setup header and a patterned payload.
pub fn build_bzimage(s: &BzSpec) -> Vec<u8> {
    let setup = (usize::from(s.setup_sects) + 1) * 512;
    let mut b = vec![0u8; setup];
    b[0x1f1] = s.setup_sects;
    b[0x1f4..0x1f8].copy_from_slice(&s.syssize_paras.to_le_bytes());
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&s.version.to_le_bytes());
    b[0x211] = 0x01; // LOADED_HIGH
    b[0x22c..0x230].copy_from_slice(&s.initrd_addr_max.to_le_bytes());
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    b[0x234] = 1; // relocatable
    b[0x236..0x238].copy_from_slice(&s.xloadflags.to_le_bytes());
    b[0x238..0x23c].copy_from_slice(&s.cmdline_size.to_le_bytes());
    b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    b[0x260..0x264].copy_from_slice(&s.init_size.to_le_bytes());
    b.extend((0..s.syssize_paras as usize * 16).map(|i| (i % 251) as u8));
    b
}
