//! `Machine` on the host's real hypervisor with hand-assembled guests: the
//! platform devices every VM has, the exit paths and the run outcome.
//! Skips (with a message) where no hypervisor is usable.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use krypton::hv::Hypervisor;
use krypton::machine::{Machine, MachineConfig, MachineError, Outcome, SerialOut};
use krypton_boot::entry::real_mode_state;
use vm_memory::{Bytes, GuestAddress};

mod support;
use support::hypervisor;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn machine(hv: &dyn Hypervisor, serial: SerialOut, cpus: u8) -> Machine {
    let cfg = MachineConfig {
        mem_mib: 16,
        cpus,
        serial,
        hide_cpuid: vec![],
    };
    Machine::new(hv, cfg).expect("machine")
}

/// Runs real-mode `code` loaded at 0x1000.
fn run_real(hv: &dyn Hypervisor, code: &[u8], serial: SerialOut) -> Result<Outcome, MachineError> {
    let m = machine(hv, serial, 1);
    m.memory()
        .write_slice(code, GuestAddress(0x1000))
        .expect("load");
    m.run(real_mode_state(0, 0x1000), Some(Duration::from_secs(10)))
}

#[test]
fn debug_exit_ends_the_run_with_the_written_value() {
    let Some(hv) = hypervisor() else { return };
    // mov al, 0x2a ; out 0xf4, al ; hlt
    let out = run_real(
        hv.as_ref(),
        &[0xb0, 0x2a, 0xe6, 0xf4, 0xf4],
        SerialOut::Null,
    );
    assert_eq!(out.expect("run"), Outcome::DebugExit(0x2a));
}

#[test]
fn i8042_reset_ends_the_run() {
    let Some(hv) = hypervisor() else { return };
    // mov al, 0xfe ; out 0x64, al ; hlt
    let out = run_real(
        hv.as_ref(),
        &[0xb0, 0xfe, 0xe6, 0x64, 0xf4],
        SerialOut::Null,
    );
    assert_eq!(out.expect("run"), Outcome::Reset);
}

#[test]
fn serial_output_reaches_the_writer_and_idle_lsr_reads_0x60() {
    let Some(hv) = hypervisor() else { return };
    #[rustfmt::skip]
    let code = [
        0xba, 0xfd, 0x03,       // mov dx, 0x3fd (LSR)
        0xec,                   // in al, dx
        0xe6, 0xf4,             // out 0xf4, al: report LSR through debug exit
    ];
    let out = run_real(hv.as_ref(), &code, SerialOut::Null).expect("run");
    assert_eq!(out, Outcome::DebugExit(0x60), "idle LSR");
    let cap = Capture::default();
    #[rustfmt::skip]
    let hello = [
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xb0, b'h', 0xee,       // mov al, 'h' ; out dx, al
        0xb0, b'i', 0xee,       // mov al, 'i' ; out dx, al
        0xb0, b'\n', 0xee,      // mov al, '\n' ; out dx, al
        0xb0, 0x00, 0xe6, 0xf4, // mov al, 0 ; out 0xf4, al
    ];
    let out = run_real(
        hv.as_ref(),
        &hello,
        SerialOut::Writer(Box::new(cap.clone())),
    )
    .expect("run");
    assert_eq!(out, Outcome::DebugExit(0));
    assert_eq!(cap.0.lock().expect("capture").as_slice(), b"hi\n");
}

#[test]
fn unclaimed_port_reads_all_ones() {
    let Some(hv) = hypervisor() else { return };
    // in al, 0x99 ; out 0xf4, al
    let out = run_real(hv.as_ref(), &[0xe4, 0x99, 0xe6, 0xf4], SerialOut::Null);
    assert_eq!(out.expect("run"), Outcome::DebugExit(0xff));
}

#[test]
fn a_spinning_guest_times_out() {
    let Some(hv) = hypervisor() else { return };
    let m = machine(hv.as_ref(), SerialOut::Null, 2);
    m.memory()
        .write_slice(&[0xeb, 0xfe], GuestAddress(0x1000))
        .expect("load"); // jmp $
    let t = std::time::Instant::now();
    let out = m.run(real_mode_state(0, 0x1000), Some(Duration::from_millis(300)));
    assert_eq!(out.expect("run"), Outcome::Timeout);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "kick stopped both vCPUs promptly"
    );
}

#[test]
fn bad_sizes_are_rejected_before_anything_runs() {
    let Some(hv) = hypervisor() else { return };
    let bad_mem = MachineConfig {
        mem_mib: 0,
        cpus: 1,
        serial: SerialOut::Null,
        hide_cpuid: vec![],
    };
    assert!(matches!(
        Machine::new(hv.as_ref(), bad_mem),
        Err(MachineError::MemSize(0))
    ));
    let bad_cpus = MachineConfig {
        mem_mib: 16,
        cpus: 0,
        serial: SerialOut::Null,
        hide_cpuid: vec![],
    };
    assert!(matches!(
        Machine::new(hv.as_ref(), bad_cpus),
        Err(MachineError::CpuCount(0))
    ));
}

#[test]
fn the_boot_vcpu_starts_an_ap_with_init_sipi() {
    let Some(hv) = hypervisor() else { return };
    let m = machine(hv.as_ref(), SerialOut::Null, 2);
    #[rustfmt::skip]
    let bsp = [
        0xc7, 0x05, 0xf0, 0x00, 0xe0, 0xfe, 0xff, 0x01, 0x00, 0x00, // mov [APIC SVR], 0x1ff (enable)
        0xc7, 0x05, 0x10, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x01, // mov [ICR high], APIC ID 1
        0xc7, 0x05, 0x00, 0x03, 0xe0, 0xfe, 0x00, 0x45, 0x00, 0x00, // mov [ICR low], INIT assert
        0xc7, 0x05, 0x00, 0x03, 0xe0, 0xfe, 0x02, 0x46, 0x00, 0x00, // mov [ICR low], SIPI vector 2 (0x2000)
        0xeb, 0xfe,                                                 // jmp $
    ];
    // The AP starts in real mode at 0x2000: mov al, 0x11 ; out 0xf4, al ; hlt
    let ap = [0xb0, 0x11, 0xe6, 0xf4, 0xf4];
    m.memory()
        .write_slice(&bsp, GuestAddress(0x1000))
        .expect("load");
    m.memory()
        .write_slice(&ap, GuestAddress(0x2000))
        .expect("load");
    let state = krypton_boot::entry::protected_mode_state(m.memory(), 0x1000, 0).expect("state");
    let out = m.run(state, Some(Duration::from_secs(20)));
    assert_eq!(
        out.expect("run"),
        Outcome::DebugExit(0x11),
        "the AP ran its startup code"
    );
}
