//! Daemon-wide routes: health, metrics, the OpenAPI document and events.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiResult;
use crate::events;
use crate::http::json;
use crate::state::AppState;

pub async fn healthz(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let counts = state.store(|s| s.counts()).await?;
    let live = state.live_map().len();
    Ok(json(
        StatusCode::OK,
        &json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "live_sandboxes": live, "sandboxes": counts }),
    ))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let counts = state.store(|s| s.counts()).await?;
    let mut r = state.metrics.render(&counts).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

pub async fn openapi() -> Response {
    let mut r = super::OPENAPI.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub async fn all_events(State(state): State<Arc<AppState>>) -> Response {
    events::sse(&state.hub, None, state.shutdown.clone()).into_response()
}

pub async fn sandbox_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let row = state.row(&id).await?;
    Ok(events::sse(&state.hub, Some(row.id), state.shutdown.clone()).into_response())
}
