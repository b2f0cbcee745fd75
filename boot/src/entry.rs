//! Entry-state builders: the boot vCPU's registers for real mode, 32-bit
//! protected mode (PVH style) and 64-bit long mode, plus the GDT, IDT and
//! identity page tables they rely on (written at the addresses in
//! [`crate::layout`]).

use vm_memory::GuestMemoryMmap;

use crate::cpu::{CpuState, DescriptorTable, Regs, Segment, Sregs};
use crate::layout::{
    BOOT_STACK_POINTER, GDT_ENTRIES, GDT_START, IDT_START, LAPIC_BASE, PDE_START, PDPTE_START,
    PML4_START,
};
use crate::{BootError, memory};

/// GDT selector of the flat 32-bit code segment (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x08;
/// GDT selector of the 64-bit code segment; equals Linux's `__BOOT_CS`.
pub const CODE64_SELECTOR: u16 = 0x10;
/// GDT selector of the flat data segment; equals Linux's `__BOOT_DS`.
pub const DATA_SELECTOR: u16 = 0x18;
/// GDT selector of the TSS (16-byte descriptor in long mode).
pub const TSS_SELECTOR: u16 = 0x20;

/// CR0 bits.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET (extension type, always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE (native FPU error reporting).
pub const CR0_NE: u64 = 1 << 5;
/// CR0.PG (paging).
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;
/// IA32_APIC_BASE for the bootstrap processor: base, enabled (bit 11), BSP (bit 8).
pub const APIC_BASE_BSP: u64 = LAPIC_BASE | (1 << 11) | (1 << 8);
/// Reserved RFLAGS bit 1, the only bit set at entry.
pub const RFLAGS_RESERVED: u64 = 2;

/// Number of 1 GiB slices identity-mapped with 2 MiB pages in long mode.
pub const IDENTITY_MAP_GIB: u64 = 4;

/// One GDT descriptor: `flags` is the 16-bit access/flags word as written in
/// Linux's `GDT_ENTRY(flags, base, limit)` (e.g. 0xc09b), `limit` is 20 bits.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Decodes a GDT descriptor into the hidden segment state a CPU would load
/// for `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> Segment {
    let bit = |n: u32| (entry >> n) & 1 == 1;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bit(55);
    Segment {
        base,
        limit: if g {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 3) as u8,
        present: bit(47),
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: !bit(47),
    }
}

/// The GDT the loaders write at [`GDT_START`]: null, 32-bit code, 64-bit
/// code, data, and a 16-byte TSS descriptor (base 0, limit 0x67, busy).
pub fn gdt_table() -> [u64; GDT_ENTRIES] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
        0,
    ]
}

fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let gdt: Vec<u8> = gdt_table().iter().flat_map(|e| e.to_le_bytes()).collect();
    memory::write(mem, "GDT", GDT_START, &gdt)?;
    memory::write(mem, "IDT", IDT_START, &0u64.to_le_bytes())
}

/// Writes identity page tables for the first [`IDENTITY_MAP_GIB`] GiB with
/// 2 MiB pages: PML4 → one PDPT → four page directories. Returns CR3.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let mut pml4 = [0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPTE_START | PRESENT_RW).to_le_bytes());
    memory::write(mem, "PML4", PML4_START, &pml4)?;

    let mut pdpt = [0u8; 4096];
    for i in 0..IDENTITY_MAP_GIB {
        let off = (i * 8) as usize;
        pdpt[off..off + 8].copy_from_slice(&((PDE_START + i * 0x1000) | PRESENT_RW).to_le_bytes());
    }
    memory::write(mem, "PDPT", PDPTE_START, &pdpt)?;

    for i in 0..IDENTITY_MAP_GIB {
        let pd: Vec<u8> = (0..512u64)
            .flat_map(|j| ((((i << 9) + j) << 21) | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes())
            .collect();
        memory::write(mem, "page directory", PDE_START + i * 0x1000, &pd)?;
    }
    Ok(PML4_START)
}

fn gdt_sregs(code_selector: u16) -> Sregs {
    let gdt = gdt_table();
    let seg = |sel: u16| segment_from_gdt(gdt[usize::from(sel >> 3)], sel);
    let data = seg(DATA_SELECTOR);
    Sregs {
        cs: seg(code_selector),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: seg(TSS_SELECTOR),
        ldt: Segment {
            type_: 2,
            present: true,
            limit: 0xffff,
            ..Default::default()
        },
        gdt: DescriptorTable {
            base: GDT_START,
            limit: (GDT_ENTRIES * 8 - 1) as u16,
        },
        idt: DescriptorTable {
            base: IDT_START,
            limit: 7,
        },
        apic_base: APIC_BASE_BSP,
        ..Default::default()
    }
}

/// 16-bit real mode at `cs:ip`. Every segment register holds `cs` with base
/// `cs << 4` and a 64 KiB limit; CR0 has only ET set. Writes nothing to memory.
pub fn real_mode_state(cs: u16, ip: u16) -> CpuState {
    let seg = |type_: u8| Segment {
        base: u64::from(cs) << 4,
        limit: 0xffff,
        selector: cs,
        type_,
        present: true,
        s: true,
        ..Default::default()
    };
    let data = seg(3);
    let sregs = Sregs {
        cs: seg(0xb),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: Segment {
            type_: 0xb,
            present: true,
            limit: 0xffff,
            ..Default::default()
        },
        ldt: Segment {
            type_: 2,
            present: true,
            limit: 0xffff,
            ..Default::default()
        },
        gdt: DescriptorTable {
            base: 0,
            limit: 0xffff,
        },
        idt: DescriptorTable {
            base: 0,
            limit: 0x3ff,
        },
        cr0: CR0_ET,
        apic_base: APIC_BASE_BSP,
        ..Default::default()
    };
    let regs = Regs {
        rip: u64::from(ip),
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    CpuState {
        regs,
        sregs,
        msrs: Vec::new(),
    }
}

/// 32-bit protected mode without paging, as the PVH boot ABI specifies:
/// flat 4 GiB code (selector 0x08, 0xc09b) and data (0x18, 0xc093)
/// segments, CR0 = PE|ET, EBX = `ebx` (the `hvm_start_info` address for PVH).
/// Writes the GDT and IDT.
pub fn protected_mode_state(
    mem: &GuestMemoryMmap,
    entry: u32,
    ebx: u32,
) -> Result<CpuState, BootError> {
    write_gdt_idt(mem)?;
    let mut sregs = gdt_sregs(CODE32_SELECTOR);
    sregs.cr0 = CR0_PE | CR0_ET;
    let regs = Regs {
        rip: u64::from(entry),
        rbx: u64::from(ebx),
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    Ok(CpuState {
        regs,
        sregs,
        msrs: Vec::new(),
    })
}

/// 64-bit long mode at `entry` with the first 4 GiB identity-mapped (2 MiB
/// pages), CS = 0x10 (L=1), data = 0x18, CR0 = PE|ET|NE|PG, CR4 = PAE,
/// EFER = LME|LMA, RSP = RBP = [`BOOT_STACK_POINTER`], RSI = `rsi` (the zero
/// page for the Linux 64-bit protocol). Writes GDT, IDT and page tables.
pub fn long_mode_state(mem: &GuestMemoryMmap, entry: u64, rsi: u64) -> Result<CpuState, BootError> {
    write_gdt_idt(mem)?;
    let cr3 = write_identity_page_tables(mem)?;
    let mut sregs = gdt_sregs(CODE64_SELECTOR);
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    let regs = Regs {
        rip: entry,
        rsi,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    Ok(CpuState {
        regs,
        sregs,
        msrs: Vec::new(),
    })
}

/// MSRs written before a Linux entry (Firecracker's boot-protocol set):
/// SYSENTER_CS/ESP/EIP, STAR, LSTAR, CSTAR, KERNEL_GS_BASE, SYSCALL_MASK and
/// the TSC are zeroed so no stale host or reset value leaks in, and
/// IA32_MISC_ENABLE gets bit 0 (fast string operations), as on real firmware.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0),       // IA32_SYSENTER_CS
        (0x175, 0),       // IA32_SYSENTER_ESP
        (0x176, 0),       // IA32_SYSENTER_EIP
        (0xc000_0081, 0), // STAR
        (0xc000_0082, 0), // LSTAR
        (0xc000_0083, 0), // CSTAR
        (0xc000_0102, 0), // KERNEL_GS_BASE
        (0xc000_0084, 0), // SYSCALL_MASK (FMASK)
        (0x10, 0),        // IA32_TSC
        (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
    ]
}

#[cfg(test)]
mod tests;
