//! The E2B listener's secrets, all derived from the daemon's token (so
//! nothing new is stored and they survive restarts): the API key
//! `e2b_<hex>` clients send as `X-API-KEY`, each sandbox's envd access
//! token, and the `v1_` signatures of file URLs.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::ServeError;

/// Name of the file (in the state directory) the API key is written to.
pub const KEY_FILE: &str = "e2b-api-key";

/// Secrets of one E2B listener.
#[derive(Clone)]
pub struct Keys {
    secret: Vec<u8>,
    api_key: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Equality in time independent of where the first difference is.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl Keys {
    pub fn new(token: &str) -> Keys {
        let secret = digest(&[b"stockade e2b secret", token.as_bytes()]).to_vec();
        let api_key = format!("e2b_{}", hex(&digest(&[b"api key", &secret])));
        Keys { secret, api_key }
    }

    /// The API key clients must send.
    #[cfg(test)]
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    pub fn api_key_ok(&self, given: &str) -> bool {
        same(&self.api_key, given)
    }

    /// The envd access token of sandbox `id`.
    pub fn access_token(&self, id: &str) -> String {
        hex(&digest(&[
            b"envd access token",
            &self.secret,
            id.as_bytes(),
        ]))
    }

    /// Writes the API key to `<state_dir>/e2b-api-key`, readable by the
    /// daemon's owner only.
    pub fn write_key_file(&self, state_dir: &Path) -> Result<(), ServeError> {
        let path = state_dir.join(KEY_FILE);
        let io = |source| ServeError::Io {
            what: "write the E2B API key to",
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(state_dir)
            .map_err(io)?;
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        std::io::Write::write_all(&mut f, format!("{}\n", self.api_key).as_bytes()).map_err(io)
    }
}

/// The `v1_` signature E2B's SDK puts on file URLs: SHA-256 over
/// `path:operation:user:token[:expiration]`, unpadded base64.
pub fn signature(
    path: &str,
    operation: &str,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(e) => format!("{path}:{operation}:{user}:{token}:{e}"),
        None => format!("{path}:{operation}:{user}:{token}"),
    };
    let d = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(d)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_look_like_e2b_keys_and_depend_on_the_token() {
        let a = Keys::new("0123456789abcdef-one");
        let b = Keys::new("0123456789abcdef-two");
        assert!(a.api_key().starts_with("e2b_"));
        assert!(a.api_key()[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.api_key(), b.api_key());
        assert!(a.api_key_ok(a.api_key()) && !a.api_key_ok(b.api_key()));
        assert_ne!(a.access_token("x1"), a.access_token("x2"));
        assert_ne!(a.access_token("x1"), b.access_token("x1"));
        assert_ne!(a.access_token("x1"), a.api_key()[4..]);
    }

    #[test]
    fn signatures_match_the_sdk_scheme() {
        // sha256("/a:read::tok") in unpadded base64, computed independently
        // with `printf %s /a:read::tok | openssl dgst -sha256 -binary | base64`.
        let s = signature("/a", "read", "", "tok", None);
        assert_eq!(s, "v1_2/gNbgFPxFSqkheS/SD0NHlzA121E/nxkOtc/ovxeoI");
        assert_ne!(s, signature("/a", "write", "", "tok", None));
        assert_ne!(s, signature("/a", "read", "", "tok", Some(1)));
    }
}
