//! libFuzzer target: arbitrary bytes as agent-protocol frames. Decoding
//! must never panic, and anything that decodes must re-encode to a frame
//! that decodes to the same message. `cargo +nightly fuzz run fuzz_protocol`.
#![no_main]

use krypton_protocol::{FrameReader, ProtocolError, decode, encode};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // As a frame body (type byte + payload).
    if let Ok(msg) = decode(data) {
        let frame = encode(&msg).expect("decoded message re-encodes");
        assert_eq!(decode(&frame[4..]).expect("re-decodes"), msg);
    }
    // As a stream of length-prefixed frames.
    let mut cur = std::io::Cursor::new(data);
    let mut reader = FrameReader::default();
    for _ in 0..64 {
        match reader.read(&mut cur) {
            Ok(msg) => {
                let frame = encode(&msg).expect("decoded message re-encodes");
                assert_eq!(decode(&frame[4..]).expect("re-decodes"), msg);
            }
            Err(ProtocolError::Closed | ProtocolError::Truncated) => break,
            Err(_) => {}
        }
    }
});
