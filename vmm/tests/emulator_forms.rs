//! The MMIO emulator on hand-written instruction bytes: every supported
//! form, size, prefix and mode, plus rejection of what it does not support.

mod emulator_support;

use emulator_support::*;
use krypton::emulator::{CpuMode, EmulatorError, Register::*, emulate_mmio};

const B64: CpuMode = CpuMode::Bits64;

fn cpu64() -> FakeCpu {
    let mut c = FakeCpu::new(B64);
    c.set(RAX, MMIO).set(RBX, 0x1122_3344_5566_7788);
    c
}

#[test]
fn mov_store_register_all_sizes() {
    for (bytes, data) in [
        (&[0x88, 0x18][..], &[0x88][..]),                   // mov [rax], bl
        (&[0x88, 0x38][..], &[0x77][..]),                   // mov [rax], bh
        (&[0x66, 0x89, 0x18][..], &[0x88, 0x77][..]),       // mov [rax], bx
        (&[0x89, 0x18][..], &[0x88, 0x77, 0x66, 0x55][..]), // mov [rax], ebx
        (
            &[0x48, 0x89, 0x18][..],
            &0x1122_3344_5566_7788u64.to_le_bytes()[..],
        ), // mov [rax], rbx
    ] {
        let mut c = cpu64();
        let log = run_ok(&mut c, bytes, MMIO);
        assert_eq!(log, vec![(MMIO, data.to_vec(), true)], "{bytes:02x?}");
        assert_eq!(c.regs.rip, 0x1000 + bytes.len() as u64);
    }
}

#[test]
fn mov_load_merges_and_zero_extends() {
    let v = pattern_value(MMIO, 8);
    let old = 0x1122_3344_5566_7788u64;
    for (bytes, expect) in [
        (&[0x8a, 0x18][..], (old & !0xff) | (v & 0xff)), // mov bl, [rax]
        (&[0x8a, 0x38][..], (old & !0xff00) | ((v & 0xff) << 8)), // mov bh, [rax]
        (&[0x66, 0x8b, 0x18][..], (old & !0xffff) | (v & 0xffff)), // mov bx, [rax]
        (&[0x8b, 0x18][..], v & 0xffff_ffff),            // mov ebx, [rax]
        (&[0x48, 0x8b, 0x18][..], v),                    // mov rbx, [rax]
    ] {
        let mut c = cpu64();
        let log = run_ok(&mut c, bytes, MMIO);
        assert_eq!(log.len(), 1);
        assert!(!log[0].2);
        assert_eq!(c.get(RBX), expect, "{bytes:02x?}");
    }
}

#[test]
fn mov_immediate_to_memory() {
    for (bytes, data) in [
        (&[0xc6, 0x00, 0x5a][..], vec![0x5a]),
        (&[0x66, 0xc7, 0x00, 0x34, 0x12][..], vec![0x34, 0x12]),
        (
            &[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12][..],
            vec![0x78, 0x56, 0x34, 0x12],
        ),
        // imm32 sign-extended to 64 bits
        (
            &[0x48, 0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff][..],
            vec![0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ] {
        let mut c = cpu64();
        assert_eq!(
            run_ok(&mut c, bytes, MMIO),
            vec![(MMIO, data, true)],
            "{bytes:02x?}"
        );
    }
}

#[test]
fn moffs_forms() {
    let addr = (MMIO + 0x10).to_le_bytes();
    let mut load = vec![0x48, 0xa1];
    load.extend_from_slice(&addr);
    let mut c = cpu64();
    run_ok(&mut c, &load, MMIO + 0x10);
    assert_eq!(c.get(RAX), pattern_value(MMIO + 0x10, 8));

    let mut store = vec![0xa2]; // mov [moffs], al
    store.extend_from_slice(&addr);
    let mut c = cpu64();
    c.set(RAX, 0xabcd);
    assert_eq!(
        run_ok(&mut c, &store, MMIO + 0x10),
        vec![(MMIO + 0x10, vec![0xcd], true)]
    );
    assert_eq!(c.regs.rip, 0x1000 + 9);

    // 32-bit mode: a3 with a 4-byte offset
    let mut c = FakeCpu::new(CpuMode::Bits32);
    c.set(RAX, 0xdead_beef);
    let mut b = vec![0xa3];
    b.extend_from_slice(&(MMIO as u32).to_le_bytes());
    assert_eq!(
        run_ok(&mut c, &b, MMIO),
        vec![(MMIO, vec![0xef, 0xbe, 0xad, 0xde], true)]
    );
}

#[test]
fn movzx_movsx_movsxd() {
    // Make the device return values with the sign bit set.
    let neg = |c: &mut FakeCpu, bytes: &[u8]| {
        let mut dev = Dev::default();
        for i in 0..8 {
            dev.mem.insert(MMIO + i, 0x80 | i as u8);
        }
        emulate_mmio(c, bytes, MMIO, &mut |a, op| dev.handle(a, op)).expect("emulates");
    };
    let cases: [(&[u8], u64); 8] = [
        (&[0x0f, 0xb6, 0x18], 0x80),                        // movzx ebx, byte
        (&[0x0f, 0xb7, 0x18], 0x8180),                      // movzx ebx, word
        (&[0x48, 0x0f, 0xb6, 0x18], 0x80),                  // movzx rbx, byte
        (&[0x0f, 0xbe, 0x18], 0xffff_ff80),                 // movsx ebx, byte
        (&[0x0f, 0xbf, 0x18], 0xffff_8180),                 // movsx ebx, word
        (&[0x48, 0x0f, 0xbe, 0x18], 0xffff_ffff_ffff_ff80), // movsx rbx, byte
        (&[0x48, 0x63, 0x18], 0xffff_ffff_8382_8180),       // movsxd rbx, dword
        (&[0x66, 0x0f, 0xbe, 0x18], 0x1122_3344_5566_ff80), // movsx bx, byte (merges)
    ];
    for (bytes, expect) in cases {
        let mut c = cpu64();
        neg(&mut c, bytes);
        assert_eq!(c.get(RBX), expect, "{bytes:02x?}");
    }
}

#[test]
fn addressing_modes() {
    // mov [rax+rcx*4+0x10], edx
    let mut c = cpu64();
    c.set(RAX, MMIO).set(RCX, 3).set(RDX, 0x0403_0201);
    assert_eq!(
        run_ok(&mut c, &[0x89, 0x54, 0x88, 0x10], MMIO + 0x1c)[0].0,
        MMIO + 0x1c
    );
    // REX.B base and REX.R source: mov [r15], r8d
    let mut c = cpu64();
    c.set(R15, MMIO + 4).set(R8, 0xfeed_f00d);
    assert_eq!(
        run_ok(&mut c, &[0x45, 0x89, 0x07], MMIO + 4),
        vec![(MMIO + 4, vec![0x0d, 0xf0, 0xed, 0xfe], true)]
    );
    // REX.W + REX.R destination: mov r15, [rax]
    let mut c = cpu64();
    run_ok(&mut c, &[0x4c, 0x8b, 0x38], MMIO);
    assert_eq!(c.get(R15), pattern_value(MMIO, 8));
    // spl (REX without W selects spl, not ah): mov [rax], spl
    let mut c = cpu64();
    c.set(RSP, 0x77);
    assert_eq!(run_ok(&mut c, &[0x40, 0x88, 0x20], MMIO)[0].1, vec![0x77]);
}

#[test]
fn rip_relative() {
    // mov eax, [rip+0x100]: length 6, address = next rip + 0x100
    let mut c = cpu64();
    c.regs.rip = MMIO - 0x106;
    let log = run_ok(&mut c, &[0x8b, 0x05, 0x00, 0x01, 0x00, 0x00], MMIO);
    assert_eq!(log[0].0, MMIO);
    assert_eq!(c.get(RAX), pattern_value(MMIO, 4));
    // mov dword [rip-8], 7: address relative to the end of the 10-byte insn
    let mut c = cpu64();
    c.regs.rip = MMIO;
    c.virt_offset = 0;
    let b = [0xc7, 0x05, 0xf8, 0xff, 0xff, 0xff, 0x07, 0, 0, 0];
    assert_eq!(
        run_ok(&mut c, &b, MMIO + 2),
        vec![(MMIO + 2, vec![7, 0, 0, 0], true)]
    );
}

#[test]
fn segment_overrides() {
    // 64-bit: fs applies its base, ds override and ds base are ignored.
    let mut c = cpu64();
    c.sregs.fs.base = 0x1000;
    c.sregs.ds.base = 0x5000;
    c.set(RAX, MMIO - 0x1000);
    let d = krypton::emulator::decode_access(&c, &[0x64, 0x8b, 0x00]).expect("decodes");
    assert_eq!(d.accesses[0].linear, MMIO);
    c.set(RAX, MMIO);
    let d = krypton::emulator::decode_access(&c, &[0x3e, 0x8b, 0x00]).expect("decodes");
    assert_eq!(d.accesses[0].linear, MMIO);
    // 32-bit: ds and es bases apply; an es override selects es.
    let mut c = FakeCpu::new(CpuMode::Bits32);
    c.sregs.ds.base = 0x100;
    c.sregs.es.base = 0x200;
    c.set(RAX, MMIO);
    let d = krypton::emulator::decode_access(&c, &[0x8b, 0x00]).expect("decodes");
    assert_eq!(d.accesses[0].linear, MMIO + 0x100);
    let d = krypton::emulator::decode_access(&c, &[0x26, 0x8b, 0x00]).expect("decodes");
    assert_eq!(d.accesses[0].linear, MMIO + 0x200);
}

#[test]
fn mode_32_and_16() {
    // 32-bit: 0x66 selects 16-bit data; 0x67 selects 16-bit addressing.
    let mut c = FakeCpu::new(CpuMode::Bits32);
    c.set(RAX, MMIO).set(RBX, 0xaabb_ccdd);
    assert_eq!(
        run_ok(&mut c, &[0x66, 0x89, 0x18], MMIO)[0].1,
        vec![0xdd, 0xcc]
    );
    let mut c = FakeCpu::new(CpuMode::Bits32);
    c.sregs.ds.base = MMIO;
    c.set(RBX, 0x1_0040).set(RAX, 0x1234_5678); // [bx] uses only the low 16 bits
    assert_eq!(
        run_ok(&mut c, &[0x67, 0x89, 0x07], MMIO + 0x40),
        vec![(MMIO + 0x40, vec![0x78, 0x56, 0x34, 0x12], true)]
    );
    // Real mode: mov [bx], ax is 16-bit; 0x66 makes it 32-bit.
    let mut c = FakeCpu::new(CpuMode::Bits16);
    c.sregs.ds.base = 0xb_0000;
    c.set(RBX, 0x10).set(RAX, 0x1234_5678);
    assert_eq!(
        run_ok(&mut c, &[0x89, 0x07], 0xb_0010),
        vec![(0xb_0010, vec![0x78, 0x56], true)]
    );
    let mut c = FakeCpu::new(CpuMode::Bits16);
    c.sregs.ds.base = 0xb_0000;
    c.set(RBX, 0x10).set(RAX, 0x1234_5678);
    assert_eq!(
        run_ok(&mut c, &[0x66, 0x89, 0x07], 0xb_0010)[0].1,
        vec![0x78, 0x56, 0x34, 0x12]
    );
    // In 32-bit mode writing a 32-bit register still clears bits 63:32 of the model.
    let mut c = FakeCpu::new(CpuMode::Bits32);
    c.set(RAX, MMIO).set(RBX, u64::MAX);
    run_ok(&mut c, &[0x8b, 0x18], MMIO);
    assert_eq!(c.get(RBX), pattern_value(MMIO, 4));
}

#[test]
fn mode_from_state() {
    assert_eq!(
        CpuMode::from_state(false, false, false, false, false),
        CpuMode::Bits16
    );
    assert_eq!(
        CpuMode::from_state(true, false, false, false, true),
        CpuMode::Bits32
    );
    assert_eq!(
        CpuMode::from_state(true, true, false, true, false),
        CpuMode::Bits64
    );
    assert_eq!(
        CpuMode::from_state(true, true, false, false, true),
        CpuMode::Bits32
    ); // compatibility mode
    assert_eq!(
        CpuMode::from_state(true, false, false, true, true),
        CpuMode::Bits32
    ); // L without LMA
    assert_eq!(
        CpuMode::from_state(true, false, true, false, true),
        CpuMode::Bits16
    ); // virtual-8086
}

#[test]
fn xchg_swaps() {
    let mut c = cpu64();
    let log = run_ok(&mut c, &[0x87, 0x18], MMIO); // xchg [rax], ebx
    assert_eq!(
        log,
        vec![
            (
                MMIO,
                pattern_value(MMIO, 4).to_le_bytes()[..4].to_vec(),
                false
            ),
            (MMIO, vec![0x88, 0x77, 0x66, 0x55], true)
        ]
    );
    assert_eq!(c.get(RBX), pattern_value(MMIO, 4));
    let mut c = cpu64();
    run_ok(&mut c, &[0x86, 0x18], MMIO); // xchg [rax], bl
    assert_eq!(c.get(RBX), 0x1122_3344_5566_7700 | pattern_value(MMIO, 1));
}

#[test]
fn unsupported_and_invalid_are_errors() {
    let mut c = cpu64();
    match run(&mut c, &[0x0f, 0x28, 0x00], MMIO).0 {
        Err(EmulatorError::Unsupported { mnemonic, bytes }) => {
            assert_eq!(mnemonic, "Movaps");
            assert_eq!(bytes, vec![0x0f, 0x28, 0x00]);
        }
        other => panic!("movaps: {other:?}"),
    }
    // mov [rax], ds (segment register source) is not an MMIO form we do.
    assert!(matches!(
        run(&mut c, &[0x8c, 0x18], MMIO).0,
        Err(EmulatorError::Unsupported { .. })
    ));
    // A register-only instruction cannot have faulted on MMIO.
    assert!(matches!(
        run(&mut c, &[0x89, 0xd8], MMIO).0,
        Err(EmulatorError::Unsupported { .. })
    ));
    // Invalid opcode in 64-bit mode (0x06 = push es).
    let r = run(&mut c, &[0x06, 0x90, 0x90], MMIO).0;
    assert!(matches!(r, Err(EmulatorError::Decode { .. })), "{r:?}");
    // The message names the mnemonic, and converts to HvError::Guest.
    let e = run(&mut c, &[0x0f, 0x28, 0x00], MMIO)
        .0
        .expect_err("unsupported");
    let hv: krypton::hv::HvError = e.into();
    assert!(
        matches!(&hv, krypton::hv::HvError::Guest(m) if m.contains("Movaps")),
        "{hv}"
    );
    assert_eq!(c.regs.rip, 0x1000, "a failed emulation must not move RIP");
}

#[test]
fn short_exit_bytes_are_refetched_from_guest_memory() {
    // mov dword [rax], 0x12345678 is 6 bytes; the exit carried 2.
    let mut c = cpu64();
    c.regs.rip = RAM_BASE + 0x100;
    c.ram[0x100..0x106].copy_from_slice(&[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12]);
    let log = run_ok(&mut c, &[0xc7, 0x00], MMIO);
    assert_eq!(log, vec![(MMIO, vec![0x78, 0x56, 0x34, 0x12], true)]);
    // Code that is not in RAM cannot be fetched: an error, not a panic.
    let mut c = cpu64();
    assert!(matches!(
        run(&mut c, &[0xc7, 0x00], MMIO).0,
        Err(EmulatorError::Fetch(_))
    ));
}

#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..20_000 {
        let mut bytes = [0u8; 16];
        for b in &mut bytes {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let n = (seed >> 40) as usize % 17;
        for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
            let mut c = FakeCpu::new(mode);
            c.set(RAX, MMIO)
                .set(RCX, seed >> 50)
                .set(RSI, RAM_BASE)
                .set(RDI, MMIO);
            c.regs.rflags |= seed & 0x400;
            let _ = run(&mut c, &bytes[..n], MMIO);
            let _ = krypton::emulator::decode_access(&c, &bytes[..n]);
        }
    }
}
