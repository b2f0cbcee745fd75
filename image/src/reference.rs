//! Image references, parsed as docker does: `busybox` is
//! `docker.io/library/busybox:latest`, `host:5000/a/b@sha256:...` keeps its
//! registry, and a tag and a digest may both be given (the digest wins).

use std::fmt;

use crate::digest::{Digest, DigestError};

/// The registry an unqualified name lives on.
pub const DOCKER_HUB: &str = "docker.io";
const MAX_LEN: usize = 4096;

/// Reference parsing errors.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Empty, too long, or with characters docker does not accept.
    #[error("invalid image reference {0:?}: {1}")]
    Invalid(String, &'static str),
    /// The `@digest` part is malformed.
    #[error("invalid image reference {0:?}")]
    Digest(String, #[source] DigestError),
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// Manifest digest, when pinned.
    pub digest: Option<Digest>,
}

fn is_component(s: &str) -> bool {
    // [a-z0-9]+ separated by '.', '_', '__' or '-'+
    if s.is_empty() {
        return false;
    }
    let b = s.as_bytes();
    if !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    let last = b[b.len() - 1];
    if !last.is_ascii_lowercase() && !last.is_ascii_digit() {
        return false;
    }
    let mut run_sep = 0usize;
    let mut prev = 0u8;
    for &c in b {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            run_sep = 0;
        } else if c == b'.' || c == b'_' || c == b'-' {
            if run_sep > 0 && !(c == prev && (c == b'-' || (c == b'_' && run_sep == 1))) {
                return false;
            }
            run_sep += 1;
        } else {
            return false;
        }
        prev = c;
    }
    true
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn is_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || s.starts_with('[') => (h, Some(p)),
        _ => (s, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-[]:".contains(&c))
}

impl Reference {
    /// Parses `s` with docker's defaults.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let bad = |why| ReferenceError::Invalid(s.to_string(), why);
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > MAX_LEN {
            return Err(bad("too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|e| ReferenceError::Digest(s.into(), e))?),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !is_tag(t) {
                    return Err(bad("invalid tag"));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, p))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_registry(first) {
                    return Err(bad("invalid registry"));
                }
                (first.to_string(), p.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.is_empty() || !path.split('/').all(is_component) {
            return Err(bad(
                "invalid repository name (lowercase letters, digits, separators)",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".into())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the name images are listed under.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the registry is asked for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The key in the store's index: `name:tag`, or `name@digest` when pinned.
    pub fn index_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.name()),
            (None, Some(t)) => format!("{}:{t}", self.name()),
            (None, None) => format!("{}:latest", self.name()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.index_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_defaults() {
        let r = p("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.index_key(), "docker.io/library/busybox:latest");
        assert_eq!(p("user/app:1.2").index_key(), "docker.io/user/app:1.2");
        assert_eq!(
            p("index.docker.io/library/busybox").index_key(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        let r = p("127.0.0.1:5000/a/b:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = p(&format!("localhost/x@{d}"));
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        let r = p(&format!("localhost:5000/x:t@{d}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.manifest_ref(), d);
        // "host:port" without a slash is a name with a tag.
        assert_eq!(p("foo:5000").tag.as_deref(), Some("5000"));
    }

    #[test]
    fn rejects_bad_input() {
        for s in [
            "",
            "UPPER",
            "a//b",
            "a/",
            "-a",
            "a:",
            "a:b/c:",
            "a@sha256:12",
            "a:/b",
            "a b",
            "x/.y",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} accepted");
        }
    }
}
