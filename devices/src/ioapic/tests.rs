use super::*;

#[derive(Default)]
struct Recorder(Mutex<Vec<Msi>>);

impl MsiSink for Recorder {
    fn deliver(&self, msi: Msi) {
        self.0.lock().expect("recorder lock").push(msi);
    }
}

impl Recorder {
    fn take(&self) -> Vec<Msi> {
        std::mem::take(&mut *self.0.lock().expect("recorder lock"))
    }
}

fn setup() -> (Arc<Recorder>, Ioapic) {
    let rec = Arc::new(Recorder::default());
    let ioapic = Ioapic::new(Arc::clone(&rec) as Arc<dyn MsiSink>);
    (rec, ioapic)
}

fn write_reg(io: &mut Ioapic, reg: u32, value: u32) {
    io.write(IOREGSEL, &reg.to_le_bytes());
    io.write(IOWIN, &value.to_le_bytes());
}

fn read_reg(io: &mut Ioapic, reg: u32) -> u32 {
    io.write(IOREGSEL, &reg.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

/// Programs pin `pin` the way Linux does: high half (destination) first.
fn program(io: &mut Ioapic, pin: u32, low: u32, dest: u8) {
    write_reg(io, REG_REDTBL_BASE + 2 * pin + 1, u32::from(dest) << 24);
    write_reg(io, REG_REDTBL_BASE + 2 * pin, low);
}

#[test]
fn version_register_reports_24_pins_and_version_0x20() {
    let (_, mut io) = setup();
    assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0020);
}

#[test]
fn pins_start_masked() {
    let (rec, mut io) = setup();
    for pin in 0..NUM_PINS as u32 {
        assert_eq!(
            read_reg(&mut io, REG_REDTBL_BASE + 2 * pin) & (1 << 16),
            1 << 16
        );
    }
    io.set_irq(4, true);
    assert!(rec.take().is_empty());
}

#[test]
fn edge_pin_delivers_on_rising_edge_only() {
    let (rec, mut io) = setup();
    program(&mut io, 4, 0x31, 0);
    io.set_irq(4, true);
    io.set_irq(4, true);
    io.set_irq(4, false);
    assert_eq!(
        rec.take(),
        vec![Msi {
            address: 0xfee0_0000,
            data: 0x31
        }]
    );
    io.set_irq(4, true);
    io.set_irq(4, false);
    assert_eq!(rec.take().len(), 1);
}

#[test]
fn masked_edge_pin_latches_nothing() {
    let (rec, mut io) = setup();
    program(&mut io, 5, 0x40 | (1 << 16), 0);
    io.set_irq(5, true);
    io.set_irq(5, false);
    program(&mut io, 5, 0x40, 0);
    assert!(rec.take().is_empty());
}

#[test]
fn level_pin_redelivers_after_eoi_while_asserted() {
    let (rec, mut io) = setup();
    program(&mut io, 10, 0x55 | (1 << 15), 1);
    io.set_irq(10, true);
    let msis = rec.take();
    assert_eq!(msis.len(), 1);
    assert_eq!(msis[0].data, 0x55 | (1 << 15) | (1 << 14));
    assert_eq!(msis[0].address, 0xfee0_1000);
    // Remote IRR is set and visible; no second delivery until EOI.
    assert_ne!(read_reg(&mut io, REG_REDTBL_BASE + 20) & (1 << 14), 0);
    io.set_irq(10, true);
    assert!(rec.take().is_empty());
    // EOI for another vector changes nothing.
    io.end_of_interrupt(0x56);
    assert!(rec.take().is_empty());
    io.end_of_interrupt(0x55);
    assert_eq!(rec.take().len(), 1, "still asserted: delivered again");
    io.set_irq(10, false);
    io.end_of_interrupt(0x55);
    assert!(rec.take().is_empty(), "deasserted: not delivered again");
    assert_eq!(read_reg(&mut io, REG_REDTBL_BASE + 20) & (1 << 14), 0);
}

#[test]
fn eoi_register_works_like_lapic_eoi() {
    let (rec, mut io) = setup();
    program(&mut io, 3, 0x60 | (1 << 15), 0);
    io.set_irq(3, true);
    assert_eq!(rec.take().len(), 1);
    io.write(IOEOI, &0x60u32.to_le_bytes());
    assert_eq!(rec.take().len(), 1);
}

#[test]
fn masked_level_pin_is_remembered_and_delivered_on_unmask() {
    let (rec, mut io) = setup();
    program(&mut io, 7, 0x70 | (1 << 15) | (1 << 16), 0);
    io.set_irq(7, true);
    assert!(rec.take().is_empty());
    program(&mut io, 7, 0x70 | (1 << 15), 0);
    assert_eq!(rec.take().len(), 1);
}

#[test]
fn remote_irr_and_delivery_status_are_read_only() {
    let (_, mut io) = setup();
    write_reg(
        &mut io,
        REG_REDTBL_BASE,
        0x20 | (1 << 14) | (1 << 12) | (1 << 16),
    );
    assert_eq!(read_reg(&mut io, REG_REDTBL_BASE), 0x20 | (1 << 16));
}

#[test]
fn msi_fields_follow_the_redirection_entry() {
    let (rec, mut io) = setup();
    // Logical destination 0x0f, lowest priority, vector 0x99, edge.
    program(&mut io, 1, 0x99 | (1 << 8) | (1 << 11), 0x0f);
    io.set_irq(1, true);
    let msi = rec.take()[0];
    assert_eq!(
        msi.address,
        0xfee0_0000 | (0x0f << 12) | (1 << 3) | (1 << 2)
    );
    assert_eq!(msi.data, 0x99 | (1 << 8));
    // NMI delivery mode, physical destination 3.
    program(&mut io, 2, 0x02 | (4 << 8), 3);
    io.set_irq(2, true);
    let msi = rec.take()[0];
    assert_eq!(msi.address, 0xfee0_3000);
    assert_eq!(msi.data, 0x02 | (4 << 8));
}

#[test]
fn bad_pins_registers_and_sizes_are_harmless() {
    let (rec, mut io) = setup();
    io.set_irq(24, true);
    io.set_irq(255, true);
    write_reg(&mut io, 0x40, 0xffff_ffff);
    assert_eq!(read_reg(&mut io, 0x40), 0);
    let mut b = [0xaau8; 2];
    io.read(IOWIN, &mut b);
    assert_eq!(b, [0, 0]);
    io.write(IOWIN, &[1, 2]);
    io.write(0x800, &[1, 2, 3, 4]);
    let mut b8 = [0xaau8; 8];
    io.read(IOREGSEL, &mut b8);
    assert!(rec.take().is_empty());
}

#[test]
fn ioapic_pin_line_drives_the_shared_ioapic() {
    let rec = Arc::new(Recorder::default());
    let io = Arc::new(Mutex::new(
        Ioapic::new(Arc::clone(&rec) as Arc<dyn MsiSink>),
    ));
    program(&mut io.lock().expect("lock"), 4, 0x24, 0);
    let line = ioapic_pin(&io, 4);
    line.pulse();
    line.pulse();
    assert_eq!(rec.take().len(), 2);
    let bad = ioapic_pin(&io, 99);
    bad.pulse();
    assert!(rec.take().is_empty());
}

#[test]
fn extended_destination_id_bits_reach_the_msi_address() {
    let (rec, mut io) = setup();
    // APIC ID 0x1_23: bits 7:0 in 63:56, bits 14:8 in 55:49.
    write_reg(
        &mut io,
        REG_REDTBL_BASE + 2 * 6 + 1,
        (0x23 << 24) | (0x01 << 17),
    );
    write_reg(&mut io, REG_REDTBL_BASE + 2 * 6, 0x41);
    io.set_irq(6, true);
    assert_eq!(
        rec.take()[0].address,
        0xfee0_0000 | (0x23 << 12) | (0x01 << 5)
    );
}
