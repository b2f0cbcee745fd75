use super::*;
use crate::layout::{EBDA_START, PVH_INFO_START, ZERO_PAGE_START, ram_regions};
use crate::testutil::{
    BzSpec, ElfSpec, build_bzimage, build_elf, mem, read, u16_at, u32_at, u64_at,
};

const MEM: u64 = 64 << 20;

fn vmlinux(pvh: bool) -> Vec<u8> {
    let note = pvh.then(|| 0x100_0040u64.to_le_bytes().to_vec());
    build_elf(&ElfSpec {
        is64: true,
        entry: 0x100_0000,
        paddr: 0x100_0000,
        code: &[0x90; 256],
        bss: 0x1000,
        note_desc: note,
    })
}

fn config(kernel: Vec<u8>) -> KernelConfig {
    let mut c = KernelConfig::new(ImageSource::Bytes(kernel), 2, ram_regions(MEM));
    c.initrd = Some(ImageSource::Bytes(vec![0x5a; 10_000]));
    c.virtio_devices = vec![
        VirtioMmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        },
        VirtioMmioDevice {
            base: 0xd000_1000,
            size: 0x1000,
            irq: 6,
        },
    ];
    c
}

/// Checks the e820 table of the zero page at ZERO_PAGE_START.
fn assert_e820(zp: &[u8]) {
    let want = [
        (0u64, 0x9fc00u64, 1u32),
        (0x9fc00, 0x100000 - 0x9fc00, 2),
        (0x100000, MEM - 0x100000, 1),
    ];
    assert_eq!(zp[0x1e8] as usize, want.len(), "e820_entries");
    for (i, (addr, size, ty)) in want.iter().enumerate() {
        let e = 0x2d0 + i * 20;
        assert_eq!(
            (u64_at(zp, e), u64_at(zp, e + 8), u32_at(zp, e + 16)),
            (*addr, *size, *ty),
            "e820[{i}]"
        );
    }
    assert_eq!(u64_at(zp, 0x2d0 + 3 * 20 + 8), 0, "no fourth entry");
}

fn expected_initrd_addr() -> u64 {
    (MEM - 10_000) & !0xfff
}

#[test]
fn pvh_start_info_layout() {
    let m = mem(MEM);
    let cfg = config(vmlinux(true));
    let s = load_kernel(&m, &cfg).expect("load");
    assert_eq!((s.regs.rip, s.regs.rbx), (0x100_0040, PVH_INFO_START));
    assert_eq!(s.sregs.cr0 & 0x8000_0001, 1, "protected mode, paging off");
    assert!(!s.msrs.is_empty());

    let info = read(&m, PVH_INFO_START, 56);
    assert_eq!(u32_at(&info, 0), 0x336e_c578, "magic");
    assert_eq!(u32_at(&info, 4), 1, "version");
    assert_eq!(u32_at(&info, 8), 0, "flags");
    assert_eq!(u32_at(&info, 12), 1, "nr_modules");
    let modlist = u64_at(&info, 16);
    assert_eq!(u64_at(&info, 24), CMDLINE_START, "cmdline_paddr");
    assert_eq!(u64_at(&info, 32), 0, "rsdp_paddr");
    let memmap = u64_at(&info, 40);
    assert_eq!(u32_at(&info, 48), 3, "memmap_entries");

    let module = read(&m, modlist, 32);
    assert_eq!(
        (u64_at(&module, 0), u64_at(&module, 8)),
        (expected_initrd_addr(), 10_000)
    );
    assert_eq!(read(&m, expected_initrd_addr(), 4), [0x5a; 4]);

    let mm = read(&m, memmap, 3 * 24);
    let want = [
        (0u64, 0x9fc00u64, 1u32),
        (0x9fc00, 0x60400, 2),
        (0x100000, MEM - 0x100000, 1),
    ];
    for (i, (a, sz, t)) in want.iter().enumerate() {
        assert_eq!(
            (
                u64_at(&mm, i * 24),
                u64_at(&mm, i * 24 + 8),
                u32_at(&mm, i * 24 + 16)
            ),
            (*a, *sz, *t)
        );
    }

    let full = cfg.full_cmdline();
    assert!(
        full.ends_with("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6")
    );
    let mut want_cmd = full.clone().into_bytes();
    want_cmd.push(0);
    assert_eq!(read(&m, CMDLINE_START, want_cmd.len()), want_cmd);
    assert_eq!(
        read(&m, 0x100_0000, 4),
        [0x90; 4],
        "kernel at its physical address"
    );
    assert_eq!(&read(&m, EBDA_START, 4), b"_MP_");
}

#[test]
fn elf_zero_page_with_forced_linux64() {
    let m = mem(MEM);
    let mut cfg = config(vmlinux(true));
    cfg.protocol = BootProtocol::ForceLinux64;
    let s = load_kernel(&m, &cfg).expect("load");
    assert_eq!((s.regs.rip, s.regs.rsi), (0x100_0000, ZERO_PAGE_START));
    assert!(s.sregs.cs.l && s.sregs.efer & 0x500 == 0x500);
    let zp = read(&m, ZERO_PAGE_START, 4096);
    assert_eq!(u16_at(&zp, 0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(zp[0x210], 0xff, "type_of_loader");
    assert_eq!(
        u32_at(&zp, 0x218),
        expected_initrd_addr() as u32,
        "ramdisk_image"
    );
    assert_eq!(u32_at(&zp, 0x21c), 10_000, "ramdisk_size");
    assert_eq!(u32_at(&zp, 0x228), CMDLINE_START as u32, "cmd_line_ptr");
    assert_eq!(u32_at(&zp, 0x230), 0x100_0000, "kernel_alignment");
    assert_eq!(u32_at(&zp, 0xc8), 0, "ext_cmd_line_ptr");
    assert_e820(&zp);
    // Without the note, Auto picks the same 64-bit entry.
    let auto = load_kernel(&m, &config(vmlinux(false))).expect("load");
    assert_eq!(
        (auto.regs.rip, auto.regs.rsi),
        (0x100_0000, ZERO_PAGE_START)
    );
}

#[test]
fn bzimage_zero_page_keeps_the_setup_header() {
    let m = mem(MEM);
    let image = build_bzimage(&BzSpec::default());
    let s = load_kernel(&m, &config(image.clone())).expect("load");
    assert_eq!((s.regs.rip, s.regs.rsi), (0x10_0200, ZERO_PAGE_START));
    assert!(s.sregs.cs.l);
    let payload = &image[3 * 512..];
    assert_eq!(
        read(&m, 0x10_0000, payload.len()),
        payload,
        "protected-mode part at 1 MiB"
    );
    let zp = read(&m, ZERO_PAGE_START, 4096);
    // Header fields copied from the image...
    for (off, len) in [
        (0x1f1, 1),
        (0x1f4, 4),
        (0x206, 2),
        (0x230, 4),
        (0x236, 2),
        (0x238, 4),
        (0x258, 8),
        (0x260, 4),
    ] {
        assert_eq!(
            zp[off..off + len],
            image[off..off + len],
            "header field at {off:#x}"
        );
    }
    // ...and the loader's fields filled in.
    assert_eq!(zp[0x210], 0xff);
    assert_eq!(u32_at(&zp, 0x228), CMDLINE_START as u32);
    assert_eq!(u32_at(&zp, 0x218), expected_initrd_addr() as u32);
    assert_eq!(u32_at(&zp, 0x21c), 10_000);
    assert_e820(&zp);
}

#[test]
fn mp_table_matches_the_config() {
    let m = mem(MEM);
    let mut cfg = config(vmlinux(true));
    cfg.num_cpus = 3;
    load_kernel(&m, &cfg).expect("load");
    let fp = read(&m, EBDA_START, 16);
    let mpc = read(&m, u64::from(u32_at(&fp, 4)), 44);
    let len = u16_at(&mpc, 4) as usize;
    let table = read(&m, u64::from(u32_at(&fp, 4)), len);
    assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    // 3 CPUs + bus + IOAPIC + 16 INT + 2 LINT.
    assert_eq!(u16_at(&mpc, 34), 3 + 2 + 16 + 2);
    let level_pins: Vec<u8> = (0..16)
        .map(|i| 44 + 3 * 20 + 16 + i * 8)
        .filter(|&o| u16_at(&table, o + 2) == 0b1101)
        .map(|o| table[o + 7])
        .collect();
    assert_eq!(level_pins, [5, 6]);
}

#[test]
fn initrd_that_does_not_fit_is_an_error() {
    let m = mem(MEM);
    let mut cfg = config(vmlinux(false));
    cfg.initrd = Some(ImageSource::Bytes(vec![0; (MEM - 0x100_0000) as usize]));
    match load_kernel(&m, &cfg) {
        Err(e @ BootError::InitrdTooBig { .. }) => assert!(e.to_string().contains("does not fit")),
        other => panic!("expected InitrdTooBig, got {other:?}"),
    }
    // initrd_addr_max caps the placement below the top of low RAM.
    assert_eq!(
        place_initrd(0x1800, 0x200_0000, 0x7fff_ffff, 0xc000_0000).expect("fits"),
        0x7fff_e000
    );
    assert_eq!(
        place_initrd(0x1000, 0x200_0000, 0x3fff_ffff, 0x4000_0000).expect("fits"),
        0x3fff_f000
    );
    assert!(place_initrd(0x2000, 0x3fff_f001, 0x3fff_ffff, 0x4000_0000).is_err());
    assert!(place_initrd(u64::MAX, 0, u64::MAX, 0x4000_0000).is_err());
}

#[test]
fn cmdline_too_long_is_an_error() {
    let m = mem(MEM);
    let mut cfg = config(vmlinux(true));
    cfg.virtio_devices.clear();
    cfg.cmdline = "x".repeat(2047);
    assert!(load_kernel(&m, &cfg).is_ok());
    cfg.cmdline = "x".repeat(2048);
    assert!(matches!(
        load_kernel(&m, &cfg),
        Err(BootError::CmdlineTooLong {
            len: 2048,
            max: 2047
        })
    ));
    // A bzImage states its own limit.
    let mut bz = config(build_bzimage(&BzSpec {
        cmdline_size: 255,
        ..Default::default()
    }));
    bz.cmdline = "y".repeat(200);
    assert!(matches!(
        load_kernel(&m, &bz),
        Err(BootError::CmdlineTooLong { max: 255, .. })
    ));
    bz.cmdline = "a\0b".into();
    assert!(matches!(load_kernel(&m, &bz), Err(BootError::CmdlineNul)));
}

#[test]
fn truncated_and_corrupt_kernels_are_errors() {
    let m = mem(MEM);
    for image in [vmlinux(true), build_bzimage(&BzSpec::default())] {
        for len in (0..image.len() - 1).step_by(7) {
            let r = load_kernel(&m, &config(image[..len].to_vec()));
            assert!(r.is_err(), "image truncated to {len} bytes loaded");
        }
    }
    let e = load_kernel(&m, &config(b"just some text".to_vec())).expect_err("garbage");
    assert!(e.to_string().contains("neither ELF nor bzImage"), "{e}");
    for (spec, what) in [
        (
            BzSpec {
                version: 0x020b,
                ..Default::default()
            },
            "too old",
        ),
        (
            BzSpec {
                xloadflags: 0,
                ..Default::default()
            },
            "64-bit entry",
        ),
    ] {
        let err = load_kernel(&m, &config(build_bzimage(&spec))).expect_err(what);
        let chain = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(chain.contains(what), "{chain}");
    }
    // init_size larger than RAM.
    let huge = build_bzimage(&BzSpec {
        init_size: 0x1000_0000,
        ..Default::default()
    });
    assert!(matches!(
        load_kernel(&m, &config(huge)),
        Err(BootError::OutOfGuestMemory { .. })
    ));
    // A missing file.
    let mut cfg = config(vec![]);
    cfg.kernel = ImageSource::File("/nonexistent/krypton-vmlinux".into());
    assert!(matches!(
        load_kernel(&m, &cfg),
        Err(BootError::ReadFile { .. })
    ));
}

#[test]
fn bad_cpu_count_and_ram_layout() {
    let m = mem(MEM);
    let mut cfg = config(vmlinux(true));
    cfg.num_cpus = 0;
    assert!(matches!(
        load_kernel(&m, &cfg),
        Err(BootError::BadCpuCount(0))
    ));
    cfg.num_cpus = 1;
    cfg.ram_regions = vec![(0, MEM * 2)];
    assert!(matches!(
        load_kernel(&m, &cfg),
        Err(BootError::OutOfGuestMemory { .. })
    ));
    cfg.ram_regions = vec![];
    assert!(matches!(
        load_kernel(&m, &cfg),
        Err(BootError::BadRamLayout { .. })
    ));
}

/// Deterministic mutation run: parse_kernel_image must return, not panic.
#[test]
fn parse_kernel_image_survives_mutations() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for base in [vmlinux(true), build_bzimage(&BzSpec::default())] {
        for _ in 0..3000 {
            let mut b = base.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            b.truncate((next() % (b.len() as u64 + 1)) as usize);
            let _ = parse_kernel_image(&b);
        }
    }
}

/// Loads a real kernel named by KRYPTON_TEST_VMLINUX / KRYPTON_TEST_BZIMAGE
/// (e.g. the xtask kernel build output) through every protocol.
#[test]
fn real_kernel_images_load_when_available() {
    let mut ran = false;
    for var in ["KRYPTON_TEST_VMLINUX", "KRYPTON_TEST_BZIMAGE"] {
        let Some(path) = std::env::var_os(var) else {
            eprintln!("{var} not set: skipping the real-kernel load check");
            continue;
        };
        ran = true;
        let bytes = std::fs::read(&path).expect("read kernel");
        let kind = parse_kernel_image(&bytes).expect("parse real kernel");
        let m = mem(256 << 20);
        let mut cfg = KernelConfig::new(ImageSource::File(path.into()), 2, ram_regions(256 << 20));
        cfg.initrd = Some(ImageSource::Bytes(vec![1; 1 << 20]));
        match kind {
            KernelKind::Elf(img) => {
                assert_eq!(img.class, crate::elf::ElfClass::Elf64);
                let pvh = img.pvh_entry.expect("our vmlinux has a PVH note");
                let s = load_kernel(&m, &cfg).expect("PVH load");
                assert_eq!((s.regs.rip, s.regs.rbx), (u64::from(pvh), PVH_INFO_START));
                cfg.protocol = BootProtocol::ForceLinux64;
                let s = load_kernel(&m, &cfg).expect("64-bit load");
                assert_eq!(s.regs.rip, img.entry);
                assert!(img.end() < 64 << 20, "kernel ends at {:#x}", img.end());
            }
            KernelKind::BzImage(bz) => {
                assert!(bz.header.version >= 0x020c);
                let s = load_kernel(&m, &cfg).expect("bzImage load");
                assert_eq!(s.regs.rip, 0x10_0200);
                let zp = read(&m, ZERO_PAGE_START, 4096);
                assert_eq!(u32_at(&zp, 0x238), 2047, "cmdline_size of a 6.1 kernel");
            }
        }
    }
    if !ran {
        eprintln!(
            "no real kernel given; set KRYPTON_TEST_VMLINUX / KRYPTON_TEST_BZIMAGE to run this check"
        );
    }
}

#[test]
fn files_are_checked_before_reading() {
    let m = mem(MEM);
    let mut cfg = config(vec![]);
    cfg.kernel = ImageSource::File(std::env::temp_dir()); // a directory
    assert!(matches!(
        load_kernel(&m, &cfg),
        Err(BootError::NotAFile { what: "kernel", .. })
    ));
    let dir = std::env::temp_dir().join(format!("krypton-boot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, vmlinux(true)).expect("write");
    cfg.kernel = ImageSource::File(kernel);
    cfg.initrd = Some(ImageSource::Bytes(vec![0; MEM as usize + 1]));
    assert!(matches!(
        load_kernel(&m, &cfg),
        Err(BootError::TooLarge { what: "initrd", .. })
    ));
    cfg.initrd = None;
    assert!(load_kernel(&m, &cfg).is_ok());
    assert_eq!(
        format!("{:?}", ImageSource::Bytes(vec![0; 3])),
        "Bytes(3 bytes)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn elf32_test_guest_through_load_kernel() {
    let m = mem(MEM);
    let img = build_elf(&ElfSpec {
        is64: false,
        entry: 0x20_0004,
        paddr: 0x20_0000,
        code: &[0xf4; 8],
        bss: 0,
        note_desc: None,
    });
    let mut cfg = config(img);
    let s = load_kernel(&m, &cfg).expect("elf32 guest");
    assert_eq!(
        (s.regs.rip, s.regs.rbx, s.sregs.cs.selector),
        (0x20_0004, 0, crate::entry::CODE32_SELECTOR)
    );
    assert_eq!(read(&m, 0x20_0000, 8), [0xf4; 8]);
    cfg.protocol = BootProtocol::ForceLinux64;
    let e = load_kernel(&m, &cfg).expect_err("no 64-bit protocol for ELF32");
    assert!(
        std::error::Error::source(&e)
            .expect("cause")
            .to_string()
            .contains("ELF64"),
        "{e}"
    );
}
