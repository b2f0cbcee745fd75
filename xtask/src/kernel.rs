//! `cargo xtask kernel`: the guest kernel from Debian's linux-source-6.1,
//! `make tinyconfig` + our fragments (guest/kernel/*.config), patches for
//! the test-platform variant, cached by a hash of every input.
//!
//! Layout under the cache root (see `cache.rs`):
//! - `kernel/work-<variant>/linux-source-6.1/`: the patched build tree, kept
//!   for incremental rebuilds while source and patches stay the same;
//! - `kernel/<variant>-<hash>/{vmlinux,bzImage,config}`: the artifacts;
//! - `kernel/<variant>-latest`: symlink to the newest artifact directory.

use crate::cache::{self, InputHash};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's kernel source tarball and the package that ships it.
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_DIR: &str = "linux-source-6.1";
/// Everything the build needs besides a C toolchain (lz4: KERNEL_LZ4).
const BUILD_PACKAGES: &[&str] = &[
    "linux-source-6.1",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "lz4",
];
/// Bump when the recipe below changes in a way that changes the output.
const RECIPE_VERSION: &str = "1";

/// Which kernel to build.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The clean product kernel (krypton.config only).
    Product,
    /// The kernel for PVM test machines (krypton.config + pvm-test.config
    /// + patches/*.patch).
    PvmTest,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Product => "product",
            Variant::PvmTest => "pvm-test",
        }
    }

    /// Fragments, merged in this order (later lines win).
    fn fragments(self, dir: &Path) -> Vec<PathBuf> {
        let mut v = vec![dir.join("krypton.config")];
        if self == Variant::PvmTest {
            v.push(dir.join("pvm-test.config"));
        }
        v
    }

    /// Patches, applied in file-name order.
    fn patches(self, dir: &Path) -> Result<Vec<PathBuf>> {
        if self == Variant::Product {
            return Ok(Vec::new());
        }
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("patches"))
            .context("reading guest/kernel/patches")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "patch"))
            .collect();
        v.sort();
        Ok(v)
    }
}

/// Options for `cargo xtask kernel`.
#[derive(clap::Args, Debug)]
pub struct KernelArgs {
    /// Kernel variant.
    #[arg(long, value_enum, default_value = "product")]
    pub variant: Variant,
}

/// Builds the kernel (or finds it in the cache); prints and returns the
/// artifact directory (holding `vmlinux`, `bzImage` and `config`).
pub fn build(args: &KernelArgs) -> Result<PathBuf> {
    let variant = args.variant;
    let kdir = cache::workspace_root().join("guest").join("kernel");
    ensure_source()?;
    let source_version = source_version()?;
    let fragments = variant.fragments(&kdir);
    let patches = variant.patches(&kdir)?;

    let mut tree_hash = InputHash::new();
    tree_hash
        .add("recipe", RECIPE_VERSION.as_bytes())
        .add("source", source_version.as_bytes());
    for p in &patches {
        tree_hash.add_file(p)?;
    }
    let mut hash = tree_hash.clone();
    hash.add("variant", variant.name().as_bytes());
    for f in &fragments {
        hash.add_file(f)?;
    }

    let kcache = cache::root()?.join("kernel");
    let out = kcache.join(format!("{}-{}", variant.name(), hash.hex()));
    let latest = kcache.join(format!("{}-latest", variant.name()));
    if ["vmlinux", "bzImage", "config"]
        .iter()
        .all(|f| out.join(f).is_file())
    {
        eprintln!("kernel {}: cached", variant.name());
        cache::update_link(&latest, &out)?;
        prune_old(&kcache, variant, &out);
        print_artifacts(&out);
        return Ok(out);
    }

    let started = std::time::Instant::now();
    let work = kcache.join(format!("work-{}", variant.name()));
    let tree = prepare_tree(&work, &tree_hash, &patches)?;
    configure(&tree, &fragments)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    cache::run(
        Command::new("make")
            .current_dir(&tree)
            .arg(format!("-j{jobs}"))
            .args(["vmlinux", "bzImage"]),
    )?;

    let staging = kcache.join(format!(
        ".staging-{}-{}",
        variant.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&staging)?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
    ] {
        std::fs::copy(tree.join(from), staging.join(to))
            .with_context(|| format!("copying {from}"))?;
    }
    cache::publish(&staging, &out)?;
    cache::update_link(&latest, &out)?;
    prune_old(&kcache, variant, &out);
    eprintln!(
        "kernel {}: built in {:.0?}",
        variant.name(),
        started.elapsed()
    );
    print_artifacts(&out);
    Ok(out)
}

/// Removes this variant's older artifact directories (~20 MB each); the
/// build tree and `<variant>-latest` stay. Failures only cost disk space.
fn prune_old(kcache: &Path, variant: Variant, keep: &Path) {
    let prefix = format!("{}-", variant.name());
    let Ok(entries) = std::fs::read_dir(kcache) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_artifact = name
            .strip_prefix(&prefix)
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_artifact && e.path() != keep {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[allow(clippy::print_stdout)] // the artifact path is this task's output
fn print_artifacts(dir: &Path) {
    for f in ["vmlinux", "bzImage"] {
        if let Ok(m) = std::fs::metadata(dir.join(f)) {
            eprintln!("  {f}: {} bytes", m.len());
        }
    }
    println!("{}", dir.display());
}

/// Installs the source package and build tools when the tarball is missing.
fn ensure_source() -> Result<()> {
    if Path::new(SOURCE_TARBALL).is_file() {
        return Ok(());
    }
    eprintln!("{SOURCE_TARBALL} missing; installing {SOURCE_PACKAGE} and build tools");
    cache::apt_install(BUILD_PACKAGES)?;
    if !Path::new(SOURCE_TARBALL).is_file() {
        bail!("{SOURCE_PACKAGE} installed but {SOURCE_TARBALL} is still missing");
    }
    Ok(())
}

/// The source package version (e.g. 6.1.192-2) plus the tarball size, so a
/// replaced tarball invalidates the cache even without dpkg.
fn source_version() -> Result<String> {
    let pkg =
        cache::output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", SOURCE_PACKAGE]))
            .unwrap_or_else(|_| "unknown".into());
    let size = std::fs::metadata(SOURCE_TARBALL)
        .context("stat kernel tarball")?
        .len();
    Ok(format!("{SOURCE_PACKAGE} {pkg} {size}"))
}

/// Extracts and patches the source into `work` unless the tree there was
/// made from the same source and patches; returns the tree path.
fn prepare_tree(work: &Path, tree_hash: &InputHash, patches: &[PathBuf]) -> Result<PathBuf> {
    let tree = work.join(SOURCE_DIR);
    let stamp = work.join(".tree-stamp");
    let want = tree_hash.hex();
    if tree.is_dir() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        eprintln!("reusing build tree {}", tree.display());
        return Ok(tree);
    }
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    cache::run(
        Command::new("tar")
            .current_dir(work)
            .args(["xf", SOURCE_TARBALL]),
    )?;
    for p in patches {
        let file = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        cache::run(
            Command::new("patch")
                .current_dir(&tree)
                .args(["-p1", "--forward", "--batch"])
                .stdin(file),
        )
        .with_context(|| format!("applying {}", p.display()))?;
    }
    std::fs::write(&stamp, want)?;
    Ok(tree)
}

/// tinyconfig, merge our fragments, olddefconfig, then check that every
/// requested option survived.
fn configure(tree: &Path, fragments: &[PathBuf]) -> Result<()> {
    cache::run(Command::new("make").current_dir(tree).arg("tinyconfig"))?;
    cache::run(
        Command::new("scripts/kconfig/merge_config.sh")
            .current_dir(tree)
            .args(["-m", ".config"])
            .args(fragments),
    )?;
    cache::run(Command::new("make").current_dir(tree).arg("olddefconfig"))?;

    let mut requested = BTreeMap::new();
    for f in fragments {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        requested.extend(parse_config(&text));
    }
    let actual = parse_config(&std::fs::read_to_string(tree.join(".config"))?);
    let dropped = check_config(&requested, &actual);
    if !dropped.is_empty() {
        bail!(
            "Kconfig dropped {} requested option(s):\n  {}",
            dropped.len(),
            dropped.join("\n  ")
        );
    }
    eprintln!("config: all {} requested options set", requested.len());
    Ok(())
}

/// Parses `CONFIG_X=v` and `# CONFIG_X is not set` lines; `None` = unset.
pub fn parse_config(text: &str) -> BTreeMap<String, Option<String>> {
    let mut map = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            if rest.starts_with("CONFIG_") && !rest.contains(' ') {
                map.insert(rest.to_string(), None);
            }
        } else if line.starts_with("CONFIG_")
            && let Some((k, v)) = line.split_once('=')
        {
            map.insert(k.to_string(), Some(v.to_string()));
        }
    }
    map
}

/// The requested options whose final value differs, as readable lines.
/// An option requested unset is satisfied when absent (it became invisible).
pub fn check_config(
    requested: &BTreeMap<String, Option<String>>,
    actual: &BTreeMap<String, Option<String>>,
) -> Vec<String> {
    requested
        .iter()
        .filter_map(|(k, want)| {
            let got = actual.get(k).cloned().flatten();
            (*want != got).then(|| {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "not set".into());
                format!("{k}: wanted {}, got {}", show(want), show(&got))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let req = parse_config(
            "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=16\n# CONFIG_GONE is not set\n",
        );
        assert_eq!(req.len(), 4);
        let ok = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=16\n");
        assert!(check_config(&req, &ok).is_empty());
        let bad = parse_config("CONFIG_B=y\nCONFIG_N=8\n");
        let dropped = check_config(&req, &bad);
        assert_eq!(
            dropped,
            vec![
                "CONFIG_A: wanted y, got not set",
                "CONFIG_B: wanted not set, got y",
                "CONFIG_N: wanted 16, got 8"
            ]
        );
    }

    #[test]
    fn fragments_in_repo_parse() {
        let kdir = cache::workspace_root().join("guest/kernel");
        let product =
            parse_config(&std::fs::read_to_string(kdir.join("krypton.config")).expect("fragment"));
        assert_eq!(product.get("CONFIG_PVH"), Some(&Some("y".into())));
        assert_eq!(product.get("CONFIG_MODULES"), Some(&None));
        let test =
            parse_config(&std::fs::read_to_string(kdir.join("pvm-test.config")).expect("fragment"));
        assert_eq!(test.get("CONFIG_PTP_1588_CLOCK_KVM"), Some(&None));
        assert!(Variant::Product.patches(&kdir).expect("patches").is_empty());
        assert_eq!(Variant::PvmTest.patches(&kdir).expect("patches").len(), 3);
    }
}
