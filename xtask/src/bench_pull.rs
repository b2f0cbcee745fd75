//! `cargo xtask bench` part: `krypton pull` against `skopeo copy` of the
//! same image from the same local registry (Debian's docker-registry on
//! 127.0.0.1, plain HTTP), interleaved, each into a fresh empty store.
//! Both download and verify every blob; krypton's figure also includes
//! its store bookkeeping (it converts layers at first run, not at pull).
//!
//! The image: three gzip layers of the cached kernel source subset (else
//! /usr/share), built here as an OCI layout and pushed with skopeo.
#![allow(clippy::print_stdout)] // the figures are this module's output

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const RUNS: usize = 3;

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256(path: &Path) -> Result<String> {
    let out = sh(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

/// Writes `data` as a blob of the layout; returns (digest, size).
fn put_blob(layout: &Path, file: &Path) -> Result<(String, u64)> {
    let hex = sha256(file)?;
    let size = std::fs::metadata(file)?.len();
    std::fs::rename(file, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

/// Builds an OCI layout at `layout` with one gzip layer per source dir.
fn build_layout(layout: &Path, work: &Path, dirs: &[PathBuf]) -> Result<u64> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let (mut diff_ids, mut layers, mut total) = (Vec::new(), Vec::new(), 0);
    for (i, d) in dirs.iter().enumerate() {
        let tar = work.join(format!("layer{i}.tar"));
        let parent = d.parent().context("source dir has no parent")?;
        let name = d.file_name().context("source dir has no name")?;
        sh(Command::new("tar")
            .arg("-C")
            .arg(parent)
            .arg("-cf")
            .arg(&tar)
            .arg(name))?;
        diff_ids.push(format!("\"sha256:{}\"", sha256(&tar)?));
        sh(Command::new("gzip").arg("-1").arg(&tar))?;
        let (digest, size) = put_blob(layout, &tar.with_extension("tar.gz"))?;
        total += size;
        layers.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{digest}","size":{size}}}"#
        ));
    }
    let config = work.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        ),
    )?;
    let (cdigest, csize) = put_blob(layout, &config)?;
    let manifest = work.join("manifest.json");
    std::fs::write(
        &manifest,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cdigest}","size":{csize}}},"layers":[{}]}}"#,
            layers.join(",")
        ),
    )?;
    let (mdigest, msize) = put_blob(layout, &manifest)?;
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{mdigest}","size":{msize},"annotations":{{"org.opencontainers.image.ref.name":"bench"}}}}]}}"#
        ),
    )?;
    Ok(total)
}

/// A docker-registry child, killed on drop.
struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> Result<(Registry, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting docker-registry")?;
    let reg = Registry(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("docker-registry did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((reg, addr))
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let t0 = Instant::now();
    sh(cmd)?;
    Ok(t0.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the pull benchmark with the `krypton` binary.
pub fn run(krypton: &Path) -> Result<()> {
    let missing: Vec<&str> = [("docker-registry", "docker-registry"), ("skopeo", "skopeo")]
        .into_iter()
        .filter(|(prog, _)| !crate::setup::have(prog))
        .map(|(_, pkg)| pkg)
        .collect();
    if !missing.is_empty() {
        crate::cache::apt_install(&missing)?;
    }
    let work = tempdir()?;
    let result = measure(krypton, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("krypton-bench-pull-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn source_dirs() -> Result<Vec<PathBuf>> {
    let k = crate::cache::root()?.join("kernel/work-pvm-test/linux-source-6.1");
    let subset: Vec<PathBuf> = ["fs", "net", "mm"].iter().map(|d| k.join(d)).collect();
    if subset.iter().all(|d| d.is_dir()) {
        return Ok(subset);
    }
    Ok(vec![PathBuf::from("/usr/share/doc")])
}

fn measure(krypton: &Path, work: &Path) -> Result<()> {
    let layout = work.join("layout");
    let bytes = build_layout(&layout, work, &source_dirs()?)?;
    let (_reg, addr) = start_registry(work)?;
    let remote = format!("{addr}/bench/pull:1");
    sh(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:bench", layout.display()),
        &format!("docker://{remote}"),
    ]))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let home = work.join(format!("home{i}"));
        ours.push(timed(
            Command::new(krypton)
                .env("KRYPTON_HOME", &home)
                .args(["pull", "-q", &remote]),
        )?);
        let dest = work.join(format!("skopeo{i}"));
        theirs.push(timed(Command::new("skopeo").args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{remote}"),
            &format!("oci:{}:x", dest.display()),
        ]))?);
        let _ = std::fs::remove_dir_all(&home);
        let _ = std::fs::remove_dir_all(&dest);
    }
    let (k, s) = (median(ours), median(theirs));
    let mb = bytes as f64 / 1e6;
    println!(
        "== pull of a {mb:.1} MB image (3 gzip layers) from a local docker-registry, median of {RUNS} =="
    );
    println!(
        "krypton pull {k:.2} s ({:.0} MB/s), skopeo copy {s:.2} s ({:.0} MB/s): {:.2}x skopeo's time (goal <= 1.2x)",
        mb / k,
        mb / s,
        k / s
    );
    Ok(())
}
