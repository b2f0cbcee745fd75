//! A 24-pin I/O APIC (version 0x20, with the EOI register).
//!
//! Only the LAPIC lives in the hypervisor (KVM split irqchip, WHP); this
//! IOAPIC turns pin changes into [`Msi`]s for the backend's [`MsiSink`].
//!
//! MMIO window (at `layout::IOAPIC_BASE`): IOREGSEL at 0x00, IOWIN at 0x10,
//! EOI at 0x40. Registers behind IOWIN: 0x00 ID, 0x01 version, 0x02
//! arbitration, 0x10 + 2n / 0x11 + 2n the low / high half of pin n's
//! redirection entry.
//!
//! Pin semantics: an edge pin delivers on a rising edge while unmasked (a
//! masked edge pin latches nothing). A level pin delivers while asserted,
//! unmasked and its remote IRR is clear; delivery sets remote IRR, and the
//! EOI for its vector clears it and re-delivers if the pin is still asserted.
//! A level pin asserted while masked is remembered and delivered on unmask.
//! Polarity is recorded but ignored: devices speak "asserted", not voltages.

use std::sync::{Arc, Mutex, PoisonError};

use crate::bus::BusDevice;
use crate::interrupt::{IrqLine, Msi, MsiSink};
use crate::warn_ratelimited;

/// Number of pins (redirection entries).
pub const NUM_PINS: usize = 24;
/// IOAPIC version implemented (0x20 has the directed-EOI register).
pub const IOAPIC_VERSION: u32 = 0x20;

/// Offset of IOREGSEL in the MMIO window.
pub const IOREGSEL: u64 = 0x00;
/// Offset of IOWIN in the MMIO window.
pub const IOWIN: u64 = 0x10;
/// Offset of the EOI register in the MMIO window.
pub const IOEOI: u64 = 0x40;

/// Indirect register: ID.
pub const REG_ID: u32 = 0x00;
/// Indirect register: version and maximum redirection entry.
pub const REG_VERSION: u32 = 0x01;
/// Indirect register: arbitration ID.
pub const REG_ARB: u32 = 0x02;
/// Indirect register: first redirection-table register.
pub const REG_REDTBL_BASE: u32 = 0x10;

const VECTOR_MASK: u64 = 0xff;
const DELIVERY_MODE_SHIFT: u64 = 8;
const DEST_MODE_BIT: u64 = 1 << 11;
const DELIVERY_STATUS_BIT: u64 = 1 << 12;
const REMOTE_IRR_BIT: u64 = 1 << 14;
const TRIGGER_LEVEL_BIT: u64 = 1 << 15;
const MASK_BIT: u64 = 1 << 16;
const DEST_SHIFT: u64 = 56;
const EXT_DEST_SHIFT: u64 = 49;
/// Bits the guest may write (everything but delivery status and remote IRR).
const WRITABLE_BITS: u64 = !(DELIVERY_STATUS_BIT | REMOTE_IRR_BIT);
/// Lowest-priority delivery mode.
const DELIVERY_LOWEST_PRIORITY: u64 = 1;

/// x86 MSI address base (0xFEE0_0000).
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;

/// One redirection-table entry, raw 64-bit format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RedirEntry(u64);

impl RedirEntry {
    fn vector(self) -> u8 {
        (self.0 & VECTOR_MASK) as u8
    }
    fn masked(self) -> bool {
        self.0 & MASK_BIT != 0
    }
    fn level(self) -> bool {
        self.0 & TRIGGER_LEVEL_BIT != 0
    }
    fn remote_irr(self) -> bool {
        self.0 & REMOTE_IRR_BIT != 0
    }

    /// The MSI that this entry describes.
    fn to_msi(self) -> Msi {
        let dest = (self.0 >> DEST_SHIFT) & 0xff;
        let dest_mode_logical = self.0 & DEST_MODE_BIT != 0;
        let delivery_mode = (self.0 >> DELIVERY_MODE_SHIFT) & 0x7;
        let mut address = MSI_ADDRESS_BASE | (dest << 12);
        if dest_mode_logical {
            address |= 1 << 2;
        }
        // Extended destination ID (KVM_FEATURE_MSI_EXT_DEST_ID): RTE bits
        // 55:49 carry APIC ID bits 14:8, MSI address bits 11:5.
        address |= ((self.0 >> EXT_DEST_SHIFT) & 0x7f) << 5;
        if delivery_mode == DELIVERY_LOWEST_PRIORITY {
            // Redirection hint: lowest priority may pick any target.
            address |= 1 << 3;
        }
        let mut data = u32::from(self.vector()) | ((delivery_mode as u32) << 8);
        if self.level() {
            // Trigger mode level, and "assert" (bit 14) as a level MSI needs.
            data |= (1 << 15) | (1 << 14);
        }
        Msi { address, data }
    }
}

/// The IOAPIC's registers, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoapicState {
    /// IOAPIC ID register.
    pub id: u32,
    /// IOREGSEL.
    pub regsel: u32,
    /// Redirection table, raw 64-bit entries, one per pin.
    pub redir: [u64; NUM_PINS],
    /// Input level of each pin.
    pub levels: [bool; NUM_PINS],
}

/// The I/O APIC. Share it as `Arc<Mutex<Ioapic>>`: the bus holds one clone
/// for the MMIO window, devices hold [`ioapic_pin`] lines.
pub struct Ioapic {
    id: u32,
    regsel: u32,
    redir: [RedirEntry; NUM_PINS],
    /// Current input level of each pin (true = asserted).
    levels: [bool; NUM_PINS],
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for Ioapic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioapic")
            .field("id", &self.id)
            .field("regsel", &self.regsel)
            .field("redir", &self.redir)
            .field("levels", &self.levels)
            .finish_non_exhaustive()
    }
}

impl Ioapic {
    /// An IOAPIC in its reset state (every pin masked) delivering to `sink`.
    pub fn new(sink: Arc<dyn MsiSink>) -> Ioapic {
        Ioapic {
            id: 0,
            regsel: 0,
            redir: [RedirEntry(MASK_BIT); NUM_PINS],
            levels: [false; NUM_PINS],
            sink,
        }
    }

    /// Saves the registers.
    pub fn state(&self) -> IoapicState {
        IoapicState {
            id: self.id,
            regsel: self.regsel,
            redir: self.redir.map(|e| e.0),
            levels: self.levels,
        }
    }

    /// Restores saved registers. An entry whose remote IRR is set waits for
    /// its EOI, as it did when saved.
    pub fn restore(&mut self, s: &IoapicState) {
        self.id = s.id;
        self.regsel = s.regsel;
        self.redir = s.redir.map(RedirEntry);
        self.levels = s.levels;
    }

    /// Sets the input level of `pin`. Out-of-range pins are ignored (logged).
    pub fn set_irq(&mut self, pin: u8, level: bool) {
        let p = usize::from(pin);
        if p >= NUM_PINS {
            warn_ratelimited!("ioapic: set_irq on nonexistent pin {pin}");
            return;
        }
        let was = self.levels[p];
        self.levels[p] = level;
        let entry = self.redir[p];
        if entry.level() {
            if level {
                self.try_deliver_level(p);
            }
        } else if level && !was && !entry.masked() {
            self.sink.deliver(entry.to_msi());
        }
    }

    /// End of interrupt for `vector` (from the LAPIC's EOI exit or the EOI
    /// register): clears remote IRR of level pins with that vector and
    /// re-delivers those still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for p in 0..NUM_PINS {
            let entry = self.redir[p];
            if entry.level() && entry.remote_irr() && entry.vector() == vector {
                self.redir[p].0 &= !REMOTE_IRR_BIT;
                self.try_deliver_level(p);
            }
        }
    }

    /// Delivers level pin `p` if it is asserted, unmasked and not in service.
    fn try_deliver_level(&mut self, p: usize) {
        let entry = self.redir[p];
        if self.levels[p] && entry.level() && !entry.masked() && !entry.remote_irr() {
            self.redir[p].0 |= REMOTE_IRR_BIT;
            self.sink.deliver(entry.to_msi());
        }
    }

    fn read_register(&self) -> u32 {
        match self.regsel {
            REG_ID => self.id,
            REG_VERSION => ((NUM_PINS as u32 - 1) << 16) | IOAPIC_VERSION,
            REG_ARB => self.id,
            r if (REG_REDTBL_BASE..REG_REDTBL_BASE + 2 * NUM_PINS as u32).contains(&r) => {
                let idx = r - REG_REDTBL_BASE;
                let entry = self.redir[(idx / 2) as usize].0;
                if idx & 1 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            r => {
                warn_ratelimited!("ioapic: read of nonexistent register {r:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.regsel {
            REG_ID => self.id = value & 0x0f00_0000,
            REG_VERSION | REG_ARB => {}
            r if (REG_REDTBL_BASE..REG_REDTBL_BASE + 2 * NUM_PINS as u32).contains(&r) => {
                let idx = r - REG_REDTBL_BASE;
                let p = (idx / 2) as usize;
                let old = self.redir[p].0;
                let new = if idx & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut entry = (new & WRITABLE_BITS) | (old & !WRITABLE_BITS);
                if entry & TRIGGER_LEVEL_BIT == 0 {
                    // Remote IRR is undefined for edge pins; keep it clear.
                    entry &= !REMOTE_IRR_BIT;
                }
                self.redir[p] = RedirEntry(entry);
                // Unmasking (or switching to level) an asserted level pin
                // delivers it now.
                self.try_deliver_level(p);
            }
            r => warn_ratelimited!("ioapic: write of nonexistent register {r:#x}"),
        }
    }
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (IOREGSEL, 4) => self.regsel,
            (IOWIN, 4) => self.read_register(),
            _ => {
                warn_ratelimited!("ioapic: bad read at {offset:#x} size {}", data.len());
                0
            }
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_ratelimited!("ioapic: bad write at {offset:#x} size {}", data.len());
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.regsel = value & 0xff,
            IOWIN => self.write_register(value),
            IOEOI => self.end_of_interrupt(value as u8),
            _ => warn_ratelimited!("ioapic: write to unknown offset {offset:#x}"),
        }
    }
}

/// One IOAPIC pin as a device's interrupt line.
struct IoapicPin {
    ioapic: Arc<Mutex<Ioapic>>,
    pin: u8,
}

impl IrqLine for IoapicPin {
    fn set_level(&self, asserted: bool) {
        self.ioapic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_irq(self.pin, asserted);
    }
}

/// The interrupt line for `pin` of `ioapic`, to hand to a device.
pub fn ioapic_pin(ioapic: &Arc<Mutex<Ioapic>>, pin: u8) -> Arc<dyn IrqLine> {
    if usize::from(pin) >= NUM_PINS {
        warn_ratelimited!("ioapic: line for nonexistent pin {pin} will be ignored");
    }
    Arc::new(IoapicPin {
        ioapic: Arc::clone(ioapic),
        pin,
    })
}

#[cfg(test)]
mod tests;
