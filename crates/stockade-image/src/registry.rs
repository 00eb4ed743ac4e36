//! A blocking Distribution v2 (OCI distribution) client: manifests and
//! blobs of one repository, with the auth, TLS and mirror rules of a pull.
//!
//! - `GET /v2/<repo>/manifests/<tag|digest>` with an `Accept` of every
//!   manifest type we read; the manifest's digest is the sha256 of the
//!   bytes received, checked against a digest reference and against
//!   `Docker-Content-Digest` when the registry sends one.
//! - `GET /v2/<repo>/blobs/<digest>`, streamed; redirects are followed
//!   (without the `Authorization` header, which belongs to the registry).
//! - On 401 the `WWW-Authenticate` challenge is answered: Bearer → a token
//!   from the realm (with Basic credentials when there are some), cached
//!   per registry and scope for the client's life; Basic → the
//!   credentials. One retry; a second 401 is `Unauthorized`.
//! - Schemes: HTTPS, verified. A loopback registry (`localhost`,
//!   `127.0.0.0/8`, `[::1]`) is tried over HTTPS first and over plain HTTP
//!   when that fails for any reason but an untrusted certificate (a plain
//!   HTTP server cannot finish a TLS handshake); a registry listed as
//!   insecure likewise, with HTTPS unverified. Any other registry that does
//!   not speak TLS is refused (`Insecure`). The scheme that worked is kept
//!   per host.
//! - Mirrors (`host[:port][/prefix]`) of the reference's registry are tried
//!   in order before it, for every request; a mirror that could not be
//!   reached is skipped for the rest of the client's life.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use ureq::http::Response;
use ureq::Agent;

use crate::auth::{self, Challenge, Credentials};
use crate::digest::Digest;
use crate::manifest::{self, ACCEPT, MAX_MANIFEST_BYTES};
use crate::pull::{PullError, PullOptions};
use crate::reference::{Reference, DOCKER_HUB};
use crate::tls::{self, Failure};

/// Docker Hub's API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Token answers larger than this are refused.
const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// A manifest as received.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// `Content-Type`, or the media type of the descriptor that named it.
    pub media_type: Option<String>,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// A blob being received.
pub struct Blob {
    pub reader: Box<dyn Read>,
    /// `Content-Length`, when sent.
    pub size: Option<u64>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob").field("size", &self.size).finish()
    }
}

/// Where requests for one repository go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host[:port]` of URLs.
    host: String,
    /// Prepended to the repository (a mirror's path), `""` or `a/b/`.
    prefix: String,
    /// The key of credentials (`docker.io` for Docker Hub).
    creds_key: String,
}

/// Where a request's credentials came from, for the hint of a refusal.
#[derive(Debug, Clone)]
enum CredsFrom {
    Flag,
    File(std::path::PathBuf),
}

#[derive(Debug)]
pub struct Client {
    opts: PullOptions,
    verified: Agent,
    unverified: Option<Agent>,
    /// `http` or `https`, per host, once a request got an answer.
    schemes: HashMap<String, &'static str>,
    /// `Authorization` values per (host, scope).
    auth: HashMap<(String, String), String>,
    creds: HashMap<(String, String), Option<(Credentials, CredsFrom)>>,
    /// Mirrors that could not be reached.
    dead: HashSet<String>,
}

impl Client {
    pub fn new(opts: &PullOptions) -> Result<Client, PullError> {
        let roots = tls::roots(&opts.extra_ca)?;
        Ok(Client {
            opts: opts.clone(),
            verified: tls::verified(roots),
            unverified: None,
            schemes: HashMap::new(),
            auth: HashMap::new(),
            creds: HashMap::new(),
            dead: HashSet::new(),
        })
    }

    fn is_insecure(&self, host: &str) -> bool {
        self.opts.insecure.iter().any(|h| h == host)
    }

    fn endpoints(&self, r: &Reference) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for m in self.opts.mirrors.get(&r.registry).into_iter().flatten() {
            let m = m
                .strip_prefix("https://")
                .or_else(|| m.strip_prefix("http://"))
                .unwrap_or(m)
                .trim_end_matches('/');
            let (host, prefix) = match m.split_once('/') {
                Some((h, p)) => (h, format!("{p}/")),
                None => (m, String::new()),
            };
            if host.is_empty() || self.dead.contains(host) {
                continue;
            }
            out.push(Endpoint {
                host: host.to_string(),
                prefix,
                creds_key: host.to_string(),
            });
        }
        let host = if r.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &r.registry
        };
        out.push(Endpoint {
            host: host.to_string(),
            prefix: String::new(),
            creds_key: r.registry.clone(),
        });
        out
    }

    /// Runs `f` on each endpoint in turn until one succeeds; the last
    /// endpoint's (the registry's own) error is the one returned.
    fn each_endpoint<T>(
        &mut self,
        r: &Reference,
        mut f: impl FnMut(&mut Self, &Endpoint) -> Result<T, PullError>,
    ) -> Result<T, PullError> {
        let eps = self.endpoints(r);
        let last = eps.len() - 1;
        for (i, ep) in eps.iter().enumerate() {
            match f(self, ep) {
                Ok(v) => return Ok(v),
                Err(e) if i < last => {
                    if matches!(e, PullError::Unreachable { .. }) {
                        self.dead.insert(ep.host.clone());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("endpoints() always ends with the registry")
    }

    /// The manifest `reference` (a tag or a digest) of `r`'s repository.
    pub fn manifest(&mut self, r: &Reference, reference: &str) -> Result<Fetched, PullError> {
        let want: Option<Digest> = reference.parse().ok();
        self.each_endpoint(r, |c, ep| {
            let path = format!("manifests/{reference}");
            let mut resp = c.send(ep, r, &path, Some(ACCEPT))?;
            check_status(&resp, ep, r, &path)?;
            let media_type = header(&resp, "content-type");
            let announced = header(&resp, "docker-content-digest");
            let bytes = resp
                .body_mut()
                .with_config()
                .limit(MAX_MANIFEST_BYTES)
                .read_to_vec()
                .map_err(|e| match e {
                    ureq::Error::BodyExceedsLimit(_) => PullError::Malformed {
                        what: format!("manifest of {}", r.canonical()),
                        reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
                    },
                    e => unreachable_err(&ep.host, e),
                })?;
            let what = format!("manifest {reference} of {}", r.repository_name());
            let digest = Digest::of(&bytes);
            if let Some(want) = &want {
                manifest::verify(&bytes, want, &what)?;
            }
            if let Some(announced) = announced.and_then(|a| a.parse::<Digest>().ok()) {
                manifest::verify(&bytes, &announced, &what)?;
            }
            Ok(Fetched {
                bytes,
                media_type,
                digest,
            })
        })
    }

    /// Starts receiving blob `digest` of `r`'s repository.
    pub fn blob(&mut self, r: &Reference, digest: &Digest) -> Result<Blob, PullError> {
        self.each_endpoint(r, |c, ep| {
            let path = format!("blobs/{digest}");
            let resp = c.send(ep, r, &path, None)?;
            check_status(&resp, ep, r, &path)?;
            let size = header(&resp, "content-length").and_then(|l| l.parse().ok());
            Ok(Blob {
                reader: Box::new(resp.into_body().into_reader()),
                size,
            })
        })
    }

    /// A GET of `/v2/<repo>/<path>`, answering one auth challenge.
    fn send(
        &mut self,
        ep: &Endpoint,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response<ureq::Body>, PullError> {
        let repo = format!("{}{}", ep.prefix, r.repository);
        let scope = format!("repository:{repo}:pull");
        let key = (ep.host.clone(), scope.clone());
        let url_path = format!("/v2/{repo}/{path}");
        let mut answered = false;
        loop {
            let authz = self.auth.get(&key).cloned();
            let resp = self.request(&ep.host, &url_path, accept, authz.as_deref())?;
            if resp.status().as_u16() != 401 {
                return Ok(resp);
            }
            if answered {
                return Err(self.unauthorized(ep, &repo));
            }
            answered = true;
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_challenges)
                .collect();
            let creds = self.creds_for(ep, &repo)?.map(|(c, _)| c);
            let bearer = challenges.iter().find_map(|c| match c {
                Challenge::Bearer {
                    realm,
                    service,
                    scope,
                } => Some((realm.clone(), service.clone(), scope.clone())),
                _ => None,
            });
            let value = if let Some((realm, service, their_scope)) = bearer {
                let scope = their_scope.unwrap_or_else(|| scope.clone());
                let token = self.token(
                    ep,
                    &repo,
                    &realm,
                    service.as_deref(),
                    &scope,
                    creds.as_ref(),
                )?;
                format!("Bearer {token}")
            } else if challenges.contains(&Challenge::Basic) {
                match creds {
                    Some(c) => c.basic_header(),
                    None => return Err(self.unauthorized(ep, &repo)),
                }
            } else {
                let names: Vec<String> = challenges
                    .iter()
                    .map(|c| match c {
                        Challenge::Other(s) => s.clone(),
                        _ => String::new(),
                    })
                    .collect();
                return Err(PullError::Unauthorized {
                    registry: ep.host.clone(),
                    hint: format!(
                        ": it asks for an authentication stockade does not speak ({}); Basic and Bearer are supported",
                        if names.is_empty() { "none named".to_string() } else { names.join(", ") }
                    ),
                });
            };
            self.auth.insert(key.clone(), value);
        }
    }

    /// One GET to `host`, choosing the scheme (see the module's doc).
    fn request(
        &mut self,
        host: &str,
        path: &str,
        accept: Option<&str>,
        authz: Option<&str>,
    ) -> Result<Response<ureq::Body>, PullError> {
        let insecure = self.is_insecure(host);
        let loopback = tls::is_loopback(host);
        let schemes: Vec<&'static str> = match self.schemes.get(host) {
            Some(s) => vec![*s],
            None if insecure || loopback => vec!["https", "http"],
            None => vec!["https"],
        };
        let mut last = None;
        for scheme in schemes {
            let agent = self.agent(scheme == "https" && insecure);
            let mut req = agent.get(format!("{scheme}://{host}{path}"));
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(a) = authz {
                req = req.header("Authorization", a);
            }
            match req.call() {
                Ok(resp) => {
                    self.schemes.insert(host.to_string(), scheme);
                    return Ok(resp);
                }
                Err(e) => match (scheme, tls::classify(&e)) {
                    ("https", Failure::Certificate) if !insecure => {
                        return Err(PullError::Untrusted {
                            registry: host.to_string(),
                            source: Box::new(e),
                        })
                    }
                    ("https", Failure::NotTls) if !insecure && !loopback => {
                        return Err(PullError::Insecure {
                            registry: host.to_string(),
                        })
                    }
                    _ => last = Some(e),
                },
            }
        }
        Err(unreachable_err(
            host,
            last.expect("at least one scheme was tried"),
        ))
    }

    fn agent(&mut self, unverified: bool) -> Agent {
        if unverified {
            self.unverified.get_or_insert_with(tls::unverified).clone()
        } else {
            self.verified.clone()
        }
    }

    fn creds_for(
        &mut self,
        ep: &Endpoint,
        repo: &str,
    ) -> Result<Option<(Credentials, CredsFrom)>, PullError> {
        if let Some((user, password)) = &self.opts.creds {
            return Ok(Some((
                Credentials {
                    user: user.clone(),
                    password: password.clone(),
                },
                CredsFrom::Flag,
            )));
        }
        let key = (ep.creds_key.clone(), repo.to_string());
        if let Some(c) = self.creds.get(&key) {
            return Ok(c.clone());
        }
        let found = auth::from_files(&self.opts.auth_files, &ep.creds_key, repo)?
            .map(|(c, path)| (c, CredsFrom::File(path)));
        self.creds.insert(key, found.clone());
        Ok(found)
    }

    fn unauthorized(&mut self, ep: &Endpoint, repo: &str) -> PullError {
        let hint = match self.creds_for(ep, repo) {
            Ok(Some((_, CredsFrom::Flag))) => "; check --creds".to_string(),
            Ok(Some((_, CredsFrom::File(p)))) => format!(
                "; check the credentials for {} in the auth file {} (or give --creds)",
                ep.creds_key,
                p.display()
            ),
            _ => {
                return PullError::NeedsCredentials {
                    registry: ep.host.clone(),
                    repository: repo.to_string(),
                    login: ep.creds_key.clone(),
                }
            }
        };
        PullError::Unauthorized {
            registry: ep.host.clone(),
            hint,
        }
    }

    /// A bearer token from `realm`.
    fn token(
        &mut self,
        ep: &Endpoint,
        repo: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, PullError> {
        let (scheme, rest) = realm.split_once("://").unwrap_or(("", realm));
        let realm_host = rest.split('/').next().unwrap_or("");
        let insecure = self.is_insecure(realm_host);
        match scheme {
            "https" => {}
            "http" if insecure || tls::is_loopback(realm_host) => {}
            "http" => {
                return Err(PullError::Insecure {
                    registry: realm_host.to_string(),
                })
            }
            _ => {
                return Err(PullError::Malformed {
                    what: format!("authentication challenge of {}", ep.host),
                    reason: format!("realm {realm:?} is not an http(s) URL"),
                })
            }
        }
        let agent = self.agent(scheme == "https" && insecure);
        let mut req = agent.get(realm).query("scope", scope);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = creds {
            req = req.header("Authorization", c.basic_header());
        }
        let mut resp = req.call().map_err(|e| match tls::classify(&e) {
            Failure::Certificate => PullError::Untrusted {
                registry: realm_host.to_string(),
                source: Box::new(e),
            },
            _ => unreachable_err(realm_host, e),
        })?;
        match resp.status().as_u16() {
            200..=299 => {}
            401 | 403 => return Err(self.unauthorized(ep, repo)),
            status => {
                return Err(PullError::Status {
                    registry: realm_host.to_string(),
                    status,
                    url: realm.to_string(),
                })
            }
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_BYTES)
            .read_to_vec()
            .map_err(|e| unreachable_err(realm_host, e))?;
        Ok(auth::parse_token(&body, realm)?)
    }
}

fn header(resp: &Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn unreachable_err(host: &str, e: ureq::Error) -> PullError {
    PullError::Unreachable {
        registry: host.to_string(),
        source: Box::new(e),
    }
}

fn check_status(
    resp: &Response<ureq::Body>,
    ep: &Endpoint,
    r: &Reference,
    path: &str,
) -> Result<(), PullError> {
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        404 if path.starts_with("manifests/") => Err(PullError::NotFound(r.canonical())),
        403 => Err(PullError::Unauthorized {
            registry: ep.host.clone(),
            hint: format!(
                ": access to {}{} is denied; check --creds or the auth file",
                ep.prefix, r.repository
            ),
        }),
        status => Err(PullError::Status {
            registry: ep.host.clone(),
            status,
            url: format!("/v2/{}{}/{path}", ep.prefix, r.repository),
        }),
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
