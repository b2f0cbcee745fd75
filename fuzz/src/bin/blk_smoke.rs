//! Smoke-fuzzes the virtio-blk request path without libFuzzer (stable Rust):
//! structured random inputs for a bounded time, plus any corpus files given.
//!
//! `cargo run --release --bin blk_smoke -- [--seconds N] [--seed S]
//!  [--write-corpus DIR] [FILE...]`

use std::time::{Duration, Instant};

use krypton_fuzz::{Prng, generate, run_blk};

fn main() {
    let mut seconds = 10u64;
    let mut seed = 1u64;
    let mut corpus_out = None;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seconds),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
            "--write-corpus" => corpus_out = args.next(),
            _ => files.push(a),
        }
    }
    if let Some(dir) = corpus_out {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        let mut rng = Prng::new(seed);
        for i in 0..64 {
            std::fs::write(format!("{dir}/seed-{i:03}"), generate(&mut rng)).expect("write seed");
        }
        eprintln!("wrote 64 seed inputs to {dir}");
        return;
    }
    for f in &files {
        let data = std::fs::read(f).expect("read input");
        let n = run_blk(&data);
        eprintln!("{f}: {n} chains");
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rng = Prng::new(seed);
    let (mut runs, mut chains) = (0u64, 0usize);
    while Instant::now() < deadline {
        let input = generate(&mut rng);
        chains += run_blk(&input);
        // Also raw random bytes, as libFuzzer would start with.
        let len = rng.below(0x4000) as usize;
        let raw: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        chains += run_blk(&raw);
        runs += 2;
    }
    eprintln!("blk_smoke: {runs} inputs, {chains} chains processed, no crash (seed {seed})");
}
