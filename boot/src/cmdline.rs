//! Kernel command lines: the default, virtio-mmio announcements, and the
//! length/NUL checks.

use std::fmt::Write as _;

use crate::BootError;

/// Longest command line (without NUL) an ELF kernel accepts: x86's
/// `COMMAND_LINE_SIZE` (2048) minus the terminator. A bzImage states its own
/// limit in `cmdline_size`.
pub const ELF_CMDLINE_MAX: usize = 2047;

/// The default command line. Each switch, and why:
/// - `console=ttyS0`: kernel messages on COM1, the VMM's 8250.
/// - `reboot=k`: reboot through the i8042 (0xfe to port 0x64), which the VMM
///   turns into a VM exit; a triple fault is not reliable everywhere.
/// - `panic=-1`: reboot at once on panic, so a panic ends the VM instead of
///   leaving it spinning.
/// - `i8042.noaux i8042.nomux i8042.dumbkbd`: skip the i8042 AUX/MUX probes
///   and keyboard reset (tens of ms, longer under emulation); the VMM's
///   i8042 only implements reset.
/// - `nomodule`: the guest kernel has no modules; refuse any loading.
/// - `tsc=reliable`: no clocksource watchdog against a second clock; the TSC
///   frequency comes from kvmclock/CPUID, and the watchdog misfires when
///   vCPUs are descheduled.
/// - `no_timer_check`: there is no PIT; skip the IO-APIC timer IRQ0 check,
///   which otherwise may panic with "IO-APIC + timer doesn't work!".
pub fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd nomodule tsc=reliable no_timer_check"
        .to_string()
}

/// One virtio-mmio device to announce to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// MMIO base address.
    pub base: u64,
    /// Window size in bytes (usually [`crate::layout::VIRTIO_MMIO_SIZE`]).
    pub size: u64,
    /// IOAPIC pin (= GSI) of the device's interrupt.
    pub irq: u8,
}

impl VirtioMmioDevice {
    /// `virtio_mmio.device=<size>@<base>:<irq>`, size in K when a whole number
    /// of KiB (drivers/virtio/virtio_mmio.c parses it with memparse).
    pub fn cmdline_arg(&self) -> String {
        let size = if self.size.is_multiple_of(1024) {
            format!("{}K", self.size / 1024)
        } else {
            self.size.to_string()
        };
        format!("virtio_mmio.device={size}@{:#x}:{}", self.base, self.irq)
    }
}

/// `base` with one announcement per device, space separated. They go
/// before a ` -- ` in `base`: the kernel hands everything after it to init.
pub fn with_devices(base: &str, devices: &[VirtioMmioDevice]) -> String {
    let base = base.trim();
    let (kernel, init) = match base.find(" -- ") {
        Some(i) => (&base[..i], Some(&base[i + 4..])),
        None if base == "--" || base.starts_with("-- ") => ("", Some(base[2..].trim_start())),
        None => (base, None),
    };
    let mut s = kernel.trim().to_string();
    for d in devices {
        if !s.is_empty() {
            s.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(s, "{}", d.cmdline_arg());
    }
    if let Some(init) = init {
        s.push_str(" -- ");
        s.push_str(init.trim());
    }
    s
}

/// Checks `cmdline` for NUL bytes and against `max` bytes (NUL excluded).
pub fn validate(cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_format_matches_virtio_mmio_parser() {
        let d = VirtioMmioDevice {
            base: 0xd000_1000,
            size: 0x1000,
            irq: 6,
        };
        assert_eq!(d.cmdline_arg(), "virtio_mmio.device=4K@0xd0001000:6");
        let odd = VirtioMmioDevice {
            base: 0xd000_0000,
            size: 0x200,
            irq: 5,
        };
        assert_eq!(odd.cmdline_arg(), "virtio_mmio.device=512@0xd0000000:5");
        let both = with_devices("console=ttyS0 ", &[odd, d]);
        assert_eq!(
            both,
            "console=ttyS0 virtio_mmio.device=512@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(with_devices("", &[d]), "virtio_mmio.device=4K@0xd0001000:6");
        // Init's arguments stay last, after the announcements.
        assert_eq!(
            with_devices("quiet -- -v x", &[d]),
            "quiet virtio_mmio.device=4K@0xd0001000:6 -- -v x"
        );
        assert_eq!(
            with_devices("-- -v", &[d]),
            "virtio_mmio.device=4K@0xd0001000:6 -- -v"
        );
    }

    #[test]
    fn default_cmdline_has_the_exit_paths() {
        let c = default_cmdline();
        for w in ["console=ttyS0", "reboot=k", "panic=-1", "nomodule"] {
            assert!(c.split(' ').any(|x| x == w), "{w} missing from {c}");
        }
    }

    #[test]
    fn validation_limits() {
        assert!(validate(&"x".repeat(ELF_CMDLINE_MAX), ELF_CMDLINE_MAX).is_ok());
        assert!(matches!(
            validate(&"x".repeat(ELF_CMDLINE_MAX + 1), ELF_CMDLINE_MAX),
            Err(BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        assert!(matches!(validate("a\0b", 10), Err(BootError::CmdlineNul)));
    }
}
