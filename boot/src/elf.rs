//! A bounded ELF parser for kernels and test guests: 32- and 64-bit
//! little-endian x86 executables, their PT_LOAD segments and the PVH entry
//! note. Every offset is checked; malformed input yields an [`ElfError`].

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH 32-bit entry point note type.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Most program headers accepted (vmlinux has about 5).
pub const MAX_PHDRS: usize = 256;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Why an ELF image was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the header or a table it points to.
    #[error("image truncated: {what} needs bytes up to {need}, image has {have}")]
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// Not an ELF at all.
    #[error("no ELF magic")]
    BadMagic,
    /// Unsupported class/endianness/machine/type combination.
    #[error("unsupported ELF: {0}")]
    Unsupported(&'static str),
    /// Program-header table is malformed.
    #[error("bad program header table: {0}")]
    BadPhdrs(&'static str),
    /// A segment's sizes are inconsistent.
    #[error("segment {index}: {reason}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// No PT_LOAD segment.
    #[error("no loadable segment")]
    NoLoadSegments,
    /// The PVH note is malformed.
    #[error("malformed PVH entry note")]
    BadPvhNote,
}

/// ELF class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    /// ELFCLASS32, EM_386.
    Elf32,
    /// ELFCLASS64, EM_X86_64.
    Elf64,
}

/// One PT_LOAD segment (validated: `offset + filesz` is inside the image,
/// `filesz <= memsz`, `paddr + memsz` does not overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Guest physical load address (p_paddr).
    pub paddr: u64,
    /// Offset of the file bytes in the image.
    pub offset: u64,
    /// Bytes copied from the image.
    pub filesz: u64,
    /// Bytes occupied in memory (the rest is zeroed).
    pub memsz: u64,
}

/// A parsed ELF executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    /// 32- or 64-bit.
    pub class: ElfClass,
    /// e_entry.
    pub entry: u64,
    /// PT_LOAD segments with a non-zero memory size, in header order.
    pub segments: Vec<LoadSegment>,
    /// PVH 32-bit entry (XEN_ELFNOTE_PHYS32_ENTRY), if present.
    pub pvh_entry: Option<u32>,
}

impl ElfImage {
    /// One past the highest byte any segment occupies.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap_or(0)
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn bytes(&self, what: &'static str, off: u64, len: u64) -> Result<&[u8], ElfError> {
        let have = self.b.len() as u64;
        let end = off.checked_add(len).ok_or(ElfError::Truncated {
            what,
            need: u64::MAX,
            have,
        })?;
        if end > have {
            return Err(ElfError::Truncated {
                what,
                need: end,
                have,
            });
        }
        // Both bounds are <= len, checked above.
        Ok(&self.b[off as usize..end as usize])
    }
    fn u16(&self, what: &'static str, off: u64) -> Result<u16, ElfError> {
        let s = self.bytes(what, off, 2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&self, what: &'static str, off: u64) -> Result<u32, ElfError> {
        let s = self.bytes(what, off, 4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&self, what: &'static str, off: u64) -> Result<u64, ElfError> {
        let s = self.bytes(what, off, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// A 32- or 64-bit word depending on the class.
    fn word(&self, class: ElfClass, what: &'static str, off: u64) -> Result<u64, ElfError> {
        match class {
            ElfClass::Elf32 => self.u32(what, off).map(u64::from),
            ElfClass::Elf64 => self.u64(what, off),
        }
    }
}

/// True if `bytes` starts with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// Parses and validates an x86 ELF executable.
pub fn parse(bytes: &[u8]) -> Result<ElfImage, ElfError> {
    let r = Reader { b: bytes };
    let ident = r.bytes("ELF identification", 0, 16)?;
    if !is_elf(ident) {
        return Err(ElfError::BadMagic);
    }
    let class = match ident[4] {
        1 => ElfClass::Elf32,
        2 => ElfClass::Elf64,
        _ => return Err(ElfError::Unsupported("unknown ELF class")),
    };
    if ident[5] != 1 {
        return Err(ElfError::Unsupported("not little-endian"));
    }
    let ehdr_size = if class == ElfClass::Elf32 { 52 } else { 64 };
    r.bytes("ELF header", 0, ehdr_size)?;
    if r.u16("e_type", 16)? != 2 {
        return Err(ElfError::Unsupported("not an executable (ET_EXEC)"));
    }
    let machine = r.u16("e_machine", 18)?;
    match (class, machine) {
        (ElfClass::Elf32, 3) | (ElfClass::Elf64, 62) => {}
        _ => {
            return Err(ElfError::Unsupported(
                "machine is not x86 / x86-64 for its class",
            ));
        }
    }
    let (entry, phoff, phentsize_off, phnum_off, want_phentsize) = match class {
        ElfClass::Elf32 => (
            r.word(class, "e_entry", 24)?,
            r.word(class, "e_phoff", 28)?,
            42,
            44,
            32,
        ),
        ElfClass::Elf64 => (
            r.word(class, "e_entry", 24)?,
            r.word(class, "e_phoff", 32)?,
            54,
            56,
            56,
        ),
    };
    let phentsize = u64::from(r.u16("e_phentsize", phentsize_off)?);
    let phnum = usize::from(r.u16("e_phnum", phnum_off)?);
    if phentsize != want_phentsize {
        return Err(ElfError::BadPhdrs("unexpected e_phentsize"));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(ElfError::BadPhdrs("e_phnum is 0 or too large"));
    }
    r.bytes("program header table", phoff, phentsize * phnum as u64)?;

    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for index in 0..phnum {
        let ph = phoff + index as u64 * phentsize;
        let p_type = r.u32("p_type", ph)?;
        let (offset, paddr, filesz, memsz) = match class {
            ElfClass::Elf32 => (
                u64::from(r.u32("p_offset", ph + 4)?),
                u64::from(r.u32("p_paddr", ph + 12)?),
                u64::from(r.u32("p_filesz", ph + 16)?),
                u64::from(r.u32("p_memsz", ph + 20)?),
            ),
            ElfClass::Elf64 => (
                r.u64("p_offset", ph + 8)?,
                r.u64("p_paddr", ph + 24)?,
                r.u64("p_filesz", ph + 32)?,
                r.u64("p_memsz", ph + 40)?,
            ),
        };
        match p_type {
            PT_LOAD => {
                let bad = |reason| ElfError::BadSegment { index, reason };
                if filesz > memsz {
                    return Err(bad("p_filesz exceeds p_memsz"));
                }
                if paddr.checked_add(memsz).is_none() {
                    return Err(bad("p_paddr + p_memsz overflows"));
                }
                r.bytes("segment data", offset, filesz)?;
                if memsz > 0 {
                    segments.push(LoadSegment {
                        paddr,
                        offset,
                        filesz,
                        memsz,
                    });
                }
            }
            PT_NOTE => {
                if let Some(e) = find_pvh_note(r.bytes("note segment", offset, filesz)?)? {
                    pvh_entry = Some(e);
                }
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadSegments);
    }
    Ok(ElfImage {
        class,
        entry,
        segments,
        pvh_entry,
    })
}

/// Scans one note segment for `Xen` / XEN_ELFNOTE_PHYS32_ENTRY.
fn find_pvh_note(notes: &[u8]) -> Result<Option<u32>, ElfError> {
    let r = Reader { b: notes };
    let align4 = |n: u64| n.checked_add(3).map(|v| v & !3).ok_or(ElfError::BadPvhNote);
    let mut off = 0u64;
    while off + 12 <= notes.len() as u64 {
        let namesz = u64::from(r.u32("note", off)?);
        let descsz = u64::from(r.u32("note", off + 4)?);
        let n_type = r.u32("note", off + 8)?;
        let name_off = off + 12;
        let desc_off = name_off
            .checked_add(align4(namesz)?)
            .ok_or(ElfError::BadPvhNote)?;
        let next = desc_off
            .checked_add(align4(descsz)?)
            .ok_or(ElfError::BadPvhNote)?;
        let name = r
            .bytes("note name", name_off, namesz)
            .map_err(|_| ElfError::BadPvhNote)?;
        if name == b"Xen\0" && n_type == XEN_ELFNOTE_PHYS32_ENTRY {
            let desc = r
                .bytes("note desc", desc_off, descsz)
                .map_err(|_| ElfError::BadPvhNote)?;
            let value = match desc.len() {
                4 => u64::from(r.u32("note desc", desc_off)?),
                8 => r.u64("note desc", desc_off)?,
                _ => return Err(ElfError::BadPvhNote),
            };
            return u32::try_from(value)
                .map(Some)
                .map_err(|_| ElfError::BadPvhNote);
        }
        off = next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
