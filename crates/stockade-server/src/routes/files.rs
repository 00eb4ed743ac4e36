//! `/v1/sandboxes/{id}/files?path=...`: read, list, write and delete files
//! as the sandbox sees them. Every operation is done *inside* the sandbox
//! by a file helper with the sandbox's own identity (its user, mount
//! namespace, Landlock domain, no capabilities; see
//! `stockade_isolate::files`): the daemon never walks a sandbox's files as
//! host root, so the result is exactly what the workload itself could do.
//! Data streams both ways in pieces: memory stays constant whatever the
//! file's size, and uploads are bounded by the sandbox's disk limit.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use stockade_core::backend::{Entry, FileClient, FileError, SandboxHandle, FILE_CHUNK};

use crate::error::{ApiError, ApiResult};
use crate::http::{flag, json, only_params, query_pairs};
use crate::state::AppState;

/// Most entries one listing returns.
const MAX_LIST: usize = 100_000;
/// Pieces of a download in flight between the helper and the client.
const IN_FLIGHT: usize = 4;

/// The query parameters: `path`, and the flags `known` allows.
struct Params {
    path: String,
    list: bool,
    recursive: bool,
    stat: bool,
    dir: bool,
    /// Permission bits of a new file (`mode=0755`).
    mode: Option<u32>,
}

fn params(q: Option<&str>, known: &[&str]) -> ApiResult<Params> {
    let pairs = query_pairs(q)?;
    only_params(&pairs, known)?;
    let path = pairs
        .iter()
        .find(|(k, _)| k == "path")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            ApiError::invalid("add the query parameter path, e.g. ?path=/workspace/a.txt")
        })?;
    check_path(&path)?;
    let get = |name: &str| match pairs.iter().find(|(k, _)| k == name) {
        Some((k, v)) => flag(k, v),
        None => Ok(false),
    };
    let mode = match pairs.iter().find(|(k, _)| k == "mode") {
        Some((_, v)) => Some(
            u32::from_str_radix(v, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "mode must be octal permission bits from 0 to 0777, e.g. mode=0755, got {v:?}"
                    ))
                })?,
        ),
        None => None,
    };
    Ok(Params {
        path,
        list: get("list")?,
        recursive: get("recursive")?,
        stat: get("stat")?,
        dir: get("dir")?,
        mode,
    })
}

/// Checks a request's path: absolute, no NUL, not absurdly long.
pub fn check_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return Err(ApiError::invalid(format!(
            "path must be an absolute path inside the sandbox such as /workspace/a.txt, got {path:?}"
        )));
    }
    Ok(())
}

/// The answer for a failed file operation on `path`.
pub fn file_error(path: &str, e: FileError) -> ApiError {
    use nix::errno::Errno;
    let FileError::Failed { errno, message } = &e else {
        let why = crate::error::chain(&e);
        return ApiError::internal(format!("cannot access {path}: {why}"));
    };
    let (status, code, msg) = match Errno::from_raw(*errno) {
        Errno::ENOENT => (StatusCode::NOT_FOUND, "not_found", format!("{path} does not exist in the sandbox; check the path (list a directory with list=true)")),
        Errno::ENOTDIR => (StatusCode::BAD_REQUEST, "invalid_path", format!("a component of {path} is not a directory; check the path")),
        Errno::EISDIR => (StatusCode::BAD_REQUEST, "is_a_directory", format!("{path} is a directory; add list=true to list it")),
        Errno::ELOOP => (StatusCode::BAD_REQUEST, "invalid_path", format!("{path} goes through a symlink loop or too many symlinks; use a path without them")),
        Errno::EXDEV => (StatusCode::BAD_REQUEST, "invalid_path", format!("{path} leads outside the sandbox; use a path inside it")),
        Errno::EROFS => (StatusCode::FORBIDDEN, "read_only", format!("{path} is on a read-only part of the sandbox; write under /workspace, /home/agent or /tmp")),
        Errno::EACCES | Errno::EPERM => (StatusCode::FORBIDDEN, "forbidden", format!("the sandbox's user may not do this to {path} ({message}); check its permissions inside the sandbox")),
        Errno::ENOTEMPTY => (StatusCode::CONFLICT, "conflict", format!("directory {path} is not empty; delete what is in it first, or add recursive=true")),
        Errno::EEXIST => (StatusCode::CONFLICT, "conflict", format!("{path} exists and is not a directory; remove it or choose another path")),
        Errno::EBUSY => (StatusCode::CONFLICT, "conflict", format!("{path} cannot be removed; choose another path")),
        Errno::ENAMETOOLONG => (StatusCode::BAD_REQUEST, "invalid_path", format!("{path} is too long; use a shorter path")),
        Errno::ENOSPC | Errno::EDQUOT => (StatusCode::INSUFFICIENT_STORAGE, "no_space", format!("no space left to write {path}; free space in the sandbox or raise its disk limit")),
        Errno::E2BIG => (StatusCode::BAD_REQUEST, "too_many_entries", message.clone()),
        Errno::EINVAL => (StatusCode::BAD_REQUEST, "invalid_path", format!("{message}; only regular files can be read or written")),
        Errno::ENXIO => (StatusCode::BAD_REQUEST, "invalid_path", format!("{path} is not a regular file; only regular files can be written")),
        Errno::EAGAIN => (StatusCode::SERVICE_UNAVAILABLE, "busy", format!("the sandbox is at its process limit, so no file helper could start for {path}; retry when it has ended some")),
        e => (StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot access {path}: {message}: {}", e.desc())),
    };
    ApiError::new(status, code, msg)
}

/// A file helper inside the running sandbox `id`, as its own user.
async fn helper(state: &Arc<AppState>, id: &str) -> ApiResult<(String, Arc<dyn SandboxHandle>)> {
    let (row, live) = state.running(id).await?;
    Ok((row.id, live.handle.clone()))
}

fn connect(id: &str, h: &Arc<dyn SandboxHandle>) -> ApiResult<FileClient> {
    h.files(None).map_err(|e| match e {
        stockade_core::backend::BackendError::Spawn { errno, .. } if errno == libc::EAGAIN => {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("sandbox {id} is at its process limit, so no file helper could start; retry when it has ended some"),
            )
        }
        e => ApiError::backend(id, e),
    })
}

/// A listing entry as the API has always shown it (mode in octal text),
/// plus the owner and a symlink's target.
fn listed(e: &Entry) -> serde_json::Value {
    let mut v = json!({
        "name": e.name,
        "type": e.kind,
        "size": e.size,
        "mode": format!("{:04o}", e.mode),
        "mtime": e.mtime,
        "uid": e.uid,
        "gid": e.gid,
    });
    if let Some(t) = &e.target {
        v["target"] = json!(t);
    }
    v
}

pub async fn get_file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = params(q.as_deref(), &["path", "list", "stat"])?;
    let (id, h) = helper(&state, &id).await?;
    let path = p.path.clone();
    if p.stat {
        // What is at `path` itself: a symlink is described, not followed.
        let entry = tokio::task::spawn_blocking(move || {
            let mut c = connect(&id, &h)?;
            c.stat(&path, false).map_err(|e| file_error(&path, e))
        })
        .await
        .map_err(ApiError::join)??;
        return Ok(json(
            StatusCode::OK,
            &json!({ "path": p.path, "entry": listed(&entry) }),
        ));
    }
    if p.list {
        let entries = tokio::task::spawn_blocking(move || {
            let mut c = connect(&id, &h)?;
            let mut entries = c
                .list(&path, 1, MAX_LIST)
                .map_err(|e| file_error(&path, e))?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok::<_, ApiError>(entries.iter().map(listed).collect::<Vec<_>>())
        })
        .await
        .map_err(ApiError::join)??;
        return Ok(json(
            StatusCode::OK,
            &json!({ "path": p.path, "entries": entries }),
        ));
    }
    // The helper reads on a blocking thread; pieces cross a small channel,
    // so a slow client holds back the helper rather than filling memory.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<ApiResult<u64>>();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut c = match connect(&id, &h) {
            Ok(c) => c,
            Err(e) => {
                let _ = first_tx.send(Err(e));
                return;
            }
        };
        let mut reader = match c.read(&path) {
            Ok((size, r)) => {
                let _ = first_tx.send(Ok(size));
                r
            }
            Err(e) => {
                let _ = first_tx.send(Err(file_error(&path, e)));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; FILE_CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    // The client went away: stop; the helper ends with
                    // its connection.
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let size = first_rx
        .await
        .map_err(|_| ApiError::internal("the file helper's thread ended early"))??;
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let mut r = Body::from_stream(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut().insert(
        "x-stockade-file-size",
        HeaderValue::from_str(&size.to_string()).unwrap_or(HeaderValue::from_static("0")),
    );
    Ok(r)
}

pub async fn put_file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let p = params(q.as_deref(), &["path", "dir", "mode"])?;
    let (id, h) = helper(&state, &id).await?;
    let path = p.path.clone();
    if p.dir {
        // A directory and its missing parents; an existing one is fine.
        let created = tokio::task::spawn_blocking(move || {
            let mut c = connect(&id, &h)?;
            c.make_dir(&path, true).map_err(|e| file_error(&path, e))
        })
        .await
        .map_err(ApiError::join)??;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok(json(
            status,
            &json!({ "path": p.path, "created": created, "type": "dir" }),
        ));
    }
    let mode = p.mode;
    // `Err(())` means the upload broke off: the file is left as far as it
    // got, and the request fails.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, ()>>(IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || {
        let mut c = connect(&id, &h)?;
        let mut w = c
            .write(&path, mode, false)
            .map_err(|e| file_error(&path, e))?;
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                Ok(b) => w.chunk(&b).map_err(|e| file_error(&path, e))?,
                Err(()) => {
                    return Err(ApiError::invalid(
                        "the upload broke off before its end; send the file again",
                    ))
                }
            }
        }
        w.finish().map_err(|e| file_error(&path, e))
    });
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|_| ());
        let broke = piece.is_err();
        // The writer stopped (it failed): its answer says why.
        if tx.send(piece).await.is_err() || broke {
            break;
        }
    }
    drop(tx);
    let (created, size) = writer.await.map_err(ApiError::join)??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        &json!({ "path": p.path, "size": size, "created": created }),
    ))
}

pub async fn delete_file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = params(q.as_deref(), &["path", "recursive"])?;
    let (id, h) = helper(&state, &id).await?;
    let (path, recursive) = (p.path.clone(), p.recursive);
    tokio::task::spawn_blocking(move || {
        let mut c = connect(&id, &h)?;
        c.remove(&path, recursive).map_err(|e| file_error(&path, e))
    })
    .await
    .map_err(ApiError::join)??;
    Ok(json(
        StatusCode::OK,
        &json!({ "path": p.path, "deleted": true }),
    ))
}
