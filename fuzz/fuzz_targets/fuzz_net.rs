//! libFuzzer target: scripts of guest TX chains (any descriptor layout, raw
//! and looping descriptors), RX buffers of any shape and host stream bytes
//! run through the frame decoder, driven through the virtio-net data path.
//! `cargo +nightly fuzz run fuzz_net`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    krypton_devices::virtio::net::fuzz::run(data);
});
