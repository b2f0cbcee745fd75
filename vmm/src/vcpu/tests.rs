//! Synthetic exits through `handle_exit`, with a fake vCPU.

use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Mutex};

use krypton_devices::bus::BusDevice;

use super::*;
use crate::hv::{IoOp, Kick, Regs, Sregs};

#[derive(Default)]
struct Scratch {
    last_write: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Scratch {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset as u8 + i as u8;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.last_write.push((offset, data.to_vec()));
    }
}

/// A vCPU whose pending access is scripted.
struct FakeVcpu {
    addr: u64,
    write: Option<Vec<u8>>,
    read_len: usize,
    read_result: Vec<u8>,
}

struct NoKick;
impl Kick for NoKick {
    fn kick(&self) {}
}

impl Vcpu for FakeVcpu {
    fn run(&mut self) -> Result<VcpuExit, HvError> {
        Ok(VcpuExit::Canceled)
    }
    fn handle_io(&mut self, f: &mut dyn FnMut(u16, IoOp<'_>)) -> Result<(), HvError> {
        let port = self.addr as u16;
        self.handle(&mut |a, op| f(a as u16, op), u64::from(port));
        Ok(())
    }
    fn handle_mmio(&mut self, f: &mut dyn FnMut(u64, IoOp<'_>)) -> Result<(), HvError> {
        let addr = self.addr;
        self.handle(f, addr);
        Ok(())
    }
    fn regs(&self) -> Result<Regs, HvError> {
        Ok(Regs::default())
    }
    fn set_regs(&mut self, _: &Regs) -> Result<(), HvError> {
        Ok(())
    }
    fn sregs(&self) -> Result<Sregs, HvError> {
        Ok(Sregs::default())
    }
    fn set_sregs(&mut self, _: &Sregs) -> Result<(), HvError> {
        Ok(())
    }
    fn set_msrs(&mut self, _: &[(u32, u64)]) -> Result<(), HvError> {
        Ok(())
    }
    fn translate_gva(&self, gva: u64, _write: bool) -> Result<Option<u64>, HvError> {
        Ok(Some(gva))
    }
    fn kicker(&self) -> Arc<dyn Kick> {
        Arc::new(NoKick)
    }
    fn save_state(&mut self) -> Result<crate::hv::VcpuState, HvError> {
        Ok(crate::hv::VcpuState::default())
    }
    fn restore_state(&mut self, _: &crate::hv::VcpuState) -> Result<(), HvError> {
        Ok(())
    }
}

impl FakeVcpu {
    fn handle(&mut self, f: &mut dyn FnMut(u64, IoOp<'_>), addr: u64) {
        if let Some(w) = &self.write {
            f(addr, IoOp::Write(w));
        } else {
            let mut buf = vec![0; self.read_len];
            f(addr, IoOp::Read(&mut buf));
            self.read_result = buf;
        }
    }
}

fn context(dev: Arc<Mutex<Scratch>>, eoi: Arc<AtomicU8>) -> ExitContext {
    let mut pio = Bus::new("port");
    pio.insert(0x3f8, 8, dev.clone()).expect("pio");
    let mut mmio = Bus::new("MMIO");
    mmio.insert(0xd000_0000, 0x1000, dev).expect("mmio");
    ExitContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        eoi: Box::new(move |v| eoi.store(v, Ordering::SeqCst)),
        mmio_check: None,
    }
}

#[test]
fn io_and_mmio_exits_reach_the_device_at_the_right_offset() {
    let dev = Arc::new(Mutex::new(Scratch::default()));
    let ctx = context(dev.clone(), Arc::default());
    let stop = AtomicBool::new(false);
    let mut v = FakeVcpu {
        addr: 0x3fd,
        write: Some(vec![0x41]),
        read_len: 0,
        read_result: vec![],
    };
    assert!(matches!(
        handle_exit(VcpuExit::Io, &mut v, &ctx, &stop),
        Ok(Flow::Continue)
    ));
    let mut m = FakeVcpu {
        addr: 0xd000_0070,
        write: None,
        read_len: 4,
        read_result: vec![],
    };
    assert!(matches!(
        handle_exit(VcpuExit::Mmio, &mut m, &ctx, &stop),
        Ok(Flow::Continue)
    ));
    assert_eq!(m.read_result, vec![0x70, 0x71, 0x72, 0x73]);
    assert_eq!(dev.lock().expect("lock").last_write, vec![(5, vec![0x41])]);
}

#[test]
fn unclaimed_mmio_read_is_all_ones_not_fatal() {
    let ctx = context(Arc::default(), Arc::default());
    let stop = AtomicBool::new(false);
    let mut m = FakeVcpu {
        addr: 0xe000_0000,
        write: None,
        read_len: 2,
        read_result: vec![],
    };
    assert!(matches!(
        handle_exit(VcpuExit::Mmio, &mut m, &ctx, &stop),
        Ok(Flow::Continue)
    ));
    assert_eq!(m.read_result, vec![0xff, 0xff]);
}

#[test]
fn eoi_is_forwarded_and_stop_reasons_map() {
    let eoi = Arc::new(AtomicU8::new(0));
    let ctx = context(Arc::default(), eoi.clone());
    let stop = AtomicBool::new(false);
    let mut v = FakeVcpu {
        addr: 0,
        write: None,
        read_len: 0,
        read_result: vec![],
    };
    assert!(matches!(
        handle_exit(VcpuExit::IoapicEoi(0x31), &mut v, &ctx, &stop),
        Ok(Flow::Continue)
    ));
    assert_eq!(eoi.load(Ordering::SeqCst), 0x31);
    assert!(matches!(
        handle_exit(VcpuExit::Canceled, &mut v, &ctx, &stop),
        Ok(Flow::Continue)
    ));
    assert!(matches!(
        handle_exit(VcpuExit::Shutdown, &mut v, &ctx, &stop),
        Ok(Flow::Stop(VcpuStop::Shutdown))
    ));
    stop.store(true, Ordering::SeqCst);
    assert!(matches!(
        handle_exit(VcpuExit::Canceled, &mut v, &ctx, &stop),
        Ok(Flow::Stop(VcpuStop::Requested))
    ));
    assert!(matches!(run_loop(&mut v, &ctx, &stop), VcpuStop::Requested));
}
