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

/// Where a sandbox's disk use is read.
#[derive(Debug)]
pub enum DiskSource {
    /// The qgroup of its capped subvolume: the kernel refuses writes past
    /// the limit; reaching it is reported, the sandbox goes on.
    Quota(Subvol),
    /// A walk of these directories: over the limit, the sandbox is killed.
    Walk(Vec<PathBuf>),
}

#[derive(Debug)]
enum Disk {
    Quota(Subvol),
    Walk(DiskMeter),
}

impl Disk {
    fn used(&mut self) -> u64 {
        match self {
            Disk::Quota(s) => s.usage().unwrap_or(0),
            Disk::Walk(m) => m.measure(),
        }
    }

    fn enforced(&self) -> &'static str {
        match self {
            Disk::Quota(_) => "kernel",
            Disk::Walk(_) => "polling",
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
    pub fn tick(&mut self, cgroup: &Cgroup) -> Option<ViolationKind> {
        let now = Instant::now();
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
            return self.check_oom(cgroup);
        }
        let used = self.disk.used();
        self.next_sample = Instant::now()
            + match &self.disk {
                Disk::Walk(m) => m.next_interval(TICK),
                Disk::Quota(_) => TICK,
            };
        self.check_disk(used, true)
    }

    /// Records a disk breach: with a quota, the limit reached (the kernel
    /// refuses further writes; nothing is killed); with polling, the
    /// limit passed, which kills the sandbox if `kill` (not at the end).
    fn check_disk(&mut self, used: u64, kill: bool) -> Option<ViolationKind> {
        let d = self.limits.disk;
        match &self.disk {
            Disk::Quota(s) if s.reached(used) => {
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
            Disk::Walk(_) if used > d.bytes() => {
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
    pub fn check_oom(&mut self, cgroup: &Cgroup) -> Option<ViolationKind> {
        self.oom_in(&cgroup.stats())
    }

    /// [`Monitor::check_oom`] then [`Monitor::usage`], reading the group's
    /// figures once: the end of a run.
    pub fn final_usage(&mut self, cgroup: &Cgroup) -> Usage {
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
    pub fn usage(&mut self, cgroup: &Cgroup) -> Usage {
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
