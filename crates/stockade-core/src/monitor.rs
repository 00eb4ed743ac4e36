//! The limits watch shared by `stockade run` and the daemon's shims:
//! deadline, process count, disk use and OOM kills, turned into
//! violations. Hard breaches (time, memory, disk) tell the caller to kill
//! the sandbox; soft ones (process limit) are only recorded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stockade_cgroup::{Cgroup, Stats};
use stockade_policy::Limits;

use crate::disk::DiskMeter;
use crate::report::{Usage, Violation, ViolationKind};
use crate::scratch::Subvol;

/// Shortest spacing of disk walks and process-count samples.
pub const TICK: Duration = Duration::from_millis(200);

/// Receives each breach with its one-line description.
pub type ViolationSink = Box<dyn FnMut(&Violation, &str) + Send>;

/// What the limits watch and the supervisor read from a sandbox's control
/// group: its counters (OOM kills among them) and whether only init is
/// left. A [`Cgroup`] in production; a fake in the decision tests.
pub trait StatsSource {
    /// The group's counters now.
    fn stats(&self) -> Stats;
    /// Whether `pid` is the only process left in the group.
    fn holds_only(&self, pid: i32) -> bool;
}

impl StatsSource for Cgroup {
    fn stats(&self) -> Stats {
        Cgroup::stats(self)
    }

    fn holds_only(&self, pid: i32) -> bool {
        Cgroup::holds_only(self, pid)
    }
}

/// A disk-use reading other than the two built in (a fake in tests, or a
/// backend that measures its own disk).
pub trait DiskGauge: Send + std::fmt::Debug {
    /// Bytes in use now.
    fn used(&mut self) -> u64;
    /// Whether something else (the kernel, a VM's disk) refuses writes
    /// past the limit: reaching it is then reported, not killed for.
    fn enforced_elsewhere(&self) -> bool;
}

/// Where a sandbox's disk use is read.
#[derive(Debug)]
pub enum DiskSource {
    /// The qgroup of its capped subvolume: the kernel refuses writes past
    /// the limit; reaching it is reported, the sandbox goes on.
    Quota(Subvol),
    /// A walk of these directories: over the limit, the sandbox is killed.
    Walk(Vec<PathBuf>),
    /// Any other reading.
    Gauge(Box<dyn DiskGauge>),
}

#[derive(Debug)]
enum Disk {
    Quota(Subvol),
    Walk(DiskMeter),
    Gauge(Box<dyn DiskGauge>),
}

impl Disk {
    fn used(&mut self) -> u64 {
        match self {
            Disk::Quota(s) => s.usage().unwrap_or(0),
            Disk::Walk(m) => m.measure(),
            Disk::Gauge(g) => g.used(),
        }
    }

    fn enforced(&self) -> &'static str {
        match self {
            Disk::Quota(_) => "kernel",
            Disk::Gauge(g) if g.enforced_elsewhere() => "kernel",
            Disk::Walk(_) | Disk::Gauge(_) => "polling",
        }
    }

    /// Whether reaching the limit is reported only (the writes fail)
    /// rather than killed for: `Some(reached)` then.
    fn reached_elsewhere(&self, used: u64, limit: u64) -> Option<bool> {
        match self {
            Disk::Quota(s) => Some(s.reached(used)),
            Disk::Gauge(g) if g.enforced_elsewhere() => Some(used >= limit),
            Disk::Walk(_) | Disk::Gauge(_) => None,
        }
    }
}

/// Watches one sandbox's limits.
pub struct Monitor {
    limits: Limits,
    started: Instant,
    deadline: Instant,
    disk: Disk,
    next_sample: Instant,
    pids_peak: u64,
    socket_peak: u64,
    /// Every breach so far, in order.
    pub violations: Vec<Violation>,
    /// The hard breach the sandbox was killed for, if any.
    pub killed_for: Option<ViolationKind>,
    on_violation: ViolationSink,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("violations", &self.violations)
            .field("killed_for", &self.killed_for)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// `deadline` is the earlier of the policy's timeout and any ttl.
    pub fn new(
        limits: Limits,
        started: Instant,
        deadline: Instant,
        disk: DiskSource,
        on_violation: ViolationSink,
    ) -> Monitor {
        Monitor {
            limits,
            started,
            deadline,
            disk: match disk {
                DiskSource::Quota(s) => Disk::Quota(s),
                DiskSource::Walk(dirs) => {
                    // The walk holds a descriptor per level of the tree: let
                    // the supervisor (the sandbox is started already and
                    // keeps its own limits) go as deep as the hard limit.
                    if let Ok((_, hard)) =
                        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    {
                        let _ = nix::sys::resource::setrlimit(
                            nix::sys::resource::Resource::RLIMIT_NOFILE,
                            hard,
                            hard,
                        );
                    }
                    Disk::Walk(DiskMeter::new(dirs))
                }
                DiskSource::Gauge(g) => Disk::Gauge(g),
            },
            next_sample: Instant::now() + TICK,
            pids_peak: 0,
            socket_peak: 0,
            violations: Vec::new(),
            killed_for: None,
            on_violation,
        }
    }

    /// When the caller should call [`Monitor::tick`] next.
    pub fn next_wake(&self) -> Instant {
        self.deadline.min(self.next_sample)
    }

    /// Records a breach once per kind and passes it, with its one-line
    /// description, to the callback.
    fn breach(&mut self, kind: ViolationKind, limit: String, observed: String, detail: String) {
        if self.violations.iter().any(|v| v.kind == kind) {
            return;
        }
        let v = Violation {
            kind,
            limit,
            observed,
            at: self.started.elapsed().as_secs_f64(),
        };
        (self.on_violation)(&v, &detail);
        self.violations.push(v);
    }

    /// Checks the deadline, and when due samples processes and disk.
    /// Returns a hard breach the caller must act on by killing the sandbox
    /// (once: later calls return `None`).
    pub fn tick(&mut self, cgroup: &dyn StatsSource) -> Option<ViolationKind> {
        self.tick_at(cgroup, Instant::now())
    }

    /// [`Monitor::tick`] as if it were `now`.
    pub fn tick_at(&mut self, cgroup: &dyn StatsSource, now: Instant) -> Option<ViolationKind> {
        if self.killed_for.is_some() {
            return None;
        }
        if now >= self.deadline {
            let t = self.limits.timeout;
            self.breach(
                ViolationKind::Timeout,
                t.to_string(),
                format!("{:.1}s", self.started.elapsed().as_secs_f64()),
                format!("killed after the time limit of {t}"),
            );
            self.killed_for = Some(ViolationKind::Timeout);
            return self.killed_for;
        }
        if now < self.next_sample {
            return None;
        }
        let stats = cgroup.stats();
        self.note_pids(&stats);
        // The OOM notifier can fire before the kernel counts the kill;
        // the periodic sample catches what the notification missed.
        if stats.oom_kills > 0 {
            return self.oom_in(&stats);
        }
        let used = self.disk.used();
        self.next_sample = now
            + match &self.disk {
                Disk::Walk(m) => m.next_interval(TICK),
                Disk::Quota(_) | Disk::Gauge(_) => TICK,
            };
        self.check_disk(used, true)
    }

    /// Records a disk breach: with a quota, the limit reached (the kernel
    /// refuses further writes; nothing is killed); with polling, the
    /// limit passed, which kills the sandbox if `kill` (not at the end).
    fn check_disk(&mut self, used: u64, kill: bool) -> Option<ViolationKind> {
        let d = self.limits.disk;
        match self.disk.reached_elsewhere(used, d.bytes()) {
            Some(true) => {
                self.breach(
                    ViolationKind::DiskLimit,
                    d.to_string(),
                    used.to_string(),
                    format!(
                        "disk limit of {d} reached ({used} bytes used); writes past it fail with \
                         \"Disk quota exceeded\" inside the sandbox"
                    ),
                );
                None
            }
            None if used > d.bytes() => {
                let detail = if kill {
                    format!("killed after writing {used} bytes, over the disk limit of {d}")
                } else {
                    format!("ended with {used} bytes written, over the disk limit of {d}")
                };
                self.breach(
                    ViolationKind::DiskLimit,
                    d.to_string(),
                    used.to_string(),
                    detail,
                );
                if kill && self.killed_for.is_none() {
                    self.killed_for = Some(ViolationKind::DiskLimit);
                    return self.killed_for;
                }
                None
            }
            _ => None,
        }
    }

    fn note_pids(&mut self, stats: &Stats) {
        self.pids_peak = self.pids_peak.max(stats.pids_current);
        self.socket_peak = self.socket_peak.max(stats.socket_memory);
        if stats.pids_limit_hits > 0 {
            let p = self.limits.pids;
            self.breach(
                ViolationKind::PidsLimit,
                p.to_string(),
                format!("{} forks refused", stats.pids_limit_hits),
                format!("process limit of {p} reached; new processes fail with EAGAIN"),
            );
        }
    }

    /// Called when the cgroup's OOM notifier fires (and at the end): an
    /// OOM kill is a hard breach. Returns it if the caller must kill.
    pub fn check_oom(&mut self, cgroup: &dyn StatsSource) -> Option<ViolationKind> {
        self.oom_in(&cgroup.stats())
    }

    /// [`Monitor::check_oom`] then [`Monitor::usage`], reading the group's
    /// figures once: the end of a run.
    pub fn final_usage(&mut self, cgroup: &dyn StatsSource) -> Usage {
        let stats = cgroup.stats();
        self.oom_in(&stats);
        let usage = self.usage_from(stats);
        // A run may end over (or at) the limit between two samples.
        self.check_disk(usage.disk_bytes, false);
        usage
    }

    fn oom_in(&mut self, stats: &stockade_cgroup::Stats) -> Option<ViolationKind> {
        if stats.oom_kills == 0 || self.killed_for.is_some() {
            return None;
        }
        let m = self.limits.memory;
        self.breach(
            ViolationKind::MemoryLimit,
            m.to_string(),
            format!(
                "{} bytes peak, {} OOM kill(s)",
                stats.memory_peak, stats.oom_kills
            ),
            format!("killed after exceeding the memory limit of {m}"),
        );
        self.killed_for = Some(ViolationKind::MemoryLimit);
        self.killed_for
    }

    /// Usage so far (also the final figures once the sandbox is gone).
    pub fn usage(&mut self, cgroup: &dyn StatsSource) -> Usage {
        self.usage_from(cgroup.stats())
    }

    fn usage_from(&mut self, stats: stockade_cgroup::Stats) -> Usage {
        self.note_pids(&stats);
        Usage {
            wall_seconds: self.started.elapsed().as_secs_f64(),
            cpu_seconds: stats.cpu_seconds,
            peak_memory_bytes: stats.memory_peak,
            disk_bytes: self.disk.used(),
            disk_enforced: self.disk.enforced().to_string(),
            socket_memory_peak_bytes: self.socket_peak,
            pids_peak: stats
                .pids_peak
                .unwrap_or(0)
                .max(self.pids_peak)
                .max(stats.pids_current),
        }
    }
}
