//! A sandbox's egress stack, seen from its supervisor's event loop.
//!
//! With network egress (`allowlist`/`open`) init hands over the sandbox's
//! TUN device before it is ready, and the supervisor serves it with
//! `stockade_net::Egress` on a thread of its own, started only after the
//! clone (which needs a single-threaded process). Its decisions come back
//! over a channel drained by the event loop ([`NetWatch`]).

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use stockade_net::{Egress, EgressConfig, NetEvent, Protocol, Reason, Verdict};
use stockade_policy::{NetMode, NetworkPolicy};

use crate::report::{NetworkUsage, Violation, ViolationKind};

/// Distinct denials kept as violations; the rest only count in the totals
/// (and appear in `--net-log`).
const MAX_NET_VIOLATIONS: usize = 100;
/// Denials printed on stderr; after these, one line says more were hidden.
const MAX_NET_PRINTED: usize = 20;
/// Events queued between the egress thread and the poll loop; beyond it
/// events are dropped from the violations list (never from the totals or
/// the log, which the egress thread keeps itself).
const NET_QUEUE: usize = 4096;

/// Called with each new network violation and its one-line description.
pub type NetSink<'a> = dyn FnMut(&Violation, &str) + 'a;

/// A sandbox's egress stack, seen from the event loop of its
/// [`crate::sandbox::Sandbox`]: starts it when init hands over the TUN,
/// turns its denials into violations, and stops it at the end.
pub struct NetWatch {
    policy: NetworkPolicy,
    sandbox_id: String,
    /// Unix time the sandbox started; violations are timed from it.
    started_at: f64,
    log: Option<Arc<Mutex<std::fs::File>>>,
    egress: Option<Egress>,
    /// A second descriptor of the TUN device: the last close unregisters
    /// the device, which takes the kernel milliseconds (RCU grace periods),
    /// so the supervisor decides when that happens ([`NetWatch::take_device`]).
    device: Option<OwnedFd>,
    events: Option<mpsc::Receiver<NetEvent>>,
    seen: HashSet<String>,
    printed: usize,
    rate_limit: Option<usize>,
    /// Network violations so far, in order.
    pub violations: Vec<Violation>,
}

impl std::fmt::Debug for NetWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetWatch")
            .field("sandbox_id", &self.sandbox_id)
            .field("running", &self.egress.is_some())
            .finish_non_exhaustive()
    }
}

impl NetWatch {
    pub fn new(
        policy: &NetworkPolicy,
        sandbox_id: &str,
        started_at: f64,
        log: Option<std::fs::File>,
    ) -> NetWatch {
        NetWatch {
            policy: policy.clone(),
            sandbox_id: sandbox_id.to_string(),
            started_at,
            log: log.map(|f| Arc::new(Mutex::new(f))),
            egress: None,
            device: None,
            events: None,
            seen: HashSet::new(),
            printed: 0,
            rate_limit: None,
            violations: Vec::new(),
        }
    }

    /// Serves the TUN init sent (`FromInit::Tun`). The caller must be done
    /// cloning: this starts a thread.
    pub fn start(&mut self, tun: Option<OwnedFd>) -> Result<(), String> {
        if self.egress.is_some() {
            return Err("the sandbox's init sent a second network device".into());
        }
        if self.policy.mode == NetMode::None {
            return Err(
                "the sandbox's init sent a network device, but its network mode is \"none\"".into(),
            );
        }
        let Some(tun) = tun else {
            return Err("the sandbox's init sent no descriptor with its network device".into());
        };
        let device = tun
            .try_clone()
            .map_err(|e| format!("cannot duplicate the network device's descriptor: {e}"))?;
        let (tx, rx) = mpsc::sync_channel(NET_QUEUE);
        let log = self.log.clone();
        let callback = move |ev: NetEvent| {
            if let Some(log) = &log {
                if let Ok(mut line) = serde_json::to_vec(&ev) {
                    line.push(b'\n');
                    let _ = log
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .write_all(&line);
                }
            }
            if ev.verdict == Verdict::Deny {
                let _ = tx.try_send(ev);
            }
        };
        let cfg = EgressConfig::new(self.policy.clone(), self.sandbox_id.clone());
        let egress = Egress::start(tun, cfg, callback).map_err(|e| {
            format!(
                "cannot start the network egress filter: {}",
                stockade_isolate::error_chain(&e)
            )
        })?;
        self.egress = Some(egress);
        self.device = Some(device);
        self.events = Some(rx);
        Ok(())
    }

    /// Turns the denials reported so far into violations; `sink` hears of
    /// each new one (and of the line that says further ones are not shown).
    pub fn drain(&mut self, sink: &mut NetSink<'_>) {
        let Some(rx) = &self.events else {
            return;
        };
        let events: Vec<NetEvent> = rx.try_iter().collect();
        for ev in events {
            self.record(&ev, sink);
        }
    }

    fn record(&mut self, ev: &NetEvent, sink: &mut NetSink<'_>) {
        let at = (ev.time - self.started_at).max(0.0);
        if ev.reason == Reason::RateLimit {
            if self.rate_limit.is_some() {
                return;
            }
            let limit = self
                .policy
                .rate_per_minute
                .map_or_else(|| "unlimited".to_string(), |r| format!("{r}/min"));
            let v = Violation {
                kind: ViolationKind::NetworkRateLimit,
                limit: limit.clone(),
                observed: "new connections refused".into(),
                at,
            };
            let detail = format!(
                "{}: more than {limit} new connections; further ones are refused (RST) for now",
                v.kind.as_str()
            );
            sink(&v, &detail);
            self.rate_limit = Some(self.violations.len());
            self.violations.push(v);
            return;
        }
        let target = match (&ev.name, ev.address, ev.port) {
            (Some(n), Some(a), Some(p)) => format!("{n} ({a}:{p})"),
            (Some(n), _, _) => n.clone(),
            (None, Some(a), Some(p)) => format!("{a}:{p}"),
            (None, Some(a), None) => a.to_string(),
            (None, None, _) => "?".into(),
        };
        let key = ev
            .name
            .clone()
            .or_else(|| ev.address.map(|a| a.to_string()))
            .unwrap_or_default();
        let kind = ViolationKind::NetworkDenied;
        if self.seen.len() >= MAX_NET_VIOLATIONS || !self.seen.insert(key) {
            return;
        }
        let what = match ev.protocol {
            Protocol::Dns => format!("name {target}"),
            p => format!("{p} to {target}"),
        };
        let v = Violation {
            kind,
            limit: format!(
                "network.mode = {}",
                match self.policy.mode {
                    NetMode::None => "none",
                    NetMode::Allowlist => "allowlist",
                    NetMode::Open => "open",
                }
            ),
            observed: format!("{what}: {}", ev.reason),
            at,
        };
        if self.printed < MAX_NET_PRINTED {
            sink(
                &v,
                &format!("{}: {what} refused ({})", kind.as_str(), ev.reason),
            );
        } else if self.printed == MAX_NET_PRINTED {
            sink(
                &v,
                &format!(
                    "{}: further denials are not shown here (the report counts them all; \
                     --net-log lists them)",
                    kind.as_str()
                ),
            );
        }
        self.printed += 1;
        self.violations.push(v);
    }

    /// Stops the egress stack (closing the TUN and every proxied socket),
    /// records what it reported last, and returns its totals; `None`
    /// when it never ran.
    /// The sandbox's TUN device, once the egress thread is done with it.
    pub(crate) fn take_device(&mut self) -> Option<OwnedFd> {
        if self.egress.is_some() {
            return None;
        }
        self.device.take()
    }

    pub fn finish(&mut self, sink: &mut NetSink<'_>) -> Option<NetworkUsage> {
        let egress = self.egress.take()?;
        let summary = egress.shutdown();
        self.drain(sink);
        self.events = None;
        if let Some(i) = self.rate_limit {
            if let Some(v) = self.violations.get_mut(i) {
                v.observed = format!("{} new connections refused", summary.rate_limit_hits);
            }
        }
        Some(summary)
    }
}
