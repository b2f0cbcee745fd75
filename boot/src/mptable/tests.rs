use super::*;
use crate::testutil::{mem, read, u16_at, u32_at};

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Walks the configuration table entries: (type, entry bytes).
fn entries(mpc: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut off = MPC_HEADER_SIZE;
    let mut v = Vec::new();
    while off < mpc.len() {
        let len = if mpc[off] == 0 { 20 } else { 8 };
        v.push((mpc[off], mpc[off..off + len].to_vec()));
        off += len;
    }
    assert_eq!(off, mpc.len(), "entries end exactly at the table length");
    v
}

#[test]
fn floating_pointer_layout() {
    let cfg = MptableConfig::new(2, &[5, 6], Polarity::ActiveHigh, Trigger::Level);
    let b = build(&cfg, 0x9fc00).expect("build");
    let mpf = &b[..16];
    assert_eq!(&mpf[0..4], b"_MP_");
    assert_eq!(
        u32_at(mpf, 4),
        0x9fc10,
        "physptr follows the floating pointer"
    );
    assert_eq!((mpf[8], mpf[9]), (1, 4), "length in paragraphs, spec 1.4");
    assert_eq!(mpf[11], 0, "feature1 = 0: a configuration table is present");
    assert_eq!(sum(mpf), 0, "floating pointer checksum");
}

#[test]
fn configuration_table_layout() {
    for n in [1u8, 2, 8, 64] {
        let cfg = MptableConfig::new(n, &[5, 6, 7, 20], Polarity::ActiveHigh, Trigger::Level);
        let b = build(&cfg, 0x9fc00).expect("build");
        let mpc = &b[16..];
        assert_eq!(&mpc[0..4], b"PCMP");
        let len = usize::from(u16_at(mpc, 4));
        assert_eq!(len, mpc.len());
        assert_eq!(mpc[6], 4, "spec revision");
        assert_eq!(sum(&mpc[..len]), 0, "table checksum");
        assert_eq!(&mpc[8..16], b"KRYPTON ");
        assert_eq!(&mpc[16..28], b"MICROVM     ");
        assert_eq!(u32_at(mpc, 36), 0xfee0_0000, "local APIC address");
        let e = entries(mpc);
        assert_eq!(usize::from(u16_at(mpc, 34)), e.len(), "entry count");
        // Processors: APIC IDs 0..n, BSP flag only on 0, all enabled.
        let cpus: Vec<_> = e
            .iter()
            .filter(|(t, _)| *t == 0)
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(cpus.len(), usize::from(n));
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(c[1] as usize, i);
            assert_eq!(c[3], if i == 0 { 3 } else { 1 });
        }
        // One ISA bus.
        let buses: Vec<_> = e.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(buses.len(), 1);
        assert_eq!(&buses[0].1[2..8], b"ISA   ");
        // IOAPIC: ID n, enabled, at IOAPIC_BASE.
        let io: Vec<_> = e.iter().filter(|(t, _)| *t == 2).collect();
        assert_eq!(io.len(), 1);
        assert_eq!((io[0].1[1], io[0].1[3]), (n, 1));
        assert_eq!(u32_at(&io[0].1, 4), 0xfec0_0000);
        // I/O interrupts: ISA 0-15 plus pin 20, each pin once, routed to itself.
        let ints: Vec<_> = e
            .iter()
            .filter(|(t, _)| *t == 3)
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(ints.len(), 17);
        for i in &ints {
            assert_eq!(
                (i[1], i[4], i[6]),
                (0, 0, n),
                "INT from bus 0 to the IOAPIC"
            );
            assert_eq!(i[5], i[7], "source IRQ equals pin");
            let want = if [5, 6, 7, 20].contains(&i[7]) {
                0b1101
            } else {
                0b0101
            };
            assert_eq!(u16_at(i, 2), want, "irqflag of pin {}", i[7]);
        }
        // LINT0 ExtINT, LINT1 NMI.
        let lints: Vec<_> = e
            .iter()
            .filter(|(t, _)| *t == 4)
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(lints.len(), 2);
        assert_eq!((lints[0][1], lints[0][7]), (3, 0));
        assert_eq!((lints[1][1], lints[1][6], lints[1][7]), (1, 0xff, 1));
    }
}

#[test]
fn pin_modes_are_configurable() {
    let edge = MptableConfig::new(1, &[5], Polarity::Conforms, Trigger::Edge);
    let r = edge.pins.iter().find(|r| r.pin == 5).expect("pin 5");
    assert_eq!(r.irqflag(), 0b0100);
    let low = PinRoute {
        pin: 9,
        polarity: Polarity::ActiveLow,
        trigger: Trigger::Level,
    };
    assert_eq!(low.irqflag(), 0b1111);
}

#[test]
fn bad_configs_are_errors() {
    assert_eq!(
        build(
            &MptableConfig::new(0, &[], Polarity::ActiveHigh, Trigger::Level),
            0
        ),
        Err(MptableError::BadCpuCount(0))
    );
    assert_eq!(
        build(
            &MptableConfig::new(255, &[], Polarity::ActiveHigh, Trigger::Level),
            0
        ),
        Err(MptableError::BadCpuCount(255))
    );
    assert_eq!(
        build(
            &MptableConfig::new(1, &[24], Polarity::ActiveHigh, Trigger::Level),
            0
        ),
        Err(MptableError::BadPin(24))
    );
    assert!(
        build(
            &MptableConfig::new(254, &[], Polarity::ActiveHigh, Trigger::Level),
            0
        )
        .is_ok()
    );
}

#[test]
fn written_at_the_ebda() {
    let m = mem(4 << 20);
    assert_eq!(
        write(
            &m,
            &MptableConfig::new(2, &[5], Polarity::ActiveHigh, Trigger::Level)
        )
        .expect("write"),
        0x9fc00
    );
    let fp = read(&m, 0x9fc00, 16);
    assert_eq!(&fp[..4], b"_MP_");
    assert_eq!(&read(&m, u64::from(u32_at(&fp, 4)), 4), b"PCMP");
    assert!(
        write(
            &mem(0x9f000),
            &MptableConfig::new(1, &[], Polarity::ActiveHigh, Trigger::Level)
        )
        .is_err()
    );
}
