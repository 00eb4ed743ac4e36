//! envd's plain HTTP file routes: `GET /files?path=` downloads a file,
//! `POST /files` uploads one (`application/octet-stream`, `path` in the
//! query) or several (`multipart/form-data`, each part's file name its
//! path, or `path` in the query for a single part). Requests carry the
//! sandbox's access token, or a `v1_` signature of the path, operation and
//! user (download and upload URLs made by the SDK). The data goes through
//! the sandbox's own file helper; a full disk is answered 507.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use stockade_core::backend::{EntryKind, FileError};

use super::connect::{target, user_of, Code, RpcError, User};
use super::fs::{fs_error, helper, resolve};
use super::keys::{same, signature};
use super::{E2b, E2bError};
use crate::events::now;
use crate::http::query_pairs;

fn rpc_to_http(e: RpcError) -> E2bError {
    let status = match e.code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
            StatusCode::BAD_REQUEST
        }
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        Code::Unavailable => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    E2bError::new(status, e.message)
}

fn file_error(path: &str, e: FileError) -> E2bError {
    let full = matches!(e.errno(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
    let mut err = rpc_to_http(fs_error(path, e));
    if full {
        err.status = StatusCode::INSUFFICIENT_STORAGE;
    }
    err
}

/// The query of a file request.
struct Query {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    expiration: Option<i64>,
}

fn query(q: Option<&str>) -> Result<Query, E2bError> {
    let mut out = Query {
        path: None,
        username: None,
        signature: None,
        expiration: None,
    };
    for (k, v) in query_pairs(q).map_err(|e| E2bError::invalid(e.message))? {
        match k.as_str() {
            "path" => out.path = Some(v),
            "username" => out.username = Some(v),
            "signature" => out.signature = Some(v),
            "signature_expiration" => {
                out.expiration = Some(v.parse().map_err(|_| {
                    E2bError::invalid(format!(
                        "signature_expiration must be unix seconds, got {v:?}"
                    ))
                })?)
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Checks the sandbox and the token (header or signature); returns the
/// sandbox's handle, the user and whether the policy runs as root.
fn authorize(
    e2b: &E2b,
    headers: &HeaderMap,
    q: &Query,
    operation: &str,
) -> Result<(String, Arc<crate::state::Live>, User, bool), E2bError> {
    let path = q.path.clone().unwrap_or_default();
    let username = q.username.clone().unwrap_or_default();
    let signed = |token: &str| {
        let Some(sig) = &q.signature else {
            return false;
        };
        if q.expiration.is_some_and(|e| (e as f64) < now()) {
            return false;
        }
        same(
            sig,
            &signature(&path, operation, &username, token, q.expiration),
        )
    };
    let (id, bx, live) = target(e2b, headers, signed).map_err(|r| E2bError::new(r.0, r.1))?;
    let user = match &q.username {
        Some(u) => User::from_name(u),
        None => user_of(headers).map_err(rpc_to_http)?,
    };
    Ok((id, live, user, bx.policy_root))
}

/// `GET /files?path=`.
pub async fn download(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    match download_inner(&e2b, &headers, q.as_deref()).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn download_inner(
    e2b: &E2b,
    headers: &HeaderMap,
    q: Option<&str>,
) -> Result<Response, E2bError> {
    let q = query(q)?;
    let (_, live, user, root) = authorize(e2b, headers, &q, "read")?;
    let raw = q.path.clone().ok_or_else(|| {
        E2bError::invalid("add the query parameter path, e.g. ?path=/home/user/a.txt")
    })?;
    let path = resolve(&raw, &user, root).map_err(rpc_to_http)?;
    let h = live.handle.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<u64, E2bError>>();
    let p = path.clone();
    std::thread::Builder::new()
        .name("stockade-e2b-read".into())
        .spawn(move || {
            let mut c = match helper(&h, &user) {
                Ok(c) => c,
                Err(e) => {
                    let _ = first_tx.send(Err(rpc_to_http(e)));
                    return;
                }
            };
            match c.stat(&p, true) {
                Ok(e) if e.kind == EntryKind::Dir => {
                    let _ = first_tx.send(Err(E2bError::invalid(format!(
                        "{p} is a directory; list it with files.list"
                    ))));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = first_tx.send(Err(file_error(&p, e)));
                    return;
                }
            }
            let (size, mut r) = match c.read(&p) {
                Ok(x) => x,
                Err(e) => {
                    let _ = first_tx.send(Err(file_error(&p, e)));
                    return;
                }
            };
            let _ = first_tx.send(Ok(size));
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match std::io::Read::read(&mut r, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| {
            E2bError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot start a reader: {e}"),
            )
        })?;
    let size = first_rx.await.map_err(|_| {
        E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, "the reader ended early")
    })??;
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let mut r = Response::new(Body::from_stream(body));
    let hs = r.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Some(name) = path.rsplit('/').next() {
        if let Ok(v) =
            HeaderValue::from_str(&format!("inline; filename=\"{}\"", name.replace('"', "")))
        {
            hs.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(r)
}

/// `POST /files`.
pub async fn upload(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    match upload_inner(&e2b, &headers, q.as_deref(), body).await {
        Ok(v) => crate::http::json(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// What `POST /files` answers for one written file.
fn written(p: &str) -> Value {
    let name = p.rsplit('/').next().unwrap_or("").to_string();
    json!({"name": name, "type": "file", "path": p})
}

/// Reads and drops what is left of a refused upload (up to a bound), so
/// that the connection stays usable for the client's next request.
async fn drain(body: Body) {
    let mut data = body.into_data_stream();
    let mut left: usize = 64 << 20;
    while let Some(Ok(b)) = futures_util::StreamExt::next(&mut data).await {
        left = left.saturating_sub(b.len());
        if left == 0 {
            return;
        }
    }
}

async fn upload_inner(
    e2b: &E2b,
    headers: &HeaderMap,
    q: Option<&str>,
    body: Body,
) -> Result<Value, E2bError> {
    let checked = (|| {
        let q = query(q)?;
        let (_, live, user, root) = authorize(e2b, headers, &q, "write")?;
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity")
        {
            return Err(E2bError::invalid(
                "compressed uploads are not supported; upload without gzip",
            ));
        }
        Ok((q, live, user, root))
    })();
    let (q, live, user, root) = match checked {
        Ok(c) => c,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let h = live.handle.clone();
    if !ctype.starts_with("multipart/form-data") {
        // One file, streamed to the helper as it arrives: its size is
        // bounded by the sandbox's disk limit, not the daemon's memory.
        let p = match q
            .path
            .clone()
            .ok_or_else(|| {
                E2bError::invalid("add the query parameter path for an octet-stream upload")
            })
            .and_then(|raw| resolve(&raw, &user, root).map_err(rpc_to_http))
        {
            Ok(p) => p,
            Err(e) => {
                drain(body).await;
                return Err(e);
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(4);
        let pc = p.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut c = helper(&h, &user).map_err(rpc_to_http)?;
            let mut w = c.write(&pc, None, false).map_err(|e| file_error(&pc, e))?;
            while let Some(chunk) = rx.blocking_recv() {
                w.chunk(&chunk).map_err(|e| file_error(&pc, e))?;
            }
            w.finish().map_err(|e| file_error(&pc, e))?;
            Ok::<_, E2bError>(())
        });
        let mut data = body.into_data_stream();
        let mut broke = None;
        while let Some(chunk) = futures_util::StreamExt::next(&mut data).await {
            match chunk {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        // The writer failed: its error is the answer.
                        drop(tx);
                        drain(Body::from_stream(data)).await;
                        let r = writer.await.map_err(|e| {
                            E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        })?;
                        r?;
                        return Err(E2bError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the write of {p} stopped early"),
                        ));
                    }
                }
                Err(e) => {
                    broke = Some(e.to_string());
                    break;
                }
            }
        }
        drop(tx);
        let result = writer
            .await
            .map_err(|e| E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        result?;
        if let Some(e) = broke {
            return Err(E2bError::invalid(format!(
                "the upload broke off ({e}); {p} holds what arrived, upload it again"
            )));
        }
        return Ok(Value::Array(vec![written(&p)]));
    }
    let body = axum::body::to_bytes(body, e2b.app.max_body_bytes)
        .await
        .map_err(|_| {
            E2bError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the multipart upload is larger than this daemon accepts (max_body_bytes, 8 MiB by default); upload big files one by one as application/octet-stream",
            )
        })?;
    let boundary = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or_else(|| E2bError::invalid("the multipart upload has no boundary"))?;
    let parts = multipart(&body, &boundary)?;
    if parts.is_empty() {
        return Err(E2bError::invalid("the multipart upload holds no file"));
    }
    let single = parts.len() == 1;
    let mut files = Vec::with_capacity(parts.len());
    for (name, data) in parts {
        let p = match (&q.path, single) {
            (Some(p), true) => p.clone(),
            _ => name.ok_or_else(|| {
                E2bError::invalid("each file part needs a file name (its path in the sandbox)")
            })?,
        };
        files.push((resolve(&p, &user, root).map_err(rpc_to_http)?, data));
    }
    tokio::task::spawn_blocking(move || {
        let mut c = helper(&h, &user).map_err(rpc_to_http)?;
        let mut out = Vec::new();
        for (p, d) in files {
            c.write_all(&p, &mut d.as_slice())
                .map_err(|e| file_error(&p, e))?;
            out.push(written(&p));
        }
        Ok::<_, E2bError>(Value::Array(out))
    })
    .await
    .map_err(|e| E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// The parts of a `multipart/form-data` body: (file name, data).
/// A part of a multipart body: its file name, if any, and its data.
type Part = (Option<String>, Vec<u8>);

fn multipart(body: &[u8], boundary: &str) -> Result<Vec<Part>, E2bError> {
    let bad = |what: &str| E2bError::invalid(format!("the multipart upload is malformed: {what}"));
    let delim = format!("--{boundary}").into_bytes();
    let mut pos = find(body, &delim, 0).ok_or_else(|| bad("no boundary line"))? + delim.len();
    let mut out = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            return Ok(out);
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err(bad("a boundary is not followed by a line break"));
        }
        pos += 2;
        let head_end =
            find(body, b"\r\n\r\n", pos).ok_or_else(|| bad("a part has no header end"))?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).into_owned();
        let data_start = head_end + 4;
        let mut next_delim = b"\r\n".to_vec();
        next_delim.extend_from_slice(&delim);
        let data_end =
            find(body, &next_delim, data_start).ok_or_else(|| bad("a part is not closed"))?;
        let filename = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !k.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            v.split(';').find_map(|p| {
                let p = p.trim();
                p.strip_prefix("filename=")
                    .map(|f| f.trim_matches('"').to_string())
            })
        });
        out.push((filename, body[data_start..data_end].to_vec()));
        pos = data_end + next_delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_are_split_into_named_parts() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/a/b.txt\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\n--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c\"\r\n\r\n\r\n--x\r\n--xyz--\r\n";
        let parts = multipart(body, "xyz").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], (Some("/a/b.txt".into()), b"hello".to_vec()));
        assert_eq!(parts[1], (Some("c".into()), b"\r\n--x".to_vec()));
        assert!(multipart(b"--xyz\r\nno header end", "xyz").is_err());
        assert!(multipart(b"nothing", "xyz").is_err());
    }
}
