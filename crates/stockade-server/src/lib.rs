//! The stockade daemon (`stockade serve`): a registry of long-lived
//! sandboxes in SQLite, an HTTP/JSON API on a unix socket (and optionally
//! TCP with a bearer token), server-sent events, a webhook, Prometheus
//! metrics, and recovery of running sandboxes after a restart.
//!
//! Sandboxes themselves are run by a [`stockade_core::backend::Backend`];
//! this crate only manages them. The blocking client of the API is the
//! `stockade-client` crate (a dev-dependency here: the tests use it).
//!
//! The API is described in `docs/openapi.json` (served at
//! `GET /v1/openapi.json`) and `docs/api.md`.

mod auth;
pub mod config;
pub mod e2b;
mod error;
mod events;
mod hostpaths;
mod http;
mod lifecycle;
pub mod log;
mod metrics;
mod process;
mod routes;
mod server;
mod state;
pub mod store;
mod webhook;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use config::{ServeConfig, DEFAULT_MAX_BODY_BYTES, OUTPUT_CAP_BYTES};
pub use error::{ApiError, ServeError};
pub use routes::ROUTES;
pub use server::{serve, serve_blocking, Server};
