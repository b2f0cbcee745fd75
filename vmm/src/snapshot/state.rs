//! The machine state a snapshot holds besides guest memory, and its
//! encoding with [`super::codec`].

use krypton_devices::ioapic::{IoapicState, NUM_PINS};
use krypton_devices::serial::SerialState;
use krypton_devices::virtio::mmio::{QueueState, TransportState};

use super::codec::{CodecError, Reader, Writer};
use crate::hv::{DescriptorTable, MpState, Regs, Segment, Sregs, VcpuEvents, VcpuState, VmState};
use crate::machine::{MAX_CPUS, MAX_VIRTIO_DEVICES};

/// Largest XSAVE area accepted (AMX-sized areas are about 11 KiB).
const MAX_XSAVE: usize = 16 << 10;
/// Largest LAPIC page accepted.
const MAX_LAPIC: usize = 4096;
/// Most MSRs per vCPU accepted.
const MAX_MSRS: usize = 4096;
/// Most queues per virtio device accepted.
const MAX_QUEUES: usize = 64;
/// The UART's FIFO.
const MAX_SERIAL_INPUT: usize = 64;

/// Everything but guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineState {
    /// VM-wide hypervisor state.
    pub vm: VmState,
    /// One per vCPU, in ID order.
    pub vcpus: Vec<VcpuState>,
    /// The IOAPIC.
    pub ioapic: Option<IoapicState>,
    /// COM1.
    pub serial: SerialState,
    /// The virtio-mmio transports, in slot order.
    pub transports: Vec<TransportState>,
}

fn put_segment(w: &mut Writer, s: &Segment) {
    w.u64(s.base);
    w.u32(s.limit);
    w.u16(s.selector);
    w.u8(s.type_);
    w.u8(s.dpl);
    for b in [s.present, s.db, s.s, s.l, s.g, s.avl, s.unusable] {
        w.bool(b);
    }
}

fn get_segment(r: &mut Reader<'_>) -> Result<Segment, CodecError> {
    Ok(Segment {
        base: r.u64()?,
        limit: r.u32()?,
        selector: r.u16()?,
        type_: r.u8()?,
        dpl: r.u8()?,
        present: r.bool()?,
        db: r.bool()?,
        s: r.bool()?,
        l: r.bool()?,
        g: r.bool()?,
        avl: r.bool()?,
        unusable: r.bool()?,
    })
}

fn regs_array(r: &Regs) -> [u64; 18] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ]
}

fn regs_from(a: [u64; 18]) -> Regs {
    let [
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rsp,
        rbp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip,
        rflags,
    ] = a;
    Regs {
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rsp,
        rbp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip,
        rflags,
    }
}

fn put_sregs(w: &mut Writer, s: &Sregs) {
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt] {
        put_segment(w, seg);
    }
    for dt in [&s.gdt, &s.idt] {
        w.u64(dt.base);
        w.u16(dt.limit);
    }
    for v in [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base] {
        w.u64(v);
    }
}

fn get_sregs(r: &mut Reader<'_>) -> Result<Sregs, CodecError> {
    let mut segs = [Segment::default(); 8];
    for s in &mut segs {
        *s = get_segment(r)?;
    }
    let [cs, ds, es, fs, gs, ss, tr, ldt] = segs;
    let mut dts = [DescriptorTable::default(); 2];
    for d in &mut dts {
        d.base = r.u64()?;
        d.limit = r.u16()?;
    }
    let [gdt, idt] = dts;
    Ok(Sregs {
        cs,
        ds,
        es,
        fs,
        gs,
        ss,
        tr,
        ldt,
        gdt,
        idt,
        cr0: r.u64()?,
        cr2: r.u64()?,
        cr3: r.u64()?,
        cr4: r.u64()?,
        cr8: r.u64()?,
        efer: r.u64()?,
        apic_base: r.u64()?,
    })
}

fn put_events(w: &mut Writer, e: &VcpuEvents) {
    w.bool(e.exception_injected);
    w.bool(e.exception_pending);
    w.u8(e.exception_nr);
    w.bool(e.exception_has_error_code);
    w.u32(e.exception_error_code);
    w.bool(e.interrupt_injected);
    w.u8(e.interrupt_nr);
    w.bool(e.interrupt_soft);
    w.u8(e.interrupt_shadow);
    w.bool(e.nmi_injected);
    w.bool(e.nmi_pending);
    w.bool(e.nmi_masked);
    w.u32(e.sipi_vector);
}

fn get_events(r: &mut Reader<'_>) -> Result<VcpuEvents, CodecError> {
    Ok(VcpuEvents {
        exception_injected: r.bool()?,
        exception_pending: r.bool()?,
        exception_nr: r.u8()?,
        exception_has_error_code: r.bool()?,
        exception_error_code: r.u32()?,
        interrupt_injected: r.bool()?,
        interrupt_nr: r.u8()?,
        interrupt_soft: r.bool()?,
        interrupt_shadow: r.u8()?,
        nmi_injected: r.bool()?,
        nmi_pending: r.bool()?,
        nmi_masked: r.bool()?,
        sipi_vector: r.u32()?,
    })
}

fn put_vcpu(w: &mut Writer, v: &VcpuState) {
    regs_array(&v.regs).iter().for_each(|&x| w.u64(x));
    put_sregs(w, &v.sregs);
    w.len(v.msrs.len());
    for &(i, d) in &v.msrs {
        w.u32(i);
        w.u64(d);
    }
    w.bytes(&v.xsave);
    w.u64(v.xcr0);
    w.bytes(&v.lapic);
    v.debug.iter().for_each(|&x| w.u64(x));
    put_events(w, &v.events);
    w.u32(v.mp_state.to_raw());
}

fn get_vcpu(r: &mut Reader<'_>) -> Result<VcpuState, CodecError> {
    let mut regs = [0u64; 18];
    for x in &mut regs {
        *x = r.u64()?;
    }
    let sregs = get_sregs(r)?;
    let n = r.len("MSR list", MAX_MSRS)?;
    let mut msrs = Vec::with_capacity(n);
    for _ in 0..n {
        msrs.push((r.u32()?, r.u64()?));
    }
    let xsave = r.bytes("XSAVE area", MAX_XSAVE)?;
    let xcr0 = r.u64()?;
    let lapic = r.bytes("LAPIC page", MAX_LAPIC)?;
    let mut debug = [0u64; 6];
    for x in &mut debug {
        *x = r.u64()?;
    }
    let events = get_events(r)?;
    let mp_state = MpState::from_raw(r.u32()?).ok_or(CodecError::Invalid("MP state"))?;
    Ok(VcpuState {
        regs: regs_from(regs),
        sregs,
        msrs,
        xsave,
        xcr0,
        lapic,
        debug,
        events,
        mp_state,
    })
}

fn put_serial(w: &mut Writer, s: &SerialState) {
    for b in [
        s.baud_divisor_low,
        s.baud_divisor_high,
        s.interrupt_enable,
        s.interrupt_identification,
        s.line_control,
        s.line_status,
        s.modem_control,
        s.modem_status,
        s.scratch,
    ] {
        w.u8(b);
    }
    w.bytes(&s.in_buffer);
}

fn get_serial(r: &mut Reader<'_>) -> Result<SerialState, CodecError> {
    Ok(SerialState {
        baud_divisor_low: r.u8()?,
        baud_divisor_high: r.u8()?,
        interrupt_enable: r.u8()?,
        interrupt_identification: r.u8()?,
        line_control: r.u8()?,
        line_status: r.u8()?,
        modem_control: r.u8()?,
        modem_status: r.u8()?,
        scratch: r.u8()?,
        in_buffer: r.bytes("serial input", MAX_SERIAL_INPUT)?,
    })
}

fn put_ioapic(w: &mut Writer, s: &IoapicState) {
    w.u32(s.id);
    w.u32(s.regsel);
    s.redir.iter().for_each(|&e| w.u64(e));
    s.levels.iter().for_each(|&l| w.bool(l));
}

fn get_ioapic(r: &mut Reader<'_>) -> Result<IoapicState, CodecError> {
    let (id, regsel) = (r.u32()?, r.u32()?);
    let mut redir = [0u64; NUM_PINS];
    for e in &mut redir {
        *e = r.u64()?;
    }
    let mut levels = [false; NUM_PINS];
    for l in &mut levels {
        *l = r.bool()?;
    }
    Ok(IoapicState {
        id,
        regsel,
        redir,
        levels,
    })
}

fn put_transport(w: &mut Writer, t: &TransportState) {
    for v in [
        t.device_type,
        t.status,
        t.device_features_sel,
        t.driver_features_sel,
    ] {
        w.u32(v);
    }
    w.u64(t.driver_features);
    for v in [
        t.queue_sel,
        t.shm_sel,
        t.interrupt_status,
        t.config_generation,
    ] {
        w.u32(v);
    }
    w.len(t.queues.len());
    for q in &t.queues {
        w.u16(q.size);
        w.bool(q.ready);
        w.u64(q.desc);
        w.u64(q.driver);
        w.u64(q.device);
        w.u16(q.progress);
    }
}

fn get_transport(r: &mut Reader<'_>) -> Result<TransportState, CodecError> {
    let (device_type, status, device_features_sel, driver_features_sel) =
        (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
    let driver_features = r.u64()?;
    let (queue_sel, shm_sel, interrupt_status, config_generation) =
        (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
    let n = r.len("queue list", MAX_QUEUES)?;
    let mut queues = Vec::with_capacity(n);
    for _ in 0..n {
        queues.push(QueueState {
            size: r.u16()?,
            ready: r.bool()?,
            desc: r.u64()?,
            driver: r.u64()?,
            device: r.u64()?,
            progress: r.u16()?,
        });
    }
    Ok(TransportState {
        device_type,
        status,
        device_features_sel,
        driver_features_sel,
        driver_features,
        queue_sel,
        shm_sel,
        interrupt_status,
        config_generation,
        queues,
    })
}

impl MachineState {
    /// Encodes the state.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.vm.clock_ns);
        w.len(self.vcpus.len());
        self.vcpus.iter().for_each(|v| put_vcpu(&mut w, v));
        w.bool(self.ioapic.is_some());
        if let Some(io) = &self.ioapic {
            put_ioapic(&mut w, io);
        }
        put_serial(&mut w, &self.serial);
        w.len(self.transports.len());
        self.transports
            .iter()
            .for_each(|t| put_transport(&mut w, t));
        w.into_bytes()
    }

    /// Decodes what [`MachineState::encode`] wrote; anything else is an
    /// error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<MachineState, CodecError> {
        let mut r = Reader::new(bytes);
        let vm = VmState { clock_ns: r.u64()? };
        let n = r.len("vCPU list", usize::from(MAX_CPUS))?;
        let mut vcpus = Vec::with_capacity(n);
        for _ in 0..n {
            vcpus.push(get_vcpu(&mut r)?);
        }
        let ioapic = if r.bool()? {
            Some(get_ioapic(&mut r)?)
        } else {
            None
        };
        let serial = get_serial(&mut r)?;
        let n = r.len("virtio device list", MAX_VIRTIO_DEVICES)?;
        let mut transports = Vec::with_capacity(n);
        for _ in 0..n {
            transports.push(get_transport(&mut r)?);
        }
        r.finish()?;
        Ok(MachineState {
            vm,
            vcpus,
            ioapic,
            serial,
            transports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> MachineState {
        let mut v = VcpuState {
            msrs: vec![(0x10, 12345), (0xc000_0080, 0xd01)],
            xsave: vec![0xab; 4096],
            xcr0: 7,
            lapic: vec![0x11; 1024],
            debug: [1, 2, 3, 4, 0xffff_0ff0, 0x400],
            mp_state: MpState::Halted,
            ..Default::default()
        };
        v.regs.rip = 0xffff_ffff_8100_0000;
        v.regs.rflags = 0x246;
        v.sregs.cs.l = true;
        v.sregs.cs.selector = 0x10;
        v.sregs.cr3 = 0x1000;
        v.events.nmi_masked = true;
        v.events.sipi_vector = 9;
        let mut io = IoapicState {
            id: 0,
            regsel: 0x10,
            redir: [0x1_0000; NUM_PINS],
            levels: [false; NUM_PINS],
        };
        io.redir[4] = 0x24;
        io.levels[4] = true;
        MachineState {
            vm: VmState { clock_ns: 42 },
            vcpus: vec![v.clone(), v],
            ioapic: Some(io),
            serial: SerialState {
                in_buffer: b"hi".to_vec(),
                ..Default::default()
            },
            transports: vec![TransportState {
                device_type: 19,
                status: 15,
                driver_features: 1 << 32,
                queues: vec![
                    QueueState {
                        size: 256,
                        ready: true,
                        desc: 0x1000,
                        driver: 0x2000,
                        device: 0x3000,
                        progress: 65535,
                    };
                    3
                ],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn state_round_trips() {
        let s = sample();
        assert_eq!(MachineState::decode(&s.encode()), Ok(s));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(
                MachineState::decode(&b[..n]).is_err(),
                "prefix {n} accepted"
            );
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(MachineState::decode(&longer), Err(CodecError::Trailing(1)));
    }
}
