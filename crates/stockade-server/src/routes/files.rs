//! `/v1/sandboxes/{id}/files?path=...`: read, list, write and delete files
//! as the sandbox sees them (see `fsops` for how paths are confined).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::error::{ApiError, ApiResult};
use crate::fsops;
use crate::http::{flag, json, only_params, query_pairs, BodyBytes};
use crate::state::AppState;

/// The `path` (and `list`) query parameters.
fn params(q: Option<&str>, known: &[&str]) -> ApiResult<(String, bool)> {
    let pairs = query_pairs(q)?;
    only_params(&pairs, known)?;
    let path = pairs
        .iter()
        .find(|(k, _)| k == "path")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            ApiError::invalid("add the query parameter path, e.g. ?path=/workspace/a.txt")
        })?;
    fsops::check_path(&path)?;
    let list = match pairs.iter().find(|(k, _)| k == "list") {
        Some((k, v)) => flag(k, v)?,
        None => false,
    };
    Ok((path, list))
}

/// Runs `f` with the sandbox's root directory and owner, off the async
/// threads.
async fn with_root<T, F>(state: &Arc<AppState>, id: &str, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&OwnedFd, (u32, u32)) -> ApiResult<T> + Send + 'static,
{
    let (row, live) = state.running(id).await?;
    let h = live.handle.clone();
    let opener = state.root_opener.clone();
    tokio::task::spawn_blocking(move || {
        let st = h.status().map_err(|e| ApiError::backend(&row.id, e))?;
        let root = opener(&st).map_err(|e| {
            ApiError::internal(format!(
                "cannot open the root directory of sandbox {}: {e}; is it still running?",
                row.id
            ))
        })?;
        f(&root, st.owner)
    })
    .await
    .map_err(ApiError::join)?
}

pub async fn get_file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (path, list) = params(q.as_deref(), &["path", "list"])?;
    if list {
        let p = path.clone();
        let entries = with_root(&state, &id, move |root, _| fsops::list(root, &p)).await?;
        return Ok(json(
            StatusCode::OK,
            &json!({ "path": path, "entries": entries }),
        ));
    }
    let p = path.clone();
    let (file, size) = with_root(&state, &id, move |root, _| fsops::open_read(root, &p)).await?;
    // Streamed in 64 KiB pieces; at most `size` bytes even if it grows.
    let file = tokio::fs::File::from_std(file).take(size);
    let body = stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut r = Body::from_stream(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

pub async fn put_file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    BodyBytes(data): BodyBytes,
) -> ApiResult<Response> {
    let (path, _) = params(q.as_deref(), &["path"])?;
    let (p, len) = (path.clone(), data.len());
    let created = with_root(&state, &id, move |root, owner| {
        fsops::write(root, &p, &data, owner)
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        &json!({ "path": path, "size": len, "created": created }),
    ))
}

pub async fn delete_file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (path, _) = params(q.as_deref(), &["path"])?;
    let p = path.clone();
    with_root(&state, &id, move |root, _| fsops::remove(root, &p)).await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "path": path, "deleted": true }),
    ))
}
