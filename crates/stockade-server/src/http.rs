//! HTTP plumbing shared by the routes: JSON bodies and answers, query
//! strings, the panic guard and the answers for unknown routes.

use std::panic::AssertUnwindSafe;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;

/// A JSON answer.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        )
            .into_response(),
    }
}

/// The raw body, with the size limit turned into a JSON 413.
pub struct BodyBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for BodyBytes {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(BodyBytes(b)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this daemon accepts (see max_body_bytes, 8 MiB by default); send a smaller body",
            )),
            Err(rej) => Err(ApiError::invalid(format!(
                "cannot read the request body: {}; resend the request",
                rej.body_text()
            ))),
        }
    }
}

/// A JSON body parsed into `T` (whose serde attributes reject unknown
/// fields); errors name the field and position.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let BodyBytes(b) = BodyBytes::from_request(req, state).await?;
        let text: &[u8] = if b.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &b
        };
        serde_json::from_slice(text).map(JsonBody).map_err(|e| {
            ApiError::invalid(format!(
                "the request body is not valid: {e}; fix it and retry (GET /v1/openapi.json describes every request)"
            ))
        })
    }
}

/// Decoded `key=value` pairs of a query string, in order.
pub fn query_pairs(q: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "the query string has a malformed escape in {s:?}; encode it as %XX"
        ))
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::invalid("the query string is not UTF-8; encode it as UTF-8"))
}

/// Rejects query parameters a route does not know.
pub fn only_params(pairs: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    for (k, _) in pairs {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::invalid(format!(
                "unknown query parameter {k:?}; this route takes {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// Parses a boolean query value.
pub fn flag(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::invalid(format!(
            "query parameter {name} must be true or false, got {v:?}"
        ))),
    }
}

/// Turns a panic in a handler into a 500 answer instead of a dropped
/// connection (the panic message is printed once on stderr).
pub async fn catch_panic(req: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(r) => r,
        Err(_) => ApiError::internal(
            "the daemon hit an internal error (a bug) while handling this request; retry, and report it with the daemon's log",
        )
        .into_response(),
    }
}

/// The answer for a path no route serves.
pub async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint; GET /v1/openapi.json lists them all",
    )
}

/// The answer for a known path with the wrong method.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; GET /v1/openapi.json lists the methods of each path",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded_and_checked() {
        let p = query_pairs(Some("label=team%3Da&state=running&x=a+b")).unwrap();
        assert_eq!(p[0], ("label".into(), "team=a".into()));
        assert_eq!(p[2].1, "a b");
        assert!(query_pairs(Some("a=%4")).is_err());
        assert!(only_params(&p, &["label", "state"])
            .unwrap_err()
            .message
            .contains("\"x\""));
    }

    #[test]
    fn a_panicking_handler_answers_500_and_the_daemon_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("p.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(async { tokio::net::UnixListener::bind(&sock) })
            .unwrap();
        let app = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if true {
                        panic!("deliberate panic in a test handler");
                    }
                    "unreachable"
                }),
            )
            .route("/ok", axum::routing::get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(catch_panic));
        rt.spawn(async move { axum::serve(listener, app).await });
        let c = stockade_client::Client::unix(&sock);
        for _ in 0..2 {
            let r = c.raw("GET", "/boom", &[], None).unwrap();
            assert_eq!(r.status, 500);
            let body = String::from_utf8(r.bytes(1 << 16).unwrap()).unwrap();
            assert!(body.contains("\"internal\""), "{body}");
        }
        let r = c.raw("GET", "/ok", &[], None).unwrap();
        assert_eq!(r.bytes(100).unwrap(), b"fine");
    }
}
