//! The cgroup v1 driver.
//!
//! v1 has one hierarchy per mount, each carrying one or more controllers, so
//! a sandbox's cgroup is a set of directories: `<mount>/stockade/<name>` in
//! every hierarchy that carries memory, pids, cpu, cpuacct or freezer. A
//! process must be moved into each of them separately.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::detect::{Hierarchy, V1_CONTROLLERS};
use crate::fsio::{self, set, set_if_present, DirOps};
use crate::{CgroupError, Limits, Stats, CPU_PERIOD_US, PARENT_DIR};

/// What `ControllerMissing` names as the place a v1 controller was sought.
const MOUNT_TABLE: &str = "the v1 mounts of /proc/self/mountinfo";

#[derive(Debug)]
pub(crate) struct V1Layout {
    hierarchies: Vec<Hierarchy>,
    ops: DirOps,
}

impl V1Layout {
    pub(crate) fn new(hierarchies: Vec<Hierarchy>, ops: DirOps) -> Self {
        V1Layout { hierarchies, ops }
    }

    pub(crate) fn describe(&self) -> String {
        let (found, missing): (Vec<&str>, Vec<&str>) = V1_CONTROLLERS
            .iter()
            .partition(|c| self.hierarchies.iter().any(|h| h.has(c)));
        if missing.is_empty() {
            format!("v1 ({})", found.join(", "))
        } else {
            format!("v1 ({}; missing: {})", found.join(", "), missing.join(", "))
        }
    }

    /// The directories sandbox `name` has or would have.
    fn group(&self, name: &str) -> V1Group {
        let dirs = self
            .hierarchies
            .iter()
            .map(|h| GroupDir {
                path: h.mount.join(PARENT_DIR).join(name),
                controllers: h.controllers.clone(),
            })
            .collect();
        V1Group {
            dirs,
            ops: self.ops,
        }
    }

    pub(crate) fn create(&self, name: &str, limits: &Limits) -> Result<V1Group, CgroupError> {
        // Refuse before touching anything if a limit has no controller.
        let wanted = [
            ("memory", limits.memory_bytes.is_some()),
            ("pids", limits.pids.is_some()),
            ("cpu", limits.cpus.is_some()),
        ];
        for (controller, _) in wanted.iter().filter(|(_, asked)| *asked) {
            if !self.hierarchies.iter().any(|h| h.has(controller)) {
                return Err(CgroupError::ControllerMissing {
                    controller,
                    place: MOUNT_TABLE.to_owned(),
                });
            }
        }
        let group = self.group(name);
        for (made, dir) in group.dirs.iter().enumerate() {
            if let Err(e) = self.make_dir(&dir.path) {
                group.remove_first(made);
                return Err(e);
            }
        }
        if let Err(e) = group.apply(limits) {
            group.remove_first(group.dirs.len());
            return Err(e);
        }
        Ok(group)
    }

    /// Creates one group directory; the `stockade` parent is created only
    /// when the first attempt says it is missing, so the usual start costs a
    /// single `mkdir` per hierarchy.
    fn make_dir(&self, path: &Path) -> Result<(), CgroupError> {
        let mut result = (self.ops.mkdir)(path);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            if let Some(parent) = path.parent() {
                match (self.ops.mkdir)(parent) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(CgroupError::CreateDir {
                            path: parent.to_path_buf(),
                            source: e,
                        })
                    }
                    _ => result = (self.ops.mkdir)(path),
                }
            }
        }
        result.map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CgroupError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => CgroupError::CreateDir {
                path: path.to_path_buf(),
                source,
            },
        })
    }

    pub(crate) fn open_existing(&self, name: &str) -> Option<V1Group> {
        let mut group = self.group(name);
        group.dirs.retain(|d| d.path.is_dir());
        (!group.dirs.is_empty()).then_some(group)
    }

    pub(crate) fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .hierarchies
            .iter()
            .flat_map(|h| list_children(&h.mount.join(PARENT_DIR)))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Valid sandbox names among the subdirectories of `parent`.
pub(crate) fn list_children(parent: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| crate::validate_name(n).is_ok())
        .collect()
}

#[derive(Debug)]
struct GroupDir {
    path: PathBuf,
    controllers: Vec<&'static str>,
}

#[derive(Debug)]
pub(crate) struct V1Group {
    dirs: Vec<GroupDir>,
    ops: DirOps,
}

impl V1Group {
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.controllers.contains(&controller))
            .map(|d| d.path.as_path())
    }

    /// Removes the first `count` directories after a failed create.
    fn remove_first(&self, count: usize) {
        for dir in &self.dirs[..count] {
            let _ = fsio::remove_dir(self.ops, &dir.path);
        }
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(dir) = self.dir_of("memory") {
            if let Some(bytes) = limits.memory_bytes {
                // limit_in_bytes first: the kernel insists memsw >= limit.
                set(dir, "memory.limit_in_bytes", &bytes.to_string())?;
                // memsw exists only with swap accounting; without it swap is
                // not charged to the group and there is nothing more to cap.
                set_if_present(dir, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
                // Socket buffers are charged apart on v1, and not at all
                // until a TCP limit is set: without it a sandbox could hold
                // gigabytes of host memory in unread loopback sockets.
                set_if_present(
                    dir,
                    "memory.kmem.tcp.limit_in_bytes",
                    &crate::v1_tcp_limit(bytes).to_string(),
                )?;
            }
            // A new memcg inherits oom_kill_disable from its parent; with it
            // set, an OOM would freeze the sandbox instead of killing in it.
            let control = fsio::read_opt(&dir.join("memory.oom_control")).unwrap_or_default();
            if fsio::keyed_u64(&control, "oom_kill_disable") == Some(1) {
                set(dir, "memory.oom_control", "0")?;
            }
        }
        if let (Some(dir), Some(pids)) = (self.dir_of("pids"), limits.pids) {
            set(dir, "pids.max", &pids.to_string())?;
        }
        if let (Some(dir), Some(quota)) = (self.dir_of("cpu"), limits.cpu_quota_us()) {
            set(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            set(dir, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        Ok(())
    }

    pub(crate) fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let path = dir.path.join("cgroup.procs");
            fsio::write_file(&path, &pid.to_string()).map_err(|source| CgroupError::AddPid {
                pid,
                path: dir.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Each directory's `tasks` file, opened for writing. A thread that
    /// writes `0` to them moves only itself, which the kernel does without
    /// the global threadgroup lock — and so without the RCU grace period
    /// (milliseconds) that taking that lock for writing costs on a quiet
    /// host. The permission check uses the opener's credentials, so a
    /// process that could not open these files itself may be handed them.
    pub(crate) fn self_join_files(&self) -> io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .map(|dir| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(dir.path.join("tasks"))
                    .map(OwnedFd::from)
            })
            .collect()
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        if let Some(dir) = self.dir_of("cpuacct") {
            stats.cpu_seconds = fsio::read_u64(dir, "cpuacct.usage") as f64 / 1e9;
        }
        if let Some(dir) = self.dir_of("memory") {
            stats.memory_current = fsio::read_u64(dir, "memory.usage_in_bytes");
            stats.memory_peak = fsio::read_u64(dir, "memory.max_usage_in_bytes");
            stats.oom_kills = fsio::read_keyed(dir, "memory.oom_control", "oom_kill");
            stats.socket_memory = fsio::read_u64(dir, "memory.kmem.tcp.max_usage_in_bytes");
        }
        if let Some(dir) = self.dir_of("pids") {
            stats.pids_current = fsio::read_u64(dir, "pids.current");
            stats.pids_peak =
                fsio::read_opt(&dir.join("pids.peak")).and_then(|t| fsio::parse_u64(&t));
            stats.pids_limit_hits = fsio::read_keyed(dir, "pids.events", "max");
        }
        stats
    }

    /// Registers an eventfd for `memory.oom_control` through
    /// `cgroup.event_control`; the kernel signals it on every OOM in the group.
    pub(crate) fn oom_notifier(&self) -> Result<OwnedFd, CgroupError> {
        let dir = self
            .dir_of("memory")
            .ok_or(CgroupError::ControllerMissing {
                controller: "memory",
                place: MOUNT_TABLE.to_owned(),
            })?;
        let fail = |source: io::Error| CgroupError::Notifier {
            path: dir.join("memory.oom_control"),
            source,
        };
        let event = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| fail(e.into()))?;
        // The kernel takes its own reference during the write, so the
        // oom_control file can be closed right after.
        let control = File::open(dir.join("memory.oom_control")).map_err(fail)?;
        let line = format!("{} {}", event.as_raw_fd(), control.as_raw_fd());
        fsio::write_file(&dir.join("cgroup.event_control"), &line).map_err(fail)?;
        Ok(OwnedFd::from(event))
    }

    /// The processes of the first hierarchy's directory only.
    pub(crate) fn first_procs(&self) -> Vec<i32> {
        self.dirs
            .first()
            .map(|d| fsio::read_procs(&d.path))
            .unwrap_or_default()
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        // A process is normally in all directories; the union also covers a
        // half-finished add_pid.
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .flat_map(|d| fsio::read_procs(&d.path))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Freezes the group when a freezer hierarchy exists, so nothing can fork
    /// or exit (and free its pid for reuse) between listing and killing;
    /// kills everything; thaws so the kills take effect; repeats until empty.
    pub(crate) fn kill_all(&self) {
        // The common case on destroy; skips a freeze/thaw round trip.
        if self.pids().is_empty() {
            return;
        }
        let deadline = Instant::now() + fsio::KILL_DEADLINE;
        loop {
            let frozen = self.dir_of("freezer").filter(|dir| freeze(dir, deadline));
            let pids = self.pids();
            fsio::kill_pids(&pids);
            if let Some(dir) = frozen {
                let _ = fsio::write_file(&dir.join("freezer.state"), "THAWED");
            }
            if pids.is_empty() {
                return;
            }
            let round = (Instant::now() + Duration::from_millis(200)).min(deadline);
            if fsio::wait_until(round, || self.pids().is_empty()) || Instant::now() >= deadline {
                return;
            }
        }
    }

    pub(crate) fn remove(self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in &self.dirs {
            if let Err(source) = fsio::remove_dir(self.ops, &dir.path) {
                first_error.get_or_insert(CgroupError::RemoveDir {
                    path: dir.path.clone(),
                    source,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops at the first busy directory. A process normally sits in every
    /// hierarchy, so the first `rmdir` already refuses and nothing is lost.
    pub(crate) fn remove_if_empty(self) -> Result<bool, CgroupError> {
        for dir in &self.dirs {
            match fsio::remove_dir_if_unused(self.ops, &dir.path) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(source) => {
                    return Err(CgroupError::RemoveDir {
                        path: dir.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(true)
    }

    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }
}

/// Asks the freezer to freeze `dir` and waits briefly for it to settle.
/// Returns whether the request was accepted (the caller must thaw then),
/// even if a task in uninterruptible sleep keeps the state at FREEZING.
fn freeze(dir: &Path, deadline: Instant) -> bool {
    let state = dir.join("freezer.state");
    if fsio::write_file(&state, "FROZEN").is_err() {
        return false;
    }
    let settle = (Instant::now() + Duration::from_millis(100)).min(deadline);
    fsio::wait_until(settle, || {
        fsio::read_opt(&state).is_some_and(|s| s.trim() == "FROZEN")
    });
    true
}
