//! Registry authentication: `WWW-Authenticate` challenges, credentials
//! from `--creds` or the auth files Docker and podman write, and the
//! bearer token answer.
//!
//! Auth files (`~/.docker/config.json`, podman's `auth.json`) hold
//! `{"auths": {KEY: {"auth": base64("user:password")}}}` (or `username` and
//! `password`). KEY is `host[:port]`, possibly with a scheme and a path:
//! `https://index.docker.io/v1/` is Docker Hub; a path other than `/v1/` or
//! `/v2/` (`quay.io/team`) scopes the entry to repositories under it, and
//! the longest matching scope wins. The first file with a matching entry
//! is used; missing files are skipped. Credential helpers (`credsStore`,
//! `credHelpers`) and identity tokens are not consulted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::reference::DOCKER_HUB;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the auth file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the auth file {path} is malformed: {reason}; fix or remove it, or give --creds")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "the token server {realm} answered with no token (neither \"token\" nor \"access_token\")"
    )]
    NoToken { realm: String },
}

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
    /// A scheme we do not speak (kept so the error can name it).
    Other(String),
}

/// Parses a `WWW-Authenticate` value (RFC 7235: one or more challenges,
/// `scheme param=value, param="quoted, value"`). Params of a scheme we
/// do not know are skipped; a Bearer challenge without a realm is dropped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut raw: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let b = header.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
        }
    };
    loop {
        skip(&mut i, b" \t,");
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !b" \t,=".contains(&b[i]) {
            i += 1;
        }
        let token = &header[start..i];
        skip(&mut i, b" \t");
        if i < b.len() && b[i] == b'=' {
            i += 1;
            skip(&mut i, b" \t");
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters.
                    let ch = header[i..].chars().next().unwrap_or('\u{fffd}');
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1; // closing quote
                v
            } else {
                let s = i;
                while i < b.len() && !b" \t,".contains(&b[i]) {
                    i += 1;
                }
                header[s..i].to_string()
            };
            if let Some((_, params)) = raw.last_mut() {
                params.insert(token.to_ascii_lowercase(), value);
            }
        } else if !token.is_empty() {
            raw.push((token.to_string(), BTreeMap::new()));
        }
    }
    raw.into_iter()
        .filter_map(
            |(scheme, mut p)| match scheme.to_ascii_lowercase().as_str() {
                "bearer" => Some(Challenge::Bearer {
                    realm: p.remove("realm")?,
                    service: p.remove("service"),
                    scope: p.remove("scope"),
                }),
                "basic" => Some(Challenge::Basic),
                _ => Some(Challenge::Other(scheme)),
            },
        )
        .collect()
}

/// A token server's answer.
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The token of a token server's JSON answer (`token`, else
/// `access_token`).
pub fn parse_token(body: &[u8], realm: &str) -> Result<String, AuthError> {
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|_| AuthError::NoToken {
        realm: realm.to_string(),
    })?;
    answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| AuthError::NoToken {
            realm: realm.to_string(),
        })
}

#[derive(Debug, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
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

/// Splits an `auths` key into a registry (normalised like references)
/// and a repository scope (`""`: the whole registry).
fn split_key(key: &str) -> (String, String) {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    };
    let path = path.trim_end_matches('/');
    let path = if path == "v1" || path == "v2" {
        ""
    } else {
        path
    };
    (host.to_string(), path.to_string())
}

/// Credentials for `registry`/`repository` from the first of `files` that
/// has an entry for them, and that file.
pub fn from_files(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Option<(Credentials, PathBuf)>, AuthError> {
    for path in files {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        if let Some(c) = from_file_bytes(&text, path, registry, repository)? {
            return Ok(Some((c, path.clone())));
        }
    }
    Ok(None)
}

fn from_file_bytes(
    text: &[u8],
    path: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, AuthError> {
    let malformed = |reason: String| AuthError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let file: AuthFile = serde_json::from_slice(text).map_err(|e| malformed(e.to_string()))?;
    let mut best: Option<(usize, &String, &AuthEntry)> = None;
    for (key, entry) in &file.auths {
        let (host, scope) = split_key(key);
        if host != registry {
            continue;
        }
        let matches =
            scope.is_empty() || repository == scope || repository.starts_with(&format!("{scope}/"));
        if matches && best.is_none_or(|(l, _, _)| l < scope.len()) {
            best = Some((scope.len(), key, entry));
        }
    }
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| malformed(format!("the \"auth\" of {key:?} is not base64")))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| malformed(format!("the \"auth\" of {key:?} is not UTF-8")))?;
        let (user, password) = raw.split_once(':').ok_or_else(|| {
            malformed(format!(
                "the \"auth\" of {key:?} is not base64 of USER:PASSWORD"
            ))
        })?;
        return Ok(Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
            user: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#;
        assert_eq!(
            parse_challenges(h),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/python:pull".into()),
            }]
        );
        // Quoted commas, escapes, spaces, unquoted values, case of the scheme.
        let h = r#"bearer realm = "http://127.0.0.1:9/t" , scope="repository:a:pull,push", service=reg\x, error="in\"valid""#;
        assert_eq!(
            parse_challenges(h),
            vec![Challenge::Bearer {
                realm: "http://127.0.0.1:9/t".into(),
                service: Some("reg\\x".into()),
                scope: Some("repository:a:pull,push".into()),
            }]
        );
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry Realm""#),
            vec![Challenge::Basic]
        );
        assert_eq!(
            parse_challenges(r#"Negotiate, Basic realm="r", Bearer realm="x""#),
            vec![
                Challenge::Other("Negotiate".into()),
                Challenge::Basic,
                Challenge::Bearer {
                    realm: "x".into(),
                    service: None,
                    scope: None
                }
            ]
        );
        // A Bearer challenge without a realm cannot be answered.
        assert_eq!(parse_challenges(r#"Bearer service="s""#), vec![]);
        assert_eq!(parse_challenges(""), vec![]);
        assert_eq!(parse_challenges(r#"Bearer realm="unterminated"#).len(), 1);
    }

    #[test]
    fn token_or_access_token() {
        assert_eq!(
            parse_token(br#"{"token":"a","expires_in":60}"#, "r").unwrap(),
            "a"
        );
        assert_eq!(parse_token(br#"{"access_token":"b"}"#, "r").unwrap(), "b");
        assert_eq!(
            parse_token(br#"{"token":"","access_token":"c"}"#, "r").unwrap(),
            "c"
        );
        assert!(parse_token(br#"{"expires_in":60}"#, "r").is_err());
        assert!(parse_token(b"<html>", "r").is_err());
    }

    #[test]
    fn basic_header_is_base64_of_user_colon_password() {
        let c = Credentials {
            user: "u".into(),
            password: "p:w".into(),
        };
        assert_eq!(c.basic_header(), format!("Basic {}", b64("u:p:w")));
        assert!(!format!("{c:?}").contains("p:w"));
    }

    #[test]
    fn auth_files_docker_and_podman_formats() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        let podman = dir.path().join("auth.json");
        std::fs::write(
            &docker,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},
                    "localhost:5000":{{"auth":"{}"}},
                    "quay.io":{{"auth":"{}"}},
                    "quay.io/team":{{"auth":"{}"}},
                    "empty.example":{{"auth":""}}}},
                  "credsStore":"desktop"}}"#,
                b64("hub:1"),
                b64("loc:2"),
                b64("quay:3"),
                b64("team:4")
            ),
        )
        .unwrap();
        std::fs::write(
            &podman,
            r#"{"auths":{"localhost:5000":{"username":"pod","password":"5"},
                         "ghcr.io":{"username":"gh","password":"6"}}}"#,
        )
        .unwrap();
        let missing = dir.path().join("nope.json");
        let files = vec![missing, docker.clone(), podman.clone()];
        let get = |reg: &str, repo: &str| {
            from_files(&files, reg, repo)
                .unwrap()
                .map(|(c, _)| format!("{}:{}", c.user, c.password))
        };
        assert_eq!(get("docker.io", "library/python").as_deref(), Some("hub:1"));
        // The first file with the registry wins.
        assert_eq!(get("localhost:5000", "x").as_deref(), Some("loc:2"));
        assert_eq!(get("ghcr.io", "o/r").as_deref(), Some("gh:6"));
        // The longest matching scope wins; a scope is whole components.
        assert_eq!(get("quay.io", "team/app").as_deref(), Some("team:4"));
        assert_eq!(get("quay.io", "teammate/app").as_deref(), Some("quay:3"));
        assert_eq!(get("empty.example", "x"), None);
        assert_eq!(get("localhost:5001", "x"), None);
        // Podman's file first: its entry wins.
        let files = vec![podman, docker];
        assert_eq!(
            from_files(&files, "localhost:5000", "x")
                .unwrap()
                .unwrap()
                .0
                .user,
            "pod"
        );
    }

    #[test]
    fn malformed_auth_files_say_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.json");
        for (text, want) in [
            ("{not json", "malformed"),
            (r#"{"auths":{"r.io":{"auth":"!!!"}}}"#, "not base64"),
            (
                &format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("nocolon")),
                "USER:PASSWORD",
            ),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = from_files(std::slice::from_ref(&f), "r.io", "x").unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(want) && msg.contains("a.json"), "{msg}");
        }
    }
}
