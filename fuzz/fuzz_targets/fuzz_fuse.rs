//! libFuzzer target: arbitrary bytes as the device-readable part of a
//! virtio-fs chain, through the FUSE request decoder and the server's
//! reply encoder. Decoding must never panic and every reply must be a
//! well-formed, bounded FUSE reply. `cargo +nightly fuzz run fuzz_fuse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    krypton_devices::virtio::fs::fuzz::run(data);
});
