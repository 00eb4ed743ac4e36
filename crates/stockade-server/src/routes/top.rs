//! `GET /v1/sandboxes/{id}/top`: every process running in a sandbox (not
//! only those started through the API), read by the daemon from the
//! host's `/proc` (see `stockade_core::top`).

use std::io::Read;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use stockade_core::backend::SandboxHandle;
use stockade_core::top::{self, TopEntry};

use crate::error::{chain, ApiError, ApiResult};
use crate::http::json;
use crate::state::AppState;

/// Largest `/etc/passwd` read for user names.
const PASSWD_MAX: u64 = 1024 * 1024;

pub async fn top(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (row, live) = state.running(&id).await?;
    let h = live.handle.clone();
    let list = tokio::task::spawn_blocking(move || list(&*h, &row.id))
        .await
        .map_err(ApiError::join)??;
    Ok(json(StatusCode::OK, &json!({ "processes": list })))
}

fn list(h: &dyn SandboxHandle, id: &str) -> ApiResult<Vec<TopEntry>> {
    let st = h.status().map_err(|e| ApiError::backend(id, e))?;
    let mut list = top::list(st.init_pid)
        .map_err(|e| ApiError::internal(format!("sandbox {id}: {}", chain(&e))))?;
    // User names as the sandbox knows them: its /etc/passwd, read inside
    // it with the agent's rights (never as host root on a host path). A
    // file it cannot read, or lines that do not parse, leave uids as
    // numbers.
    let names = h
        .files(Some(false))
        .ok()
        .and_then(|mut files| {
            let (_, reader) = files.read("/etc/passwd").ok()?;
            let mut text = Vec::new();
            reader.take(PASSWD_MAX).read_to_end(&mut text).ok()?;
            Some(top::passwd_names(&String::from_utf8_lossy(&text)))
        })
        .unwrap_or_default();
    for e in &mut list {
        if let Some(n) = names.get(&e.uid) {
            e.user = n.clone();
        }
    }
    Ok(list)
}
