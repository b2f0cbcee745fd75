//! Real parts for the image tests: Debian's `docker-registry` started on a
//! free 127.0.0.1 port with a temp storage dir, a tiny client that pushes
//! crafted blobs and manifests, OCI layouts written here, and `skopeo`.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use krypton_image::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Whether `prog` is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Names the missing tools, or `None` if all are there.
pub fn missing(tools: &[&str]) -> Option<String> {
    let m: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    (!m.is_empty()).then(|| m.join(", "))
}

/// A scratch directory, removed on drop.
pub struct TmpDir(pub PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tmpdir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("krypton-img-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub storage: PathBuf,
    pub auth: Option<(String, String)>,
    _dir: TmpDir,
}

impl Registry {
    /// Starts one; with `auth`, an htpasswd (bcrypt) basic-auth registry.
    pub fn start(name: &str, auth: Option<(&str, &str)>) -> Registry {
        let dir = tmpdir(&format!("registry-{name}"));
        let storage = dir.join("storage");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((u, p)) = auth {
            let h = dir.join("htpasswd");
            let st = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&h)
                .args([u, p])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "htpasswd failed");
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: krypton-test\n    path: {}\n",
                h.display()
            ));
        }
        let cfg_path = dir.join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            addr,
            storage,
            auth: auth.map(|(u, p)| (u.into(), p.into())),
            _dir: dir,
        };
        let t0 = Instant::now();
        while ureq::get(&format!("http://{}/v2/", r.addr))
            .call()
            .map_or_else(|e| !matches!(e, ureq::Error::Status(..)), |_| false)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn req(&self, method: &str, url: &str) -> ureq::Request {
        let r = ureq::request(method, url);
        match &self.auth {
            Some((u, p)) => {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                r.set("Authorization", &format!("Basic {b}"))
            }
            None => r,
        }
    }

    /// Pushes a blob (monolithic upload); returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let resp = self
            .req(
                "POST",
                &format!("http://{}/v2/{repo}/blobs/uploads/", self.addr),
            )
            .call()
            .unwrap();
        let loc = resp.header("Location").unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.addr)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        self.req("PUT", &format!("{loc}{sep}digest={d}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(data)
            .unwrap();
        d
    }

    /// Pushes a manifest or index under `reference`; returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Digest {
        let r = self
            .req(
                "PUT",
                &format!("http://{}/v2/{repo}/manifests/{reference}", self.addr),
            )
            .set("Content-Type", media_type)
            .send_bytes(body);
        if let Err(ureq::Error::Status(c, resp)) = r {
            panic!(
                "push manifest: {c} {}",
                resp.into_string().unwrap_or_default()
            );
        }
        r.unwrap();
        Digest::of(body)
    }

    /// The registry's stored file for a blob (to corrupt it underneath).
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        self.storage.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{}/data",
            &d.hex()[..2],
            d.hex()
        ))
    }

    pub fn creds_args(&self) -> Vec<String> {
        match &self.auth {
            Some((u, p)) => vec![format!("--dest-creds={u}:{p}")],
            None => vec![],
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a tar: (path, mode, content) files, plus symlinks (path, target).
pub fn tar_of(files: &[(&str, u32, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (p, ..) in files
        .iter()
        .map(|f| (f.0, ()))
        .chain(links.iter().map(|l| (l.0, ())))
    {
        let mut acc = String::new();
        for part in p.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            acc.push_str(part);
            acc.push('/');
            dirs.insert(acc.clone());
        }
    }
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, &d, &[][..]).unwrap();
    }
    for (p, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, *data).unwrap();
    }
    for (p, t) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, p, t).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A config for uncompressed layers `tars`, for `arch`.
pub fn config_for(tars: &[&[u8]], arch: &str) -> Vec<u8> {
    let ids: Vec<String> = tars.iter().map(|t| Digest::of(t).to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "created": "2026-12-01T10:00:00Z",
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap()
}

/// A manifest JSON for a config and (media type, blob) layers.
pub fn manifest_for(config: &[u8], layers: &[(&str, &[u8])]) -> Vec<u8> {
    let ls: Vec<serde_json::Value> = layers
        .iter()
        .map(|(mt, b)| serde_json::json!({"mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": Digest::of(config).to_string(), "size": config.len()},
        "layers": ls,
    }))
    .unwrap()
}

/// Writes an OCI layout at `dir` with one image tagged `tag`.
pub fn write_oci_layout(dir: &Path, tag: &str, config: &[u8], layers: &[(&str, &[u8])]) -> Digest {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| std::fs::write(blobs.join(Digest::of(b).hex()), b).unwrap();
    put(config);
    for (_, l) in layers {
        put(l);
    }
    let m = manifest_for(config, layers);
    put(&m);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": Digest::of(&m).to_string(), "size": m.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    Digest::of(&m)
}

/// Runs skopeo, panicking with its stderr on failure.
pub fn skopeo(args: &[&str]) {
    let o = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A server that answers every request with `status`, or (None) accepts
/// and never answers. Runs until the process ends.
pub fn fake_registry(status: Option<u16>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            match status {
                Some(code) => {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let body =
                        "{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"storage exploded\"}]}";
                    let _ = write!(
                        s,
                        "HTTP/1.1 {code} Oops\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                None => held.push(s),
            }
        }
    });
    addr
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
