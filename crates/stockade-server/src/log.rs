//! What the daemon says on stderr: where it listens, one line per request
//! (method, path, status, duration) and one per event (created, exec
//! started and exited, violations, expired, destroyed, task phases). As
//! text for people or as one JSON object per line for machines.

use std::io::Write;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{json, Value};

use crate::events::EventRecord;

/// How the daemon's log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Nothing is written (the default of the library; `stockade serve`
    /// logs text unless told otherwise).
    #[default]
    Off,
    /// `2026-01-02T03:04:05.678Z POST /v1/sandboxes 201 12.3ms`.
    Text,
    /// `{"time": "...", "type": "request", "method": "POST", ...}`.
    Json,
}

/// Writes log lines in one format.
#[derive(Debug, Clone, Copy)]
pub struct Log(pub LogFormat);

impl Log {
    fn write(&self, text: impl FnOnce() -> String, json: impl FnOnce() -> Value) {
        let line = match self.0 {
            LogFormat::Off => return,
            LogFormat::Text => format!("{} {}\n", rfc3339(crate::events::now()), text()),
            LogFormat::Json => {
                let mut v = json();
                if let Some(o) = v.as_object_mut() {
                    o.insert("time".into(), Value::from(rfc3339(crate::events::now())));
                }
                format!("{v}\n")
            }
        };
        // A log that cannot be written (stderr closed) must not stop the
        // daemon.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    /// The daemon listens on `addr` (`unix` socket path or `tcp` address).
    pub fn listening(&self, transport: &str, addr: &str, note: &str) {
        self.write(
            || {
                let note = if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                };
                format!("listening on {transport} {addr}{note}")
            },
            || json!({"type": "listening", "transport": transport, "address": addr}),
        );
    }

    /// The daemon stops (its sandboxes keep running).
    pub fn stopping(&self) {
        self.write(
            || "stopping; sandboxes keep running and the next daemon reattaches them".into(),
            || json!({"type": "stopping"}),
        );
    }

    /// One request answered.
    pub fn request(&self, method: &str, path: &str, status: u16, millis: f64) {
        self.write(
            || format!("{method} {path} {status} {millis:.1}ms"),
            || {
                json!({"type": "request", "method": method, "path": path, "status": status,
                       "duration_ms": (millis * 10.0).round() / 10.0})
            },
        );
    }

    /// One event published to clients.
    pub fn event(&self, rec: &EventRecord) {
        self.write(
            || event_text(rec),
            || json!({"type": "event", "event": rec.json}),
        );
    }
}

/// `sandbox ID KIND key=value ...`: the event's plain fields, and the
/// outcome of a final report.
fn event_text(rec: &EventRecord) -> String {
    let mut s = format!("sandbox {} {}", rec.sandbox_id, rec.kind);
    if let Some(obj) = rec.json.as_object() {
        for (k, v) in obj {
            // Repeats, and unix times (the line has its own).
            if matches!(k.as_str(), "type" | "sandbox_id" | "time" | "id") || k.ends_with("_at") {
                continue;
            }
            let shown = match v {
                Value::String(t) if t.is_empty() || t.contains(char::is_whitespace) => {
                    format!("{t:?}")
                }
                Value::String(t) => t.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                Value::Array(a) if k == "cmd" => format!(
                    "{:?}",
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Value::Object(o) if o.contains_key("outcome") => {
                    format!("outcome={}", o["outcome"].as_str().unwrap_or("?"))
                }
                _ => continue,
            };
            if matches!(v, Value::Object(_)) {
                s.push_str(&format!(" {shown}"));
            } else {
                s.push_str(&format!(" {k}={shown}"));
            }
        }
    }
    s
}

/// Logs each request once its answer (or the head of a stream) is ready.
pub async fn requests(State(log): State<Log>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let t = Instant::now();
    let resp = next.run(req).await;
    log.request(
        &method,
        &path,
        resp.status().as_u16(),
        t.elapsed().as_secs_f64() * 1000.0,
    );
    resp
}

/// `2026-01-02T03:04:05.678Z` for unix time `t` (UTC; no time zone
/// database needed).
fn rfc3339(t: f64) -> String {
    let ms = (t * 1000.0).round() as i64;
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(rfc3339(1_767_323_045.678), "2026-01-02T03:04:05.678Z");
    }

    #[test]
    fn event_lines_show_plain_fields_and_the_outcome() {
        let rec = EventRecord {
            sandbox_id: "abc".into(),
            kind: "violation".into(),
            json: json!({"type": "violation", "sandbox_id": "abc", "time": 1.0,
                         "kind": "memory-limit", "limit": "64 MiB", "detail": "killed"}),
        };
        assert_eq!(
            event_text(&rec),
            "sandbox abc violation detail=killed kind=memory-limit limit=\"64 MiB\""
        );
        let rec = EventRecord {
            sandbox_id: "abc".into(),
            kind: "destroyed".into(),
            json: json!({"type": "destroyed", "id": "abc", "outcome": "exited",
                         "started_at": 1.5, "usage": {"cpu_seconds": 1}}),
        };
        assert_eq!(event_text(&rec), "sandbox abc destroyed outcome=exited");
    }
}
