//! `top`: the processes of a running sandbox, as the host sees them.
//!
//! The supervisor side (the daemon) lists them from the host's `/proc`:
//! every process in the pid namespace of the sandbox's init. Nothing the
//! sandbox wrote is trusted for *which* processes are listed or *what
//! they are*: membership is the kernel's (`/proc/PID/ns/pid`), pids,
//! uids and counters come from the kernel's own files, and each process is
//! read through a descriptor of its `/proc` directory, so a pid reused
//! between two reads yields an error for that process, never another
//! process's figures. Only the command line and the name (`comm`) are the
//! process's own words, shown as they are.
//!
//! User names are resolved by the caller (from the sandbox's
//! `/etc/passwd`, read inside the sandbox); this module gives uids as seen
//! inside, mapped through init's `uid_map`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

/// Why the process list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// A file of the host's `/proc` could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox's init is in the caller's own pid namespace: listing
    /// "its" namespace would list the host's processes, so nothing is.
    #[error("the sandbox's init (host pid {0}) has no pid namespace of its own; refusing to list the host's processes")]
    SharedPidNamespace(i32),
}

/// One process of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopEntry {
    /// Pid inside the sandbox.
    pub pid: i32,
    /// Pid on the host.
    pub host_pid: i32,
    /// Parent's pid inside the sandbox (0 for the sandbox's init).
    pub ppid: i32,
    /// Effective uid inside the sandbox (65534 when unmapped).
    pub uid: u32,
    /// Its name inside the sandbox; filled in by the caller, the uid as
    /// text until then.
    pub user: String,
    /// The kernel's one-letter state (R, S, D, Z, T, …).
    pub state: String,
    /// CPU time (user plus system) since it started.
    pub cpu_seconds: f64,
    /// CPU time over the time it has run, in percent of one CPU (as
    /// `ps`'s %CPU).
    pub cpu_percent: f64,
    /// Resident memory.
    pub rss_bytes: u64,
    /// Seconds since it started.
    pub elapsed_seconds: f64,
    /// Its command line; `[name]` when it has none (a zombie).
    pub cmd: Vec<String>,
}

/// Longest command line read of one process (a longer one is cut): the
/// sandbox writes them, and `--pids` (4096 by default) of them are read
/// per request, so this bounds what one `top` costs the daemon (16 MiB).
const CMDLINE_MAX: u64 = 4 * 1024;

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TopError {
    let path = path.into();
    move |source| TopError::Io { path, source }
}

/// The processes in the pid namespace of `init_pid` (a host pid), sorted
/// by their pid inside. Processes that end while being read are left out.
pub fn list(init_pid: i32) -> Result<Vec<TopEntry>, TopError> {
    let ns = |pid: &str| {
        let p = format!("/proc/{pid}/ns/pid");
        std::fs::read_link(&p).map_err(io(p))
    };
    let theirs = ns(&init_pid.to_string())?;
    if theirs == ns("self")? {
        return Err(TopError::SharedPidNamespace(init_pid));
    }
    let uid_map = read_small(&format!("/proc/{init_pid}/uid_map"))?;
    let clock = Clock::now()?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(io("/proc"))? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Gone meanwhile, or another namespace's: skipped either way.
        if let Ok(Some(e)) = read_process(pid, &theirs, &uid_map, &clock) {
            found.push(e);
        }
    }
    // Parents as pids inside: a parent outside the namespace (init's
    // supervisor) is 0, as `ps` shows it inside.
    let inside: std::collections::HashMap<i32, i32> =
        found.iter().map(|e| (e.host_pid, e.pid)).collect();
    for e in &mut found {
        e.ppid = inside.get(&e.ppid).copied().unwrap_or(0);
    }
    found.sort_by_key(|e| e.pid);
    Ok(found)
}

/// `/proc/uptime` and the tick rate, to turn `stat`'s ticks into seconds.
struct Clock {
    uptime: f64,
    ticks: f64,
    page: u64,
}

impl Clock {
    fn now() -> Result<Clock, TopError> {
        let up = read_small("/proc/uptime")?;
        let uptime = up
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        Ok(Clock {
            uptime,
            ticks,
            page,
        })
    }
}

fn read_small(path: &str) -> Result<String, TopError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Reads a file of the `/proc/PID` directory open as `dir`.
fn read_at(dir: &OwnedFd, name: &str, max: u64) -> std::io::Result<Vec<u8>> {
    let fd = openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    File::from(fd).take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// One process, if it is in the namespace `ns`; `Ok(None)` otherwise.
fn read_process(
    pid: i32,
    ns: &std::path::Path,
    uid_map: &str,
    clock: &Clock,
) -> std::io::Result<Option<TopEntry>> {
    // Everything below is read through this descriptor: once the process
    // is gone its files fail (ESRCH), even if the pid is taken again.
    let dir: OwnedFd = File::open(format!("/proc/{pid}"))?.into();
    let link = nix::fcntl::readlinkat(dir.as_fd(), "ns/pid")?;
    if std::path::Path::new(&link) != ns {
        return Ok(None);
    }
    let status = String::from_utf8_lossy(&read_at(&dir, "status", 64 * 1024)?).into_owned();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    // NSpid: the pid in each namespace from the host's down; the last is
    // the sandbox's.
    let inside_pid = field("NSpid")
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    let host_uid: u32 = field("Uid")
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(u32::MAX);
    let stat = read_at(&dir, "stat", 4096)?;
    let stat = String::from_utf8_lossy(&stat);
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses,
    // so the fields start after the last ')'.
    let (head, rest) = stat.rsplit_once(')').unwrap_or((&stat, ""));
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // Indexes after the comm: 0 state, 1 ppid, 11 utime, 12 stime,
    // 19 starttime, 21 rss (pages).
    let cpu_seconds = (num(11) + num(12)) as f64 / clock.ticks;
    let elapsed = (clock.uptime - num(19) as f64 / clock.ticks).max(0.0);
    let cmdline = read_at(&dir, "cmdline", CMDLINE_MAX)?;
    let mut cmd: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    while cmd.last().is_some_and(String::is_empty) {
        cmd.pop();
    }
    if cmd.is_empty() {
        cmd.push(format!("[{comm}]"));
    }
    let uid = map_id(uid_map, host_uid);
    Ok(Some(TopEntry {
        pid: inside_pid,
        host_pid: pid,
        ppid: num(1) as i32,
        uid,
        user: uid.to_string(),
        state: f.first().unwrap_or(&"?").to_string(),
        cpu_seconds,
        cpu_percent: if elapsed > 0.0 {
            cpu_seconds / elapsed * 100.0
        } else {
            0.0
        },
        rss_bytes: num(21) * clock.page,
        elapsed_seconds: elapsed,
        cmd,
    }))
}

/// A host id as seen inside, through a `uid_map` read from the host
/// (`INSIDE HOST COUNT` lines); 65534 (the overflow id) when unmapped.
pub fn map_id(map: &str, host: u32) -> u32 {
    for line in map.lines() {
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        if let [inside, start, count] = v[..] {
            let h = u64::from(host);
            if h >= start && h < start + count {
                return (inside + h - start) as u32;
            }
        }
    }
    65534
}

/// Names for uids from an `/etc/passwd` text (`name:x:uid:…` lines);
/// lines that do not parse are skipped.
pub fn passwd_names(text: &str) -> std::collections::HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(':');
            let name = it.next()?;
            let uid = it.nth(1)?.parse().ok()?;
            (!name.is_empty()).then(|| (uid, name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_through_each_range_and_overflow_outside() {
        let map = "         0    2000000       1000\n      1000    1000        1\n";
        assert_eq!(map_id(map, 2000000), 0);
        assert_eq!(map_id(map, 2000999), 999);
        assert_eq!(map_id(map, 1000), 1000);
        assert_eq!(map_id(map, 0), 65534);
        assert_eq!(map_id(map, 2001000), 65534);
    }

    #[test]
    fn passwd_names_skip_what_does_not_parse() {
        let names = passwd_names("root:x:0:0::/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\nbroken\n:x:5:5\nx:x:notanumber:1\n");
        assert_eq!(names.len(), 2);
        assert_eq!(names[&0], "root");
        assert_eq!(names[&1000], "agent");
    }

    #[test]
    fn refuses_to_list_a_process_in_our_own_pid_namespace() {
        // This test process shares the host's (its own) pid namespace.
        let e = list(std::process::id() as i32).unwrap_err();
        assert!(matches!(e, TopError::SharedPidNamespace(_)), "{e}");
    }
}
