//! OCI and Docker v2 schema 2 manifests, image indexes (manifest lists) and
//! image configs: parsing with bounds, media types, platform choice.

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Every manifest type a registry may send (the `Accept` header).
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest, index or config accepted.
pub const MAX_JSON: u64 = 4 << 20;
/// Most layers in one image (overlayfs stacks at most this many lower dirs here).
pub const MAX_LAYERS: usize = 127;

/// Manifest parsing errors.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not the JSON expected.
    #[error("malformed {what}: {err}")]
    Json {
        /// What was parsed.
        what: &'static str,
        /// serde's message.
        err: serde_json::Error,
    },
    /// A descriptor's digest is malformed.
    #[error("malformed {what}")]
    Digest {
        /// What was parsed.
        what: &'static str,
        /// The cause.
        #[source]
        err: DigestError,
    },
    /// A media type this client does not handle.
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    /// An index with no linux/amd64 entry.
    #[error("no linux/amd64 image in the index (it has: {0})")]
    NoPlatform(String),
    /// A single-platform image for another platform.
    #[error("the image is for {0}, not linux/amd64")]
    WrongPlatform(String),
    /// More layers than supported.
    #[error("the image has {0} layers (at most {MAX_LAYERS})")]
    TooManyLayers(usize),
    /// Config's diff_ids do not match the layers.
    #[error("the config lists {0} layers but the manifest has {1}")]
    LayerCount(usize, usize),
    /// Negative or absurd size.
    #[error("descriptor size {0} out of range")]
    Size(i64),
}

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Content digest.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// The digest, validated.
    pub fn digest(&self, what: &'static str) -> Result<Digest, ManifestError> {
        Digest::parse(&self.digest).map_err(|err| ManifestError::Digest { what, err })
    }

    /// The size, validated (at most 64 GiB).
    pub fn size(&self) -> Result<u64, ManifestError> {
        u64::try_from(self.size)
            .ok()
            .filter(|&s| s <= 64 << 30)
            .ok_or(ManifestError::Size(self.size))
    }
}

/// An index entry's platform.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Optional in OCI, required by Docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An image index or manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Optional in OCI.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Entries.
    pub manifests: Vec<Descriptor>,
}

/// What a manifest document turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A single image.
    Manifest(Manifest),
    /// Several, by platform.
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression of a layer media type, or an error for anything that is
/// not a tar layer.
pub fn layer_compression(media_type: &str) -> Result<Compression, ManifestError> {
    let base = media_type
        .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
        .map(|rest| format!("application/vnd.oci.image.layer.v1.{rest}"));
    Ok(match base.as_deref().unwrap_or(media_type) {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
        other => return Err(ManifestError::MediaType(other.chars().take(200).collect())),
    })
}

fn json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, ManifestError> {
    serde_json::from_slice(bytes).map_err(|err| ManifestError::Json { what, err })
}

/// Parses a manifest or index. `content_type` is the registry's header (or
/// the descriptor's media type), used when the document has no `mediaType`.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let probe: Probe = json(bytes, "manifest")?;
    if probe.schema_version != Some(2) {
        return Err(ManifestError::MediaType(format!(
            "manifest schema version {:?} (only 2)",
            probe.schema_version
        )));
    }
    let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
    let mt = probe
        .media_type
        .as_deref()
        .or(ct.filter(|c| *c != "application/json" && !c.is_empty()));
    let mt = match mt {
        Some(m) => m,
        None if probe.manifests.is_some() => OCI_INDEX,
        None => OCI_MANIFEST,
    };
    match mt {
        OCI_INDEX | DOCKER_LIST => {
            let idx: Index = json(bytes, "image index")?;
            for d in &idx.manifests {
                d.digest("index entry digest")?;
                d.size()?;
            }
            Ok(Parsed::Index(idx))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest = json(bytes, "image manifest")?;
            if m.layers.len() > MAX_LAYERS {
                return Err(ManifestError::TooManyLayers(m.layers.len()));
            }
            if m.config.media_type != OCI_CONFIG && m.config.media_type != DOCKER_CONFIG {
                return Err(ManifestError::MediaType(
                    m.config.media_type.chars().take(200).collect(),
                ));
            }
            m.config.digest("config digest")?;
            m.config.size()?;
            for l in &m.layers {
                l.digest("layer digest")?;
                l.size()?;
                layer_compression(&l.media_type)?;
            }
            Ok(Parsed::Manifest(m))
        }
        other => Err(ManifestError::MediaType(other.chars().take(200).collect())),
    }
}

/// The linux/amd64 entry of an index.
pub fn pick_platform(idx: &Index) -> Result<&Descriptor, ManifestError> {
    idx.manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                && (d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST)
        })
        .ok_or_else(|| {
            let have: Vec<String> = idx
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .take(16)
                .collect();
            ManifestError::NoPlatform(if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            })
        })
}

/// The parts of an image config `krypton run` applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory ("" for /).
    pub working_dir: String,
    /// User ("" for root).
    pub user: String,
}

/// The whole config document, as far as it matters here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigFile {
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub created: Option<String>,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// Run settings.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `config` in the config document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Env.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// WorkingDir.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
}

/// `rootfs` in the config document.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// Uncompressed layer digests, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    /// Parses a config; checks the platform and the diff_ids against `layers`.
    pub fn parse(bytes: &[u8], layers: usize) -> Result<ConfigFile, ManifestError> {
        let c: ConfigFile = json(bytes, "image config")?;
        if (!c.os.is_empty() && c.os != "linux")
            || (!c.architecture.is_empty() && c.architecture != "amd64")
        {
            return Err(ManifestError::WrongPlatform(format!(
                "{}/{}",
                c.os, c.architecture
            )));
        }
        let ids = c.diff_ids();
        if ids.len() != layers {
            return Err(ManifestError::LayerCount(ids.len(), layers));
        }
        for id in ids {
            Digest::parse(id).map_err(|err| ManifestError::Digest {
                what: "diff_id",
                err,
            })?;
        }
        Ok(c)
    }

    /// The layer diff ids.
    pub fn diff_ids(&self) -> &[String] {
        self.rootfs.as_ref().map_or(&[], |r| &r.diff_ids)
    }

    /// The run settings.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(layer_mt: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":2}},"layers":[{{"mediaType":"{layer_mt}","digest":"{D}","size":0}}]}}"#
        )
    }

    #[test]
    fn manifests_and_layer_types() {
        for (mt, c) in [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
        ] {
            let Ok(Parsed::Manifest(m)) = parse(manifest(mt).as_bytes(), None) else {
                panic!("{mt}")
            };
            assert_eq!(layer_compression(&m.layers[0].media_type).ok(), Some(c));
        }
        let e = parse(manifest("application/x-foo").as_bytes(), None).err();
        assert!(matches!(e, Some(ManifestError::MediaType(m)) if m == "application/x-foo"));
    }

    #[test]
    fn index_picks_linux_amd64() {
        let entry = |os: &str, arch: &str| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#
            )
        };
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{}]}}"#,
            entry("linux", "arm64"),
            entry("linux", "amd64")
        );
        let Ok(Parsed::Index(i)) = parse(doc.as_bytes(), Some(OCI_INDEX)) else {
            panic!("index")
        };
        assert_eq!(
            pick_platform(&i)
                .ok()
                .and_then(|d| d.platform.clone())
                .map(|p| p.architecture),
            Some("amd64".into())
        );
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entry("linux", "arm64")
        );
        let Ok(Parsed::Index(i)) = parse(doc.as_bytes(), None) else {
            panic!("index")
        };
        assert_eq!(
            pick_platform(&i).err().map(|e| e.to_string()),
            Some("no linux/amd64 image in the index (it has: linux/arm64)".into())
        );
    }

    #[test]
    fn config_checks() {
        let c = format!(
            r#"{{"os":"linux","architecture":"amd64","config":{{"Cmd":["sh"],"Env":["A=1"],"User":"1:2"}},"rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
        );
        let cfg = ConfigFile::parse(c.as_bytes(), 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.image_config().cmd, Some(vec!["sh".to_string()]));
        assert_eq!(cfg.image_config().user, "1:2");
        assert!(ConfigFile::parse(c.as_bytes(), 2).is_err());
        assert!(ConfigFile::parse(c.replace("amd64", "arm64").as_bytes(), 1).is_err());
        assert!(parse(b"{\"schemaVersion\":1}", None).is_err());
        assert!(parse(b"[]", None).is_err());
    }
}
