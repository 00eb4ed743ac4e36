//! Audit events and the running summary of one sandbox's network use.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::event::{Protocol, Reason, Verdict};

/// One decision about one connection, query or datagram. Allowed TCP
/// connections are reported when they end, with their byte counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetEvent {
    /// Unix time of the decision, in seconds.
    pub time: f64,
    pub sandbox: String,
    /// The name the sandbox asked for or connected by, when known.
    pub name: Option<String>,
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    /// Written as `"tcp"`, `"udp"`, `"dns"` or `"icmp"`.
    pub protocol: Protocol,
    /// Written as `"allow"` or `"deny"`.
    pub verdict: Verdict,
    /// Why, written as a short string such as `"not-allowlisted"` (see
    /// [`Reason`]).
    pub reason: Reason,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_seconds: f64,
}

impl NetEvent {
    pub(crate) fn new(protocol: Protocol, verdict: Verdict, reason: Reason) -> Self {
        NetEvent {
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            sandbox: String::new(),
            name: None,
            address: None,
            port: None,
            protocol,
            verdict,
            reason,
            bytes_up: 0,
            bytes_down: 0,
            duration_seconds: 0.0,
        }
    }
}

/// Totals for one sandbox. An allowed connection is counted when it ends
/// (its event carries its byte counts); bytes are counted as they move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSummary {
    pub connections_allowed: u64,
    pub connections_denied: u64,
    /// Bytes from the sandbox to the outside.
    pub bytes_up: u64,
    /// Bytes from the outside to the sandbox.
    pub bytes_down: u64,
    /// Names refused by DNS or by SNI/Host, each once, sorted.
    pub denied_names: Vec<String>,
    pub rate_limit_hits: u64,
}

/// Most distinct denied names kept; a sandbox probing random names must
/// not grow the supervisor's memory.
const MAX_DENIED_NAMES: usize = 1024;

type Sink = dyn Fn(NetEvent) + Send + Sync;

/// Where decisions go: the caller's callback and the summary.
#[derive(Clone)]
pub(crate) struct Audit {
    sandbox: String,
    sink: Arc<Sink>,
    totals: Arc<Mutex<Totals>>,
}

#[derive(Default)]
pub(crate) struct Totals {
    summary: NetSummary,
    names: BTreeSet<String>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

impl Audit {
    pub fn new(sandbox: String, sink: Arc<Sink>) -> Self {
        Audit {
            sandbox,
            sink,
            totals: Arc::default(),
        }
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records and reports one decision. TCP events count as connections.
    pub fn emit(&self, mut event: NetEvent) {
        event.sandbox.clone_from(&self.sandbox);
        {
            let mut t = self.totals();
            if event.protocol == Protocol::Tcp {
                match event.verdict {
                    Verdict::Allow => t.summary.connections_allowed += 1,
                    Verdict::Deny => t.summary.connections_denied += 1,
                }
            }
            if event.reason == Reason::RateLimit {
                t.summary.rate_limit_hits += 1;
            }
            if let (true, Some(name)) = (event.reason.names_a_denied_host(), &event.name) {
                if t.names.len() < MAX_DENIED_NAMES {
                    t.names.insert(name.clone());
                }
            }
        }
        (self.sink)(event);
    }

    /// Bytes moved, counted as they move so a summary mid-run is current.
    pub fn add_bytes(&self, up: u64, down: u64) {
        let mut t = self.totals();
        t.summary.bytes_up += up;
        t.summary.bytes_down += down;
    }

    pub fn summary(&self) -> NetSummary {
        let t = self.totals();
        let mut s = t.summary.clone();
        s.denied_names = t.names.iter().cloned().collect();
        s
    }
}
