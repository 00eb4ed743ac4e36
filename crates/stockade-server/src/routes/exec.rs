//! Processes: exec (JSON answer, SSE stream or background), the process
//! list, and stdin, signals and output of background processes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use stockade_core::backend::ExecRequest;
use stockade_policy::Span;

use crate::error::{ApiError, ApiResult};
use crate::events::until_shutdown;
use crate::http::{flag, json, only_params, query_pairs, BodyBytes, JsonBody};
use crate::process::{self, Proc, StartSpec, StreamKind};
use crate::state::{AppState, Live};

/// Body of `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    timeout: Option<Span>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    background: bool,
    /// How `stdin` and the output are carried: `text` (UTF-8; invalid
    /// output bytes become U+FFFD) or `base64` (any bytes).
    #[serde(default)]
    encoding: Encoding,
    /// Run it on a terminal of its own (stdout and stderr are then one
    /// stream, `stdout`); its size is set with the resize route.
    #[serde(default)]
    tty: bool,
    /// The terminal's size from the start (with `tty`).
    #[serde(default)]
    tty_size: Option<TtySize>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    rows: u16,
    cols: u16,
}

/// How bytes travel in JSON: as UTF-8 text, or base64 for any bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Text,
    Base64,
}

impl Encoding {
    fn parse(v: &str) -> ApiResult<Self> {
        match v {
            "text" => Ok(Encoding::Text),
            "base64" => Ok(Encoding::Base64),
            _ => Err(ApiError::invalid(format!(
                "encoding must be \"text\" or \"base64\", got {v:?}"
            ))),
        }
    }

    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Text => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Base64 => B64.encode(bytes),
        }
    }

    fn decode(self, field: &str, s: String) -> ApiResult<Vec<u8>> {
        match self {
            Encoding::Text => Ok(s.into_bytes()),
            Encoding::Base64 => B64.decode(s.as_bytes()).map_err(|e| {
                ApiError::invalid(format!(
                    "{field} is not valid base64 ({e}); send standard base64 with padding, or drop \"encoding\": \"base64\" to send text"
                ))
            }),
        }
    }
}

fn check(body: &ExecBody) -> ApiResult<()> {
    if body.cmd.is_empty() || body.cmd[0].is_empty() {
        return Err(ApiError::invalid(
            "cmd must name a program, e.g. [\"ls\", \"-l\"]",
        ));
    }
    if body.cmd.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid(
            "cmd arguments must not contain NUL bytes",
        ));
    }
    for (k, v) in &body.env {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || v.contains('\0') {
            return Err(ApiError::invalid(format!(
                "env: {k:?} is not a valid variable (letters, digits and '_', not starting with a digit; no NUL in the value)"
            )));
        }
    }
    if let Some(cwd) = &body.cwd {
        if !cwd.starts_with('/') || cwd.contains('\0') {
            return Err(ApiError::invalid(format!(
                "cwd must be an absolute path inside the sandbox, got {cwd:?}"
            )));
        }
    }
    if body.tty_size.is_some() && !body.tty {
        return Err(ApiError::invalid("tty_size needs \"tty\": true"));
    }
    if body.tty_size.is_some_and(|t| t.rows == 0 || t.cols == 0) {
        return Err(ApiError::invalid(
            "tty_size: rows and cols must be at least 1, e.g. {\"rows\": 24, \"cols\": 80}",
        ));
    }
    if body.timeout.is_some_and(|t| t.duration().is_zero()) {
        return Err(ApiError::invalid(
            "timeout must be longer than 0s, e.g. \"10s\"",
        ));
    }
    Ok(())
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

pub async fn exec(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecBody>,
) -> ApiResult<Response> {
    check(&body)?;
    let live = state.running_handle(&id).await?;
    let spec = StartSpec {
        req: ExecRequest {
            cmd: body.cmd,
            env: body.env,
            cwd: body.cwd,
            root: None,
            tty: body.tty,
            tty_size: body.tty_size.map(|t| (t.rows, t.cols)),
        },
        timeout: body.timeout.map(Span::duration),
        stdin: body
            .stdin
            .map(|s| body.encoding.decode("stdin", s))
            .transpose()?,
        background: body.background,
    };
    let p = process::start(&state, &live, spec).await?;
    if body.background {
        return Ok(json(StatusCode::ACCEPTED, &json!({ "pid": p.pid })));
    }
    if wants_sse(&headers) {
        return Ok(output_sse(p, state.shutdown.clone(), body.encoding, true).into_response());
    }
    let exit = p.wait().await;
    let log = p.log();
    let answer = json!({
        "pid": p.pid,
        "exit_code": exit.exit_code,
        "signal": exit.signal,
        "outcome": exit.outcome,
        "error": exit.error,
        "duration_seconds": exit.duration_seconds,
        "stdout": body.encoding.encode(&log.bytes(StreamKind::Stdout)),
        "stderr": body.encoding.encode(&log.bytes(StreamKind::Stderr)),
        "truncated": log.truncated[0] || log.truncated[1],
    });
    drop(log);
    Ok(json(StatusCode::OK, &answer))
}

/// SSE of a process: `start`, then `stdout`/`stderr` chunks from its
/// start (as far as kept) and live, then `exit`.
fn output_sse(
    p: Arc<Proc>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    encoding: Encoding,
    follow: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    struct Cursor {
        p: Arc<Proc>,
        rx: tokio::sync::watch::Receiver<u64>,
        next_seq: u64,
        pending: std::collections::VecDeque<Event>,
        started: bool,
        done: bool,
        /// Output was dropped from the kept log before this reader got it.
        lagged: bool,
    }
    let rx = p.subscribe();
    let init = Cursor {
        p,
        rx,
        next_seq: 0,
        pending: Default::default(),
        started: false,
        done: false,
        lagged: false,
    };
    let s = stream::unfold(init, move |mut c| async move {
        loop {
            if let Some(ev) = c.pending.pop_front() {
                return Some((Ok(ev), c));
            }
            if c.done {
                return None;
            }
            if !c.started {
                c.started = true;
                let data = json!({ "pid": c.p.pid }).to_string();
                c.pending
                    .push_back(Event::default().event("start").data(data));
                continue;
            }
            let (chunks, exit) = {
                let log = c.p.log();
                (log.since(c.next_seq), log.exit.clone())
            };
            for ch in &chunks {
                // Sequence numbers run over both streams without gaps; a
                // gap means the kept log dropped chunks this reader never
                // saw (it fell more than the cap behind).
                if ch.seq > c.next_seq {
                    c.lagged = true;
                    let data = json!({ "missed_chunks": ch.seq - c.next_seq }).to_string();
                    c.pending
                        .push_back(Event::default().event("lagged").data(data));
                }
                let kind = match ch.stream {
                    StreamKind::Stdout => "stdout",
                    StreamKind::Stderr => "stderr",
                };
                let data = json!({ "data": encoding.encode(&ch.data) }).to_string();
                c.pending.push_back(Event::default().event(kind).data(data));
                c.next_seq = ch.seq + 1;
            }
            if !chunks.is_empty() {
                continue;
            }
            if exit.is_none() && !follow {
                // What was kept so far, without waiting for more.
                return None;
            }
            if let Some(e) = exit {
                c.done = true;
                let mut data = json!(e);
                if let Some(obj) = data.as_object_mut() {
                    obj.insert("truncated".into(), json!(c.lagged));
                }
                c.pending
                    .push_back(Event::default().event("exit").data(data.to_string()));
                continue;
            }
            if c.rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Sse::new(until_shutdown(s, shutdown)).keep_alive(KeepAlive::default())
}

fn parse_pid(s: &str) -> ApiResult<i32> {
    s.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::invalid(format!("process id must be a positive number, got {s:?}"))
    })
}

/// The process `pid` started through the API in sandbox `id`.
async fn known(state: &Arc<AppState>, id: &str, pid: &str) -> ApiResult<(Arc<Live>, Arc<Proc>)> {
    let pid = parse_pid(pid)?;
    let (row, live) = state.running(id).await?;
    let p = live.procs().get(pid).ok_or_else(|| {
        ApiError::not_found(format!(
            "sandbox {} has no process {pid} started through the API (or it ended long ago); list them with GET /v1/sandboxes/{}/processes",
            row.id, row.id
        ))
    })?;
    Ok((live, p))
}

pub async fn processes(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (row, live) = state.running(&id).await?;
    let h = live.handle.clone();
    let st = tokio::task::spawn_blocking(move || h.status())
        .await
        .map_err(ApiError::join)?
        .map_err(|e| ApiError::backend(&row.id, e))?;
    let table = live.procs();
    let list: Vec<serde_json::Value> = st
        .processes
        .iter()
        .map(|info| {
            let mut v = json!(info);
            let ours = table.get(info.pid);
            v["background"] = json!(ours.as_ref().is_some_and(|p| p.background));
            v["via_api"] = json!(ours.is_some());
            v
        })
        .collect();
    drop(table);
    Ok(json(StatusCode::OK, &json!({ "processes": list })))
}

pub async fn stdin(
    State(state): State<Arc<AppState>>,
    Path((id, pid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    BodyBytes(data): BodyBytes,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    only_params(&pairs, &["eof"])?;
    let eof = match pairs.iter().find(|(k, _)| k == "eof") {
        Some((k, v)) => flag(k, v)?,
        None => false,
    };
    let (_, p) = known(&state, &id, &pid).await?;
    let closed = || {
        ApiError::conflict(format!(
            "the stdin of process {} is closed (it ended, or eof was sent); start a new process to send more input",
            p.pid
        ))
    };
    let mut guard = p.stdin.lock().await;
    let w = guard.as_mut().ok_or_else(closed)?;
    if !data.is_empty() {
        let wrote = tokio::select! {
            r = tokio::io::AsyncWriteExt::write_all(w, &data) => r.is_ok(),
            _ = p.wait() => false,
        };
        if !wrote {
            *guard = None;
            return Err(closed());
        }
    }
    if eof {
        *guard = None;
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "pid": p.pid, "written": data.len(), "stdin_open": guard.is_some() }),
    ))
}

/// Body of the resize route: the terminal's new size.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    rows: u16,
    cols: u16,
}

pub async fn resize(
    State(state): State<Arc<AppState>>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(body): JsonBody<ResizeBody>,
) -> ApiResult<Response> {
    let (_, p) = known(&state, &id, &pid).await?;
    if p.tty.is_none() {
        return Err(ApiError::conflict(format!(
            "process {} has no terminal; start it with \"tty\": true to resize it",
            p.pid
        )));
    }
    if body.rows == 0 || body.cols == 0 {
        return Err(ApiError::invalid(
            "rows and cols must be at least 1, e.g. {\"rows\": 24, \"cols\": 80}",
        ));
    }
    p.resize(body.rows, body.cols).map_err(|e| {
        ApiError::internal(format!(
            "cannot set the terminal size of process {}: {e}",
            p.pid
        ))
    })?;
    Ok(json(
        StatusCode::OK,
        &json!({ "pid": p.pid, "rows": body.rows, "cols": body.cols }),
    ))
}

/// Body of the signal route: `{"signal": 15}` or `{"signal": "TERM"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    signal: serde_json::Value,
}

/// A signal number from a number or a name (`TERM`, `SIGTERM`, `term`).
pub fn parse_signal(v: &serde_json::Value) -> ApiResult<i32> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("TERM", libc::SIGTERM),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("ALRM", libc::SIGALRM),
        ("PIPE", libc::SIGPIPE),
        ("STOP", libc::SIGSTOP),
        ("CONT", libc::SIGCONT),
        ("WINCH", libc::SIGWINCH),
    ];
    let bad = || {
        ApiError::invalid(format!(
            "signal must be a number from 1 to 64 or a name such as \"TERM\" or \"KILL\", got {v}"
        ))
    };
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .filter(|n| (1..=64).contains(n))
            .map(|n| n as i32)
            .ok_or_else(bad),
        serde_json::Value::String(s) => {
            let up = s.to_ascii_uppercase();
            let name = up.strip_prefix("SIG").unwrap_or(&up);
            NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

pub async fn signal(
    State(state): State<Arc<AppState>>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(body): JsonBody<SignalBody>,
) -> ApiResult<Response> {
    let sig = parse_signal(&body.signal)?;
    let (live, p) = known(&state, &id, &pid).await?;
    if p.log().exit.is_some() {
        return Err(ApiError::conflict(format!(
            "process {} has already ended; nothing to signal",
            p.pid
        )));
    }
    let (h, pid) = (live.handle.clone(), p.pid);
    tokio::task::spawn_blocking(move || h.signal(pid, sig))
        .await
        .map_err(ApiError::join)?
        .map_err(|e| ApiError::backend(&live.id, e))?;
    Ok(json(StatusCode::OK, &json!({ "pid": pid, "signal": sig })))
}

pub async fn output(
    State(state): State<Arc<AppState>>,
    Path((id, pid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    only_params(&pairs, &["encoding", "follow"])?;
    let encoding = match pairs.iter().find(|(k, _)| k == "encoding") {
        Some((_, v)) => Encoding::parse(v)?,
        None => Encoding::Text,
    };
    let follow = match pairs.iter().find(|(k, _)| k == "follow") {
        Some((k, v)) => flag(k, v)?,
        None => true,
    };
    let (_, p) = known(&state, &id, &pid).await?;
    Ok(output_sse(p, state.shutdown.clone(), encoding, follow).into_response())
}
