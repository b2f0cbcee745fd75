//! Intel MultiProcessor Specification 1.4 tables (layouts as in Linux's
//! arch/x86/include/asm/mpspec_def.h): a floating pointer and a
//! configuration table listing one processor per vCPU, the ISA bus, the
//! IOAPIC, one I/O interrupt entry per routed pin and the LINT0/LINT1
//! wiring. Written at [`layout::EBDA_START`], which the memory map reserves.

use vm_memory::GuestMemoryMmap;

use crate::layout::{self, EBDA_START, IOAPIC_BASE, IOAPIC_PINS, LAPIC_BASE, LEGACY_HOLE_END};
use crate::{BootError, memory};

/// Floating pointer signature.
pub const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
/// Configuration table signature.
pub const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
/// Size of the floating pointer structure.
pub const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
pub const MPC_HEADER_SIZE: usize = 44;
/// Size of a processor entry.
pub const MPC_CPU_SIZE: usize = 20;
/// Size of bus, IOAPIC, I/O interrupt and local interrupt entries.
pub const MPC_SMALL_ENTRY_SIZE: usize = 8;
/// Most vCPUs: APIC IDs 0..n-1 and the IOAPIC ID n must stay below 0xff.
pub const MAX_CPUS: u8 = 254;
/// Local APIC version reported for each processor.
pub const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version reported (82093AA-compatible).
pub const IOAPIC_VERSION: u8 = 0x11;
/// OEM ID in the configuration table header.
pub const OEM_ID: &[u8; 8] = b"KRYPTON ";
/// Product ID in the configuration table header.
pub const PRODUCT_ID: &[u8; 12] = b"MICROVM     ";

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;

/// Why an MP table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// vCPU count outside 1..=[`MAX_CPUS`].
    #[error("{0} vCPUs cannot be described (1 to 254)")]
    BadCpuCount(usize),
    /// A routed pin is not an IOAPIC pin.
    #[error("IOAPIC pin {0} does not exist (the IOAPIC has 24)")]
    BadPin(u8),
    /// The tables do not fit in the reserved EBDA/legacy area.
    #[error("MP table of {0} bytes does not fit below 1 MiB")]
    TooLarge(usize),
}

/// Interrupt polarity of a pin (MP spec `irqflag` bits 1:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// Conforms to the bus (active high on ISA).
    Conforms = 0,
    /// Active high.
    ActiveHigh = 1,
    /// Active low.
    ActiveLow = 3,
}

/// Trigger mode of a pin (MP spec `irqflag` bits 3:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Conforms to the bus (edge on ISA).
    Conforms = 0,
    /// Edge triggered.
    Edge = 1,
    /// Level triggered.
    Level = 3,
}

/// Routing of one IOAPIC pin: ISA bus IRQ `pin` → IOAPIC pin `pin` (so
/// Linux's IRQ number equals the pin, as the virtio-mmio cmdline expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRoute {
    /// IOAPIC pin (and source ISA IRQ).
    pub pin: u8,
    /// Polarity.
    pub polarity: Polarity,
    /// Trigger mode.
    pub trigger: Trigger,
}

impl PinRoute {
    /// The MP `irqflag` word.
    pub fn irqflag(&self) -> u16 {
        (self.polarity as u16) | ((self.trigger as u16) << 2)
    }
}

/// What the MP table describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MptableConfig {
    /// Number of vCPUs (APIC IDs 0..n-1; 0 is the bootstrap processor).
    pub num_cpus: u8,
    /// IOAPIC ID; [`MptableConfig::new`] uses `num_cpus`.
    pub ioapic_id: u8,
    /// Routed pins, one I/O interrupt entry each, in this order.
    pub pins: Vec<PinRoute>,
}

impl MptableConfig {
    /// ISA IRQs 0-15 as edge/active-high, then each of `virtio_pins` with the
    /// given polarity and trigger (replacing the ISA routing of the same pin).
    pub fn new(num_cpus: u8, virtio_pins: &[u8], polarity: Polarity, trigger: Trigger) -> Self {
        let mut pins: Vec<PinRoute> = (0..16)
            .filter(|p| !virtio_pins.contains(p))
            .map(|pin| PinRoute {
                pin,
                polarity: Polarity::ActiveHigh,
                trigger: Trigger::Edge,
            })
            .collect();
        for &pin in virtio_pins {
            if !pins.iter().any(|r| r.pin == pin) {
                pins.push(PinRoute {
                    pin,
                    polarity,
                    trigger,
                });
            }
        }
        pins.sort_by_key(|r| r.pin);
        MptableConfig {
            num_cpus,
            ioapic_id: num_cpus,
            pins,
        }
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds floating pointer + configuration table as they must appear at
/// `addr` (the table follows the 16-byte floating pointer).
pub fn build(cfg: &MptableConfig, addr: u32) -> Result<Vec<u8>, MptableError> {
    if cfg.num_cpus == 0 || cfg.num_cpus > MAX_CPUS {
        return Err(MptableError::BadCpuCount(usize::from(cfg.num_cpus)));
    }
    if let Some(r) = cfg.pins.iter().find(|r| r.pin >= IOAPIC_PINS) {
        return Err(MptableError::BadPin(r.pin));
    }
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cfg.num_cpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled | bootstrap
        entries.extend_from_slice(&[MP_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // CPUID.1:EDX FPU | APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, cfg.ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    count += 2;
    for r in &cfg.pins {
        entries.extend_from_slice(&[MP_INTSRC, MP_INT]);
        entries.extend_from_slice(&r.irqflag().to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, r.pin, cfg.ioapic_id, r.pin]);
        count += 1;
    }
    // LINT0: ExtINT to the BSP; LINT1: NMI to every local APIC.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, ISA_BUS_ID, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let table_len = MPC_HEADER_SIZE + entries.len();
    let total = MPF_SIZE + table_len;
    if total as u64 > LEGACY_HOLE_END - EBDA_START {
        return Err(MptableError::TooLarge(total));
    }
    let table_addr = addr
        .checked_add(MPF_SIZE as u32)
        .ok_or(MptableError::TooLarge(total))?;

    let mut mpf = Vec::with_capacity(total);
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 1 paragraph, spec 1.4
    mpf[10] = checksum(&mpf);

    let mut mpc = Vec::with_capacity(table_len);
    mpc.extend_from_slice(MPC_SIGNATURE);
    mpc.extend_from_slice(&(table_len as u16).to_le_bytes());
    mpc.extend_from_slice(&[4, 0]); // spec 1.4, checksum below
    mpc.extend_from_slice(OEM_ID);
    mpc.extend_from_slice(PRODUCT_ID);
    mpc.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    mpc.extend_from_slice(&0u16.to_le_bytes());
    mpc.extend_from_slice(&count.to_le_bytes());
    mpc.extend_from_slice(&(LAPIC_BASE as u32).to_le_bytes());
    mpc.extend_from_slice(&[0; 4]); // no extended table
    mpc.extend_from_slice(&entries);
    mpc[7] = checksum(&mpc);

    mpf.extend_from_slice(&mpc);
    Ok(mpf)
}

/// Builds the tables and writes them at [`layout::EBDA_START`]; returns
/// that address.
pub fn write(mem: &GuestMemoryMmap, cfg: &MptableConfig) -> Result<u64, BootError> {
    let bytes = build(cfg, layout::EBDA_START as u32).map_err(BootError::Mptable)?;
    memory::write(mem, "MP table", EBDA_START, &bytes)?;
    Ok(EBDA_START)
}

#[cfg(test)]
mod tests;
