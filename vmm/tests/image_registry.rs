//! `krypton pull`, `load`, `images`, `rmi` and `prune` against a real
//! registry (Debian's `docker-registry`, anonymous and htpasswd), images
//! pushed with `skopeo`, and archives made by `skopeo`. Bad input ends with
//! exit 125, one line, and nothing stored.
#![allow(clippy::unwrap_used)]

mod image_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use image_support::*;
use krypton_image::digest::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_krypton");
const TOOLS: &[&str] = &["docker-registry", "skopeo", "htpasswd"];

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn krypton(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("KRYPTON_HOME", home)
        .env("DOCKER_CONFIG", home.join("no-docker-config"));
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

fn ok(o: Out) -> Out {
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    o
}

/// Exit 125, one line naming `needle`, and the store holds nothing.
fn fails_clean(o: Out, needle: &str, home: &Path) {
    assert_eq!(o.code, 125, "stdout {} stderr {}", o.stdout, o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "not one line: {:?}", o.stderr);
    assert!(o.stderr.contains(needle), "{:?} lacks {needle:?}", o.stderr);
    assert!(!o.stderr.contains("panicked"));
    for d in ["blobs", "layers", "tmp"] {
        assert_eq!(
            files_under(&home.join(d)),
            Vec::<std::path::PathBuf>::new(),
            "{d} not empty"
        );
    }
    let refs = std::fs::read_to_string(home.join("refs.json")).unwrap_or_default();
    assert!(!refs.contains("sha256"), "a reference was stored: {refs}");
}

macro_rules! need_tools {
    () => {
        if let Some(m) = missing(TOOLS) {
            eprintln!(
                "SKIP: {m} not installed (apt-get install docker-registry skopeo apache2-utils)"
            );
            return;
        }
    };
}

/// Every stored blob's sha256 is its name.
fn blobs_verified(home: &Path) -> usize {
    let files = files_under(&home.join("blobs/sha256"));
    for f in &files {
        let d = Digest::of(&std::fs::read(f).unwrap());
        assert_eq!(d.hex(), f.file_name().unwrap().to_str().unwrap());
    }
    files.len()
}

/// A 3-layer busybox-like image as an OCI layout: busybox, 2 MB of
/// incompressible data, a small file.
fn busybox_layout(dir: &Path, tag: &str) -> Vec<Vec<u8>> {
    let bb = std::fs::read("/bin/busybox").unwrap_or_else(|_| vec![0x7f; 1 << 20]);
    let mut noise = vec![0u8; 2 << 20];
    let mut x = 0x1234_5678_9abc_def0u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let tars = vec![
        tar_of(&[("bin/busybox", 0o755, &bb)], &[("bin/sh", "busybox")]),
        tar_of(&[("data/noise", 0o644, &noise)], &[]),
        tar_of(&[("etc/hello", 0o644, b"hello from krypton\n")], &[]),
    ];
    let refs: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    let layers: Vec<(&str, &[u8])> = refs.iter().map(|t| (TAR, *t)).collect();
    write_oci_layout(dir, tag, &config_for(&refs, "amd64"), &layers);
    tars
}

fn push_layout(layout: &Path, dest: &str, extra: &[&str]) {
    let src = format!("oci:{}:v1", layout.display());
    let dst = format!("docker://{dest}");
    let mut args = vec!["copy", "-q", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([src.as_str(), dst.as_str()]);
    skopeo(&args);
}

fn stored_manifest(home: &Path, digest: &str) -> serde_json::Value {
    let d = Digest::parse(digest).unwrap();
    serde_json::from_slice(&std::fs::read(home.join("blobs/sha256").join(d.hex())).unwrap())
        .unwrap()
}

fn digest_line(o: &Out) -> String {
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap()
        .to_string()
}

#[test]
fn pull_by_tag_and_digest_gzip_zstd_then_images_rmi_prune() {
    need_tools!();
    let reg = Registry::start("anon", None);
    let layout = tmpdir("layout-anon");
    let tars = busybox_layout(&layout, "v1");
    push_layout(&layout, &format!("{}/test/busybox:v1", reg.addr), &[]);
    // zstd layers, pushed here (skopeo reuses the gzip blobs it pushed).
    let refs: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    let cfg = config_for(&refs, "amd64");
    let zs: Vec<Vec<u8>> = tars
        .iter()
        .map(|t| {
            ruzstd::encoding::compress_to_vec(&t[..], ruzstd::encoding::CompressionLevel::Fastest)
        })
        .collect();
    reg.push_blob("test/busybox-zstd", &cfg);
    zs.iter()
        .for_each(|z| drop(reg.push_blob("test/busybox-zstd", z)));
    let zl: Vec<(&str, &[u8])> = zs
        .iter()
        .map(|z| ("application/vnd.oci.image.layer.v1.tar+zstd", z.as_slice()))
        .collect();
    reg.push_manifest(
        "test/busybox-zstd",
        "v1",
        OCI_MANIFEST,
        &manifest_for(&cfg, &zl),
    );
    let home = tmpdir("home-anon");

    let r = format!("{}/test/busybox:v1", reg.addr);
    let o = ok(krypton(&home, &["pull", &r], &[]));
    assert!(o.stdout.starts_with(&r), "{}", o.stdout);
    let d = digest_line(&o);
    let m = stored_manifest(&home, &d);
    assert_eq!(m["layers"].as_array().unwrap().len(), 3);
    assert!(
        m["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .contains("gzip"),
        "{m}"
    );
    assert_eq!(blobs_verified(&home), 5);

    let by_digest = format!("{}/test/busybox@{d}", reg.addr);
    assert_eq!(
        digest_line(&ok(krypton(&home, &["pull", &by_digest], &[]))),
        d
    );
    let rz = format!("{}/test/busybox-zstd:v1", reg.addr);
    let dz = digest_line(&ok(krypton(&home, &["pull", &rz], &[])));
    let mz = stored_manifest(&home, &dz);
    assert!(
        mz["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"].as_str().unwrap().ends_with("+zstd")),
        "{mz}"
    );
    // Same config (image id), new layer blobs.
    assert_eq!(blobs_verified(&home), 5 + 4);

    let imgs = ok(krypton(&home, &["images"], &[])).stdout;
    assert!(imgs.starts_with("REFERENCE"), "{imgs}");
    for want in [&r, &by_digest, &rz] {
        assert!(imgs.contains(want.as_str()), "{imgs} lacks {want}");
    }
    assert!(imgs.contains("2026-12-01 10:00:00"), "{imgs}");

    // The store API the run path uses finds all three spellings.
    let st = krypton_image::store::Store::open(&home).unwrap();
    let (_, md) = st.lookup(&d["sha256:".len()..][..12]).unwrap();
    assert_eq!(md.as_str(), d);

    // resolve converts each layer once to EROFS; a second one converts nothing.
    let res = st.resolve(&rz).unwrap();
    assert_eq!(res.layers.len(), 3);
    assert_eq!(res.config.cmd, Some(vec!["/bin/sh".to_string()]));
    let mtimes: Vec<_> = res
        .layers
        .iter()
        .map(|l| std::fs::metadata(l).unwrap().modified().unwrap())
        .collect();
    for l in &res.layers {
        let img = std::fs::read(l).unwrap();
        assert_eq!(
            img[1024..1028],
            0xE0F5_E1E2u32.to_le_bytes(),
            "{} is not EROFS",
            l.display()
        );
        if have("fsck.erofs") {
            let st = Command::new("fsck.erofs").arg(l).output().unwrap();
            assert!(
                st.status.success(),
                "fsck.erofs {}: {}",
                l.display(),
                String::from_utf8_lossy(&st.stdout)
            );
        }
    }
    assert_eq!(st.unconverted_layers(&rz).unwrap(), 0);
    assert_eq!(st.unconverted_layers(&r).unwrap(), 3);
    let again = st.resolve(&rz).unwrap();
    assert_eq!(again.layers, res.layers);
    let mtimes2: Vec<_> = again
        .layers
        .iter()
        .map(|l| std::fs::metadata(l).unwrap().modified().unwrap())
        .collect();
    assert_eq!(mtimes, mtimes2);

    ok(krypton(&home, &["rmi", &rz], &[]));
    assert!(
        !ok(krypton(&home, &["images"], &[]))
            .stdout
            .contains("busybox-zstd")
    );
    let p = ok(krypton(&home, &["prune"], &[])).stdout;
    assert!(
        p.starts_with("Removed 4 blobs and 3 converted layers"),
        "{p}"
    );
    assert_eq!(blobs_verified(&home), 5);
    // rmi by digest removes every name of the image.
    let o = ok(krypton(&home, &["rmi", &d], &[]));
    assert_eq!(o.stdout.lines().count(), 2, "{}", o.stdout);
    ok(krypton(&home, &["prune"], &[]));
    assert_eq!(blobs_verified(&home), 0);
    let o = krypton(&home, &["rmi", &r], &[]);
    assert_eq!(o.code, 125);
    assert!(o.stderr.contains("no such image"), "{}", o.stderr);
}

#[test]
fn index_picks_linux_amd64_and_other_platforms_fail() {
    need_tools!();
    let reg = Registry::start("index", None);
    let img = |arch: &str, text: &[u8]| {
        let t = tar_of(&[("etc/arch", 0o644, text)], &[]);
        let gz = gzip(&t);
        let cfg = config_for(&[&t], arch);
        reg.push_blob("multi", &gz);
        reg.push_blob("multi", &cfg);
        let m = manifest_for(&cfg, &[(TAR_GZ, &gz)]);
        let d = reg.push_manifest("multi", &Digest::of(&m).to_string(), OCI_MANIFEST, &m);
        (d, m.len())
    };
    let (amd, amd_len) = img("amd64", b"amd64\n");
    let (arm, arm_len) = img("arm64", b"arm64\n");
    let entry = |d: &Digest, len: usize, arch: &str| serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": len, "platform": {"os": "linux", "architecture": arch}});
    let idx = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&arm, arm_len, "arm64"), entry(&amd, amd_len, "amd64")]}),
    )
    .unwrap();
    reg.push_manifest("multi", "both", OCI_INDEX, &idx);
    let only_arm = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&arm, arm_len, "arm64")]}),
    )
    .unwrap();
    reg.push_manifest("multi", "arm", OCI_INDEX, &only_arm);

    let home = tmpdir("home-index");
    let o = ok(krypton(
        &home,
        &["pull", &format!("{}/multi:both", reg.addr)],
        &[],
    ));
    assert_eq!(digest_line(&o), amd.to_string());
    // By the index's digest, too.
    let idx_ref = format!("{}/multi@{}", reg.addr, Digest::of(&idx));
    assert_eq!(
        digest_line(&ok(krypton(&home, &["pull", &idx_ref], &[]))),
        amd.to_string()
    );

    let home = tmpdir("home-arm");
    let o = krypton(&home, &["pull", &format!("{}/multi:arm", reg.addr)], &[]);
    fails_clean(
        o,
        "no linux/amd64 image in the index (it has: linux/arm64)",
        &home,
    );
    let o = krypton(&home, &["pull", &format!("{}/multi@{arm}", reg.addr)], &[]);
    fails_clean(o, "the image is for linux/arm64, not linux/amd64", &home);
}

#[test]
fn basic_auth_with_and_without_credentials() {
    need_tools!();
    let reg = Registry::start("auth", Some(("kr", "s3cret")));
    let layout = tmpdir("layout-auth");
    busybox_layout(&layout, "v1");
    push_layout(
        &layout,
        &format!("{}/private/app:v1", reg.addr),
        &["--dest-creds=kr:s3cret"],
    );
    let r = format!("{}/private/app:v1", reg.addr);

    let home = tmpdir("home-noauth");
    let o = krypton(&home, &["pull", &r], &[]);
    fails_clean(
        o,
        "authentication required (no credentials for it in the docker config)",
        &home,
    );

    let cfgdir = tmpdir("dockercfg");
    let write_cfg = |pw: &str| {
        use base64::Engine as _;
        let a = base64::engine::general_purpose::STANDARD.encode(format!("kr:{pw}"));
        std::fs::write(
            cfgdir.join("config.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{a}"}}}}}}"#, reg.addr),
        )
        .unwrap();
    };
    let env = [("DOCKER_CONFIG", cfgdir.to_str().unwrap())];
    write_cfg("wrong");
    let o = krypton(&home, &["pull", &r], &env);
    fails_clean(o, "the credentials were refused", &home);
    write_cfg("s3cret");
    ok(krypton(&home, &["pull", &r], &env));
    assert_eq!(blobs_verified(&home), 5);
    // ~/.docker/config.json when DOCKER_CONFIG is unset.
    let fake_home = tmpdir("fakehome");
    std::fs::create_dir_all(fake_home.join(".docker")).unwrap();
    std::fs::copy(
        cfgdir.join("config.json"),
        fake_home.join(".docker/config.json"),
    )
    .unwrap();
    let home2 = tmpdir("home-auth2");
    let mut c = Command::new(BIN);
    let st = c
        .args(["pull", &r])
        .stdout(std::process::Stdio::null())
        .env("KRYPTON_HOME", &*home2)
        .env_remove("DOCKER_CONFIG")
        .env("HOME", &*fake_home)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn corrupt_truncated_and_unknown_blobs_store_nothing() {
    need_tools!();
    let reg = Registry::start("bad", None);
    let t = tar_of(&[("etc/x", 0o644, &[7u8; 100_000][..])], &[]);
    let gz = gzip(&t);
    let cfg = config_for(&[&t], "amd64");
    reg.push_blob("bad", &gz);
    reg.push_blob("bad", &cfg);
    let push = |tag: &str, layers: &[(&str, &[u8])]| {
        reg.push_manifest("bad", tag, OCI_MANIFEST, &manifest_for(&cfg, layers));
        format!("{}/bad:{tag}", reg.addr)
    };
    // A truncated gzip (its own digest is right; the content is not).
    let cut = &gz[..gz.len() / 2];
    reg.push_blob("bad", cut);
    let r = push("truncated", &[(TAR_GZ, cut)]);
    let home = tmpdir("home-bad");
    fails_clean(krypton(&home, &["pull", &r], &[]), "layer sha256:", &home);
    // An unknown media type.
    let r = push(
        "unknown",
        &[("application/vnd.example.layer.v1.squashfs", &gz)],
    );
    fails_clean(
        krypton(&home, &["pull", &r], &[]),
        "unsupported media type \"application/vnd.example.layer.v1.squashfs\"",
        &home,
    );
    // A blob the registry serves with other bytes than its digest.
    let r = push("good", &[(TAR_GZ, &gz)]);
    let f = reg.blob_file(&Digest::of(&gz));
    let mut data = std::fs::read(&f).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    std::fs::write(&f, &data).unwrap();
    fails_clean(krypton(&home, &["pull", &r], &[]), "digest mismatch", &home);
}

#[test]
fn registry_500_and_hang_fail_in_one_line() {
    let home = tmpdir("home-net");
    let addr = fake_registry(Some(500));
    let o = krypton(&home, &["pull", &format!("{addr}/x:y")], &[]);
    fails_clean(
        o,
        "registry answered 500 (UNKNOWN: storage exploded)",
        &home,
    );
    let addr = fake_registry(None);
    let t0 = Instant::now();
    let o = krypton(
        &home,
        &["pull", &format!("{addr}/x:y")],
        &[("KRYPTON_REGISTRY_TIMEOUT", "1")],
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    fails_clean(o, "timed out", &home);
    let o = krypton(&home, &["pull", "NOT/Valid"], &[]);
    fails_clean(o, "invalid image reference", &home);
    let o = krypton(&home, &["pull", "x", "--timeout=-1"], &[]);
    fails_clean(o, "timeout -1 out of range", &home);
}

#[test]
fn load_docker_archive_oci_archive_and_layout_dir() {
    need_tools!();
    let reg = Registry::start("load", None);
    let layout = tmpdir("layout-load");
    busybox_layout(&layout, "v1");
    let src = format!("{}/test/load:v1", reg.addr);
    push_layout(&layout, &src, &[]);
    let arch = tmpdir("archives");
    let docker_tar = arch.join("docker.tar");
    let oci_tar = arch.join("oci.tar");
    let s = format!("docker://{src}");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &s,
        &format!(
            "docker-archive:{}:example.com/saved:v2",
            docker_tar.display()
        ),
    ]);
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &s,
        &format!("oci-archive:{}:example.com/oci:v3", oci_tar.display()),
    ]);

    let home = tmpdir("home-load");
    let o = ok(krypton(
        &home,
        &["load", "-i", docker_tar.to_str().unwrap()],
        &[],
    ));
    assert_eq!(o.stdout.trim(), "Loaded image: example.com/saved:v2");
    let o = ok(krypton(
        &home,
        &["load", "-i", oci_tar.to_str().unwrap()],
        &[],
    ));
    assert_eq!(o.stdout.trim(), "Loaded image: example.com/oci:v3");
    // The layout directory written here: a bare tag is no name, so untagged.
    let o = ok(krypton(
        &home,
        &["load", "--input", layout.to_str().unwrap()],
        &[],
    ));
    assert!(
        o.stdout.trim().starts_with("Loaded image: sha256:"),
        "{}",
        o.stdout
    );
    blobs_verified(&home);
    let imgs = ok(krypton(&home, &["images"], &[])).stdout;
    assert!(
        imgs.contains("example.com/saved:v2")
            && imgs.contains("example.com/oci:v3")
            && imgs.contains("<none>"),
        "{imgs}"
    );
    // Same config in all three: one image id.
    let ids: std::collections::BTreeSet<&str> = imgs
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ids.len(), 1, "{imgs}");

    let home = tmpdir("home-load-bad");
    let junk = arch.join("junk.tar");
    std::fs::write(&junk, tar_of(&[("hello", 0o644, b"x")], &[])).unwrap();
    fails_clean(
        krypton(&home, &["load", "-i", junk.to_str().unwrap()], &[]),
        "neither a docker save archive",
        &home,
    );
    fails_clean(
        krypton(&home, &["load", "-i", "/nonexistent"], &[]),
        "/nonexistent",
        &home,
    );
    // A layout whose layer does not match its digest.
    let bad = tmpdir("layout-corrupt");
    let tars = busybox_layout(&bad, "v1");
    let victim = bad.join("blobs/sha256").join(Digest::of(&tars[2]).hex());
    let mut b = std::fs::read(&victim).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&victim, b).unwrap();
    fails_clean(
        krypton(&home, &["load", "-i", bad.to_str().unwrap()], &[]),
        "digest mismatch",
        &home,
    );
}
