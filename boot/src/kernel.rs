//! Linux kernel loading: ELF vmlinux (PVH entry or the 64-bit boot
//! protocol) and bzImage (64-bit boot protocol), with initrd, command line,
//! memory map and MP table.

use std::path::PathBuf;

use vm_memory::GuestMemoryMmap;

use crate::bzimage::{self, BzImage, ENTRY_64_OFFSET};
use crate::cmdline::{self, ELF_CMDLINE_MAX, VirtioMmioDevice};
use crate::cpu::CpuState;
use crate::elf::{self, ElfClass, ElfImage};
use crate::entry::{boot_msrs, long_mode_state, protected_mode_state};
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::memmap::memory_map;
use crate::mptable::{self, MptableConfig, Polarity, Trigger};
use crate::test_guest::load_segments;
use crate::{BootError, memory, pvh, zeropage};

/// Initrd page alignment.
const PAGE: u64 = 0x1000;
/// `initrd_addr_max` assumed for ELF kernels (the boot protocol's default).
pub const ELF_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// Where an image comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Bytes already in memory.
    Bytes(Vec<u8>),
    /// A file to read.
    File(PathBuf),
}

impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            ImageSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

impl ImageSource {
    /// The image's bytes; a file must be a regular file of at most `max` bytes.
    fn load(&self, what: &'static str, max: u64) -> Result<std::borrow::Cow<'_, [u8]>, BootError> {
        let bytes: std::borrow::Cow<'_, [u8]> = match self {
            ImageSource::Bytes(b) => b.as_slice().into(),
            ImageSource::File(path) => {
                let err = |source| BootError::ReadFile {
                    path: path.clone(),
                    source,
                };
                let meta = std::fs::metadata(path).map_err(err)?;
                if !meta.is_file() {
                    return Err(BootError::NotAFile {
                        what,
                        path: path.clone(),
                    });
                }
                if meta.len() > max {
                    return Err(BootError::TooLarge {
                        what,
                        size: meta.len(),
                        max,
                    });
                }
                std::fs::read(path).map_err(err)?.into()
            }
        };
        if bytes.len() as u64 > max {
            return Err(BootError::TooLarge {
                what,
                size: bytes.len() as u64,
                max,
            });
        }
        Ok(bytes)
    }
}

/// Which entry protocol to use for an ELF kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH if the ELF has the PVH note, else the 64-bit boot protocol.
    /// A bzImage always uses the 64-bit boot protocol.
    #[default]
    Auto,
    /// The 64-bit boot protocol even if a PVH note is present.
    ForceLinux64,
}

/// Everything [`load_kernel`] needs.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// vmlinux (ELF) or bzImage.
    pub kernel: ImageSource,
    /// Optional initramfs.
    pub initrd: Option<ImageSource>,
    /// Command line without the virtio-mmio announcements
    /// (e.g. [`cmdline::default_cmdline`]).
    pub cmdline: String,
    /// Number of vCPUs (MP table).
    pub num_cpus: u8,
    /// Guest RAM as (start, size), e.g. [`crate::layout::ram_regions`].
    pub ram_regions: Vec<(u64, u64)>,
    /// virtio-mmio devices, announced on the command line and routed in the MP table.
    pub virtio_devices: Vec<VirtioMmioDevice>,
    /// Polarity of the virtio pins in the MP table.
    pub virtio_polarity: Polarity,
    /// Trigger mode of the virtio pins in the MP table.
    pub virtio_trigger: Trigger,
    /// Entry protocol choice.
    pub protocol: BootProtocol,
}

impl KernelConfig {
    /// A configuration with the default command line, no initrd, no
    /// devices, level-triggered active-high virtio pins and [`BootProtocol::Auto`].
    pub fn new(kernel: ImageSource, num_cpus: u8, ram_regions: Vec<(u64, u64)>) -> Self {
        KernelConfig {
            kernel,
            initrd: None,
            cmdline: cmdline::default_cmdline(),
            num_cpus,
            ram_regions,
            virtio_devices: Vec::new(),
            virtio_polarity: Polarity::ActiveHigh,
            virtio_trigger: Trigger::Level,
            protocol: BootProtocol::Auto,
        }
    }

    /// The exact command line the guest receives: [`KernelConfig::cmdline`]
    /// followed by one `virtio_mmio.device=` per device.
    pub fn full_cmdline(&self) -> String {
        cmdline::with_devices(&self.cmdline, &self.virtio_devices)
    }
}

/// A recognised kernel image.
#[derive(Debug, Clone)]
pub enum KernelKind {
    /// ELF executable (vmlinux).
    Elf(ElfImage),
    /// bzImage.
    BzImage(BzImage),
}

/// Identifies and validates a kernel image. Never panics, whatever the bytes.
pub fn parse_kernel_image(bytes: &[u8]) -> Result<KernelKind, BootError> {
    if elf::is_elf(bytes) {
        return elf::parse(bytes)
            .map(KernelKind::Elf)
            .map_err(BootError::Elf);
    }
    if bzimage::is_bzimage(bytes) {
        return bzimage::parse(bytes)
            .map(KernelKind::BzImage)
            .map_err(BootError::BzImage);
    }
    Err(BootError::UnknownFormat(
        bytes.iter().take(8).copied().collect(),
    ))
}

/// Where the kernel ended up and what limits it sets.
struct Placed {
    /// One past the highest byte the kernel may use.
    end: u64,
    /// Highest address the initrd may occupy.
    initrd_addr_max: u64,
    /// Longest command line (without NUL).
    cmdline_max: usize,
}

fn place_bzimage(
    mem: &GuestMemoryMmap,
    bz: &BzImage,
    bytes: &[u8],
    low_end: u64,
) -> Result<Placed, BootError> {
    let h = bz.header;
    // The 64-bit decompressor runs at max(pref_address, aligned load
    // address) and needs init_size bytes from there.
    let align = u64::from(h.kernel_alignment).max(PAGE);
    let aligned_load = HIMEM_START.div_ceil(align).saturating_mul(align);
    let run_at = if h.relocatable_kernel != 0 {
        aligned_load.max(h.pref_address)
    } else {
        h.pref_address
    };
    let end = run_at.max(HIMEM_START).saturating_add(bz.memory_needed());
    if end > low_end {
        return Err(BootError::OutOfGuestMemory {
            what: "bzImage kernel (init_size)",
            addr: run_at,
            len: bz.memory_needed(),
        });
    }
    let payload = &bytes[bz.payload_offset..bz.payload_offset + bz.payload_len];
    memory::write(mem, "bzImage kernel", HIMEM_START, payload)?;
    Ok(Placed {
        end: end.max(HIMEM_START + bz.payload_len as u64),
        initrd_addr_max: u64::from(h.initrd_addr_max),
        cmdline_max: h.cmdline_size as usize,
    })
}

/// Places `size` bytes page-aligned at the top of low RAM, below
/// `addr_max` (inclusive) and above `kernel_end`.
fn place_initrd(size: u64, kernel_end: u64, addr_max: u64, low_end: u64) -> Result<u64, BootError> {
    let limit = low_end.min(addr_max.saturating_add(1));
    let floor = kernel_end.div_ceil(PAGE) * PAGE;
    let available = limit.saturating_sub(floor);
    let too_big = BootError::InitrdTooBig {
        size,
        available,
        limit,
    };
    let start = limit.checked_sub(size).ok_or(too_big)? & !(PAGE - 1);
    if start < floor {
        return Err(BootError::InitrdTooBig {
            size,
            available,
            limit,
        });
    }
    Ok(start)
}

/// Loads a Linux kernel (and initrd, command line, memory map, MP table)
/// into `mem` and returns the boot vCPU's entry state. Auto-detects ELF
/// vmlinux and bzImage; see [`BootProtocol`] for the entry choice. A 32-bit
/// ELF without a PVH note (a test guest, not Linux) enters 32-bit protected
/// mode at `e_entry` with EBX = 0, as [`crate::test_guest::load_elf`] does.
pub fn load_kernel(mem: &GuestMemoryMmap, cfg: &KernelConfig) -> Result<CpuState, BootError> {
    if cfg.num_cpus == 0 || cfg.num_cpus > mptable::MAX_CPUS {
        return Err(BootError::BadCpuCount(usize::from(cfg.num_cpus)));
    }
    let memmap = memory_map(&cfg.ram_regions)?;
    for &(addr, size) in &cfg.ram_regions {
        memory::check(mem, "RAM region", addr, size)?;
    }
    let low_end = cfg.ram_regions[0].1; // memory_map checked the first region starts at 0.

    let bytes = cfg.kernel.load("kernel", low_end)?;
    let kind = parse_kernel_image(&bytes)?;
    let placed = match &kind {
        KernelKind::Elf(img) => {
            if img.end() > low_end {
                let start = img.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
                let len = img.end() - start;
                return Err(BootError::OutOfGuestMemory {
                    what: "ELF kernel",
                    addr: start,
                    len,
                });
            }
            load_segments(mem, img, &bytes)?;
            Placed {
                end: img.end(),
                initrd_addr_max: ELF_INITRD_ADDR_MAX,
                cmdline_max: ELF_CMDLINE_MAX,
            }
        }
        KernelKind::BzImage(bz) => place_bzimage(mem, bz, &bytes, low_end)?,
    };
    drop(bytes);

    let cmdline = cfg.full_cmdline();
    cmdline::validate(
        &cmdline,
        placed.cmdline_max.min(CMDLINE_MAX_SIZE as usize - 1),
    )?;
    let mut cmdline_bytes = cmdline.into_bytes();
    cmdline_bytes.push(0);
    memory::write(mem, "command line", CMDLINE_START, &cmdline_bytes)?;

    let initrd = match &cfg.initrd {
        None => None,
        Some(src) => {
            let data = src.load("initrd", low_end)?;
            let size = data.len() as u64;
            let addr = place_initrd(size, placed.end, placed.initrd_addr_max, low_end)?;
            memory::write(mem, "initrd", addr, &data)?;
            Some((addr, size))
        }
    };

    let pins: Vec<u8> = cfg.virtio_devices.iter().map(|d| d.irq).collect();
    let mp = MptableConfig::new(cfg.num_cpus, &pins, cfg.virtio_polarity, cfg.virtio_trigger);
    mptable::write(mem, &mp)?;

    let cmdline_len = (cmdline_bytes.len() - 1) as u32;
    let mut state = match (&kind, cfg.protocol) {
        (
            KernelKind::Elf(ElfImage {
                pvh_entry: Some(entry),
                ..
            }),
            BootProtocol::Auto,
        ) => {
            let info = pvh::write_start_info(mem, &memmap, Some(CMDLINE_START), initrd)?;
            protected_mode_state(mem, *entry, info as u32)?
        }
        (KernelKind::Elf(img), BootProtocol::Auto) if img.class == ElfClass::Elf32 => {
            // Not a Linux kernel: a 32-bit test guest, entered like load_elf does.
            let entry = u32::try_from(img.entry).map_err(|_| BootError::EntryAbove4G(img.entry))?;
            protected_mode_state(mem, entry, 0)?
        }
        (KernelKind::Elf(img), _) => {
            if img.class != ElfClass::Elf64 {
                return Err(BootError::Elf(elf::ElfError::Unsupported(
                    "the 64-bit boot protocol needs an ELF64 kernel",
                )));
            }
            let zp = zero_page_for(None, &memmap, cmdline_len, initrd);
            long_mode_state(mem, img.entry, zeropage::write(mem, &zp)?)?
        }
        (KernelKind::BzImage(bz), _) => {
            let zp = zero_page_for(Some(bz.header), &memmap, cmdline_len, initrd);
            long_mode_state(
                mem,
                HIMEM_START + ENTRY_64_OFFSET,
                zeropage::write(mem, &zp)?,
            )?
        }
    };
    state.msrs = boot_msrs();
    log::debug!(
        "kernel loaded: entry {:#x}, initrd {:x?}",
        state.regs.rip,
        initrd
    );
    Ok(state)
}

fn zero_page_for<'a>(
    header: Option<linux_loader::loader::bootparam::setup_header>,
    memmap: &'a [crate::memmap::MemmapEntry],
    cmdline_len: u32,
    initrd: Option<(u64, u64)>,
) -> zeropage::ZeroPage<'a> {
    zeropage::ZeroPage {
        header,
        memmap,
        cmdline: Some((CMDLINE_START, cmdline_len)),
        // place_initrd keeps the initrd below initrd_addr_max (< 4 GiB).
        initrd: initrd.map(|(a, s)| (a as u32, s as u32)),
    }
}

#[cfg(test)]
mod tests;
