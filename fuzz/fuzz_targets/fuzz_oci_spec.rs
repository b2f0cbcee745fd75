//! libFuzzer target: arbitrary bytes as an OCI bundle's `config.json`
//! (user input to `krypton create`). Mapping must never panic, and what
//! maps must give settings the agent protocol accepts.
//! `cargo +nightly fuzz run fuzz_oci_spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    if let Ok(plan) = krypton::cli::oci::spec::plan_from_json(data, &dir, &dir) {
        plan.settings.check().expect("mapped settings are valid");
        assert!(!plan.argv.is_empty());
        assert!(plan.shares.len() <= 32);
    }
});
