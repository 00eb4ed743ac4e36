//! A small blocking client of the stockade daemon's API, for the CLI
//! (`stockade create|exec|ps|rm|events|cp`) and tests: HTTP/1.1 over the
//! daemon's unix socket (or TCP with a token), one connection per request,
//! no async runtime.
//!
//! The types here ([`Sandbox`], [`ExecOptions`], [`ExecResult`]) are the
//! API's JSON as a client sees it; the daemon (stockade-server) parses and
//! validates requests with its own types, and its tests use this client,
//! so the two are checked against each other. This crate depends on no
//! server or async code: only serde, thiserror and the policy types.

mod sse;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stockade_policy::Policy;

pub use sse::{SseEvent, SseStream};
pub use wire::{Endpoint, Response};

/// Largest JSON answer the client reads (exec answers carry up to 2 MiB
/// of output).
const MAX_JSON_ANSWER: u64 = 64 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the stockade daemon at {endpoint} (is `stockade serve` running, and may you use its socket?)")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection to the stockade daemon failed")]
    Io(#[from] std::io::Error),
    #[error("the stockade daemon sent an answer this client cannot read: {0}")]
    Protocol(String),
    /// The daemon refused the request; `message` says why and what to do.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
}

/// A sandbox as the API describes it. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub name: Option<String>,
    /// `running`, `destroyed`, `dead` or `expired`.
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub policy: Value,
    pub created_at: f64,
    #[serde(default)]
    pub expires_at: Option<f64>,
    #[serde(default)]
    pub ended_at: Option<f64>,
    /// The final report, once the sandbox has ended.
    #[serde(default)]
    pub report: Option<Value>,
    /// Live usage, violations and processes (`GET` of a running sandbox).
    #[serde(default)]
    pub usage: Option<Value>,
    #[serde(default)]
    pub violations: Option<Value>,
    #[serde(default)]
    pub processes: Option<Value>,
    /// What a running sandbox holds now: `memory_bytes`, `pids`.
    #[serde(default)]
    pub current: Option<Value>,
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecOptions {
    pub cmd: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// A duration such as `"10s"`; the process is killed after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Text given on stdin (then closed, unless `background`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    pub background: bool,
    /// How `stdin` and the output travel; `None` is the daemon's default,
    /// text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Run it on a terminal of its own (see [`Client::resize`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The terminal's size from the start, with `tty`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<TtySize>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// How the bytes of stdin and output travel in JSON: UTF-8 text (invalid
/// output bytes become U+FFFD) or base64 (any bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Text,
    Base64,
}

impl Encoding {
    fn as_str(self) -> &'static str {
        match self {
            Encoding::Text => "text",
            Encoding::Base64 => "base64",
        }
    }
}

/// The answer of a foreground exec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecResult {
    pub pid: i32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `exited`, `signaled`, `timeout` or `error`.
    pub outcome: String,
    #[serde(default)]
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    #[serde(default)]
    pub duration_seconds: f64,
}

/// A line of `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// `docker.io/library/python`.
    pub repository: String,
    /// `3.11`, or `<none>` for an image known by digest only.
    pub tag: String,
    /// `sha256:<hex>` of the image's manifest.
    pub digest: String,
    /// Unpacked size of its layers, bytes.
    pub size: u64,
    /// `created` of its configuration (RFC 3339), if it says.
    #[serde(default)]
    pub created: Option<String>,
}

/// What a finished pull answers (`done`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PulledImage {
    pub digest: String,
    #[serde(default)]
    pub names: Vec<String>,
    pub size: u64,
}

/// What `DELETE /v1/images/{ref}` and `POST /v1/images/prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RemovedImages {
    /// Names taken off images.
    #[serde(default)]
    pub untagged: Vec<String>,
    /// Images (manifest digests) deleted.
    #[serde(default)]
    pub images: Vec<String>,
    /// Unpacked layers (uncompressed digests) deleted.
    #[serde(default)]
    pub layers: Vec<String>,
    #[serde(default)]
    pub blobs: Vec<String>,
    /// Bytes freed.
    #[serde(default)]
    pub bytes: u64,
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Option<Duration>,
}

impl Client {
    /// A client of the daemon on the unix socket `socket`.
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        Client {
            endpoint: Endpoint::Unix(socket.into()),
            timeout: None,
        }
    }

    /// A client of a TCP listener (`host:port`) with its bearer token.
    pub fn tcp(addr: impl Into<String>, token: impl Into<String>) -> Self {
        Client {
            endpoint: Endpoint::Tcp {
                addr: addr.into(),
                token: token.into(),
            },
            timeout: None,
        }
    }

    /// Gives up on a read that waits longer than `t` (none by default:
    /// execs and event streams may be long).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Sends a request and returns the raw answer, whatever its status.
    pub fn raw(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        wire::send(&self.endpoint, self.timeout, method, target, headers, body)
    }

    /// Sends a request; turns an error status into `ClientError::Api`.
    fn call(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        let resp = self.raw(method, target, headers, body)?;
        self.check(resp)
    }

    /// An error status as `ClientError::Api`, else the answer.
    fn check(&self, resp: Response) -> Result<Response, ClientError> {
        if resp.status >= 400 {
            let status = resp.status;
            let bytes = resp.bytes(1024 * 1024).unwrap_or_default();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = v["error"]["code"].as_str().unwrap_or("unknown").to_string();
            let message = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "the daemon answered HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes).trim()
                    )
                });
            return Err(ClientError::Api {
                status,
                code,
                message,
            });
        }
        Ok(resp)
    }

    fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let text = body.map(|b| b.to_string());
        let body = text.as_deref().map(|t| ("application/json", t.as_bytes()));
        let bytes = self
            .call(method, target, &[], body)?
            .bytes(MAX_JSON_ANSWER)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("{e}")))
    }

    /// `POST /v1/sandboxes`. `ttl` is a duration such as `"30m"`.
    pub fn create(
        &self,
        policy: Option<&Policy>,
        name: Option<&str>,
        labels: &BTreeMap<String, String>,
        ttl: Option<&str>,
    ) -> Result<Sandbox, ClientError> {
        let mut body = json!({ "labels": labels });
        if let Some(p) = policy {
            body["policy"] =
                serde_json::to_value(p).map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        if let Some(t) = ttl {
            body["ttl"] = json!(t);
        }
        self.call_json("POST", "/v1/sandboxes", Some(&body))
    }

    /// `GET /v1/sandboxes`, filtered by labels (`k`, `v`) and state.
    pub fn list(
        &self,
        labels: &[(&str, &str)],
        state: Option<&str>,
    ) -> Result<Vec<Sandbox>, ClientError> {
        let mut q: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("label={}", wire::encode(&format!("{k}={v}"))))
            .collect();
        if let Some(s) = state {
            q.push(format!("state={}", wire::encode(s)));
        }
        let target = if q.is_empty() {
            "/v1/sandboxes".to_string()
        } else {
            format!("/v1/sandboxes?{}", q.join("&"))
        };
        #[derive(Deserialize)]
        struct List {
            sandboxes: Vec<Sandbox>,
        }
        Ok(self.call_json::<List>("GET", &target, None)?.sandboxes)
    }

    /// `GET /v1/sandboxes/{id}` (id or name).
    pub fn get(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call_json("GET", &format!("/v1/sandboxes/{}", wire::encode(id)), None)
    }

    /// `DELETE /v1/sandboxes/{id}`: destroys it; the answer has the report.
    pub fn destroy(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call_json(
            "DELETE",
            &format!("/v1/sandboxes/{}", wire::encode(id)),
            None,
        )
    }

    fn exec_body(opts: &ExecOptions) -> Result<String, ClientError> {
        serde_json::to_string(opts).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Runs a command and waits for it (output capped at 1 MiB a stream).
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<ExecResult, ClientError> {
        let v: Value = serde_json::from_str(&Self::exec_body(opts)?).unwrap_or_default();
        self.call_json(
            "POST",
            &format!("/v1/sandboxes/{}/exec", wire::encode(id)),
            Some(&v),
        )
    }

    /// Runs a command and streams its events: `start {pid}`, `stdout
    /// {data}`, `stderr {data}`, `exit {exit_code, signal, outcome}`.
    pub fn exec_stream(&self, id: &str, opts: &ExecOptions) -> Result<SseStream, ClientError> {
        let body = Self::exec_body(opts)?;
        let resp = self.call(
            "POST",
            &format!("/v1/sandboxes/{}/exec", wire::encode(id)),
            &[("Accept", "text/event-stream")],
            Some(("application/json", body.as_bytes())),
        )?;
        Ok(SseStream::new(resp))
    }

    /// Starts a command in the background; returns its pid.
    pub fn exec_background(&self, id: &str, opts: &ExecOptions) -> Result<i32, ClientError> {
        let mut o = opts.clone();
        o.background = true;
        let v: Value = serde_json::from_str(&Self::exec_body(&o)?).unwrap_or_default();
        let r: Value = self.call_json(
            "POST",
            &format!("/v1/sandboxes/{}/exec", wire::encode(id)),
            Some(&v),
        )?;
        r["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| ClientError::Protocol("no pid in the answer".into()))
    }

    /// `GET .../processes`: the sandbox's processes.
    pub fn processes(&self, id: &str) -> Result<Vec<Value>, ClientError> {
        let v: Value = self.call_json(
            "GET",
            &format!("/v1/sandboxes/{}/processes", wire::encode(id)),
            None,
        )?;
        Ok(v["processes"].as_array().cloned().unwrap_or_default())
    }

    /// `GET .../top`: every process running in the sandbox (pids inside
    /// and on the host, user, CPU, memory, command), as the daemon reads
    /// them from the host's `/proc`.
    pub fn top(&self, id: &str) -> Result<Vec<Value>, ClientError> {
        let v: Value = self.call_json(
            "GET",
            &format!("/v1/sandboxes/{}/top", wire::encode(id)),
            None,
        )?;
        Ok(v["processes"].as_array().cloned().unwrap_or_default())
    }

    /// Sends bytes to a background process's stdin; `eof` closes it.
    pub fn send_stdin(
        &self,
        id: &str,
        pid: i32,
        data: &[u8],
        eof: bool,
    ) -> Result<(), ClientError> {
        let target = format!(
            "/v1/sandboxes/{}/processes/{pid}/stdin{}",
            wire::encode(id),
            if eof { "?eof=true" } else { "" }
        );
        self.send_bytes("POST", &target, data)
    }

    /// Sends a signal (number, or name such as `"TERM"`) to a process.
    pub fn signal(&self, id: &str, pid: i32, signal: &str) -> Result<(), ClientError> {
        let sig = match signal.parse::<i64>() {
            Ok(n) => json!(n),
            Err(_) => json!(signal),
        };
        let _: Value = self.call_json(
            "POST",
            &format!("/v1/sandboxes/{}/processes/{pid}/signal", wire::encode(id)),
            Some(&json!({ "signal": sig })),
        )?;
        Ok(())
    }

    /// A background process's output: what it printed so far, then live,
    /// then `exit`.
    pub fn output(&self, id: &str, pid: i32) -> Result<SseStream, ClientError> {
        self.output_as(id, pid, Encoding::Text, true)
    }

    /// [`Client::output`] with the chunks' `data` in `encoding`; without
    /// `follow` the stream ends with the output kept so far (with `exit`
    /// only if the process has ended).
    pub fn output_as(
        &self,
        id: &str,
        pid: i32,
        encoding: Encoding,
        follow: bool,
    ) -> Result<SseStream, ClientError> {
        let resp = self.call(
            "GET",
            &format!(
                "/v1/sandboxes/{}/processes/{pid}/output?encoding={}&follow={follow}",
                wire::encode(id),
                encoding.as_str()
            ),
            &[],
            None,
        )?;
        Ok(SseStream::new(resp))
    }

    /// Events of one sandbox, or of all with `None`, from now on.
    pub fn events(&self, id: Option<&str>) -> Result<SseStream, ClientError> {
        let target = match id {
            Some(id) => format!("/v1/sandboxes/{}/events", wire::encode(id)),
            None => "/v1/events".to_string(),
        };
        Ok(SseStream::new(self.call("GET", &target, &[], None)?))
    }

    /// Reads a file of the sandbox (a path as the sandbox sees it).
    pub fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.read_file_to(id, path, &mut out)?;
        Ok(out)
    }

    /// Streams a file of the sandbox into `w`; returns the bytes copied.
    pub fn read_file_to(
        &self,
        id: &str,
        path: &str,
        w: &mut impl std::io::Write,
    ) -> Result<u64, ClientError> {
        let target = format!(
            "/v1/sandboxes/{}/files?path={}",
            wire::encode(id),
            wire::encode(path)
        );
        let mut resp = self.call("GET", &target, &[], None)?;
        Ok(std::io::copy(&mut resp, w)?)
    }

    /// Writes a file in the sandbox, creating missing parent directories.
    pub fn write_file(&self, id: &str, path: &str, data: &[u8]) -> Result<(), ClientError> {
        let target = format!(
            "/v1/sandboxes/{}/files?path={}",
            wire::encode(id),
            wire::encode(path)
        );
        self.send_bytes("PUT", &target, data)
    }

    /// Sends `data` as the body of `method target` and reads the (small)
    /// answer, for requests whose answer is only a status.
    fn send_bytes(&self, method: &str, target: &str, data: &[u8]) -> Result<(), ClientError> {
        self.call(
            method,
            target,
            &[],
            Some(("application/octet-stream", data)),
        )?
        .bytes(1024 * 1024)?;
        Ok(())
    }

    /// Writes a file in the sandbox from `data` (`len` bytes), streaming
    /// it: memory stays constant whatever the size.
    pub fn write_file_from(
        &self,
        id: &str,
        path: &str,
        data: &mut dyn std::io::Read,
        len: u64,
    ) -> Result<(), ClientError> {
        self.write_file_with_mode(id, path, data, len, None)
    }

    /// [`Client::write_file_from`], a new file getting permission bits
    /// `mode` (0644 by default).
    pub fn write_file_with_mode(
        &self,
        id: &str,
        path: &str,
        data: &mut dyn std::io::Read,
        len: u64,
        mode: Option<u32>,
    ) -> Result<(), ClientError> {
        let mut target = format!(
            "/v1/sandboxes/{}/files?path={}",
            wire::encode(id),
            wire::encode(path)
        );
        if let Some(m) = mode {
            target.push_str(&format!("&mode={:04o}", m & 0o777));
        }
        let resp = wire::send_from(
            &self.endpoint,
            self.timeout,
            "PUT",
            &target,
            &[],
            Some(("application/octet-stream", data, len)),
        )?;
        self.check(resp)?.bytes(1024 * 1024)?;
        Ok(())
    }

    /// Lists a directory of the sandbox.
    pub fn list_dir(&self, id: &str, path: &str) -> Result<Vec<Value>, ClientError> {
        let target = format!(
            "/v1/sandboxes/{}/files?path={}&list=true",
            wire::encode(id),
            wire::encode(path)
        );
        let v: Value = self.call_json("GET", &target, None)?;
        Ok(v["entries"].as_array().cloned().unwrap_or_default())
    }

    /// What is at `path` in the sandbox (a symlink is described, not
    /// followed): `{name, type, size, mode, uid, gid, mtime, target?}`.
    pub fn stat(&self, id: &str, path: &str) -> Result<Value, ClientError> {
        let target = format!(
            "/v1/sandboxes/{}/files?path={}&stat=true",
            wire::encode(id),
            wire::encode(path)
        );
        let v: Value = self.call_json("GET", &target, None)?;
        Ok(v["entry"].clone())
    }

    /// Creates a directory of the sandbox and its missing parents;
    /// `Ok(false)` when it existed.
    pub fn make_dir(&self, id: &str, path: &str) -> Result<bool, ClientError> {
        let target = format!(
            "/v1/sandboxes/{}/files?path={}&dir=true",
            wire::encode(id),
            wire::encode(path)
        );
        let resp = self.call("PUT", &target, &[], Some(("application/octet-stream", b"")))?;
        let v: Value = serde_json::from_slice(&resp.bytes(1024 * 1024)?)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(v["created"].as_bool().unwrap_or(false))
    }

    /// Deletes a file, a symlink or an empty directory of the sandbox.
    pub fn remove_file(&self, id: &str, path: &str) -> Result<(), ClientError> {
        let target = format!(
            "/v1/sandboxes/{}/files?path={}",
            wire::encode(id),
            wire::encode(path)
        );
        let _: Value = self.call_json("DELETE", &target, None)?;
        Ok(())
    }

    /// `POST /v1/images/pull`: pulls `reference` into the daemon's store
    /// with the daemon's registry settings, handing each progress event
    /// (`resolved`, `progress`, `unpacking`, `layer-done`) to `on_event`.
    pub fn pull_image(
        &self,
        reference: &str,
        on_event: &mut dyn FnMut(&SseEvent),
    ) -> Result<PulledImage, ClientError> {
        self.pull_image_with_creds(reference, None, on_event)
    }

    /// [`pull_image`](Self::pull_image) with registry credentials
    /// (`username`, `password`) instead of the daemon's own.
    pub fn pull_image_with_creds(
        &self,
        reference: &str,
        creds: Option<(&str, &str)>,
        on_event: &mut dyn FnMut(&SseEvent),
    ) -> Result<PulledImage, ClientError> {
        let mut body = json!({ "image": reference });
        if let Some((u, p)) = creds {
            body["creds"] = json!({ "username": u, "password": p });
        }
        let text = body.to_string();
        let resp = self.call(
            "POST",
            "/v1/images/pull",
            &[("Accept", "text/event-stream")],
            Some(("application/json", text.as_bytes())),
        )?;
        for ev in SseStream::new(resp) {
            let ev = ev?;
            match ev.event.as_str() {
                "done" => {
                    return serde_json::from_str(&ev.data)
                        .map_err(|e| ClientError::Protocol(format!("{e}")))
                }
                "error" => {
                    let v = ev.json();
                    return Err(ClientError::Api {
                        status: v["status"].as_u64().unwrap_or(500) as u16,
                        code: v["code"].as_str().unwrap_or("unknown").to_string(),
                        message: v["error"]
                            .as_str()
                            .unwrap_or("the pull failed, and the daemon did not say why")
                            .to_string(),
                    });
                }
                _ => on_event(&ev),
            }
        }
        Err(ClientError::Protocol(
            "the pull's event stream ended before `done` or `error`".into(),
        ))
    }

    /// `GET /v1/images`.
    pub fn images(&self) -> Result<Vec<ImageSummary>, ClientError> {
        #[derive(Deserialize)]
        struct List {
            images: Vec<ImageSummary>,
        }
        Ok(self.call_json::<List>("GET", "/v1/images", None)?.images)
    }

    /// `GET /v1/images/{ref}`: digest, names, size, created, layers and
    /// the configuration blob (`config`).
    pub fn inspect_image(&self, reference: &str) -> Result<Value, ClientError> {
        self.call_json(
            "GET",
            &format!("/v1/images/{}", wire::encode(reference)),
            None,
        )
    }

    /// `DELETE /v1/images/{ref}`: removes a name (or, by digest, the image);
    /// `force` removes the name even while a sandbox uses the image.
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<RemovedImages, ClientError> {
        self.call_json(
            "DELETE",
            &format!("/v1/images/{}?force={force}", wire::encode(reference)),
            None,
        )
    }

    /// `POST /v1/images/prune`.
    pub fn prune_images(&self) -> Result<RemovedImages, ClientError> {
        self.call_json("POST", "/v1/images/prune", None)
    }

    /// Sets the terminal size of process `pid` (started with `tty`).
    pub fn resize(&self, id: &str, pid: i32, rows: u16, cols: u16) -> Result<(), ClientError> {
        let _: Value = self.call_json(
            "POST",
            &format!("/v1/sandboxes/{}/processes/{pid}/resize", wire::encode(id)),
            Some(&serde_json::json!({ "rows": rows, "cols": cols })),
        )?;
        Ok(())
    }

    /// `GET /v1/tasks`: the daemon's tasks.
    pub fn tasks(&self) -> Result<Vec<Value>, ClientError> {
        let v: Value = self.call_json("GET", "/v1/tasks", None)?;
        Ok(v["tasks"].as_array().cloned().unwrap_or_default())
    }

    /// `GET /v1/tasks/{id}`: one task, its report once done.
    pub fn task(&self, id: &str) -> Result<Value, ClientError> {
        self.call_json("GET", &format!("/v1/tasks/{}", wire::encode(id)), None)
    }

    /// `GET /v1/sandboxes/{id}` as the daemon answers it, every field kept.
    pub fn get_raw(&self, id: &str) -> Result<Value, ClientError> {
        self.call_json("GET", &format!("/v1/sandboxes/{}", wire::encode(id)), None)
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Result<Value, ClientError> {
        self.call_json("GET", "/healthz", None)
    }
}
