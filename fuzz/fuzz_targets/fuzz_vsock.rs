//! libFuzzer target: scripts of guest packets (any descriptor layout, raw
//! and looping descriptors, odd RX buffers) and host events driven through
//! the virtio-vsock packet engine. `cargo +nightly fuzz run fuzz_vsock`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    krypton_devices::virtio::vsock::fuzz::run(data);
});
