//! libFuzzer target: arbitrary bytes as a snapshot header and as encoded
//! machine state. Decoding must never panic or over-allocate, and what
//! decodes must encode back to the same state.
//! `cargo +nightly fuzz run fuzz_snapshot`.
#![no_main]

use std::path::Path;

use krypton::snapshot::{Header, MachineState};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Header::decode(Path::new("fuzz.snap"), data);
    if let Ok(state) = MachineState::decode(data) {
        let again = MachineState::decode(&state.encode()).expect("re-encoded state decodes");
        assert_eq!(again, state);
    }
});
