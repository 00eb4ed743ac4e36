//! cgroup drivers for stockade: create a cgroup per sandbox, apply CPU,
//! memory and process limits, account usage, report OOM kills, kill every
//! process inside and remove the group again.
//!
//! Both kernel interfaces are supported and chosen at run time
//! ([`Driver::detect`]): pure cgroup v2 when `/sys/fs/cgroup` is cgroup2,
//! otherwise the v1 controller hierarchies listed in `/proc/self/mountinfo`.
//! All groups live under a `stockade` directory in each hierarchy, so
//! garbage collection never touches anything stockade did not create.
//! `docs/cgroups.md` maps every limit and statistic to its control file.

mod detect;
mod error;
mod fsio;
mod limits;
mod polled;
mod v1;
mod v2;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod v1_tests;
#[cfg(test)]
mod v2_tests;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

pub use detect::{root_configured, set_root, ROOT_ENV};
pub use error::CgroupError;
pub(crate) use limits::CPU_PERIOD_US;
pub use limits::{validate_name, Limits, MIN_CPUS, MIN_MEMORY_BYTES};

/// Name of the directory that holds every stockade cgroup in a hierarchy.
pub const PARENT_DIR: &str = "stockade";

/// Which kernel interface a [`Driver`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
    /// No cgroup: a rootless sandbox's processes found through its pid
    /// namespace and limited by polling (see [`Driver::polled`]).
    Polled,
}

/// Usage counters of one cgroup. Counters the kernel does not provide read
/// as 0 (or `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// CPU time used by all processes, user plus system.
    pub cpu_seconds: f64,
    /// Memory charged to the group now, in bytes.
    pub memory_current: u64,
    /// Highest memory charge seen, in bytes (v2 needs Linux 5.19).
    pub memory_peak: u64,
    /// Processes and threads in the group now.
    pub pids_current: u64,
    /// Highest process count seen, when the kernel has `pids.peak` (6.1+).
    pub pids_peak: Option<u64>,
    /// Processes killed by the OOM killer inside the group.
    pub oom_kills: u64,
    /// Forks refused because the process limit was reached.
    pub pids_limit_hits: u64,
    /// Memory held in the group's socket buffers: v1 charges it to a
    /// counter of its own (`memory.kmem.tcp.*`, its peak here), v2 to
    /// `memory.current` (the `sock` figure of `memory.stat` now).
    pub socket_memory: u64,
}

/// The v1 cap on a group's TCP socket buffers, which v1 charges apart
/// from its memory limit: a quarter of that limit, and at least 4 MiB so
/// that a small sandbox's connections still work. A sandbox can then hold
/// at most 1.25 times `--memory` on v1; on v2 socket memory is part of
/// the memory limit.
pub fn v1_tcp_limit(memory_bytes: u64) -> u64 {
    (memory_bytes / 4).max(4 << 20)
}

/// The detected cgroup layout of the host. Detection runs once; clones
/// share the result, so keep one and clone it freely.
#[derive(Debug, Clone)]
pub struct Driver {
    layout: Arc<Layout>,
}

#[derive(Debug)]
enum Layout {
    V1(v1::V1Layout),
    V2(v2::V2Layout),
    Polled,
}

impl Driver {
    /// Detects the host's layout: the root given to [`set_root`] if any
    /// (must be cgroup2), else `/sys/fs/cgroup` if it is cgroup2, else the v1
    /// hierarchies from `/proc/self/mountinfo`.
    ///
    /// An ordinary user (not root) gets [`Driver::polled`] unless a root
    /// was set: the host's hierarchies are root's, and only a subtree
    /// delegated to the user (given with [`set_root`]) is theirs.
    pub fn detect() -> Result<Driver, CgroupError> {
        if !nix::unistd::geteuid().is_root() && !root_configured() {
            return Ok(Self::polled());
        }
        Ok(Self::from_plan(detect::detect_plan()?, fsio::DirOps::REAL))
    }

    /// A v2 driver rooted at `root`, without checking that `root` is
    /// cgroup2. Meant for tests and for callers that did their own checks.
    pub fn with_v2_root(root: impl Into<PathBuf>) -> Driver {
        Self::from_plan(detect::Plan::V2(root.into()), fsio::DirOps::REAL)
    }

    /// A driver that makes no cgroups, for an ordinary user without a
    /// delegated one: each "group" is the pid namespace of the sandbox's
    /// init, its memory limit enforced by polling (the sandbox is killed
    /// after a sample over it), its CPU limit not at all. Process limits
    /// are the caller's to set (`RLIMIT_NPROC`).
    pub fn polled() -> Driver {
        Driver {
            layout: Arc::new(Layout::Polled),
        }
    }

    pub(crate) fn from_plan(plan: detect::Plan, ops: fsio::DirOps) -> Driver {
        let layout = match plan {
            detect::Plan::V1(hierarchies) => Layout::V1(v1::V1Layout::new(hierarchies, ops)),
            detect::Plan::V2(root) => Layout::V2(v2::V2Layout::new(root, ops)),
        };
        Driver {
            layout: Arc::new(layout),
        }
    }

    pub fn version(&self) -> Version {
        match &*self.layout {
            Layout::V1(_) => Version::V1,
            Layout::V2(_) => Version::V2,
            Layout::Polled => Version::Polled,
        }
    }

    /// One line for `stockade doctor`, such as
    /// `v1 (memory, pids, cpu, cpuacct, freezer)`.
    pub fn describe(&self) -> String {
        match &*self.layout {
            Layout::V1(l) => l.describe(),
            Layout::V2(l) => l.describe(),
            Layout::Polled => {
                "none (memory polled, processes by RLIMIT_NPROC, cpu unlimited)".into()
            }
        }
    }

    /// Creates the cgroup of sandbox `name` and applies `limits`. On error
    /// nothing is left behind.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let inner = match &*self.layout {
            Layout::V1(l) => Inner::V1(l.create(name, limits)?),
            Layout::V2(l) => Inner::V2(l.create(name, limits)?),
            Layout::Polled => Inner::Polled(polled::PolledGroup::new(limits)),
        };
        Ok(Cgroup {
            name: name.to_owned(),
            inner,
        })
    }

    /// The cgroup of sandbox `name` if any of its directories exists, for
    /// garbage collection. Invalid names give `None`.
    pub fn open_existing(&self, name: &str) -> Option<Cgroup> {
        validate_name(name).ok()?;
        let inner = match &*self.layout {
            Layout::V1(l) => Inner::V1(l.open_existing(name)?),
            Layout::V2(l) => Inner::V2(l.open_existing(name)?),
            Layout::Polled => return None,
        };
        Some(Cgroup {
            name: name.to_owned(),
            inner,
        })
    }

    /// Names of the stockade cgroups present, sorted.
    pub fn list(&self) -> Vec<String> {
        match &*self.layout {
            Layout::V1(l) => l.list(),
            Layout::V2(l) => l.list(),
            Layout::Polled => Vec::new(),
        }
    }
}

/// The cgroup of one sandbox. Dropping it leaves the cgroup in place; call
/// [`Cgroup::destroy`] (or let garbage collection do it).
#[derive(Debug)]
pub struct Cgroup {
    name: String,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    V1(v1::V1Group),
    V2(v2::V2Group),
    Polled(polled::PolledGroup),
}

impl Cgroup {
    /// The sandbox name this cgroup was created for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves process `pid` (all its threads) into the group, in every
    /// hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        match &self.inner {
            Inner::V1(g) => g.add_pid(pid),
            Inner::V2(g) => g.add_pid(pid),
            Inner::Polled(g) => g.add_pid(pid),
        }
    }

    /// Without a cgroup ([`Driver::polled`]): `fd` is a directory of a
    /// procfs mounted in the sandbox's pid namespace (its init's `/proc`),
    /// where its processes are listed from then on instead of checking
    /// every host process. Dropped for real cgroups and when not a procfs.
    pub fn set_proc_dir(&self, fd: OwnedFd) {
        if let Inner::Polled(g) = &self.inner {
            g.set_proc_dir(fd);
        }
    }

    /// v1 only: descriptors a single-threaded process writes `0` to (each
    /// of them) to move itself into the group, cheaply; see
    /// `stockade_isolate::launch`. Empty on v2 (use [`Cgroup::dir_fd_v2`])
    /// or when a file cannot be opened (then use [`Cgroup::add_pid`]).
    pub fn self_join_files(&self) -> Vec<OwnedFd> {
        match &self.inner {
            Inner::V1(g) => g.self_join_files().unwrap_or_default(),
            Inner::V2(_) | Inner::Polled(_) => Vec::new(),
        }
    }

    /// v2 only: an `O_PATH | O_DIRECTORY` fd of the group's directory, for
    /// `clone3(CLONE_INTO_CGROUP)` so a child starts inside the group.
    pub fn dir_fd_v2(&self) -> Option<BorrowedFd<'_>> {
        match &self.inner {
            Inner::V1(_) | Inner::Polled(_) => None,
            Inner::V2(g) => Some(g.dir_fd()),
        }
    }

    /// Current usage; never fails, missing files read as 0 or `None`.
    pub fn stats(&self) -> Stats {
        match &self.inner {
            Inner::V1(g) => g.stats(),
            Inner::V2(g) => g.stats(),
            Inner::Polled(g) => g.stats(),
        }
    }

    /// An fd that polls readable (`POLLIN`) after an OOM event in the group.
    /// Re-read [`Cgroup::stats`] to see whether it was a kill, then empty the
    /// fd with [`Cgroup::drain_notifier`]. The fd is non-blocking.
    pub fn oom_notifier(&self) -> Result<OwnedFd, CgroupError> {
        match &self.inner {
            Inner::V1(g) => g.oom_notifier(),
            Inner::V2(g) => g.oom_notifier(),
            // Nothing to wait on: the periodic sample finds a breach.
            Inner::Polled(_) => Err(CgroupError::NoNotifier),
        }
    }

    /// Empties a notifier fd from [`Cgroup::oom_notifier`] so that the next
    /// poll waits for a new event. Never blocks.
    pub fn drain_notifier(fd: BorrowedFd<'_>) {
        fsio::drain(fd);
    }

    /// Processes (thread-group ids) in the group, sorted.
    pub fn pids(&self) -> Vec<i32> {
        match &self.inner {
            Inner::V1(g) => g.pids(),
            Inner::V2(g) => g.pids(),
            Inner::Polled(g) => g.pids(),
        }
    }

    /// Whether `pid` is the only live process in the group, judged from one
    /// listing (one hierarchy on v1; every process is in all of them).
    /// Exited processes not yet reaped are not listed. Meant for a group
    /// nothing is being added to any more: a process in the middle of
    /// being moved in could be missed.
    pub fn holds_only(&self, pid: i32) -> bool {
        let procs = match &self.inner {
            Inner::V1(g) => g.first_procs(),
            Inner::V2(g) => g.pids(),
            Inner::Polled(g) => return g.holds_only_init(),
        };
        procs.iter().all(|&p| p == pid)
    }

    /// Kills every process in the group, including ones forked meanwhile,
    /// and waits (up to a few seconds) until the group is empty.
    pub fn kill_all(&self) {
        match &self.inner {
            Inner::V1(g) => g.kill_all(),
            Inner::V2(g) => g.kill_all(),
            Inner::Polled(g) => g.kill_all(),
        }
    }

    /// Kills everything inside and removes the group's directories. A group
    /// that is already gone is not an error.
    pub fn destroy(self) -> Result<(), CgroupError> {
        self.kill_all();
        match self.inner {
            Inner::V1(g) => g.remove(),
            Inner::V2(g) => g.remove(),
            Inner::Polled(_) => Ok(()),
        }
    }

    /// Removes the group only if no process is inside, killing nothing:
    /// the kernel refuses to remove a populated cgroup, so unlike checking
    /// [`Cgroup::pids`] first this cannot race with a process being added.
    /// Returns `Ok(false)` when the group is in use. Meant for garbage
    /// collection of groups that may belong to another stockade instance.
    pub fn remove_if_empty(self) -> Result<bool, CgroupError> {
        match self.inner {
            Inner::V1(g) => g.remove_if_empty(),
            Inner::V2(g) => g.remove_if_empty(),
            Inner::Polled(g) => Ok(g.pids().is_empty()),
        }
    }

    /// The group's directory in every hierarchy (one on v2).
    pub fn paths(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V1(g) => g.paths(),
            Inner::V2(g) => vec![g.path().to_path_buf()],
            Inner::Polled(_) => Vec::new(),
        }
    }
}
