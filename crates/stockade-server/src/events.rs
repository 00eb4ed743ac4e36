//! Event fan-out: every event (from a sandbox's backend or from the daemon
//! itself) goes to a tokio broadcast channel read by the SSE endpoints, to
//! the metrics, and to the webhook queue.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::log::Log;
use crate::metrics::Metrics;

/// Events kept for subscribers that fall behind; a slower one gets a
/// `lagged` event saying how many it missed.
const BROADCAST_CAPACITY: usize = 4096;

/// One published event: `json` is the object sent to clients.
#[derive(Debug)]
pub struct EventRecord {
    pub sandbox_id: String,
    pub kind: String,
    pub json: Value,
}

/// The fan-out point.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<EventRecord>>,
    webhook: Option<mpsc::Sender<Arc<EventRecord>>>,
    metrics: Arc<Metrics>,
    log: Log,
}

/// Current unix time in seconds, millisecond precision.
pub fn now() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

impl Hub {
    pub fn new(
        metrics: Arc<Metrics>,
        webhook: Option<mpsc::Sender<Arc<EventRecord>>>,
        log: Log,
    ) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Hub {
            tx,
            webhook,
            metrics,
            log,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.tx.subscribe()
    }

    /// Publishes `fields` (an object whose `type` names the event, or any
    /// value, which is then put under `data`) for `sandbox_id`, adding
    /// `sandbox_id` and `time`.
    pub fn publish(&self, sandbox_id: &str, kind: Option<&str>, fields: Value) {
        let mut obj = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => Map::from_iter([("data".to_string(), other)]),
        };
        let kind = match kind {
            Some(k) => k.to_string(),
            None => obj
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        };
        obj.insert("type".into(), Value::from(kind.clone()));
        obj.insert("sandbox_id".into(), Value::from(sandbox_id));
        obj.insert("time".into(), Value::from(now()));
        let json = Value::Object(obj);
        self.metrics.observe_event(&kind, &json);
        let rec = Arc::new(EventRecord {
            sandbox_id: sandbox_id.to_string(),
            kind,
            json,
        });
        self.log.event(&rec);
        if let Some(w) = &self.webhook {
            if w.try_send(rec.clone()).is_err() {
                self.metrics.webhook_dropped();
            }
        }
        // No subscribers is not an error.
        let _ = self.tx.send(rec);
    }
}

/// An SSE response carrying every event (or only `sandbox_id`'s) from now
/// on, ending when the daemon shuts down.
pub fn sse(
    hub: &Hub,
    sandbox_id: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = hub.subscribe();
    let events = stream::unfold(rx, move |mut rx| {
        let filter = sandbox_id.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(rec) => {
                        if filter.as_deref().is_some_and(|f| f != rec.sandbox_id) {
                            continue;
                        }
                        let ev = Event::default().event(&rec.kind).data(rec.json.to_string());
                        return Some((Ok(ev), rx));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let data = serde_json::json!({"type": "lagged", "missed": n});
                        let ev = Event::default().event("lagged").data(data.to_string());
                        return Some((Ok(ev), rx));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(until_shutdown(events, shutdown)).keep_alive(KeepAlive::default())
}

/// Ends `s` when the daemon starts shutting down, so that graceful
/// shutdown does not wait forever on open streams.
pub fn until_shutdown<S: Stream>(
    s: S,
    mut shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = S::Item> {
    let stop = async move {
        let _ = shutdown.wait_for(|v| *v).await;
    };
    s.take_until(Box::pin(stop))
}
