//! The cgroup v2 driver.
//!
//! v2 has a single hierarchy, so a sandbox's cgroup is one directory,
//! `<root>/stockade/<name>`. Controllers reach a cgroup only when every
//! ancestor lists them in `cgroup.subtree_control`, and a cgroup that
//! distributes controllers may hold no processes itself ("no internal
//! processes"). So the `stockade` parent enables memory, pids and cpu for its
//! children and never receives a process: only the leaves do.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::fsio::{self, set_if_present, DirOps};
use crate::v1::list_children;
use crate::{CgroupError, Limits, Stats, CPU_PERIOD_US, PARENT_DIR};

/// Controllers stockade enables for its groups. cpuset is left out on
/// purpose: it would need cpus/mems set up and gives nothing we use.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

#[derive(Debug)]
pub(crate) struct V2Layout {
    root: PathBuf,
    parent: PathBuf,
    /// Set once the parent exists and distributes our controllers, so that
    /// later creates skip the check. Checking is idempotent, so a race
    /// between threads only costs a few extra reads.
    parent_ready: AtomicBool,
    ops: DirOps,
}

/// The words of a space-separated control file such as `cgroup.controllers`.
fn words(path: &Path) -> Vec<String> {
    fsio::read_opt(path)
        .map(|t| t.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl V2Layout {
    pub(crate) fn new(root: PathBuf, ops: DirOps) -> Self {
        V2Layout {
            parent: root.join(PARENT_DIR),
            root,
            parent_ready: AtomicBool::new(false),
            ops,
        }
    }

    /// Our controllers that the root offers to its children.
    fn available(&self) -> Vec<&'static str> {
        let offered = words(&self.root.join("cgroup.controllers"));
        CONTROLLERS
            .into_iter()
            .filter(|c| offered.iter().any(|o| o == c))
            .collect()
    }

    pub(crate) fn describe(&self) -> String {
        let available = self.available();
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !available.contains(c))
            .collect();
        let root = self.root.display();
        if missing.is_empty() {
            format!("v2 at {root} ({})", available.join(", "))
        } else {
            format!(
                "v2 at {root} ({}; missing: {})",
                available.join(", "),
                missing.join(", ")
            )
        }
    }

    /// Creates the `stockade` parent if needed and makes sure the root and
    /// the parent hand our controllers down to the sandbox groups.
    fn ensure_parent(&self) -> Result<(), CgroupError> {
        let available = self.available();
        enable(&self.root, &available)?;
        match (self.ops.mkdir)(&self.parent) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::CreateDir {
                    path: self.parent.clone(),
                    source: e,
                })
            }
            _ => {}
        }
        enable(&self.parent, &available)
    }

    pub(crate) fn create(&self, name: &str, limits: &Limits) -> Result<V2Group, CgroupError> {
        if !self.parent_ready.load(Ordering::Acquire) {
            self.ensure_parent()?;
            self.parent_ready.store(true, Ordering::Release);
        }
        let dir = self.parent.join(name);
        let mut made = (self.ops.mkdir)(&dir);
        if matches!(&made, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            // Someone removed the parent since we checked it.
            self.ensure_parent()?;
            made = (self.ops.mkdir)(&dir);
        }
        made.map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CgroupError::AlreadyExists { path: dir.clone() },
            _ => CgroupError::CreateDir {
                path: dir.clone(),
                source,
            },
        })?;
        let opened = apply(&dir, limits).and_then(|()| open_dir(&dir));
        match opened {
            Ok(fd) => Ok(V2Group {
                dir,
                fd,
                ops: self.ops,
            }),
            Err(e) => {
                let _ = fsio::remove_dir(self.ops, &dir);
                Err(e)
            }
        }
    }

    pub(crate) fn open_existing(&self, name: &str) -> Option<V2Group> {
        let dir = self.parent.join(name);
        let fd = open_dir(&dir).ok()?;
        Some(V2Group {
            dir,
            fd,
            ops: self.ops,
        })
    }

    pub(crate) fn list(&self) -> Vec<String> {
        let mut names = list_children(&self.parent);
        names.sort();
        names
    }
}

/// Enables `controllers` in `dir/cgroup.subtree_control`, writing only the
/// ones not enabled yet (usually none, so usually no write at all).
fn enable(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let enabled = words(&dir.join("cgroup.subtree_control"));
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.iter().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // One write for all: the kernel applies it all or nothing.
    let line = missing.join(" ");
    fsio::write_file(&dir.join("cgroup.subtree_control"), &line).map_err(|source| {
        CgroupError::EnableControllers {
            path: dir.to_path_buf(),
            controllers: line,
            source,
        }
    })
}

/// A limit file is missing exactly when its controller is not enabled here.
fn set_limit(
    dir: &Path,
    controller: &'static str,
    file: &str,
    value: &str,
) -> Result<(), CgroupError> {
    if set_if_present(dir, file, value)? {
        Ok(())
    } else {
        Err(CgroupError::ControllerMissing {
            controller,
            place: dir.display().to_string(),
        })
    }
}

fn apply(dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    if let Some(bytes) = limits.memory_bytes {
        set_limit(dir, "memory", "memory.max", &bytes.to_string())?;
        // Swap is limited separately on v2; without this the group could
        // keep growing into swap past memory.max. Absent without swap support.
        set_if_present(dir, "memory.swap.max", "0")?;
    }
    // Kill the whole workload on OOM rather than one victim, which would
    // leave a half-dead sandbox behind (Linux 4.19+, else absent).
    set_if_present(dir, "memory.oom.group", "1")?;
    if let Some(pids) = limits.pids {
        set_limit(dir, "pids", "pids.max", &pids.to_string())?;
    }
    if let Some(quota) = limits.cpu_quota_us() {
        set_limit(dir, "cpu", "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    Ok(())
}

/// Opens a group directory as `O_PATH`, which is all `CLONE_INTO_CGROUP`
/// needs and which works whatever the directory's permission bits.
fn open_dir(dir: &Path) -> Result<OwnedFd, CgroupError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    open(dir, flags, Mode::empty()).map_err(|source| CgroupError::OpenDir {
        path: dir.to_path_buf(),
        source,
    })
}

#[derive(Debug)]
pub(crate) struct V2Group {
    dir: PathBuf,
    fd: OwnedFd,
    ops: DirOps,
}

impl V2Group {
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn dir_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        fsio::write_file(&self.dir.join("cgroup.procs"), &pid.to_string()).map_err(|source| {
            CgroupError::AddPid {
                pid,
                path: self.dir.clone(),
                source,
            }
        })
    }

    pub(crate) fn stats(&self) -> Stats {
        let dir = &self.dir;
        Stats {
            // cpu.stat is a core file, present even without the cpu controller.
            cpu_seconds: fsio::read_keyed(dir, "cpu.stat", "usage_usec") as f64 / 1e6,
            memory_current: fsio::read_u64(dir, "memory.current"),
            memory_peak: fsio::read_u64(dir, "memory.peak"),
            pids_current: fsio::read_u64(dir, "pids.current"),
            pids_peak: fsio::read_opt(&dir.join("pids.peak")).and_then(|t| fsio::parse_u64(&t)),
            oom_kills: fsio::read_keyed(dir, "memory.events", "oom_kill"),
            pids_limit_hits: fsio::read_keyed(dir, "pids.events", "max"),
            socket_memory: fsio::read_keyed(dir, "memory.stat", "sock"),
        }
    }

    /// v2 has no OOM eventfd; instead the kernel raises a modify event on
    /// `memory.events` whenever one of its counters changes.
    pub(crate) fn oom_notifier(&self) -> Result<OwnedFd, CgroupError> {
        let path = self.dir.join("memory.events");
        fsio::watch_modify(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CgroupError::ControllerMissing {
                controller: "memory",
                place: self.dir.display().to_string(),
            },
            _ => CgroupError::Notifier { path, source },
        })
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut pids = fsio::read_procs(&self.dir);
        pids.sort_unstable();
        pids
    }

    /// `cgroup.kill` (Linux 5.14+) kills the whole group atomically, forks
    /// included. Older kernels get freeze, kill each, thaw, repeat.
    pub(crate) fn kill_all(&self) {
        let deadline = Instant::now() + fsio::KILL_DEADLINE;
        match fsio::write_file(&self.dir.join("cgroup.kill"), "1") {
            Ok(()) => {
                fsio::wait_until(deadline, || self.pids().is_empty());
            }
            Err(_) if !self.dir.exists() => {}
            Err(_) => self.kill_each(deadline),
        }
    }

    fn kill_each(&self, deadline: Instant) {
        loop {
            // Frozen tasks cannot fork or exit, so the pids we read stay
            // valid; v2 delivers SIGKILL even to frozen tasks.
            let frozen = fsio::write_file(&self.dir.join("cgroup.freeze"), "1").is_ok();
            if frozen {
                let settle = (Instant::now() + Duration::from_millis(100)).min(deadline);
                fsio::wait_until(settle, || {
                    fsio::read_keyed(&self.dir, "cgroup.events", "frozen") == 1
                });
            }
            let pids = self.pids();
            fsio::kill_pids(&pids);
            if frozen {
                let _ = fsio::write_file(&self.dir.join("cgroup.freeze"), "0");
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

    pub(crate) fn remove_if_empty(self) -> Result<bool, CgroupError> {
        fsio::remove_dir_if_unused(self.ops, &self.dir).map_err(|source| CgroupError::RemoveDir {
            path: self.dir.clone(),
            source,
        })
    }

    pub(crate) fn remove(self) -> Result<(), CgroupError> {
        fsio::remove_dir(self.ops, &self.dir).map_err(|source| CgroupError::RemoveDir {
            path: self.dir.clone(),
            source,
        })
    }
}
