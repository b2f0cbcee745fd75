//! libFuzzer target: arbitrary guest memory and ring state fed to the
//! virtio-blk request path. `cargo +nightly fuzz run fuzz_blk_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    krypton_fuzz::run_blk(data);
});
