//! libFuzzer target: arbitrary bytes as a registry's manifest / index (with
//! each content type it may announce), as an image config, and through the
//! linux/amd64 choice. `cargo +nightly fuzz run fuzz_image_manifest`.
#![no_main]

use krypton_image::manifest::{self, ConfigFile, Parsed};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for ct in [None, Some(manifest::OCI_INDEX), Some(manifest::DOCKER_MANIFEST), Some("application/json")] {
        match manifest::parse(data, ct) {
            Ok(Parsed::Index(i)) => {
                let _ = manifest::pick_platform(&i);
            }
            Ok(Parsed::Manifest(m)) => {
                for l in &m.layers {
                    let _ = manifest::layer_compression(&l.media_type);
                }
            }
            Err(_) => {}
        }
    }
    if let Ok(c) = ConfigFile::parse(data, 1) {
        let _ = c.image_config();
    }
});
