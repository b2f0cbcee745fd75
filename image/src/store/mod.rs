//! The content-addressed image store in `$KRYPTON_HOME`.
//!
//! ```text
//! lock                        flock / LockFileEx, held for every change
//! refs.json                   name:tag (or name@digest) -> manifest digest
//! blobs/sha256/<hex>          manifests, configs, layers; sha256 verified before kept
//! layers/sha256/<hex>.erofs   each layer blob converted once (by its digest)
//! tmp/                        downloads and conversions in progress
//! ```
//!
//! Every file appears by rename from `tmp/`, so a crash leaves only temp
//! files; a pull or load sets its reference only after all its blobs are in.

mod resolve;
mod staging;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError};
use crate::erofs::ConvertError;
use crate::manifest::{self, ConfigFile, Manifest, ManifestError, Parsed};
use crate::reference::{Reference, ReferenceError};

pub use crate::manifest::ImageConfig;
pub use resolve::ResolvedImage;
pub use staging::Staging;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A bad manifest, index or config.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No image by that name.
    #[error("no such image: {0}")]
    NotFound(String),
    /// A short id matching several images.
    #[error("ambiguous image id {0} (matches several images)")]
    Ambiguous(String),
    /// Content whose digest is not the one announced.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Announced.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// Content of another size than announced.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was checked.
        what: String,
        /// Announced.
        expected: u64,
        /// Read.
        actual: u64,
    },
    /// A layer that does not decompress.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer.
        digest: Digest,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The conversion of a layer failed.
    #[error("converting layer {digest}")]
    Convert {
        /// The layer.
        digest: Digest,
        /// The cause.
        #[source]
        source: ConvertError,
    },
    /// A stored blob is missing (removed underneath, or the store is damaged).
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    /// A malformed digest in the store.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The reference index is damaged.
    #[error("{}: {err}", path.display())]
    Index {
        /// refs.json.
        path: PathBuf,
        /// The cause.
        err: serde_json::Error,
    },
    /// No home directory to put the store in.
    #[error("no home directory for the image store (set KRYPTON_HOME)")]
    NoHome,
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// `$KRYPTON_HOME`, else the platform data dir: `$XDG_DATA_HOME/krypton` or
/// `~/.local/share/krypton` on Linux, `%LOCALAPPDATA%\krypton` on Windows.
pub fn default_home() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(h) = env("KRYPTON_HOME") {
        return Some(h);
    }
    if cfg!(windows) {
        return env("LOCALAPPDATA").map(|d| d.join("krypton"));
    }
    env("XDG_DATA_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".local").join("share")))
        .map(|d| d.join("krypton"))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefIndex {
    refs: BTreeMap<String, RefEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefEntry {
    manifest: String,
}

/// One line of `krypton images`.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// `name:tag` or `name@digest`.
    pub reference: String,
    /// Manifest digest.
    pub manifest: Digest,
    /// Image id (the config digest, as docker).
    pub id: Digest,
    /// The config's creation time, RFC 3339, if any.
    pub created: Option<String>,
    /// Compressed size of config and layers.
    pub size: u64,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Blobs removed.
    pub blobs: u64,
    /// Converted layers removed.
    pub layers: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// An opened store.
#[derive(Debug)]
pub struct Store {
    home: PathBuf,
    lock: File,
}

/// Holds the store lock until dropped.
#[derive(Debug)]
pub struct LockGuard<'a>(&'a File);

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating as needed) the store at `home`.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        for d in [
            home.to_path_buf(),
            home.join("blobs/sha256"),
            home.join("layers/sha256"),
            home.join("tmp"),
        ] {
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let lp = home.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lp)
            .map_err(io_err("opening", &lp))?;
        Ok(Store {
            home: home.to_path_buf(),
            lock,
        })
    }

    /// The store's directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Takes the store lock (blocking while another process holds it).
    pub fn lock(&self) -> Result<LockGuard<'_>, StoreError> {
        self.lock
            .lock()
            .map_err(io_err("locking", &self.home.join("lock")))?;
        Ok(LockGuard(&self.lock))
    }

    /// Where a blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.home.join("blobs/sha256").join(d.hex())
    }

    /// Where a layer blob's conversion lives.
    pub fn layer_path(&self, d: &Digest) -> PathBuf {
        self.home
            .join("layers/sha256")
            .join(format!("{}.erofs", d.hex()))
    }

    /// Whether a blob is stored.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A new, unique temp file in `tmp/`.
    pub(crate) fn temp_file(&self) -> Result<(PathBuf, File), StoreError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{}-{}-{nanos}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let p = self.home.join("tmp").join(name);
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(io_err("creating", &p))?;
        Ok((p, f))
    }

    /// Reads a stored blob, at most `max` bytes.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let len = fs::metadata(&p)
            .map_err(|_| StoreError::MissingBlob(d.clone()))?
            .len();
        if len > max {
            return Err(StoreError::SizeMismatch {
                what: format!("blob {d}"),
                expected: max,
                actual: len,
            });
        }
        fs::read(&p).map_err(io_err("reading", &p))
    }

    fn refs_path(&self) -> PathBuf {
        self.home.join("refs.json")
    }

    fn read_refs(&self) -> Result<RefIndex, StoreError> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Index { path: p, err: e }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RefIndex::default()),
            Err(e) => Err(io_err("reading", &p)(e)),
        }
    }

    /// Replaces the index atomically. Call with the lock held.
    fn write_refs(&self, idx: &RefIndex) -> Result<(), StoreError> {
        let (tmp, mut f) = self.temp_file()?;
        let body = serde_json::to_vec_pretty(idx).map_err(|e| StoreError::Index {
            path: tmp.clone(),
            err: e,
        })?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &tmp))?;
        drop(f);
        let p = self.refs_path();
        fs::rename(&tmp, &p).map_err(io_err("replacing", &p))
    }

    /// The manifest of a stored image.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest, StoreError> {
        let b = self.read_blob(d, manifest::MAX_JSON)?;
        match manifest::parse(&b, None)? {
            Parsed::Manifest(m) => Ok(m),
            Parsed::Index(_) => {
                Err(ManifestError::MediaType("an index stored as an image".into()).into())
            }
        }
    }

    /// The config of a stored image.
    pub fn config(&self, m: &Manifest) -> Result<ConfigFile, StoreError> {
        let d = m.config.digest("config digest")?;
        Ok(ConfigFile::parse(
            &self.read_blob(&d, manifest::MAX_JSON)?,
            m.layers.len(),
        )?)
    }

    /// Finds the manifest digest of `reference`: a `name:tag` or `name@digest`
    /// in the index, or a full or unique short manifest digest or image id.
    pub fn lookup(&self, reference: &str) -> Result<(String, Digest), StoreError> {
        let refs = self.read_refs()?;
        let parsed = Reference::parse(reference);
        if let Ok(r) = &parsed {
            if let Some(e) = refs.refs.get(&r.index_key()) {
                return Ok((r.index_key(), Digest::parse(&e.manifest)?));
            }
            if let Some(d) = &r.digest
                && refs.refs.iter().any(|(k, e)| {
                    e.manifest == d.as_str() && k.starts_with(&format!("{}:", r.name()))
                })
            {
                return Ok((r.index_key(), d.clone()));
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            let mut found: Vec<(String, Digest)> = Vec::new();
            for (k, e) in &refs.refs {
                let md = Digest::parse(&e.manifest)?;
                let id = self
                    .manifest(&md)
                    .ok()
                    .and_then(|m| m.config.digest("").ok());
                if (md.hex().starts_with(hex) || id.is_some_and(|i| i.hex().starts_with(hex)))
                    && found.iter().all(|(_, d)| *d != md)
                {
                    found.push((k.clone(), md));
                }
            }
            match found.len() {
                1 => return Ok(found.remove(0)),
                0 => {}
                _ => return Err(StoreError::Ambiguous(reference.into())),
            }
        }
        parsed?;
        Err(StoreError::NotFound(reference.into()))
    }

    /// Every reference with its image.
    pub fn list(&self) -> Result<Vec<ImageInfo>, StoreError> {
        let refs = self.read_refs()?;
        let mut out = Vec::new();
        for (k, e) in refs.refs {
            let md = Digest::parse(&e.manifest)?;
            let m = self.manifest(&md)?;
            let cfg = self.config(&m)?;
            let size =
                m.config.size()? + m.layers.iter().map(|l| l.size().unwrap_or(0)).sum::<u64>();
            out.push(ImageInfo {
                reference: k,
                manifest: md,
                id: m.config.digest("config")?,
                created: cfg.created,
                size,
            });
        }
        Ok(out)
    }

    /// Removes `reference` from the index; a digest or id removes every
    /// reference to that image. Returns the references removed. Blobs stay
    /// until [`Store::prune`].
    pub fn remove(&self, reference: &str) -> Result<Vec<String>, StoreError> {
        let _g = self.lock()?;
        let (key, md) = self.lookup(reference)?;
        let mut refs = self.read_refs()?;
        let by_id = !Reference::parse(reference)
            .is_ok_and(|r| r.index_key() == key && refs.refs.contains_key(&key));
        let removed: Vec<String> = if by_id {
            refs.refs
                .iter()
                .filter(|(_, e)| e.manifest == md.as_str())
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            vec![key]
        };
        for k in &removed {
            refs.refs.remove(k);
        }
        self.write_refs(&refs)?;
        Ok(removed)
    }

    /// Removes blobs and converted layers no reference needs, and stale temp files.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        let _g = self.lock()?;
        let mut keep = std::collections::HashSet::new();
        for e in self.read_refs()?.refs.values() {
            let md = Digest::parse(&e.manifest)?;
            let m = self.manifest(&md)?;
            keep.insert(md.hex().to_string());
            keep.insert(m.config.digest("config")?.hex().to_string());
            for l in &m.layers {
                keep.insert(l.digest("layer")?.hex().to_string());
            }
        }
        let mut rep = PruneReport::default();
        for (dir, suffix) in [("blobs/sha256", ""), ("layers/sha256", ".erofs")] {
            let dir = self.home.join(dir);
            for ent in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let ent = ent.map_err(io_err("listing", &dir))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let hex = name.strip_suffix(suffix).unwrap_or(&name);
                if keep.contains(hex) {
                    continue;
                }
                let len = ent.metadata().map_or(0, |m| m.len());
                fs::remove_file(ent.path()).map_err(io_err("removing", &ent.path()))?;
                rep.bytes += len;
                if suffix.is_empty() {
                    rep.blobs += 1;
                } else {
                    rep.layers += 1;
                }
            }
        }
        // Temp files older than a day belong to dead processes.
        let tmp = self.home.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for ent in rd.flatten() {
                let old = ent
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 86_400);
                if old {
                    let _ = fs::remove_file(ent.path());
                }
            }
        }
        Ok(rep)
    }

    /// Points `key` at `manifest`. Call with the lock held, after the blobs are in.
    pub(crate) fn set_ref(&self, key: &str, manifest: &Digest) -> Result<(), StoreError> {
        let mut refs = self.read_refs()?;
        refs.refs.insert(
            key.to_string(),
            RefEntry {
                manifest: manifest.to_string(),
            },
        );
        self.write_refs(&refs)
    }
}
