//! libFuzzer target: arbitrary bytes as a tar layer, converted to EROFS in
//! memory under tight limits. Any error is fine; a panic or a limit not
//! honoured is a bug. `cargo +nightly fuzz run fuzz_erofs`.
#![no_main]

use std::io::Cursor;

use krypton_image::erofs::{Limits, convert};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_image_bytes: 8 << 20,
        max_entries: 4096,
        max_inline_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut out = Cursor::new(Vec::new());
    if let Ok(stats) = convert(Cursor::new(data), &mut out, &limits) {
        let len = out.get_ref().len() as u64;
        assert!(
            len <= limits.max_image_bytes,
            "image of {len} bytes passed the limit"
        );
        assert_eq!(len, stats.image_bytes);
        assert!(stats.entries <= limits.max_entries);
    }
});
