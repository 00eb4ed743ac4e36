//! A "group" without a cgroup, for sandboxes of an ordinary user who has
//! no delegated cgroup (cgroup v1, or v2 without delegation).
//!
//! The sandbox's processes are the processes of its init's pid namespace
//! (init is pid 1 there; killing it kills them all, by the kernel). They
//! are listed from the sandbox's own `/proc` (a descriptor init sends when
//! it is ready, [`PolledGroup::set_proc_dir`]): it shows that pid
//! namespace and nothing else, so a listing costs one directory read. Until
//! then (or if init sent none), from the host's `/proc`, checking each
//! host process's pid namespace. Usage is read from `/proc` by polling, so:
//!
//! - memory: the sum of the processes' resident sets (`statm`), checked
//!   every time the supervisor samples (200 ms). It can overshoot the
//!   limit by what the sandbox allocates between two samples, and it does
//!   not see memory that no process maps (files in the sandbox's tmpfs
//!   `/tmp`, up to its size cap; kernel memory such as socket buffers).
//!   Shared pages count once per process, so it errs towards killing
//!   early. A breach is reported as a kill ([`Stats::oom_kills`] 1), and
//!   the supervisor kills the sandbox.
//! - processes: counted for the report; the limit itself is the kernel's
//!   `RLIMIT_NPROC` inside the sandbox's user namespace, set by init.
//! - CPU: not limited; the time used is the processes' own (`stat`), so
//!   that of processes already gone is missed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::{CgroupError, Limits, Stats};

/// A sandbox's processes, found through its init.
#[derive(Debug)]
pub(crate) struct PolledGroup {
    memory_limit: Option<u64>,
    /// Init's pid and a pidfd for it, set when init is "added".
    init: OnceLock<(i32, OwnedFd, u64)>,
    /// The sandbox's `/proc` (a procfs of init's pid namespace), once
    /// init has sent it.
    proc_dir: OnceLock<OwnedFd>,
    memory_peak: AtomicU64,
    pids_peak: AtomicU64,
}

impl PolledGroup {
    pub(crate) fn new(limits: &Limits) -> PolledGroup {
        PolledGroup {
            memory_limit: limits.memory_bytes,
            init: OnceLock::new(),
            proc_dir: OnceLock::new(),
            memory_peak: AtomicU64::new(0),
            pids_peak: AtomicU64::new(0),
        }
    }

    /// Takes `pid` as the sandbox's init: the first pid added (init, by
    /// the launch). Later ones are its descendants and need nothing.
    pub(crate) fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        if self.init.get().is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(CgroupError::Track {
                pid,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: the kernel just returned this new descriptor; nothing
        // else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let ns = pid_ns(pid).ok_or_else(|| CgroupError::Track {
            pid,
            source: std::io::Error::from_raw_os_error(libc::ESRCH),
        })?;
        let _ = self.init.set((pid, pidfd, ns));
        Ok(())
    }

    /// Takes `fd` (a directory of a procfs mounted in init's pid
    /// namespace, sent by init before any workload ran) as the place to
    /// list the sandbox's processes. Anything but a procfs directory is
    /// ignored, as is every descriptor after the first.
    pub(crate) fn set_proc_dir(&self, fd: OwnedFd) {
        let is_proc = nix::sys::statfs::fstatfs(&fd)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC);
        if is_proc {
            let _ = self.proc_dir.set(fd);
        }
    }

    /// The processes of init's pid namespace as `(directory, names)`: the
    /// sandbox's `/proc` and the pids in that namespace if init sent it,
    /// else the host's `/proc` and host pids (see [`Self::pids`]). Empty
    /// once init has exited.
    fn listing(&self) -> (Option<&OwnedFd>, Vec<i32>) {
        let Some(dir) = self.proc_dir.get() else {
            return (None, self.pids());
        };
        let Some((_, pidfd, _)) = self.init.get() else {
            return (None, Vec::new());
        };
        if exited(pidfd) {
            return (None, Vec::new());
        }
        let Ok(rd) = nix::dir::Dir::openat(
            dir,
            ".",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            return (None, self.pids());
        };
        let mut v: Vec<i32> = rd
            .into_iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok()?.parse::<i32>().ok())
            .collect();
        v.sort_unstable();
        (Some(dir), v)
    }

    /// Whether no process but init is left in init's pid namespace (or
    /// init is gone, and with it every other one).
    pub(crate) fn holds_only_init(&self) -> bool {
        let Some((init, _, _)) = self.init.get() else {
            return true;
        };
        match self.listing() {
            // Init is 1 in its own namespace.
            (Some(_), v) => v.iter().all(|&p| p == 1),
            (None, v) => v.iter().all(|&p| p == *init),
        }
    }

    /// The processes of init's pid namespace, sorted (init itself only
    /// while the caller may inspect it: it makes itself undumpable).
    /// None once init has exited: the kernel ends every other process of
    /// the namespace before init's exit completes, so no scan is needed.
    pub(crate) fn pids(&self) -> Vec<i32> {
        let Some((_, pidfd, ns)) = self.init.get() else {
            return Vec::new();
        };
        if exited(pidfd) {
            return Vec::new();
        }
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut v: Vec<i32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| pid_ns(p) == Some(*ns))
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn stats(&self) -> Stats {
        let page = page_size();
        let ticks = clock_ticks();
        let mut memory = 0u64;
        let mut threads = 0u64;
        let mut cpu = 0u64;
        let (dir, procs) = self.listing();
        for p in procs {
            if let Some(rss) = read_proc(dir, p, "statm")
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            {
                memory += rss * page;
            }
            if let Some((t, c)) = read_proc(dir, p, "stat").and_then(|s| threads_and_cpu(&s)) {
                threads += t;
                cpu += c;
            }
        }
        let peak = self
            .memory_peak
            .fetch_max(memory, Ordering::Relaxed)
            .max(memory);
        let pids_peak = self
            .pids_peak
            .fetch_max(threads, Ordering::Relaxed)
            .max(threads);
        let over = self.memory_limit.is_some_and(|l| peak > l);
        Stats {
            cpu_seconds: cpu as f64 / ticks as f64,
            memory_current: memory,
            memory_peak: peak,
            pids_current: threads,
            pids_peak: Some(pids_peak),
            // Not a kernel OOM kill: the limit passed, which the
            // supervisor answers by killing the sandbox.
            oom_kills: u64::from(over),
            pids_limit_hits: 0,
            socket_memory: 0,
        }
    }

    /// Kills init, and with it every process of its pid namespace.
    pub(crate) fn kill_all(&self) {
        if let Some((_, pidfd, _)) = self.init.get() {
            // SAFETY: pidfd_send_signal on a pidfd we own; no memory is
            // passed (null siginfo). A pidfd cannot reach a reused pid.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
    }
}

/// `/proc/PID/FILE`, from the sandbox's procfs `dir` if given, else from
/// the host's.
fn read_proc(dir: Option<&OwnedFd>, pid: i32, file: &str) -> Option<String> {
    let Some(dir) = dir else {
        return std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok();
    };
    let fd = nix::fcntl::openat(
        dir,
        format!("{pid}/{file}").as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    std::io::read_to_string(std::fs::File::from(fd)).ok()
}

/// Whether the process of `pidfd` has exited (its pidfd polls readable).
fn exited(pidfd: &OwnedFd) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

/// The inode of `pid`'s pid namespace.
fn pid_ns(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// Threads and CPU ticks (user + system) from a `/proc/PID/stat` line.
/// The command name may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub(crate) fn threads_and_cpu(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, threads 20.
    let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some((n(20)?, n(14)? + n(15)?))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 100 0 0";
        assert_eq!(threads_and_cpu(line), Some((5, 10)));
        assert_eq!(threads_and_cpu("garbage"), None);
    }

    #[test]
    fn our_own_namespace_is_found_and_a_breach_reads_as_a_kill() {
        let g = PolledGroup::new(&Limits {
            cpus: None,
            memory_bytes: Some(1),
            pids: None,
        });
        assert!(g.pids().is_empty());
        // The test process as "init": every process of the host's pid
        // namespace is then counted, this one among them, with more than
        // one byte resident.
        g.add_pid(std::process::id() as i32).unwrap();
        assert!(g.pids().contains(&(std::process::id() as i32)));
        let s = g.stats();
        assert!(s.memory_current > 1);
        assert_eq!(s.oom_kills, 1);
        let roomy = PolledGroup::new(&Limits {
            cpus: None,
            memory_bytes: Some(u64::MAX),
            pids: None,
        });
        roomy.add_pid(std::process::id() as i32).unwrap();
        assert_eq!(roomy.stats().oom_kills, 0);
    }

    #[test]
    fn nothing_is_listed_once_init_has_exited() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let g = PolledGroup::new(&Limits {
            cpus: None,
            memory_bytes: None,
            pids: None,
        });
        g.add_pid(child.id() as i32).unwrap();
        // Alive, it is found (it shares our pid namespace, so the listing
        // is every process we can inspect).
        assert!(g.pids().contains(&(child.id() as i32)));
        g.kill_all();
        child.wait().unwrap();
        assert!(g.pids().is_empty());
        assert_eq!(g.stats().pids_current, 0);
    }
}
