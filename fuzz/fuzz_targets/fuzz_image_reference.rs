//! libFuzzer target: arbitrary text as an image reference, a digest and a
//! `WWW-Authenticate` challenge. `cargo +nightly fuzz run fuzz_image_reference`.
#![no_main]

use krypton_image::digest::Digest;
use krypton_image::reference::Reference;
use krypton_image::registry::auth::parse_challenge;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = Reference::parse(s) {
        // What the store keys on must parse back to the same reference.
        let again = Reference::parse(&r.index_key()).expect("index key reparses");
        assert_eq!(again.index_key(), r.index_key());
        let _ = r.manifest_ref();
    }
    let _ = Digest::parse(s);
    let _ = parse_challenge(s);
});
