//! `krypton pull`: a client of the OCI distribution API v2.
//!
//! Manifests (and an index's linux/amd64 entry) are fetched and verified,
//! then the config and the layers are streamed to temp files in the store,
//! each checked against its digest and size, layers also decompressed on
//! the way and checked against the config's diff_ids. Only then are the
//! blobs moved in and the reference set. `http` is used for registries on
//! localhost / 127.0.0.1 (docker treats them as insecure), `https` elsewhere.

pub mod auth;

use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use auth::{Challenge, Credentials, TokenResponse};

use crate::digest::Digest;
use crate::manifest::{self, ConfigFile, ManifestError, Parsed};
use crate::reference::{DOCKER_HUB, Reference, ReferenceError};
use crate::store::{Staging, Store, StoreError};

/// Pull errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry could not be reached or stopped answering.
    #[error("{url}: {msg}")]
    Transport {
        /// The request.
        url: String,
        /// The cause.
        msg: String,
    },
    /// An HTTP error status.
    #[error("{url}: registry answered {status}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    Status {
        /// The request.
        url: String,
        /// The status code.
        status: u16,
        /// The registry's error message, if any.
        detail: String,
    },
    /// Credentials needed, or refused.
    #[error("{registry}: authentication required{}", if *.had_credentials { " (the credentials were refused)" } else { " (no credentials for it in the docker config)" })]
    Unauthorized {
        /// The registry.
        registry: String,
        /// Whether credentials were sent.
        had_credentials: bool,
    },
    /// A protocol violation (bad token answer, bad challenge).
    #[error("{0}")]
    Protocol(String),
    /// A bad manifest, index or config.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Storing failed (including digest mismatches).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    /// The docker config is unreadable.
    #[error(transparent)]
    DockerConfig(#[from] auth::ConfigError),
}

/// Pull settings.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Connect timeout, and longest wait for any byte of an answer.
    pub timeout: Duration,
    /// Show progress on stderr.
    pub progress: bool,
    /// Layers fetched at once.
    pub parallel: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            timeout: Duration::from_secs(30),
            progress: false,
            parallel: 4,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The index key set.
    pub reference: String,
    /// The image's manifest digest.
    pub manifest_digest: Digest,
    /// Bytes downloaded.
    pub downloaded: u64,
    /// Layers already in the store.
    pub layers_present: usize,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repository: String,
    creds: Option<Credentials>,
    authorization: Mutex<Option<String>>,
}

const MAX_ERROR_BODY: u64 = 16 << 10;

fn base_url(registry: &str) -> String {
    let host = registry.rsplit_once(':').map_or(registry, |(h, p)| {
        if p.bytes().all(|c| c.is_ascii_digit()) {
            h
        } else {
            registry
        }
    });
    if registry == DOCKER_HUB {
        "https://registry-1.docker.io".into()
    } else if host == "localhost" || host.starts_with("127.") || host == "[::1]" {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    }
}

fn status_detail(resp: ureq::Response) -> String {
    let mut body = String::new();
    let _ = resp
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_string(&mut body);
    // {"errors":[{"code":"...","message":"..."}]}
    let v: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    let msg = v
        .as_ref()
        .and_then(|v| v.get("errors")?.get(0).cloned())
        .map(|e| {
            let code = e
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string();
            let m = e
                .get("message")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string();
            format!("{code}: {m}").trim_matches([':', ' ']).to_string()
        })
        .unwrap_or_else(|| body.lines().next().unwrap_or("").to_string());
    msg.chars().take(200).collect()
}

impl Client {
    fn new(r: &Reference, opts: &PullOptions) -> Result<Client, RegistryError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(opts.timeout)
            .timeout_read(opts.timeout)
            .timeout_write(opts.timeout)
            .user_agent(concat!("krypton/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent,
            base: base_url(&r.registry),
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            creds: auth::docker_credentials(&r.registry)?,
            authorization: Mutex::new(None),
        })
    }

    fn transport(url: &str, e: &ureq::Transport) -> RegistryError {
        let msg = e.to_string();
        let msg = msg
            .split_once(": ")
            .map_or(msg.as_str(), |(_, m)| m)
            .to_string();
        RegistryError::Transport {
            url: url.into(),
            msg,
        }
    }

    fn current_auth(&self) -> Option<String> {
        self.authorization.lock().ok().and_then(|g| g.clone())
    }

    /// GET `path` under /v2/<repo>/, answering one auth challenge.
    fn get(&self, path: &str, accept: Option<&str>) -> Result<ureq::Response, RegistryError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let mut tried_auth = false;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            let sent_auth = self.current_auth();
            if let Some(h) = &sent_auth {
                req = req.set("Authorization", h);
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, resp)) if !tried_auth => {
                    tried_auth = true;
                    let ch = resp
                        .header("WWW-Authenticate")
                        .and_then(auth::parse_challenge);
                    let header = match ch {
                        Some(Challenge::Basic) => match &self.creds {
                            Some(c) => c.basic_header(),
                            None => return Err(self.unauthorized(false)),
                        },
                        Some(Challenge::Bearer {
                            realm,
                            service,
                            scope,
                        }) => self.token(&realm, service, scope)?,
                        None => return Err(self.unauthorized(sent_auth.is_some())),
                    };
                    if let Ok(mut g) = self.authorization.lock() {
                        *g = Some(header);
                    }
                }
                Err(ureq::Error::Status(401 | 403, _)) => {
                    return Err(self.unauthorized(self.creds.is_some()));
                }
                Err(ureq::Error::Status(status, resp)) => {
                    return Err(RegistryError::Status {
                        url,
                        status,
                        detail: status_detail(resp),
                    });
                }
                Err(ureq::Error::Transport(t)) => return Err(Self::transport(&url, &t)),
            }
        }
    }

    fn unauthorized(&self, had_credentials: bool) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            had_credentials,
        }
    }

    fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<String, RegistryError> {
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut req = self.agent.get(realm).query("scope", &scope);
        if let Some(s) = &service {
            req = req.query("service", s);
        }
        if let Some(c) = &self.creds {
            req = req.set("Authorization", &c.basic_header());
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(401 | 403, _)) => {
                return Err(self.unauthorized(self.creds.is_some()));
            }
            Err(ureq::Error::Status(status, resp)) => {
                return Err(RegistryError::Status {
                    url: realm.into(),
                    status,
                    detail: status_detail(resp),
                });
            }
            Err(ureq::Error::Transport(t)) => return Err(Self::transport(realm, &t)),
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|e| RegistryError::Transport {
                url: realm.into(),
                msg: e.to_string(),
            })?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Protocol(format!("{realm}: bad token answer: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| {
                RegistryError::Protocol(format!("{realm}: token answer without a token"))
            })
    }

    /// A manifest or index, bounded, verified against `pinned` or the
    /// registry's Docker-Content-Digest.
    fn manifest(
        &self,
        reference: &str,
        pinned: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest, Parsed), RegistryError> {
        let resp = self.get(&format!("manifests/{reference}"), Some(manifest::ACCEPT))?;
        let url = resp.get_url().to_string();
        let ct = resp.header("Content-Type").map(str::to_string);
        let header_digest = resp
            .header("Docker-Content-Digest")
            .and_then(|d| Digest::parse(d).ok());
        let mut body = Vec::new();
        resp.into_reader()
            .take(manifest::MAX_JSON + 1)
            .read_to_end(&mut body)
            .map_err(|e| RegistryError::Transport {
                url: url.clone(),
                msg: e.to_string(),
            })?;
        if body.len() as u64 > manifest::MAX_JSON {
            return Err(RegistryError::Protocol(format!(
                "{url}: manifest larger than {} bytes",
                manifest::MAX_JSON
            )));
        }
        let actual = Digest::of(&body);
        if let Some(expected) = pinned.or(header_digest.as_ref())
            && *expected != actual
        {
            return Err(StoreError::DigestMismatch {
                what: format!("manifest {reference}"),
                expected: expected.clone(),
                actual,
            }
            .into());
        }
        let parsed = manifest::parse(&body, ct.as_deref())?;
        Ok((body, actual, parsed))
    }
}

/// Progress on stderr: one line rewritten in place.
struct Meter {
    total: u64,
    done: AtomicU64,
    show: bool,
    name: String,
}

impl Meter {
    fn add(&self, n: u64) {
        let d = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.show {
            eprint!(
                "\r{}: {:.1}/{:.1} MB   ",
                self.name,
                d as f64 / 1e6,
                self.total as f64 / 1e6
            );
        }
    }
    fn end(&self) {
        if self.show {
            eprintln!();
        }
    }
}

/// Pulls `reference` into `store`.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let r = Reference::parse(reference)?;
    let client = Client::new(&r, opts)?;
    let (mut body, mut md, mut parsed) = client.manifest(&r.manifest_ref(), r.digest.as_ref())?;
    if let Parsed::Index(idx) = &parsed {
        let d = manifest::pick_platform(idx)?.digest("index entry digest")?;
        (body, md, parsed) = client.manifest(d.as_str(), Some(&d))?;
    }
    let Parsed::Manifest(m) = parsed else {
        return Err(ManifestError::MediaType("an index inside an index".into()).into());
    };
    let mut staging = Staging::new(store);
    staging.add_bytes(&body, Some(&md), "manifest")?;
    let cd = m.config.digest("config digest")?;
    let cfg_bytes = if store.has_blob(&cd) {
        store.read_blob(&cd, manifest::MAX_JSON)?
    } else {
        if m.config.size()? > manifest::MAX_JSON {
            return Err(RegistryError::Protocol(format!(
                "config {cd} larger than {} bytes",
                manifest::MAX_JSON
            )));
        }
        let resp = client.get(&format!("blobs/{cd}"), None)?;
        let mut b = Vec::new();
        resp.into_reader()
            .take(manifest::MAX_JSON)
            .read_to_end(&mut b)
            .map_err(|e| RegistryError::Transport {
                url: format!("blob {cd}"),
                msg: e.to_string(),
            })?;
        staging.add_bytes(&b, Some(&cd), "config")?;
        b
    };
    let cfg = ConfigFile::parse(&cfg_bytes, m.layers.len())?;
    let mut todo = Vec::new();
    let mut present = 0;
    for (l, diff_id) in m.layers.iter().zip(cfg.diff_ids()) {
        let d = l.digest("layer digest")?;
        if store.has_blob(&d) || todo.iter().any(|(x, ..): &(Digest, _, _, _)| *x == d) {
            present += 1;
            continue;
        }
        todo.push((
            d,
            l.size()?,
            manifest::layer_compression(&l.media_type)?,
            Digest::parse(diff_id)?,
        ));
    }
    let meter = Meter {
        total: todo.iter().map(|t| t.1).sum(),
        done: AtomicU64::new(0),
        show: opts.progress,
        name: r.index_key(),
    };
    let next = AtomicU64::new(0);
    let results: Vec<Result<Staging<'_>, RegistryError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..opts.parallel.clamp(1, 16).min(todo.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut st = Staging::new(store);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some((d, size, c, diff_id)) = todo.get(i) else {
                            return Ok(st);
                        };
                        let resp = client.get(&format!("blobs/{d}"), None)?;
                        let mut last = 0u64;
                        st.add_stream(
                            resp.into_reader(),
                            Some(d),
                            Some(*size),
                            Some((*c, diff_id)),
                            &mut |n| {
                                meter.add(n - last);
                                last = n;
                            },
                        )?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(RegistryError::Protocol("a download thread panicked".into()))
                })
            })
            .collect()
    });
    meter.end();
    for res in results {
        staging.absorb(res?);
    }
    let key = r.index_key();
    staging.commit(&md, &m, std::slice::from_ref(&key))?;
    Ok(PullReport {
        reference: key,
        manifest_digest: md,
        downloaded: meter.done.load(Ordering::Relaxed),
        layers_present: present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(base_url("localhost"), "http://localhost");
        assert_eq!(base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(base_url("ghcr.io"), "https://ghcr.io");
        assert_eq!(base_url("example.com:443"), "https://example.com:443");
    }
}
