//! An E2B-compatible listener (`stockade serve --e2b-listen HOST:PORT`):
//! code written against E2B's SDK runs on this daemon by pointing
//! `E2B_API_URL` and `E2B_SANDBOX_URL` at the listener.
//!
//! One TCP listener serves two APIs, told apart by the `E2b-Sandbox-Id`
//! header the SDK puts on every request to a sandbox:
//!
//! - without it, the *control API* (`api.rs`): create, list, inspect,
//!   time out, pause, connect and kill sandboxes, authenticated by an API
//!   key `e2b_<hex>` derived from the daemon's token file (`keys.rs`);
//! - with it, *envd*, the agent E2B runs inside each sandbox: the Connect
//!   protocol services `process.Process` (`process.rs`) and
//!   `filesystem.Filesystem` (`fs.rs`), and plain `GET`/`POST /files`
//!   (`files.rs`), authenticated by the sandbox's access token
//!   (`X-Access-Token`) or a signed URL.
//!
//! Sandboxes made here are ordinary daemon sandboxes (created through
//! `lifecycle::create`, so they show in `stockade ps`, send events and
//! count in metrics); this module only adds what E2B has on top: the
//! template, metadata, a timeout that can be extended, and pausing.
//! Every file operation goes through the sandbox's own file helper,
//! never a host path.

mod api;
mod connect;
mod files;
mod fs;
mod keys;
mod process;
mod registry;
mod templates;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::error::ServeError;
use crate::state::AppState;

pub use templates::{Template, Templates};

/// The version of envd this listener claims: high enough that the SDK
/// sends stdin flags, leaves the user to the server when none is given,
/// uploads with `application/octet-stream` and closes stdin.
pub const ENVD_VERSION: &str = "0.5.7";

/// What `--e2b-listen` and `--e2b-templates` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bConfig {
    /// Address of the E2B listener.
    pub listen: SocketAddr,
    /// TOML file of named templates (see `templates.rs`); `base` exists
    /// without one.
    pub templates: Option<PathBuf>,
}

/// The E2B listener, bound and configured, not yet serving.
pub struct Bound {
    listener: TcpListener,
    keys: keys::Keys,
    templates: Templates,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// Loads the templates and the token, binds the listener and writes the
/// API key to `<state_dir>/e2b-api-key` (mode 0600) for the operator.
pub async fn bind(
    cfg: &E2bConfig,
    token_file: Option<&Path>,
    state_dir: &Path,
) -> Result<Bound, ServeError> {
    let Some(token_file) = token_file else {
        return Err(ServeError::Config(format!(
            "the E2B listener ({}) needs a token file to derive its API key from; give --token-file FILE",
            cfg.listen
        )));
    };
    let token = crate::auth::Token::load(token_file)?;
    let keys = keys::Keys::new(token.secret());
    let templates = match &cfg.templates {
        Some(p) => Templates::load(p)?,
        None => Templates::default(),
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Io {
            what: "listen (E2B API) on",
            path: PathBuf::from(cfg.listen.to_string()),
            source,
        })?;
    keys.write_key_file(state_dir)?;
    Ok(Bound {
        listener,
        keys,
        templates,
    })
}

/// What every E2B handler shares.
pub struct E2b {
    pub app: Arc<AppState>,
    keys: keys::Keys,
    templates: Templates,
    boxes: registry::Boxes,
    watchers: fs::Watchers,
}

impl std::fmt::Debug for E2b {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2b").finish_non_exhaustive()
    }
}

/// Serves the E2B listener until `stop` turns true; also runs the loop
/// that ends (or pauses) sandboxes at their E2B timeout.
pub fn spawn(
    bound: Bound,
    app: Arc<AppState>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let e2b = Arc::new(E2b {
        app,
        keys: bound.keys,
        templates: bound.templates,
        boxes: Default::default(),
        watchers: Default::default(),
    });
    let timer = tokio::spawn(registry::timeout_loop(Arc::downgrade(&e2b)));
    let router = router(e2b);
    let mut rx = stop;
    tokio::spawn(async move {
        // Small frames (HTTP/2 stream events, Connect envelopes) must not
        // wait for Nagle's algorithm behind the client's delayed ACK.
        use axum::serve::ListenerExt as _;
        let listener = bound.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let r = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await;
        timer.abort();
        r
    })
}

/// The whole E2B application: requests naming a sandbox go to envd, the
/// rest to the control API.
fn router(e2b: Arc<E2b>) -> Router {
    let max_body = e2b.app.max_body_bytes;
    let control = api::router(e2b.clone());
    let envd = Router::new()
        .route("/health", axum::routing::get(health))
        .route(
            "/files",
            axum::routing::get(files::download).post(files::upload),
        )
        .route(
            "/{service}/{method}",
            axum::routing::post(connect::dispatch),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(e2b.clone());
    Router::new()
        .fallback(move |req: Request| {
            let (control, envd) = (control.clone(), envd.clone());
            async move {
                // Bodies are read whole before any check may refuse the
                // request: an answer that leaves a body unread makes the
                // server drop the connection, and the SDK's pooled
                // connection (shared by the API and envd) would fail its
                // next request. The two streaming uploads drain their own.
                let streamed = matches!(
                    req.uri().path(),
                    "/files" | "/process.Process/StreamInput"
                );
                let req = if streamed {
                    req
                } else {
                    let (parts, body) = req.into_parts();
                    match axum::body::to_bytes(body, max_body).await {
                        Ok(b) => Request::from_parts(parts, axum::body::Body::from(b)),
                        Err(_) => {
                            return E2bError::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "the request body is larger than this daemon accepts (max_body_bytes, 8 MiB by default)",
                            )
                            .into_response()
                        }
                    }
                };
                // Signed file URLs come without the SDK's headers.
                let to_envd = req.headers().contains_key("e2b-sandbox-id")
                    || (req.uri().path() == "/files"
                        && req.uri().query().is_some_and(|q| q.contains("signature=")));
                let r = if to_envd {
                    envd.oneshot(req).await
                } else {
                    control.oneshot(req).await
                };
                r.unwrap_or_else(|e| match e {})
            }
        })
        .layer(axum::middleware::from_fn(crate::http::catch_panic))
        .with_state(())
}

/// envd's health check: 204 while the sandbox runs; 502 "not found" (as
/// E2B's proxy answers) once it is gone or while it is paused.
async fn health(
    axum::extract::State(e2b): axum::extract::State<Arc<E2b>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let id = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let running = e2b.boxes.get(id).is_some_and(|b| !b.is_paused())
        && e2b.app.live(id).is_some_and(|l| !l.is_ending());
    if running {
        StatusCode::NO_CONTENT.into_response()
    } else {
        E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id:?} was not found or is paused"),
        )
        .into_response()
    }
}

async fn not_found() -> Response {
    E2bError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint on this E2B-compatible listener; docs/e2b.md lists what is supported",
    )
    .into_response()
}

/// An error as E2B's API and envd's HTTP routes answer it:
/// `{"code": <status>, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bError {
    pub status: StatusCode,
    pub message: String,
}

impl E2bError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        E2bError {
            status,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// A sandbox this listener does not know (E2B's proxy says "was not
    /// found", which the SDK turns into "not running").
    pub fn no_sandbox(id: &str) -> Self {
        Self::not_found(format!(
            "sandbox {id:?} was not found; it was killed, reached its timeout, or never existed"
        ))
    }
}

impl From<crate::error::ApiError> for E2bError {
    fn from(e: crate::error::ApiError) -> Self {
        E2bError::new(e.status, e.message)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        crate::http::json(
            self.status,
            &serde_json::json!({"code": self.status.as_u16(), "message": self.message}),
        )
    }
}

pub type E2bResult<T> = Result<T, E2bError>;
