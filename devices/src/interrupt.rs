//! Interrupt plumbing shared by devices and backends.
//!
//! Devices raise an [`IrqLine`] (an IOAPIC pin). The IOAPIC turns a pin into a
//! message-signalled interrupt and hands it to an [`MsiSink`], which the
//! hypervisor backend implements (KVM_SIGNAL_MSI, WHvRequestInterrupt).

/// A message-signalled interrupt in x86 format (address 0xFEEx_xxxx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    /// Address: destination APIC ID in bits 19:12, destination mode in bit 2.
    pub address: u64,
    /// Data: vector in bits 7:0, delivery mode in 10:8, trigger mode in bit 15.
    pub data: u32,
}

/// Delivers an MSI to the guest's local APICs. Implemented by each backend.
pub trait MsiSink: Send + Sync {
    /// Injects `msi`. Failures are the backend's to log (rate-limited).
    fn deliver(&self, msi: Msi);
}

/// One interrupt input line, as held by a device.
pub trait IrqLine: Send + Sync {
    /// Asserts (`true`) or deasserts (`false`) the line. An edge-triggered
    /// pin delivers on the rising edge; a level-triggered pin delivers while
    /// asserted and again after EOI if still asserted.
    fn set_level(&self, asserted: bool);

    /// Rising then falling edge: one interrupt on an edge-triggered pin.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}
