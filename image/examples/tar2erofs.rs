//! `cargo run --release -p krypton-image --example tar2erofs -- LAYER.tar OUT.img`:
//! converts one uncompressed tar layer and prints what it wrote.

use std::fs::File;
use std::io::BufReader;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: tar2erofs LAYER.tar OUT.img");
    };
    let tar = BufReader::with_capacity(
        1 << 20,
        File::open(input).with_context(|| format!("opening {input}"))?,
    );
    let mut out = File::create(output).with_context(|| format!("creating {output}"))?;
    let t = std::time::Instant::now();
    let stats =
        krypton_image::erofs::convert(tar, &mut out, &Default::default()).context("converting")?;
    out.sync_all().context("syncing the image")?;
    eprintln!("{stats:?} in {:.3} s", t.elapsed().as_secs_f64());
    Ok(())
}
