//! envd's `process.Process` service on top of the daemon's processes
//! (`crate::process`): `Start` and `Connect` stream a process's start, its
//! output and its end; `SendInput`, `StreamInput` and `CloseStdin` feed its
//! stdin; `SendSignal` signals it; `List` shows the running ones. A `pty` in
//! `Start` runs the process on a terminal (the daemon's tty exec): its
//! output streams as `pty` data, `pty` input is written to the terminal and
//! `Update` sets the terminal's size.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use stockade_core::backend::ExecRequest;

use super::connect::{
    b64_decode, b64_encode, client_stream_answer, parse, stream_error, stream_response, Call, Code,
    Envelopes, RpcError, RpcResult, StreamTx, User,
};
use super::registry::ProcMeta;
use crate::process::{self, Proc, StartSpec, StreamKind};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: Option<ProcessConfig>,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

/// envd's `PTY`: a terminal and its size (proto3 JSON leaves zeros out).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pty {
    size: Option<PtySize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PtySize {
    rows: u32,
    cols: u32,
}

impl Pty {
    /// The size asked for, checked: `None` when none was given.
    fn checked_size(&self) -> RpcResult<Option<(u16, u16)>> {
        let Some(s) = &self.size else {
            return Ok(None);
        };
        let fits = |n: u32| (1..=u32::from(u16::MAX)).contains(&n);
        if !fits(s.rows) || !fits(s.cols) {
            return Err(RpcError::invalid(format!(
                "pty.size: rows and cols must be between 1 and 65535, got {} rows and {} cols",
                s.rows, s.cols
            )));
        }
        Ok(Some((s.rows as u16, s.cols as u16)))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateRequest {
    process: Option<Selector>,
    pty: Option<Pty>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    pid: Option<u32>,
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WithSelector {
    process: Option<Selector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendInputRequest {
    process: Option<Selector>,
    input: Option<Input>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendSignalRequest {
    process: Option<Selector>,
    signal: Value,
}

/// Unary methods.
pub async fn unary(call: Call, method: &str, msg: &[u8]) -> RpcResult<Value> {
    match method {
        "List" => list(&call).await,
        "SendInput" => {
            let req: SendInputRequest = parse(msg)?;
            let p = find(&call, req.process.as_ref())?;
            write_input(&p, req.input.unwrap_or_default()).await?;
            Ok(json!({}))
        }
        "SendSignal" => {
            let req: SendSignalRequest = parse(msg)?;
            let p = find(&call, req.process.as_ref())?;
            let sig = match &req.signal {
                Value::String(s) if s == "SIGNAL_SIGKILL" => libc::SIGKILL,
                Value::String(s) if s == "SIGNAL_SIGTERM" => libc::SIGTERM,
                Value::Number(n) if n.as_i64() == Some(9) => libc::SIGKILL,
                Value::Number(n) if n.as_i64() == Some(15) => libc::SIGTERM,
                other => {
                    return Err(RpcError::invalid(format!(
                        "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM, got {other}"
                    )))
                }
            };
            if p.log().exit.is_some() {
                return Err(RpcError::new(
                    Code::NotFound,
                    format!("process {} has already ended", p.pid),
                ));
            }
            let (h, pid) = (call.t.live.handle.clone(), p.pid);
            tokio::task::spawn_blocking(move || h.signal(pid, sig))
                .await
                .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
                .map_err(|e| RpcError::new(Code::NotFound, e.to_string()))?;
            Ok(json!({}))
        }
        "CloseStdin" => {
            let req: WithSelector = parse(msg)?;
            let p = find(&call, req.process.as_ref())?;
            p.stdin.lock().await.take();
            Ok(json!({}))
        }
        "Update" => {
            let req: UpdateRequest = parse(msg)?;
            let p = find(&call, req.process.as_ref())?;
            let Some(pty) = req.pty else {
                return Ok(json!({}));
            };
            if p.tty.is_none() {
                return Err(no_terminal(&p));
            }
            let Some((rows, cols)) = pty.checked_size()? else {
                return Ok(json!({}));
            };
            p.resize(rows, cols).map_err(|e| {
                RpcError::new(
                    Code::Internal,
                    format!("cannot set the terminal size of process {}: {e}", p.pid),
                )
            })?;
            Ok(json!({}))
        }
        _ => Err(RpcError::new(
            Code::Unimplemented,
            format!("process.Process/{method} is not implemented"),
        )),
    }
}

fn no_terminal(p: &Proc) -> RpcError {
    RpcError::new(
        Code::FailedPrecondition,
        format!(
            "process {} has no terminal; start it with a pty (sandbox.pty.create) to send pty input or resize it",
            p.pid
        ),
    )
}

/// Writes `input` to the process: `pty` bytes to its terminal, `stdin`
/// bytes to its stdin (which is the terminal too when it has one).
async fn write_input(p: &Proc, input: Input) -> RpcResult<()> {
    let data = match (&input.pty, &input.stdin) {
        (Some(pty), _) => {
            if p.tty.is_none() {
                return Err(no_terminal(p));
            }
            b64_decode(pty)?
        }
        (None, Some(stdin)) => b64_decode(stdin)?,
        (None, None) => Vec::new(),
    };
    write_stdin(p, &data).await
}

/// Server-streaming methods: `Start` and `Connect`.
pub async fn stream(call: Call, method: &str, msg: &[u8]) -> Response {
    let r = match method {
        "Start" => start(&call, msg).await,
        _ => parse::<WithSelector>(msg).and_then(|req| find(&call, req.process.as_ref())),
    };
    let p = match r {
        Ok(p) => p,
        Err(e) => return stream_error(e),
    };
    let keepalive = call
        .headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    // Connect streams what is printed from now on; Start from the start.
    let from = if method == "Start" {
        0
    } else {
        p.log().since(0).last().map_or(0, |c| c.seq + 1)
    };
    let (tx, resp) = stream_response();
    tokio::spawn(follow(tx, p, from, keepalive));
    resp
}

async fn start(call: &Call, msg: &[u8]) -> RpcResult<Arc<Proc>> {
    let req: StartRequest = parse(msg)?;
    let tty_size = match &req.pty {
        Some(pty) => pty.checked_size()?,
        None => None,
    };
    let tty = req.pty.is_some();
    let cfg = req
        .process
        .ok_or_else(|| RpcError::invalid("process is missing; give process.cmd"))?;
    if cfg.cmd.is_empty() {
        return Err(RpcError::invalid("process.cmd must name a program"));
    }
    for (k, v) in &cfg.envs {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || v.contains('\0') {
            return Err(RpcError::invalid(format!(
                "envs: {k:?} is not a valid variable (letters, digits and '_', not starting with a digit)"
            )));
        }
    }
    let home = call.t.user.home(call.t.policy_root);
    let cwd = match cfg.cwd.as_deref() {
        // Root inside holds no capabilities, so it may not enter the
        // agent's private working directory: it starts at `/`.
        None | Some("") if call.t.user == User::Root && !call.t.policy_root => {
            Some("/".to_string())
        }
        None | Some("") => None,
        Some(c) if c.starts_with('/') => Some(c.to_string()),
        Some(c) => Some(format!("{home}/{c}")),
    };
    let mut cmd = vec![cfg.cmd.clone()];
    cmd.extend(cfg.args.iter().cloned());
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(RpcError::invalid("arguments must not contain NUL bytes"));
    }
    let spec = StartSpec {
        req: ExecRequest {
            cmd,
            env: cfg.envs.clone(),
            cwd: cwd.clone(),
            root: call.t.user.as_root(),
            tty,
            tty_size,
        },
        timeout: call.deadline,
        stdin: None,
        // A process started with stdin (or on a terminal, whose input is
        // the point) keeps it open for SendInput.
        background: tty || req.stdin.unwrap_or(false),
    };
    let p = process::start(&call.e2b.app, &call.t.live, spec).await?;
    call.t.bx.procs().insert(
        p.pid,
        ProcMeta {
            cmd: cfg.cmd,
            args: cfg.args,
            envs: cfg.envs,
            cwd,
            tag: req.tag,
        },
    );
    Ok(p)
}

fn event(ev: Value) -> Value {
    json!({ "event": ev })
}

/// Streams a process's events into `tx` until it ends or the client goes.
async fn follow(tx: StreamTx, p: Arc<Proc>, mut next_seq: u64, keepalive: Option<Duration>) {
    let mut rx = p.subscribe();
    if !tx.send(&event(json!({"start": {"pid": p.pid}}))).await {
        return;
    }
    let mut tick = keepalive.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    loop {
        let (chunks, exit) = {
            let log = p.log();
            (log.since(next_seq), log.exit.clone())
        };
        for c in &chunks {
            // A terminal's output (one stream) goes out as `pty`.
            let key = match c.stream {
                _ if p.tty.is_some() => "pty",
                StreamKind::Stdout => "stdout",
                StreamKind::Stderr => "stderr",
            };
            let data = json!({ "data": { key: b64_encode(&c.data) } });
            if !tx.send(&event(data)).await {
                return;
            }
            next_seq = c.seq + 1;
        }
        if !chunks.is_empty() {
            continue;
        }
        if let Some(e) = exit {
            if e.outcome == "timeout" {
                tx.end(Some(RpcError::new(
                    Code::DeadlineExceeded,
                    format!(
                        "process {} ran longer than the request's timeout and was killed",
                        p.pid
                    ),
                )))
                .await;
                return;
            }
            let (exit_code, exited, status) = match (e.exit_code, e.signal) {
                (Some(c), _) => (c, true, format!("exit status {c}")),
                (None, Some(s)) => (-1, false, format!("signal: {}", signal_name(s))),
                (None, None) => (-1, false, "unknown".to_string()),
            };
            let mut end = json!({"exitCode": exit_code, "exited": exited, "status": status});
            if let Some(err) = &e.error {
                end["error"] = json!(err);
            }
            if tx.send(&event(json!({ "end": end }))).await {
                tx.end(None).await;
            }
            return;
        }
        let ka = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = ka => {
                if !tx.send(&event(json!({"keepalive": {}}))).await {
                    return;
                }
            }
            _ = closed(&tx) => return,
        }
    }
}

/// Resolves when the client has gone away.
async fn closed(tx: &StreamTx) {
    while !tx.is_closed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn signal_name(s: i32) -> String {
    match s {
        libc::SIGKILL => "killed".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGHUP => "hangup".into(),
        libc::SIGPIPE => "broken pipe".into(),
        n => format!("signal {n}"),
    }
}

/// The process a selector names (a pid, or a tag given at start).
fn find(call: &Call, sel: Option<&Selector>) -> RpcResult<Arc<Proc>> {
    let sel = sel.ok_or_else(|| RpcError::invalid("process is missing; give process.pid"))?;
    let pid = match (&sel.pid, &sel.tag) {
        (Some(pid), _) => *pid as i32,
        (None, Some(tag)) => call
            .t
            .bx
            .procs()
            .iter()
            .find(|(_, m)| m.tag.as_deref() == Some(tag))
            .map(|(pid, _)| *pid)
            .ok_or_else(|| {
                RpcError::new(Code::NotFound, format!("no process has the tag {tag:?}"))
            })?,
        (None, None) => return Err(RpcError::invalid("process needs a pid or a tag")),
    };
    call.t.live.procs().get(pid).ok_or_else(|| {
        RpcError::new(
            Code::NotFound,
            format!("process with pid {pid} was not found (it was not started through this API, or it ended long ago)"),
        )
    })
}

async fn write_stdin(p: &Proc, data: &[u8]) -> RpcResult<()> {
    let closed = || {
        RpcError::new(
            Code::FailedPrecondition,
            format!(
                "the stdin of process {} is closed (it ended, was started without stdin=True, or stdin was closed)",
                p.pid
            ),
        )
    };
    let mut guard = p.stdin.lock().await;
    let w = guard.as_mut().ok_or_else(closed)?;
    if data.is_empty() {
        return Ok(());
    }
    let wrote = tokio::select! {
        r = tokio::io::AsyncWriteExt::write_all(w, data) => r.is_ok(),
        _ = p.wait() => false,
    };
    if !wrote {
        *guard = None;
        return Err(closed());
    }
    Ok(())
}

async fn list(call: &Call) -> RpcResult<Value> {
    let h = call.t.live.handle.clone();
    let st = tokio::task::spawn_blocking(move || h.status())
        .await
        .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
        .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
    let metas = call.t.bx.procs().clone();
    let list: Vec<Value> = st
        .processes
        .iter()
        .filter(|p| p.running)
        .map(|info| {
            let (config, tag) = match metas.get(&info.pid) {
                Some(m) => (
                    json!({"cmd": m.cmd, "args": m.args, "envs": m.envs, "cwd": m.cwd}),
                    m.tag.clone(),
                ),
                None => (
                    json!({
                        "cmd": info.cmd.first().cloned().unwrap_or_default(),
                        "args": info.cmd.iter().skip(1).collect::<Vec<_>>(),
                        "envs": {},
                    }),
                    None,
                ),
            };
            let mut v = json!({"config": config, "pid": info.pid});
            if let Some(t) = tag {
                v["tag"] = json!(t);
            }
            v
        })
        .collect();
    Ok(json!({ "processes": list }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputMsg {
    start: Option<WithSelector>,
    data: Option<DataMsg>,
    keepalive: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DataMsg {
    input: Option<Input>,
}

/// `StreamInput`: a client stream of a start (naming the process), then
/// data and keepalives.
pub async fn stream_input(call: Call, body: Body) -> Response {
    let mut env = Envelopes::new(body);
    let r = async {
        let mut target: Option<Arc<Proc>> = None;
        while let Some(msg) = env.next().await? {
            let m: StreamInputMsg = parse(&msg)?;
            if let Some(s) = m.start {
                target = Some(find(&call, s.process.as_ref())?);
            } else if let Some(d) = m.data {
                let p = target.as_ref().ok_or_else(|| {
                    RpcError::invalid(
                        "the first message of StreamInput must be a start naming the process",
                    )
                })?;
                write_input(p, d.input.unwrap_or_default()).await?;
            } else {
                let _ = m.keepalive;
            }
        }
        Ok(json!({}))
    }
    .await;
    if r.is_err() {
        // Read what is left, so that the connection stays usable.
        while let Ok(Some(_)) = env.next().await {}
    }
    client_stream_answer(r)
}
