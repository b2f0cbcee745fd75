//! `krypton load -i FILE`: `docker save` archives, and OCI image layouts as
//! tarballs or directories. A tarball may be gzip-compressed.
//!
//! Every blob goes through the same staging as a pull: digests, sizes and
//! the config's diff_ids are checked before anything is stored.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{self, Compression, ConfigFile, Descriptor, Manifest, ManifestError, Parsed};
use crate::reference::Reference;
use crate::store::{Staging, Store, StoreError};

/// Load errors.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the input failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The input.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither a docker archive nor an OCI layout.
    #[error(
        "{0}: neither a docker save archive (manifest.json) nor an OCI image layout (index.json)"
    )]
    Format(String),
    /// A file the archive's index names is not in it.
    #[error("{0} is not in the archive")]
    Missing(String),
    /// A path escaping the archive.
    #[error("bad path {0:?} in the archive index")]
    BadPath(String),
    /// Malformed JSON in the archive.
    #[error("{what}: {err}")]
    Json {
        /// Which file.
        what: String,
        /// The cause.
        err: serde_json::Error,
    },
    /// A bad manifest or config.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Storing failed (including digest mismatches).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No image in the archive.
    #[error("the archive holds no image")]
    Empty,
}

/// One image loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Index keys set (empty names become `sha256:<manifest>`).
    pub references: Vec<String>,
    /// Manifest digest.
    pub manifest_digest: Digest,
}

/// Called with each member wanted: its index, size and content.
type Visit<'a> = &'a mut dyn FnMut(usize, u64, &mut dyn Read) -> Result<(), LoadError>;

/// Where archive members come from.
trait Source {
    /// A member, whole, at most `max` bytes.
    fn small(&mut self, path: &str, max: u64) -> Result<Vec<u8>, LoadError>;
    /// Calls `f` with each of `wanted` (path → index), in archive order.
    fn each(&mut self, wanted: &HashMap<String, usize>, f: Visit<'_>) -> Result<(), LoadError>;
    /// Whether a member exists.
    fn has(&mut self, path: &str) -> Result<bool, LoadError>;
}

fn clean(path: &str) -> Result<String, LoadError> {
    let p = Path::new(path);
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err(LoadError::BadPath(path.chars().take(200).collect())),
        }
    }
    if out.is_empty() {
        return Err(LoadError::BadPath(path.into()));
    }
    Ok(out.join("/"))
}

struct Dir(PathBuf);

impl Source for Dir {
    fn small(&mut self, path: &str, max: u64) -> Result<Vec<u8>, LoadError> {
        let p = self.0.join(clean(path)?);
        let f = File::open(&p).map_err(|_| LoadError::Missing(path.into()))?;
        let mut b = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut b)
            .map_err(|source| LoadError::Io {
                path: p.clone(),
                source,
            })?;
        if b.len() as u64 > max {
            return Err(LoadError::Format(format!(
                "{path} is larger than {max} bytes"
            )));
        }
        Ok(b)
    }
    fn each(&mut self, wanted: &HashMap<String, usize>, f: Visit<'_>) -> Result<(), LoadError> {
        for (path, &i) in wanted {
            let p = self.0.join(path);
            let file = File::open(&p).map_err(|_| LoadError::Missing(path.clone()))?;
            let len = file
                .metadata()
                .map_err(|source| LoadError::Io {
                    path: p.clone(),
                    source,
                })?
                .len();
            f(i, len, &mut BufReader::with_capacity(1 << 20, file))?;
        }
        Ok(())
    }
    fn has(&mut self, path: &str) -> Result<bool, LoadError> {
        Ok(self.0.join(clean(path)?).is_file())
    }
}

/// A tarball, read in passes; small members are kept from the first pass.
struct Tarball {
    path: PathBuf,
    cache: HashMap<String, Vec<u8>>,
    sizes: HashMap<String, u64>,
}

const CACHE_MEMBER: u64 = 4 << 20;
const CACHE_TOTAL: u64 = 256 << 20;

impl Tarball {
    fn open_stream(&self) -> Result<Box<dyn Read>, LoadError> {
        let io_err = |source| LoadError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io_err)?;
        let mut magic = [0u8; 2];
        let n = f.read(&mut magic).map_err(io_err)?;
        let f = BufReader::with_capacity(1 << 20, io::Cursor::new(magic[..n].to_vec()).chain(f));
        Ok(if n == 2 && magic == [0x1f, 0x8b] {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        } else {
            Box::new(f)
        })
    }

    fn scan(path: &Path) -> Result<Tarball, LoadError> {
        let mut t = Tarball {
            path: path.to_path_buf(),
            cache: HashMap::new(),
            sizes: HashMap::new(),
        };
        let mut total = 0;
        let io_err = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut ar = tar::Archive::new(t.open_stream()?);
        for e in ar.entries().map_err(io_err)? {
            let mut e = e.map_err(io_err)?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = e.path().map_err(io_err)?.to_string_lossy().into_owned();
            let Ok(name) = clean(&name) else { continue };
            let size = e.size();
            t.sizes.insert(name.clone(), size);
            if size <= CACHE_MEMBER && total + size <= CACHE_TOTAL {
                let mut b = Vec::with_capacity(size as usize);
                e.read_to_end(&mut b).map_err(io_err)?;
                total += size;
                t.cache.insert(name, b);
            }
            if t.sizes.len() > 1 << 20 {
                return Err(LoadError::Format(format!(
                    "{}: too many members",
                    path.display()
                )));
            }
        }
        Ok(t)
    }
}

impl Source for Tarball {
    fn small(&mut self, path: &str, max: u64) -> Result<Vec<u8>, LoadError> {
        let p = clean(path)?;
        if let Some(b) = self.cache.get(&p) {
            if b.len() as u64 > max {
                return Err(LoadError::Format(format!(
                    "{path} is larger than {max} bytes"
                )));
            }
            return Ok(b.clone());
        }
        if self.sizes.contains_key(&p) {
            return Err(LoadError::Format(format!(
                "{path} is larger than {max} bytes"
            )));
        }
        Err(LoadError::Missing(path.into()))
    }
    fn each(&mut self, wanted: &HashMap<String, usize>, f: Visit<'_>) -> Result<(), LoadError> {
        let mut left: HashMap<&String, usize> = HashMap::new();
        for (p, &i) in wanted {
            if let Some(b) = self.cache.get(p) {
                f(i, b.len() as u64, &mut &b[..])?;
            } else if self.sizes.contains_key(p) {
                left.insert(p, i);
            } else {
                return Err(LoadError::Missing(p.clone()));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        let io_err = |source| LoadError::Io {
            path: self.path.clone(),
            source,
        };
        let mut ar = tar::Archive::new(self.open_stream()?);
        for e in ar.entries().map_err(io_err)? {
            let mut e = e.map_err(io_err)?;
            let name = e.path().map_err(io_err)?.to_string_lossy().into_owned();
            let Ok(name) = clean(&name) else { continue };
            if let Some(i) = left.remove(&name) {
                let size = e.size();
                f(i, size, &mut e)?;
            }
        }
        Ok(())
    }
    fn has(&mut self, path: &str) -> Result<bool, LoadError> {
        Ok(self.sizes.contains_key(&clean(path)?))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn json<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> Result<T, LoadError> {
    serde_json::from_slice(b).map_err(|err| LoadError::Json {
        what: what.into(),
        err,
    })
}

fn sniff(r: &mut dyn Read) -> io::Result<(Compression, Vec<u8>)> {
    let mut head = vec![0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = r.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    head.truncate(n);
    let c = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    Ok((c, head))
}

fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => manifest::OCI_LAYER_TAR,
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn keys_for(names: &[String], md: &Digest) -> Result<Vec<String>, LoadError> {
    let mut keys = Vec::new();
    for n in names {
        keys.push(Reference::parse(n).map_err(StoreError::from)?.index_key());
    }
    if keys.is_empty() {
        keys.push(md.to_string());
    }
    Ok(keys)
}

fn load_docker(src: &mut dyn Source, store: &Store) -> Result<Vec<Loaded>, LoadError> {
    let entries: Vec<DockerEntry> = json(
        &src.small("manifest.json", manifest::MAX_JSON)?,
        "manifest.json",
    )?;
    if entries.is_empty() {
        return Err(LoadError::Empty);
    }
    let mut out = Vec::new();
    for e in entries {
        let cfg_bytes = src.small(&e.config, manifest::MAX_JSON)?;
        let cfg = ConfigFile::parse(&cfg_bytes, e.layers.len())?;
        if e.layers.len() > manifest::MAX_LAYERS {
            return Err(ManifestError::TooManyLayers(e.layers.len()).into());
        }
        let mut staging = Staging::new(store);
        let cd = staging.add_bytes(&cfg_bytes, None, "config")?;
        let wanted: HashMap<String, usize> = e
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| Ok((clean(l)?, i)))
            .collect::<Result<_, LoadError>>()?;
        if wanted.len() != e.layers.len() {
            return Err(LoadError::Format(
                "manifest.json lists a layer twice".into(),
            ));
        }
        let mut layers: Vec<Option<Descriptor>> = vec![None; e.layers.len()];
        src.each(&wanted, &mut |i, size, r| {
            let (c, head) = sniff(r).map_err(|source| LoadError::Io {
                path: e.layers[i].clone().into(),
                source,
            })?;
            let diff_id = Digest::parse(&cfg.diff_ids()[i]).map_err(StoreError::from)?;
            let expected = (c == Compression::None).then_some(&diff_id);
            let d = staging.add_stream(
                &mut (&head[..]).chain(r),
                expected,
                Some(size),
                Some((c, &diff_id)),
                &mut |_| {},
            )?;
            layers[i] = Some(Descriptor {
                media_type: media_type(c).into(),
                digest: d.to_string(),
                size: size as i64,
                platform: None,
            });
            Ok(())
        })?;
        let layers: Vec<Descriptor> = layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| l.ok_or_else(|| LoadError::Missing(e.layers[i].clone())))
            .collect::<Result<_, _>>()?;
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: cd.to_string(),
                size: cfg_bytes.len() as i64,
                platform: None,
            },
            layers,
        };
        let body = serde_json::to_vec(&m).map_err(|err| LoadError::Json {
            what: "manifest".into(),
            err,
        })?;
        let md = staging.add_bytes(&body, None, "manifest")?;
        let keys = keys_for(&e.repo_tags.unwrap_or_default(), &md)?;
        staging.commit(&md, &m, &keys)?;
        out.push(Loaded {
            references: keys,
            manifest_digest: md,
        });
    }
    Ok(out)
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn load_oci(src: &mut dyn Source, store: &Store) -> Result<Vec<Loaded>, LoadError> {
    let idx_bytes = src.small("index.json", manifest::MAX_JSON)?;
    let Parsed::Index(idx) = manifest::parse(&idx_bytes, Some(manifest::OCI_INDEX))? else {
        return Err(LoadError::Format("index.json is not an image index".into()));
    };
    let ann: Vec<Option<String>> = {
        #[derive(Deserialize)]
        struct A {
            #[serde(default)]
            annotations: HashMap<String, String>,
        }
        #[derive(Deserialize)]
        struct I {
            manifests: Vec<A>,
        }
        let i: I = json(&idx_bytes, "index.json")?;
        i.manifests
            .into_iter()
            .map(|a| {
                a.annotations
                    .get("io.containerd.image.name")
                    .cloned()
                    .or_else(|| {
                        a.annotations
                            .get("org.opencontainers.image.ref.name")
                            .filter(|n| n.contains('/') || n.contains(':'))
                            .cloned()
                    })
            })
            .collect()
    };
    if idx.manifests.is_empty() {
        return Err(LoadError::Empty);
    }
    let mut out = Vec::new();
    for (desc, name) in idx.manifests.iter().zip(ann) {
        let mut d = desc.digest("index entry digest")?;
        let mut body = src.small(&blob_path(&d), manifest::MAX_JSON)?;
        let mut parsed = manifest::parse(&body, Some(&desc.media_type))?;
        if let Parsed::Index(inner) = &parsed {
            d = manifest::pick_platform(inner)?.digest("index entry digest")?;
            body = src.small(&blob_path(&d), manifest::MAX_JSON)?;
            parsed = manifest::parse(&body, None)?;
        }
        let Parsed::Manifest(m) = parsed else {
            return Err(ManifestError::MediaType("an index inside an index".into()).into());
        };
        let mut staging = Staging::new(store);
        let md = staging.add_bytes(&body, Some(&d), "manifest")?;
        let cd = m.config.digest("config digest")?;
        let cfg_bytes = src.small(&blob_path(&cd), manifest::MAX_JSON)?;
        staging.add_bytes(&cfg_bytes, Some(&cd), "config")?;
        let cfg = ConfigFile::parse(&cfg_bytes, m.layers.len())?;
        let mut wanted = HashMap::new();
        let mut specs = Vec::new();
        for (i, l) in m.layers.iter().enumerate() {
            let ld = l.digest("layer digest")?;
            specs.push((
                ld.clone(),
                l.size()?,
                manifest::layer_compression(&l.media_type)?,
                Digest::parse(&cfg.diff_ids()[i]).map_err(StoreError::from)?,
            ));
            if !store.has_blob(&ld) {
                if !src.has(&blob_path(&ld))? {
                    return Err(LoadError::Missing(blob_path(&ld)));
                }
                wanted.insert(blob_path(&ld), i);
            }
        }
        src.each(&wanted, &mut |i, _, r| {
            let (ld, size, c, diff_id) = &specs[i];
            staging.add_stream(r, Some(ld), Some(*size), Some((*c, diff_id)), &mut |_| {})?;
            Ok(())
        })?;
        let keys = keys_for(&name.into_iter().collect::<Vec<_>>(), &md)?;
        staging.commit(&md, &m, &keys)?;
        out.push(Loaded {
            references: keys,
            manifest_digest: md,
        });
    }
    Ok(out)
}

/// Loads every image in `path` (a docker save archive or an OCI layout,
/// tarball or directory) into `store`.
pub fn load(store: &Store, path: &Path) -> Result<Vec<Loaded>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: path.into(),
        source,
    })?;
    let mut src: Box<dyn Source> = if meta.is_dir() {
        Box::new(Dir(path.to_path_buf()))
    } else {
        Box::new(Tarball::scan(path)?)
    };
    if src.has("manifest.json")? {
        load_docker(src.as_mut(), store)
    } else if src.has("index.json")? {
        load_oci(src.as_mut(), store)
    } else {
        Err(LoadError::Format(path.display().to_string()))
    }
}
