//! The run report: how a sandbox ended, which limits it hit, what it used.
//! Written as JSON by `--report FILE` and kept by the daemon.

use serde::{Deserialize, Serialize};

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It exited by itself with `exit_code`.
    Exited,
    /// It was killed by `signal` (not by stockade for a limit).
    Signaled,
    /// It ran past its wall-clock limit and was killed.
    Timeout,
    /// It ran out of memory and was killed.
    MemoryLimit,
    /// It wrote more than its disk allowance and was killed.
    DiskLimit,
    /// Stockade could not start it; `error` says why.
    Error,
    /// A long-lived sandbox was destroyed on request.
    Destroyed,
}

/// Kinds of limit breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    MemoryLimit,
    PidsLimit,
    DiskLimit,
    Timeout,
    /// The egress filter refused a connection, a DNS name or a datagram.
    NetworkDenied,
    /// A new connection was refused by `network.rate_per_minute`.
    NetworkRateLimit,
}

impl ViolationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::MemoryLimit => "memory-limit",
            ViolationKind::PidsLimit => "pids-limit",
            ViolationKind::DiskLimit => "disk-limit",
            ViolationKind::Timeout => "timeout",
            ViolationKind::NetworkDenied => "network-denied",
            ViolationKind::NetworkRateLimit => "network-rate-limit",
        }
    }
}

/// One breach: which limit, its value, what was observed, and when
/// (seconds since the sandbox started).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub limit: String,
    pub observed: String,
    pub at: f64,
}

/// Resources used over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: u64,
    pub disk_bytes: u64,
    pub pids_peak: u64,
    /// Peak memory held in socket buffers (part of `peak_memory_bytes` on
    /// cgroup v2; charged apart, capped at a quarter of the memory limit,
    /// on v1).
    #[serde(default)]
    pub socket_memory_peak_bytes: u64,
    /// How the disk limit held: `kernel` (a quota: writes past it fail)
    /// or `polling` (measured, and the sandbox killed once over it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disk_enforced: String,
}

/// Network use of a sandbox with egress (`allowlist` or `open`): the
/// egress stack's own summary, as the report carries it.
pub type NetworkUsage = stockade_net::NetSummary;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub violations: Vec<Violation>,
    pub usage: Usage,
    pub command: Vec<String>,
    /// Unix time (seconds) when the sandbox was started.
    pub started_at: f64,
    /// Egress totals; absent when the network mode is `none`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub network: Option<NetworkUsage>,
}

impl Report {
    /// The exit status `stockade run` returns for this report.
    pub fn exit_status(&self) -> i32 {
        match self.outcome {
            Outcome::Exited => self.exit_code.unwrap_or(0),
            Outcome::Signaled => 128 + self.signal.unwrap_or(0),
            Outcome::Timeout => 124,
            Outcome::MemoryLimit | Outcome::DiskLimit => 137,
            Outcome::Error => self.exit_code.unwrap_or(125),
            Outcome::Destroyed => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome, exit_code: Option<i32>, signal: Option<i32>) -> Report {
        Report {
            id: "x".into(),
            outcome,
            exit_code,
            signal,
            error: None,
            violations: vec![],
            usage: Usage::default(),
            command: vec![],
            started_at: 0.0,
            network: None,
        }
    }

    #[test]
    fn exit_statuses_follow_the_shell_conventions() {
        assert_eq!(report(Outcome::Exited, Some(3), None).exit_status(), 3);
        assert_eq!(report(Outcome::Signaled, None, Some(15)).exit_status(), 143);
        assert_eq!(report(Outcome::Timeout, None, Some(9)).exit_status(), 124);
        assert_eq!(
            report(Outcome::MemoryLimit, None, Some(9)).exit_status(),
            137
        );
        assert_eq!(report(Outcome::Error, None, None).exit_status(), 125);
        assert_eq!(report(Outcome::Error, Some(127), None).exit_status(), 127);
    }

    #[test]
    fn report_json_has_the_documented_shape() {
        let mut r = report(Outcome::MemoryLimit, None, Some(9));
        r.violations.push(Violation {
            kind: ViolationKind::MemoryLimit,
            limit: "64M".into(),
            observed: "1 OOM kill".into(),
            at: 0.5,
        });
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["outcome"], "memory-limit");
        assert_eq!(v["violations"][0]["kind"], "memory-limit");
        for key in [
            "wall_seconds",
            "cpu_seconds",
            "peak_memory_bytes",
            "disk_bytes",
            "pids_peak",
        ] {
            assert!(v["usage"].get(key).is_some(), "{key}");
        }
        assert!(v.get("exit_code").is_some() && v.get("signal").is_some());
        assert!(
            v.get("network").is_none(),
            "no network section in mode none"
        );
    }

    #[test]
    fn network_section_and_kinds_serialise() {
        let mut r = report(Outcome::Exited, Some(0), None);
        r.network = Some(NetworkUsage {
            connections_allowed: 2,
            denied_names: vec!["bad.test".into()],
            ..NetworkUsage::default()
        });
        for kind in [
            ViolationKind::NetworkDenied,
            ViolationKind::NetworkRateLimit,
        ] {
            r.violations.push(Violation {
                kind,
                limit: "x".into(),
                observed: "y".into(),
                at: 0.1,
            });
        }
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["violations"][0]["kind"], "network-denied");
        assert_eq!(
            v["violations"][1]["kind"],
            ViolationKind::NetworkRateLimit.as_str()
        );
        let n = &v["network"];
        assert_eq!(n["connections_allowed"], 2);
        assert_eq!(n["denied_names"][0], "bad.test");
        for key in [
            "connections_denied",
            "bytes_up",
            "bytes_down",
            "rate_limit_hits",
        ] {
            assert!(n.get(key).is_some(), "{key}");
        }
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
