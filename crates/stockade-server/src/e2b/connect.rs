//! The Connect protocol (connectrpc.com/docs/protocol) with the JSON
//! codec, as E2B's SDK speaks it to envd: unary calls are a JSON body
//! answered with a JSON body (`application/json`); streams
//! (`application/connect+json`) are *envelopes* — one flag byte, a 4-byte
//! big-endian length, a JSON message — the last answer envelope carrying
//! flag 2 and `{}` or `{"error": {...}}`. No compression is offered, so
//! none is accepted.
//!
//! [`dispatch`] authenticates the request (the sandbox in
//! `E2b-Sandbox-Id`, its access token in `X-Access-Token`), reads the
//! request message and hands it to the service.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::registry::E2bBox;
use super::E2b;
use crate::state::Live;

/// Largest request message accepted (file data goes over `/files`).
pub const MAX_MESSAGE: usize = 4 << 20;

const END_STREAM: u8 = 0x02;
const COMPRESSED: u8 = 0x01;

/// A Connect error code (the JSON spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status a unary error is answered with.
    fn status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A failed call: code and a sentence saying what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    fn json(&self) -> Value {
        json!({"code": self.code.as_str(), "message": self.message})
    }
}

impl From<crate::error::ApiError> for RpcError {
    fn from(e: crate::error::ApiError) -> Self {
        let code = match e.status {
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::BAD_REQUEST => Code::InvalidArgument,
            StatusCode::CONFLICT => Code::FailedPrecondition,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                Code::ResourceExhausted
            }
            StatusCode::INSUFFICIENT_STORAGE => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        RpcError::new(code, e.message)
    }
}

pub type RpcResult<T> = Result<T, RpcError>;

/// The answer to a unary call.
pub fn unary(result: RpcResult<Value>) -> Response {
    match result {
        Ok(v) => crate::http::json(StatusCode::OK, &v),
        Err(e) => crate::http::json(e.code.status(), &e.json()),
    }
}

/// One envelope.
pub fn envelope(flags: u8, msg: &Value) -> Bytes {
    let data = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(flags);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
    Bytes::from(out)
}

/// The last envelope of a stream.
pub fn end_stream(error: Option<&RpcError>) -> Bytes {
    match error {
        None => envelope(END_STREAM, &json!({})),
        Some(e) => envelope(END_STREAM, &json!({"error": e.json()})),
    }
}

/// A streamed answer fed through a channel: the sender sends messages and
/// finally `Err`/`Ok(None)` for the end. Dropping the answer (the client
/// went away) makes sends fail, which tells the producer to stop.
pub struct StreamTx(mpsc::Sender<Bytes>);

impl StreamTx {
    /// Sends one message; false when the client is gone.
    pub async fn send(&self, msg: &Value) -> bool {
        self.0.send(envelope(0, msg)).await.is_ok()
    }
    /// Ends the stream (with an error, or cleanly).
    pub async fn end(self, error: Option<RpcError>) {
        let _ = self.0.send(end_stream(error.as_ref())).await;
    }
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A streamed answer and the sender that feeds it.
pub fn stream_response() -> (StreamTx, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+json"),
    );
    (StreamTx(tx), r)
}

/// A stream that fails at once (errors of streaming calls travel in the
/// end-of-stream envelope, with HTTP 200).
pub fn stream_error(e: RpcError) -> Response {
    let mut r = Response::new(Body::from(end_stream(Some(&e))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+json"),
    );
    r
}

/// Splits one envelope off `buf`: `Ok(None)` when more bytes are needed.
pub fn split_envelope(buf: &mut Vec<u8>) -> RpcResult<Option<(u8, Vec<u8>)>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let flags = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if flags & COMPRESSED != 0 {
        return Err(RpcError::new(
            Code::Unimplemented,
            "compressed messages are not supported; send them uncompressed (no Connect-Content-Encoding)",
        ));
    }
    if len > MAX_MESSAGE {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("a message of {len} bytes is larger than the {MAX_MESSAGE} accepted; send smaller messages"),
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let msg = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((flags, msg)))
}

/// Parses a message of type `T` (unknown fields are ignored, as the
/// protobuf JSON mapping allows clients newer than the server).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> RpcResult<T> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| RpcError::invalid(format!("the request message is not valid: {e}")))
}

/// Protobuf `bytes` in JSON: standard or URL-safe base64, padded or not.
pub fn b64_decode(s: &str) -> RpcResult<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| RpcError::invalid("a bytes field is not valid base64; encode it as base64"))
}

pub fn b64_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The user a request acts as (`Authorization: Basic base64(user:)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// No user named: the template's.
    Default,
    Root,
    /// Any other name: the sandbox's unprivileged user.
    Agent,
}

impl User {
    pub fn from_name(name: &str) -> User {
        match name {
            "" => User::Default,
            "root" => User::Root,
            _ => User::Agent,
        }
    }

    /// What `SandboxHandle::files` takes.
    pub fn as_root(&self) -> Option<bool> {
        match self {
            User::Default => None,
            User::Root => Some(true),
            User::Agent => Some(false),
        }
    }

    /// The home directory relative paths are resolved against.
    pub fn home(&self, policy_root: bool) -> &'static str {
        match (self, policy_root) {
            (User::Root, _) | (User::Default, true) => "/root",
            _ => "/home/agent",
        }
    }
}

/// The user named by a request's `Authorization: Basic` header.
pub fn user_of(headers: &HeaderMap) -> RpcResult<User> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(User::Default);
    };
    let bad = || {
        RpcError::new(
            Code::Unauthenticated,
            "the Authorization header must be `Basic base64(<user>:)` naming the sandbox user (\"user\" or \"root\")",
        )
    };
    let v = v.to_str().map_err(|_| bad())?;
    let enc = v.strip_prefix("Basic ").ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(enc.trim())
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let name = raw.split_once(':').map_or(raw.as_str(), |(u, _)| u);
    Ok(User::from_name(name))
}

/// A request's sandbox, checked: known to this listener, running, not
/// paused, and the access token right.
pub struct Target {
    pub id: String,
    pub live: Arc<Live>,
    pub bx: Arc<E2bBox>,
    pub user: User,
    pub policy_root: bool,
}

/// Why a request for a sandbox was refused, as an HTTP status (the
/// sandbox proxy's answers) and a message.
pub struct Refused(pub StatusCode, pub String);

/// Checks the sandbox id and access token of an envd request. `token_ok`
/// lets a caller accept a signed URL instead of the header; a signed URL
/// may also leave out `E2b-Sandbox-Id` (download and upload URLs are used
/// without the SDK's headers): its sandbox is the one whose token signed
/// it.
pub fn target(
    e2b: &E2b,
    headers: &HeaderMap,
    token_ok: impl Fn(&str) -> bool,
) -> Result<(String, Arc<E2bBox>, Arc<Live>), Refused> {
    let named = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let id = match named {
        Some(id) => id,
        None => e2b
            .boxes
            .all()
            .into_iter()
            .find(|b| token_ok(&e2b.keys.access_token(&b.id)))
            .map(|b| b.id.clone())
            .ok_or_else(|| {
                Refused(
                    StatusCode::UNAUTHORIZED,
                    "this request names no sandbox (E2b-Sandbox-Id) and carries no valid signature; use a URL from download_url/upload_url, or the SDK".into(),
                )
            })?,
    };
    let (Some(bx), Some(live)) = (e2b.boxes.get(&id), e2b.app.live(&id)) else {
        return Err(Refused(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id:?} was not found; it was killed, reached its timeout, or never existed"),
        ));
    };
    if live.is_ending() {
        return Err(Refused(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id:?} was not found; it is being destroyed"),
        ));
    }
    let expected = e2b.keys.access_token(&id);
    let given = headers.get("x-access-token").and_then(|v| v.to_str().ok());
    let ok = match given {
        Some(g) => super::keys::same(&expected, g),
        None => token_ok(&expected),
    };
    if !ok {
        return Err(Refused(
            StatusCode::UNAUTHORIZED,
            format!("the access token for sandbox {id} is missing or wrong; use the envdAccessToken the API returned when the sandbox was created"),
        ));
    }
    if bx.is_paused() {
        return Err(Refused(
            StatusCode::BAD_GATEWAY,
            format!("sandbox {id} is paused; connect to it (Sandbox.connect) to resume it"),
        ));
    }
    Ok((id, bx, live))
}

fn refused_to_rpc(r: Refused) -> RpcError {
    let code = match r.0 {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        _ => Code::Unavailable,
    };
    RpcError::new(code, r.1)
}

/// The kinds of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    ServerStream,
    ClientStream,
}

/// What a service method gets.
pub struct Call {
    pub e2b: Arc<E2b>,
    pub t: Target,
    pub headers: HeaderMap,
    /// `Connect-Timeout-Ms`, if given.
    pub deadline: Option<Duration>,
}

/// `POST /{service}/{method}` on the envd side.
pub async fn dispatch(
    State(e2b): State<Arc<E2b>>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = Some(body);
    let r = dispatch_inner(e2b, service, method, headers, &mut body).await;
    if let Some(b) = body {
        // Refused before the body was read: read it now (bounded), so that
        // the client's connection stays usable.
        let _ = axum::body::to_bytes(b, MAX_MESSAGE).await;
    }
    r
}

async fn dispatch_inner(
    e2b: Arc<E2b>,
    service: String,
    method: String,
    headers: HeaderMap,
    body: &mut Option<Body>,
) -> Response {
    let Some(kind) = kind_of(&service, &method) else {
        return unary(Err(RpcError::new(
            Code::Unimplemented,
            format!(
                "{service}/{method} is not implemented by this envd; docs/e2b.md lists what is"
            ),
        )));
    };
    let fail = |e: RpcError| match kind {
        Kind::Unary => unary(Err(e)),
        _ => stream_error(e),
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let want = if kind == Kind::Unary {
        "application/json"
    } else {
        "application/connect+json"
    };
    if ctype != want {
        let mut r = fail(RpcError::invalid(format!(
            "this call takes content type {want} (the Connect protocol with the JSON codec), got {ctype:?}"
        )))
        .into_response();
        if ctype.starts_with("application/proto") || ctype.starts_with("application/connect+proto")
        {
            *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        return r;
    }
    let (id, bx, live) = match target(&e2b, &headers, |_| false) {
        Ok(t) => t,
        Err(r) => {
            // The proxy's own refusals are plain HTTP errors for every
            // kind of call; the SDK maps 502 and 401 itself.
            let rpc = refused_to_rpc(Refused(r.0, r.1.clone()));
            let mut resp = crate::http::json(r.0, &rpc.json());
            if r.0 == StatusCode::BAD_GATEWAY {
                resp = crate::http::json(r.0, &json!({"code": 502, "message": r.1}));
            }
            return resp;
        }
    };
    let user = match user_of(&headers) {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let deadline = match headers.get("connect-timeout-ms").map(|v| v.to_str()) {
        None => None,
        Some(Ok(s)) => match s.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => {
                return fail(RpcError::invalid(format!(
                    "Connect-Timeout-Ms must be a positive number of milliseconds, got {s:?}"
                )))
            }
        },
        Some(Err(_)) => return fail(RpcError::invalid("Connect-Timeout-Ms is not text")),
    };
    let policy_root = bx.policy_root;
    let call = Call {
        e2b: e2b.clone(),
        t: Target {
            id,
            live,
            bx,
            user,
            policy_root,
        },
        headers,
        deadline,
    };
    let Some(body) = body.take() else {
        return fail(RpcError::new(
            Code::Internal,
            "the request body was already taken",
        ));
    };
    match kind {
        Kind::ClientStream => super::process::stream_input(call, body).await,
        Kind::Unary => {
            let msg = match read_unary(body).await {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            let r = match service.as_str() {
                "process.Process" => super::process::unary(call, &method, &msg).await,
                _ => super::fs::unary(call, &method, &msg).await,
            };
            unary(r)
        }
        Kind::ServerStream => {
            let msg = match read_single_envelope(body).await {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            match service.as_str() {
                "process.Process" => super::process::stream(call, &method, &msg).await,
                _ => super::fs::stream(call, &method, &msg).await,
            }
        }
    }
}

fn kind_of(service: &str, method: &str) -> Option<Kind> {
    Some(match (service, method) {
        ("process.Process", "Start" | "Connect") => Kind::ServerStream,
        ("process.Process", "StreamInput") => Kind::ClientStream,
        ("process.Process", "List" | "SendInput" | "SendSignal" | "CloseStdin" | "Update") => {
            Kind::Unary
        }
        ("filesystem.Filesystem", "WatchDir") => Kind::ServerStream,
        (
            "filesystem.Filesystem",
            "Stat" | "MakeDir" | "Move" | "ListDir" | "Remove" | "CreateWatcher"
            | "GetWatcherEvents" | "RemoveWatcher",
        ) => Kind::Unary,
        _ => return None,
    })
}

async fn read_unary(body: Body) -> RpcResult<Vec<u8>> {
    let b = axum::body::to_bytes(body, MAX_MESSAGE).await.map_err(|_| {
        RpcError::new(
            Code::ResourceExhausted,
            format!(
                "the request is larger than the {MAX_MESSAGE} bytes accepted, or could not be read"
            ),
        )
    })?;
    Ok(b.to_vec())
}

/// The one request envelope of a server-streaming call.
async fn read_single_envelope(body: Body) -> RpcResult<Vec<u8>> {
    let mut buf = read_unary(body).await?;
    let malformed = || {
        RpcError::invalid(
            "the request is not one Connect envelope (1 flag byte, 4-byte big-endian length, message); send the message enveloped",
        )
    };
    match split_envelope(&mut buf)? {
        Some((0, msg)) if buf.is_empty() => Ok(msg),
        _ => Err(malformed()),
    }
}

/// The envelopes of a client stream, as they arrive.
pub struct Envelopes {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    done: bool,
}

impl Envelopes {
    pub fn new(body: Body) -> Self {
        Envelopes {
            body: body.into_data_stream(),
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next message; `Ok(None)` at the end of the stream.
    pub async fn next(&mut self) -> RpcResult<Option<Vec<u8>>> {
        loop {
            if let Some((flags, msg)) = split_envelope(&mut self.buf)? {
                if flags & END_STREAM != 0 {
                    self.done = true;
                    return Ok(None);
                }
                return Ok(Some(msg));
            }
            if self.done {
                return Ok(None);
            }
            match self.body.next().await {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(_)) => {
                    return Err(RpcError::new(
                        Code::Canceled,
                        "the request stream broke off; retry",
                    ))
                }
                None => {
                    if !self.buf.is_empty() {
                        return Err(RpcError::invalid(
                            "the request stream ended in the middle of an envelope",
                        ));
                    }
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }
}

/// The answer of a client-streaming call: one message, then the end.
pub fn client_stream_answer(result: RpcResult<Value>) -> Response {
    match result {
        Ok(v) => {
            let mut body = envelope(0, &v).to_vec();
            body.extend_from_slice(&end_stream(None));
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/connect+json"),
            );
            r
        }
        Err(e) => stream_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_malformed_ones_are_refused() {
        let e = envelope(0, &json!({"a": 1}));
        let mut buf = e.to_vec();
        buf.extend_from_slice(&end_stream(None));
        let (f, m) = split_envelope(&mut buf).unwrap().unwrap();
        assert_eq!((f, m.as_slice()), (0, &br#"{"a":1}"#[..]));
        let (f, m) = split_envelope(&mut buf).unwrap().unwrap();
        assert_eq!((f, m.as_slice()), (END_STREAM, &b"{}"[..]));
        assert!(buf.is_empty());
        // A length beyond the data: more is needed, nothing is consumed.
        let mut short = vec![0, 0, 0, 0, 9, b'{'];
        assert_eq!(split_envelope(&mut short).unwrap(), None);
        assert_eq!(short.len(), 6);
        // Compressed and huge messages are refused.
        let mut comp = vec![1, 0, 0, 0, 0];
        assert_eq!(
            split_envelope(&mut comp).unwrap_err().code,
            Code::Unimplemented
        );
        let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            split_envelope(&mut huge).unwrap_err().code,
            Code::ResourceExhausted
        );
    }

    #[test]
    fn basic_header_names_the_user() {
        let mut h = HeaderMap::new();
        assert_eq!(user_of(&h).unwrap(), User::Default);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cm9vdDo="),
        );
        assert_eq!(user_of(&h).unwrap(), User::Root);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjo="),
        );
        assert_eq!(user_of(&h).unwrap(), User::Agent);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(user_of(&h).unwrap_err().code, Code::Unauthenticated);
    }

    #[test]
    fn bytes_fields_accept_every_base64_alphabet() {
        assert_eq!(b64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(b64_decode("aGk").unwrap(), b"hi");
        assert_eq!(b64_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(b64_decode("!!").is_err());
    }
}
