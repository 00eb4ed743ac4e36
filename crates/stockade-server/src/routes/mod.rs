//! The HTTP API: one module per resource. [`ROUTES`] lists every route the
//! router serves; a test checks it against `docs/openapi.json` and against
//! the router itself.

mod exec;
pub(crate) mod files;
pub(crate) mod images;
mod sandboxes;
mod system;
mod tasks;
mod top;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};

use crate::http::{catch_panic, no_route, wrong_method};
use crate::state::AppState;

/// Every (method, path) the router serves, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/events"),
    ("get", "/v1/sandboxes"),
    ("post", "/v1/sandboxes"),
    ("get", "/v1/sandboxes/{id}"),
    ("delete", "/v1/sandboxes/{id}"),
    ("get", "/v1/sandboxes/{id}/events"),
    ("post", "/v1/sandboxes/{id}/exec"),
    ("get", "/v1/sandboxes/{id}/processes"),
    ("get", "/v1/sandboxes/{id}/top"),
    ("post", "/v1/sandboxes/{id}/processes/{pid}/stdin"),
    ("post", "/v1/sandboxes/{id}/processes/{pid}/signal"),
    ("post", "/v1/sandboxes/{id}/processes/{pid}/resize"),
    ("get", "/v1/sandboxes/{id}/processes/{pid}/output"),
    ("get", "/v1/sandboxes/{id}/files"),
    ("put", "/v1/sandboxes/{id}/files"),
    ("delete", "/v1/sandboxes/{id}/files"),
    ("get", "/v1/tasks"),
    ("post", "/v1/tasks"),
    ("get", "/v1/tasks/{id}"),
    ("get", "/v1/tasks/{id}/patch"),
    ("get", "/v1/images"),
    ("post", "/v1/images/pull"),
    ("post", "/v1/images/prune"),
    ("get", "/v1/images/{ref}"),
    ("delete", "/v1/images/{ref}"),
];

/// The API router (without authentication; see `auth`).
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/v1/openapi.json", get(system::openapi))
        .route("/v1/events", get(system::all_events))
        .route(
            "/v1/sandboxes",
            get(sandboxes::list).post(sandboxes::create),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::show).delete(sandboxes::destroy),
        )
        .route("/v1/sandboxes/{id}/events", get(system::sandbox_events))
        .route("/v1/sandboxes/{id}/exec", post(exec::exec))
        .route("/v1/sandboxes/{id}/processes", get(exec::processes))
        .route("/v1/sandboxes/{id}/top", get(top::top))
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/stdin",
            post(exec::stdin),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/signal",
            post(exec::signal),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/resize",
            post(exec::resize),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/output",
            get(exec::output),
        )
        .route(
            "/v1/sandboxes/{id}/files",
            get(files::get_file)
                .put(files::put_file)
                .delete(files::delete_file),
        )
        .route("/v1/tasks", get(tasks::list).post(tasks::create))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/{id}/patch", get(tasks::patch))
        .route("/v1/images", get(images::list))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/prune", post(images::prune))
        // `{ref}` may hold `/` (docker.io/library/python:3.11), as is or
        // percent-encoded: a wildcard takes the rest of the path.
        .route(
            "/v1/images/{*ref}",
            get(images::inspect).delete(images::remove),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(catch_panic))
        .with_state(state)
}

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");
