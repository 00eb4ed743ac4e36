//! Prometheus text exposition (format 0.0.4), written by hand: a handful of
//! counters, one gauge family read from the registry, one histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the exec-duration histogram buckets.
const EXEC_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];

/// Counters the daemon keeps in memory (reset when it restarts, as
/// Prometheus counters may be).
#[derive(Debug, Default)]
pub struct Metrics {
    creates: AtomicU64,
    exec_buckets: [AtomicU64; EXEC_BUCKETS.len()],
    exec_count: AtomicU64,
    exec_sum_micros: AtomicU64,
    violations: Mutex<BTreeMap<String, u64>>,
    net_bytes_in: AtomicU64,
    net_bytes_out: AtomicU64,
    net_denied: AtomicU64,
    webhook_dropped: AtomicU64,
}

impl Metrics {
    pub fn sandbox_created(&self) {
        self.creates.fetch_add(1, Relaxed);
    }

    pub fn exec_finished(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, bound) in EXEC_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.exec_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.exec_count.fetch_add(1, Relaxed);
        self.exec_sum_micros
            .fetch_add(took.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn webhook_dropped(&self) {
        self.webhook_dropped.fetch_add(1, Relaxed);
    }

    /// Counts what an event tells: violations by kind, network denials,
    /// and the network bytes of a destroyed sandbox's report (when the
    /// backend reports `usage.bytes_in` / `usage.bytes_out`).
    pub fn observe_event(&self, kind: &str, event: &serde_json::Value) {
        match kind {
            "violation" => {
                let k = event["kind"].as_str().unwrap_or("unknown").to_string();
                let mut v = self.violations.lock().unwrap_or_else(|p| p.into_inner());
                *v.entry(k).or_default() += 1;
            }
            "network-denied" => {
                self.net_denied.fetch_add(1, Relaxed);
            }
            "destroyed" => {
                let usage = &event["usage"];
                if let Some(n) = usage["bytes_in"].as_u64() {
                    self.net_bytes_in.fetch_add(n, Relaxed);
                }
                if let Some(n) = usage["bytes_out"].as_u64() {
                    self.net_bytes_out.fetch_add(n, Relaxed);
                }
            }
            _ => {}
        }
    }

    /// The exposition text; `states` is the number of sandboxes per state.
    pub fn render(&self, states: &BTreeMap<&'static str, u64>) -> String {
        let mut out = String::with_capacity(2048);
        let w = &mut out;
        family(
            w,
            "stockade_sandboxes",
            "gauge",
            "Sandboxes in the registry, by state.",
        );
        for (state, n) in states {
            let _ = writeln!(w, "stockade_sandboxes{{state=\"{state}\"}} {n}");
        }
        family(
            w,
            "stockade_sandbox_creates_total",
            "counter",
            "Sandboxes created since the daemon started.",
        );
        let _ = writeln!(
            w,
            "stockade_sandbox_creates_total {}",
            self.creates.load(Relaxed)
        );

        family(
            w,
            "stockade_exec_duration_seconds",
            "histogram",
            "Wall time of processes started with exec, from start to exit.",
        );
        for (i, bound) in EXEC_BUCKETS.iter().enumerate() {
            let n = self.exec_buckets[i].load(Relaxed);
            let _ = writeln!(
                w,
                "stockade_exec_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let count = self.exec_count.load(Relaxed);
        let _ = writeln!(
            w,
            "stockade_exec_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.exec_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(w, "stockade_exec_duration_seconds_sum {sum}");
        let _ = writeln!(w, "stockade_exec_duration_seconds_count {count}");

        family(
            w,
            "stockade_violations_total",
            "counter",
            "Limit violations reported by sandboxes, by kind.",
        );
        let violations = self.violations.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, n) in violations.iter() {
            let _ = writeln!(
                w,
                "stockade_violations_total{{kind=\"{}\"}} {n}",
                escape(kind)
            );
        }
        drop(violations);

        family(
            w,
            "stockade_network_bytes_total",
            "counter",
            "Network bytes of destroyed sandboxes, by direction.",
        );
        let _ = writeln!(
            w,
            "stockade_network_bytes_total{{direction=\"in\"}} {}",
            self.net_bytes_in.load(Relaxed)
        );
        let _ = writeln!(
            w,
            "stockade_network_bytes_total{{direction=\"out\"}} {}",
            self.net_bytes_out.load(Relaxed)
        );

        family(
            w,
            "stockade_network_denied_total",
            "counter",
            "Network connections or lookups refused by policy.",
        );
        let _ = writeln!(
            w,
            "stockade_network_denied_total {}",
            self.net_denied.load(Relaxed)
        );

        family(
            w,
            "stockade_webhook_dropped_total",
            "counter",
            "Events not delivered to the webhook (queue full or delivery failed).",
        );
        let _ = writeln!(
            w,
            "stockade_webhook_dropped_total {}",
            self.webhook_dropped.load(Relaxed)
        );
        out
    }
}

fn family(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.exec_finished(Duration::from_millis(3));
        m.exec_finished(Duration::from_millis(300));
        m.observe_event("violation", &serde_json::json!({"kind": "memory-limit"}));
        let text = m.render(&BTreeMap::from([("running", 2)]));
        assert!(text.contains("stockade_exec_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("stockade_exec_duration_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("stockade_exec_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("stockade_violations_total{kind=\"memory-limit\"} 1"));
        assert!(text.contains("stockade_sandboxes{state=\"running\"} 2"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            value.parse::<f64>().expect("numeric sample value");
        }
    }
}
