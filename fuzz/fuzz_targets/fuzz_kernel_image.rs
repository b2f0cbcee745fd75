//! libFuzzer target: arbitrary bytes as a kernel image, through the parser
//! and the whole Linux loader (64 MiB guest, both entry protocols).
//! `cargo +nightly fuzz run fuzz_kernel_image`.
#![no_main]

use std::sync::OnceLock;

use krypton_boot::{BootProtocol, ImageSource, KernelConfig, layout, load_kernel, parse_kernel_image};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEM: u64 = 64 << 20;

fn mem() -> &'static GuestMemoryMmap {
    static MEM_CELL: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM_CELL.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("guest memory")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if parse_kernel_image(data).is_err() {
        return;
    }
    for protocol in [BootProtocol::Auto, BootProtocol::ForceLinux64] {
        let mut cfg = KernelConfig::new(ImageSource::Bytes(data.to_vec()), 2, layout::ram_regions(MEM));
        cfg.initrd = Some(ImageSource::Bytes(vec![0; 4096]));
        cfg.protocol = protocol;
        let _ = load_kernel(mem(), &cfg);
    }
});
