//! Debug-exit codes of the conformance guest: one per check, so a failure
//! names what went wrong.

/// Every check passed.
pub const PASS: u32 = 0x600d;
/// MagicValue is not "virt".
pub const MAGIC: u32 = 0x10;
/// Version is not 2.
pub const VERSION: u32 = 0x11;
/// DeviceID is not 2 (block).
pub const DEVICE_ID: u32 = 0x12;
/// Status did not read 0 after the reset.
pub const RESET: u32 = 0x13;
/// Device feature word 1 lacks VIRTIO_F_VERSION_1.
pub const NO_VERSION_1: u32 = 0x14;
/// FEATURES_OK did not stick.
pub const FEATURES_OK: u32 = 0x15;
/// QueueNumMax of queue 0 is below the queue size the driver wants (16).
pub const QUEUE_MAX: u32 = 0x16;
/// QueueReady of queue 0 was not 0 before setup.
pub const QUEUE_BUSY: u32 = 0x17;
/// QueueReady did not read back 1.
pub const QUEUE_READY: u32 = 0x18;
/// Status is not exactly ACK|DRIVER|FEATURES_OK|DRIVER_OK after DRIVER_OK.
pub const DRIVER_OK: u32 = 0x19;
/// Capacity in config space differs from the host's.
pub const CAPACITY: u32 = 0x1a;
/// VIRTIO_BLK_F_RO (feature bit 5) differs from the expectation.
pub const RO_FEATURE: u32 = 0x1b;
/// GET_ID returned a different serial.
pub const GET_ID: u32 = 0x1c;
/// InterruptStatus bit 0 was not set after a used buffer.
pub const ISR_SET: u32 = 0x20;
/// InterruptStatus bit 0 stayed set after InterruptACK.
pub const ISR_ACK: u32 = 0x21;
/// No interrupt arrived through the IOAPIC for a used buffer.
pub const IRQ_TIMEOUT: u32 = 0x22;
/// The interrupt handler saw InterruptStatus without bit 0.
pub const IRQ_ISR: u32 = 0x23;
/// Data read back (one multi-sector pass) differs from what was written.
pub const COMPARE: u32 = 0x30;
/// Data read back sector by sector (ring wrap-around) differs.
pub const COMPARE_SINGLE: u32 = 0x31;
/// Request k: the used ring did not advance (code | k).
pub const TIMEOUT: u32 = 0x1000;
/// Request k: wrong status byte (code | k).
pub const STATUS: u32 = 0x2000;
/// Request k: the used element names another head (code | k).
pub const USED_ID: u32 = 0x3000;
/// Request k: the used length is wrong (code | k).
pub const USED_LEN: u32 = 0x4000;
/// Request k: the device left the status byte untouched (code | k).
pub const NO_STATUS: u32 = 0x5000;

/// Describes a debug-exit code for assertion messages.
pub fn describe(c: u32) -> String {
    let k = c & 0xfff;
    match c {
        PASS => "pass".into(),
        MAGIC => "bad MagicValue".into(),
        VERSION => "Version is not 2".into(),
        DEVICE_ID => "DeviceID is not 2".into(),
        RESET => "status not 0 after reset".into(),
        NO_VERSION_1 => "VIRTIO_F_VERSION_1 not offered".into(),
        FEATURES_OK => "FEATURES_OK refused".into(),
        QUEUE_MAX => "QueueNumMax too small".into(),
        QUEUE_BUSY => "queue 0 ready before setup".into(),
        QUEUE_READY => "QueueReady did not read back 1".into(),
        DRIVER_OK => "status after DRIVER_OK is not 0xf".into(),
        CAPACITY => "config capacity differs from the host's".into(),
        RO_FEATURE => "VIRTIO_BLK_F_RO differs from the expectation".into(),
        GET_ID => "GET_ID serial differs".into(),
        ISR_SET => "InterruptStatus bit 0 not set after a used buffer".into(),
        ISR_ACK => "InterruptStatus bit 0 not cleared by InterruptACK".into(),
        IRQ_TIMEOUT => "no interrupt delivered for a used buffer".into(),
        IRQ_ISR => "interrupt handler saw InterruptStatus without bit 0".into(),
        COMPARE => "read-back data differs (multi-sector reads)".into(),
        COMPARE_SINGLE => "read-back data differs (single-sector reads)".into(),
        _ => match c & !0xfff {
            TIMEOUT => format!("request {k}: used ring did not advance"),
            STATUS => format!("request {k}: wrong status byte"),
            USED_ID => format!("request {k}: used element has the wrong id"),
            USED_LEN => format!("request {k}: used length is wrong"),
            NO_STATUS => format!("request {k}: status byte not written"),
            _ => format!("unknown code {c:#x}"),
        },
    }
}
