//! What `stockade serve` is told: where to listen, where to keep state,
//! where to send events, and the limits it enforces on requests.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::log::LogFormat;

/// Largest request body accepted by default (JSON requests and file
/// uploads alike): 8 MiB. Larger bodies are answered with 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of each output stream (stdout, stderr) kept per process: the
/// most recent 1 MiB. A foreground exec answers with at most this much of
/// each stream and sets `truncated` when more was printed.
pub const OUTPUT_CAP_BYTES: usize = 1024 * 1024;

/// Processes (foreground and background) running at once across all
/// sandboxes of one daemon; each holds a thread waiting for its exit.
pub const MAX_RUNNING_PROCESSES: usize = 256;

/// Sandboxes alive at once; each holds a thread reading its events.
pub const MAX_LIVE_SANDBOXES: usize = 1024;

/// Finished processes whose output is kept per sandbox, oldest dropped first.
pub const KEPT_FINISHED_PROCESSES: usize = 64;

/// Configuration of the daemon.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Unix socket the API is served on; created with mode 0660 (owner and
    /// group may use the API, nobody else).
    pub socket: PathBuf,
    /// Optional TCP address; every request on it needs
    /// `Authorization: Bearer <token>` with the token from `token_file`.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token (first line, surrounding whitespace
    /// ignored). Required when `listen` is set.
    pub token_file: Option<PathBuf>,
    /// Directory of the daemon's state; the registry is `stockade.db` in it.
    pub state_dir: PathBuf,
    /// `http://host:port/path`: each event is POSTed there as JSON (best
    /// effort, in order, 5 s timeout per event).
    pub webhook: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The `stockade` binary that runs `POST /v1/tasks` (as `stockade
    /// task`); without it the tasks API answers 500.
    pub task_exe: Option<PathBuf>,
    /// Host directories whose contents API clients may bind into
    /// sandboxes (workspace, binds) or name as a task's repository;
    /// none by default (see `hostpaths.rs`).
    pub bind_roots: Vec<PathBuf>,
    /// How the image API (`/v1/images`) reaches registries: credentials,
    /// CAs, insecure registries, mirrors (`stockade serve`'s registry
    /// flags). The store is `<state_dir>/images`.
    pub pull: stockade_image::PullOptions,
    /// Bounds of the image store.
    pub image_limits: stockade_image::StoreLimits,
    /// The E2B-compatible listener (`--e2b-listen`), off by default; its
    /// API key is derived from `token_file`'s token.
    pub e2b: Option<crate::e2b::E2bConfig>,
    /// Log lines on stderr: where it listens, each request, each event.
    pub log: LogFormat,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            socket: PathBuf::from("/run/stockade/stockade.sock"),
            listen: None,
            token_file: None,
            state_dir: PathBuf::from("/var/lib/stockade"),
            webhook: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            task_exe: None,
            bind_roots: Vec::new(),
            pull: stockade_image::PullOptions::default(),
            image_limits: stockade_image::StoreLimits::default(),
            e2b: None,
            log: LogFormat::Off,
        }
    }
}
