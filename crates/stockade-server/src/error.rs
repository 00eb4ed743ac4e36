//! Errors: [`ServeError`] for the daemon as a whole, [`ApiError`] for one
//! HTTP request (rendered as `{"error": {"code", "message"}}`).

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use stockade_core::backend::BackendError;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration asks for something impossible.
    #[error("{0}")]
    Config(String),
    /// A file or socket could not be set up.
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another daemon already serves the socket.
    #[error("another stockade daemon already listens on {}; stop it or choose another --socket", .0.display())]
    AlreadyRunning(PathBuf),
    /// The state database could not be opened or used.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Serving HTTP failed.
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// One failed request: HTTP status, a stable machine-readable code and a
/// sentence for people saying what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
    }
    pub fn no_sandbox(id: &str) -> Self {
        Self::not_found(format!(
            "no sandbox has the id or name {id:?}; list them with GET /v1/sandboxes"
        ))
    }
    pub fn not_running(id: &str, state: &str) -> Self {
        Self::conflict(format!(
            "sandbox {id} is {state}, not running; create a new one with POST /v1/sandboxes"
        ))
    }
    /// Maps a backend failure for sandbox `id`.
    pub fn backend(id: &str, e: BackendError) -> Self {
        match e {
            BackendError::NotRunning(_) => Self::not_running(id, "no longer running"),
            BackendError::Invalid(m) => Self::invalid(m),
            e @ BackendError::Spawn { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "spawn_failed", format!("{e}"))
            }
            BackendError::Internal(m) => Self::internal(format!("sandbox {id}: {m}")),
        }
    }
    /// A `spawn_blocking` task that panicked or was cancelled.
    pub fn join(e: tokio::task::JoinError) -> Self {
        Self::internal(format!(
            "an internal task failed ({e}); retry, and report a bug if it persists"
        ))
    }
    pub fn store(e: crate::store::StoreError) -> Self {
        match e {
            e @ crate::store::StoreError::NameTaken(_) => Self::conflict(e.to_string()),
            e => Self::internal(chain(&e)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"code": self.code, "message": self.message}
        });
        let mut resp = crate::http::json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// An error and its causes on one line (`a: b: c`), for messages that
/// leave the daemon as text (API answers, its log).
pub fn chain(e: &dyn std::error::Error) -> String {
    stockade_core::error_chain(e)
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_answers_with_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let Err(e) = crate::store::Store::open(&file.join("stockade.db")) else {
            panic!("a database under a regular file opened");
        };
        let cause = std::error::Error::source(&e)
            .expect("the database error is the cause")
            .to_string();
        let answer = ApiError::store(e);
        assert_eq!(answer.code, "internal");
        assert!(answer.message.contains("a-file"), "{}", answer.message);
        assert_eq!(
            answer.message.matches(&cause).count(),
            1,
            "{}",
            answer.message
        );
    }

    #[test]
    fn chain_joins_each_cause_once() {
        let e = ServeError::Io {
            what: "listen on",
            path: "/run/x.sock".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let text = chain(&e);
        assert!(text.starts_with("cannot listen on /run/x.sock: "), "{text}");
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
    }
}
