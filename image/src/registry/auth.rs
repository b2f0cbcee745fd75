//! Registry authentication: `WWW-Authenticate` challenges, anonymous or
//! credentialed bearer tokens, basic auth, and `~/.docker/config.json`.

use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter.
        scope: Option<String>,
    },
}

/// Parses a challenge; `None` for schemes this client does not speak.
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service, mut scope) = (None, None, None);
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        match key.as_str() {
            "realm" => realm = Some(val),
            "service" => service = Some(val),
            "scope" => scope = Some(val),
            _ => {}
        }
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

/// A token endpoint's answer.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    /// The token (Docker).
    #[serde(default)]
    pub token: Option<String>,
    /// The token (OAuth2).
    #[serde(default)]
    pub access_token: Option<String>,
}

/// Username and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// The `Authorization: Basic` value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Debug, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("DOCKER_CONFIG") {
        return Some(d.join("config.json"));
    }
    env("HOME")
        .or_else(|| env("USERPROFILE"))
        .map(|h| h.join(".docker").join("config.json"))
}

/// Errors reading the docker config.
#[derive(Debug, thiserror::Error)]
#[error("{}: {msg}", path.display())]
pub struct ConfigError {
    path: PathBuf,
    msg: String,
}

/// Credentials for `registry` from the docker config, if it has any.
pub fn docker_credentials(registry: &str) -> Result<Option<Credentials>, ConfigError> {
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError {
                path,
                msg: e.to_string(),
            });
        }
    };
    let cfg: DockerConfig = serde_json::from_slice(&bytes).map_err(|e| ConfigError {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    credentials_for(&cfg, registry).map_err(|msg| ConfigError { path, msg })
}

fn credentials_for(cfg: &DockerConfig, registry: &str) -> Result<Option<Credentials>, String> {
    let hub = registry == crate::reference::DOCKER_HUB;
    let entry = cfg.auths.iter().find(|(k, _)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or("");
        host == registry || (hub && (host == "index.docker.io" || host == "registry-1.docker.io"))
    });
    let Some((key, e)) = entry else {
        return Ok(None);
    };
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| format!("auths.{key}.auth is not base64"))?;
        let raw = String::from_utf8(raw).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
        return Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        }));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge("Basic realm=\"Registry\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer realm=\"unterminated"), None);
    }

    #[test]
    fn config_lookup() {
        let cfg: DockerConfig = serde_json::from_str(
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dTpwOmM="},"https://index.docker.io/v1/":{"username":"a","password":"b"},"bad":{"auth":"!!"}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = credentials_for(&cfg, "127.0.0.1:5000").ok().flatten();
        assert_eq!(
            c.map(|c| (c.username, c.password)),
            Some(("u".into(), "p:c".into()))
        );
        let c = credentials_for(&cfg, "docker.io").ok().flatten();
        assert_eq!(c.map(|c| c.username), Some("a".into()));
        assert!(credentials_for(&cfg, "bad").is_err());
        assert_eq!(credentials_for(&cfg, "other:1").ok().flatten(), None);
    }
}
