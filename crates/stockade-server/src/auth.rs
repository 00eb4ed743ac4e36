//! Bearer-token check for the TCP listener (the unix socket relies on its
//! file mode instead).

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ServeError};

/// The token every TCP request must present.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the first line of `path`; refuses empty or short tokens.
    pub fn load(path: &Path) -> Result<Token, ServeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::Io {
            what: "read the token file",
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.len() < 16 {
            return Err(ServeError::Config(format!(
                "the token in {} is shorter than 16 characters; put a long random token on its first line (e.g. `openssl rand -hex 32`)",
                path.display()
            )));
        }
        Ok(Token(token.into()))
    }

    /// The token itself, for listeners that derive their own secrets
    /// from it (the E2B listener's API key and access tokens).
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the first difference is.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

/// Middleware: 401 unless `Authorization: Bearer <token>` matches.
pub async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if token.matches(t) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong; use the token from the daemon's token file",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this listener needs an `Authorization: Bearer <token>` header with the token from the daemon's token file",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_exact_match() {
        let t = Token("0123456789abcdef".into());
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcdef0"));
        assert!(!t.matches(""));
    }
}
