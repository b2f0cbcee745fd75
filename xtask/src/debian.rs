//! `cargo xtask debian`: a Debian minbase root (`debootstrap --variant=
//! minbase`) as one tar, the real-distribution test image of the image
//! tests. Cached in `<cache>/images/debian-minbase-<suite>-<recipe>.tar`;
//! prints `tar=<path>`.
#![allow(clippy::print_stdout)] // the path is this task's output

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache;

const SUITE: &str = "bookworm";
/// Bump when the recipe below changes.
const RECIPE: &str = "1";

/// The mirror: `$KRYPTON_DEBIAN_MIRROR`, else Debian's CDN.
fn mirror() -> String {
    std::env::var("KRYPTON_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// Builds (or finds) the tar; returns its path.
pub fn minbase() -> Result<PathBuf> {
    let dir = cache::root()?.join("images");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("debian-minbase-{SUITE}-{RECIPE}.tar"));
    if out.is_file() {
        eprintln!("debian minbase: cached");
        return Ok(out);
    }
    if !crate::setup::have("debootstrap") {
        cache::apt_install(&["debootstrap"])?;
    }
    let staging = dir.join(format!(".debian-staging-{}", std::process::id()));
    let result = build(&staging, &out);
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    eprintln!("debian minbase: wrote {}", out.display());
    Ok(out)
}

fn build(staging: &Path, out: &Path) -> Result<()> {
    let root = staging.join("root");
    eprintln!("debian minbase: debootstrap {SUITE} from {}", mirror());
    cache::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&root)
            .arg(mirror()),
    )
    .context("debootstrap (needs root and the Debian mirror)")?;
    // Downloaded packages and lists are not part of an image.
    for sub in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(root.join(sub)) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let tmp = staging.join("root.tar");
    cache::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--format=pax", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tmp)
            .arg("."),
    )?;
    std::fs::rename(&tmp, out).with_context(|| format!("moving the tar to {}", out.display()))
}

/// The task: build or find the tar and print its path.
pub fn run() -> Result<()> {
    println!("tar={}", minbase()?.display());
    Ok(())
}
