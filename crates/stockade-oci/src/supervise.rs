//! What `create` adds for stockade's own policy (`annotations.rs`): the
//! container's network put behind the egress filter, and the keeper's
//! watch over the container — timeout, usage peaks, limit breaches — that
//! ends in the container's report.
//!
//! The egress stack itself (tokio, smoltcp) is not this crate's: the CLI
//! hands `create` a [`NetFilter`] that the keeper starts after its fork.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use stockade_isolate::tun::TunConfig;
use stockade_policy::NetworkPolicy;

use crate::cgroups::Group;

/// The TUN device's name inside the container.
pub const TUN_NAME: &str = "stockade0";

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(
        "the container's network must go through stockade's egress filter, but this \
         build of stockade-runc has none to run"
    )]
    NoFilter,
    #[error(
        "the config grants CAP_NET_ADMIN while stockade's egress filter is asked for \
         (org.stockade.net.allow-hosts or a policy's network mode): with it the container \
         could route around the filter; drop the capability or the allowlist"
    )]
    NetAdmin,
    #[error("cannot {what} in the container's network namespace")]
    Net {
        what: String,
        #[source]
        source: Errno,
    },
    #[error(
        "the network namespace is already behind the egress filter of another container \
         (a pod's shared namespace): put the allowlist on the first container that joins \
         it (the pod sandbox) only"
    )]
    AlreadyFiltered,
    #[error(transparent)]
    Tun(#[from] stockade_isolate::tun::TunError),
}

fn net_err(what: impl Into<String>) -> impl FnOnce(Errno) -> SuperviseError {
    let what = what.into();
    move |source| SuperviseError::Net { what, source }
}

/// One limit breach, as stockade's run reports carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// `timeout`, `memory-limit`, `pids-limit`, `disk-limit`,
    /// `network-denied`, `network-rate-limit`.
    pub kind: String,
    pub limit: String,
    pub observed: String,
    /// Seconds since `create`.
    pub at: f64,
}

/// The egress stack the keeper runs on the container's TUN device.
pub trait NetFilter {
    /// The addresses of the TUN device (both ends must agree on them).
    fn tun_config(&self) -> TunConfig;
    /// Starts serving `tun` (called in the keeper, which may then start
    /// threads).
    fn start(
        &mut self,
        tun: OwnedFd,
        policy: &NetworkPolicy,
        id: &str,
        started_at: f64,
    ) -> Result<(), String>;
    /// Denials since the last call.
    fn drain(&mut self) -> Vec<Violation>;
    /// Stops the stack: the last denials and its totals (the report's
    /// `network` section).
    fn finish(&mut self) -> (Vec<Violation>, Option<serde_json::Value>);
}

/// The resolv.conf a filtered container gets in place of the engine's
/// (the filter answers DNS at its gateway address only).
pub fn resolv_conf(cfg: &TunConfig) -> String {
    format!("nameserver {}\n", cfg.dns)
}

/// Puts the network namespace of `pid` behind the filter: every link but
/// `lo` is set down (which drops its addresses' routes, so nothing the
/// engine set up — a veth with a default route, a bridge subnet — stays
/// reachable), and with `tun` (modes `allowlist`/`open`) the TUN device is
/// made with the default route through it. Runs as host root in `create`, whose own
/// network namespace is restored before returning.
pub fn lock_down_network(
    pid: i32,
    tun: Option<&TunConfig>,
) -> Result<Option<OwnedFd>, SuperviseError> {
    let open = |p: &str| {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    };
    let ours = open("/proc/thread-self/ns/net").map_err(net_err("open create's own namespace"))?;
    let theirs = open(&format!("/proc/{pid}/ns/net")).map_err(net_err("open the namespace"))?;
    nix::sched::setns(&theirs, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(net_err("enter the namespace"))?;
    let r = lock_down_here(tun);
    let back = nix::sched::setns(&ours, nix::sched::CloneFlags::CLONE_NEWNET);
    let dev = r?;
    back.map_err(net_err("leave the namespace"))?;
    Ok(dev)
}

fn lock_down_here(tun: Option<&TunConfig>) -> Result<Option<OwnedFd>, SuperviseError> {
    // /proc/thread-self/net is this thread's network namespace's view.
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| {
        net_err("list the interfaces")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    let names: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect();
    // SAFETY: plain socket call; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = Errno::result(sock).map_err(net_err("open a configuration socket"))?;
    // SAFETY: `sock` is a descriptor we just opened and own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    if tun.is_some() && names.iter().any(|n| n == TUN_NAME) {
        return Err(SuperviseError::AlreadyFiltered);
    }
    for name in names {
        if name == "lo" {
            continue;
        }
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one live ifreq.
        Errno::result(unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCGIFFLAGS as libc::Ioctl,
                &mut req,
            )
        })
        .map_err(net_err(format!("read the flags of {name}")))?;
        // SAFETY: the union's flags member was just filled in by the kernel.
        unsafe { req.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short) };
        // SAFETY: as above.
        Errno::result(unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCSIFFLAGS as libc::Ioctl,
                &mut req,
            )
        })
        .map_err(net_err(format!("set {name} down")))?;
    }
    match tun {
        None => Ok(None),
        Some(cfg) => Ok(Some(stockade_isolate::tun::configure_tun_inside(
            TUN_NAME, cfg,
        )?)),
    }
}

/// Where the report of container `id` is written when its init ends: kept
/// after `delete` (which removes `<root>/<id>/`), replaced by the next
/// container of that id. Ids cannot start with a dot, so this directory
/// is never a container's.
pub fn report_path(root: &Path, id: &str) -> PathBuf {
    root.join(".reports").join(format!("{id}.json"))
}

/// The report: the shape of `stockade run --report` where it applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    /// `exited`, `signaled`, `timeout`, `memory-limit`, `disk-limit`.
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub violations: Vec<Violation>,
    pub usage: Usage,
    pub command: Vec<String>,
    pub started_at: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub network: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: u64,
    pub disk_bytes: u64,
    pub pids_peak: u64,
}

/// What the keeper watches.
pub struct Watch {
    pub id: String,
    pub report: PathBuf,
    pub command: Vec<String>,
    pub group: Group,
    pub timeout: Option<Duration>,
    /// Bytes the container may add to `disk_dir`.
    pub disk: Option<(u64, PathBuf)>,
    pub net: Option<(Box<dyn NetFilter>, OwnedFd, NetworkPolicy)>,
    /// Init's host pid.
    pub pid: i32,
    /// `<root>/<id>/keeper.lock`, locked (`flock`) until the report is
    /// written: `delete` waits for it before it removes the cgroup the
    /// report's last figures are read from.
    pub lock: Option<OwnedFd>,
    /// When `create` made the container (times in the report count from
    /// it, the keeper may start later).
    pub created: Instant,
    pub created_unix: f64,
    /// `pids.events` `max` when the cgroup was made: a fork refused
    /// after it is a violation, even one before the keeper first looks.
    pub pids_hits_at_create: u64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("id", &self.id)
            .field("timeout", &self.timeout)
            .field("disk", &self.disk)
            .field("net", &self.net.is_some())
            .finish_non_exhaustive()
    }
}

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `key N` from a flat-keyed cgroup file (`memory.events`,
/// `memory.oom_control`, `pids.events`).
fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let t = std::fs::read_to_string(dir.join(file)).ok()?;
    t.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn first<T>(g: &Group, f: impl Fn(&Path) -> Option<T>) -> Option<T> {
    g.dirs.iter().find_map(|d| f(d))
}

fn memory_now(g: &Group) -> u64 {
    first(g, |d| read_u64(d, "memory.max_usage_in_bytes"))
        .or_else(|| first(g, |d| read_u64(d, "memory.peak")))
        .or_else(|| first(g, |d| read_u64(d, "memory.current")))
        .unwrap_or(0)
}

fn oom_kills(g: &Group) -> u64 {
    first(g, |d| keyed(d, "memory.events", "oom_kill"))
        .or_else(|| first(g, |d| keyed(d, "memory.oom_control", "oom_kill")))
        .unwrap_or(0)
}

pub fn pids_max_hits(g: &Group) -> u64 {
    first(g, |d| keyed(d, "pids.events", "max")).unwrap_or(0)
}

fn cpu_seconds(g: &Group) -> f64 {
    first(g, |d| read_u64(d, "cpuacct.usage"))
        .map(|ns| ns as f64 / 1e9)
        .or_else(|| first(g, |d| keyed(d, "cpu.stat", "usage_usec")).map(|us| us as f64 / 1e6))
        .unwrap_or(0.0)
}

/// Bytes under `dir` (not following symlinks, not leaving its file
/// system).
fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// The name of the keeper's lock file in the container's state directory.
pub const KEEPER_LOCK: &str = "keeper.lock";

/// Opens and locks the keeper's lock (before the keeper is forked, so
/// that no `delete` can come first; the fork shares the lock).
pub fn lock_keeper(dir: &Path) -> Option<OwnedFd> {
    let f = std::fs::File::create(dir.join(KEEPER_LOCK)).ok()?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then(|| f.into())
}

/// Waits (a few seconds at most) until the keeper of the container in
/// `dir` has written its report; called by `delete` once init is gone.
pub fn wait_for_keeper(dir: &Path) {
    let Ok(f) = std::fs::File::open(dir.join(KEEPER_LOCK)) else {
        return;
    };
    // The keeper usually finishes within a millisecond of init: look
    // often at first (a 10 ms step was most of `run`'s time), then less.
    for i in 0..700 {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(if i < 200 { 1 } else { 10 }));
    }
}

/// Init's exit status while it is a zombie (`/proc/<pid>/stat` field
/// 52); `None` once its reaper has taken it.
fn zombie_status(pid: i32) -> Option<i32> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &t[t.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 is the state, field 52 the exit code (index 0 here is 3).
    if f.first() != Some(&"Z") {
        return None;
    }
    f.get(49)?.parse().ok()
}

/// The keeper's loop (in the forked keeper, stdio on /dev/null): samples
/// the cgroup, kills on a timeout or disk breach, runs the egress filter,
/// and writes the report once init's pidfd says it has ended.
pub fn keep(pidfd: &OwnedFd, mut w: Watch) {
    let (start, started_at) = (w.created, w.created_unix);
    // Before any thread starts: it visits the initial network namespace.
    let exits = crate::exitwatch::ExitWatch::new(w.pid);
    // A filter that does not start leaves the TUN unserved: the
    // container then reaches nothing, which fails closed.
    let net = w
        .net
        .take()
        .and_then(|(mut f, tun, p)| f.start(tun, &p, &w.id, started_at).ok().map(|()| f));
    run_loop(pidfd, &w, start, started_at, net, exits);
}

fn run_loop(
    pidfd: &OwnedFd,
    w: &Watch,
    start: Instant,
    started_at: f64,
    mut net: Option<Box<dyn NetFilter>>,
    exits: Option<crate::exitwatch::ExitWatch>,
) {
    const TICK: Duration = Duration::from_millis(250);
    let mut violations: Vec<Violation> = Vec::new();
    let mut outcome: Option<&'static str> = None;
    let mut pids_peak = 0u64;
    let mut disk_bytes = 0u64;
    let mut last_disk = Instant::now() - Duration::from_secs(60);
    let pids_hits0 = w.pids_hits_at_create;
    let mut pids_reported = false;
    let kill = |w: &Watch| {
        let _ = stockade_isolate::sys::pidfd_send_signal(pidfd, libc::SIGKILL);
        for pid in w.group.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    let mut status: Option<i32> = None;
    let mut peak = 0u64;
    let mut oom = 0u64;
    let exit_code = loop {
        let mut p = [
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: exits.as_ref().map_or(-1, |e| e.fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two live pollfds (a negative fd is ignored).
        let _ = unsafe { libc::poll(p.as_mut_ptr(), 2, TICK.as_millis() as i32) };
        if let Some(e) = &exits {
            status = status.or_else(|| e.exit_of(w.pid));
        }
        peak = peak.max(memory_now(&w.group));
        oom = oom.max(oom_kills(&w.group));
        let at = start.elapsed().as_secs_f64();
        pids_peak = pids_peak.max(w.group.pids().len() as u64);
        if let Some(f) = net.as_mut() {
            violations.extend(f.drain());
        }
        if !pids_reported && pids_max_hits(&w.group) > pids_hits0 {
            pids_reported = true;
            violations.push(Violation {
                kind: "pids-limit".into(),
                limit: first(&w.group, |d| {
                    std::fs::read_to_string(d.join("pids.max"))
                        .ok()
                        .map(|s| s.trim().to_string())
                })
                .unwrap_or_default(),
                observed: "a fork or clone refused".into(),
                at,
            });
        }
        if p[0].revents != 0 {
            break status
                .or_else(|| exits.as_ref().and_then(|e| e.exit_of(w.pid)))
                .or_else(|| zombie_status(w.pid));
        }
        if outcome.is_some() {
            continue;
        }
        if let Some(t) = w.timeout.filter(|t| start.elapsed() >= *t) {
            violations.push(Violation {
                kind: "timeout".into(),
                limit: format!("{}s", t.as_secs_f64()),
                observed: format!("still running after {at:.1}s"),
                at,
            });
            outcome = Some("timeout");
            kill(w);
            continue;
        }
        if let Some((limit, dir)) = &w.disk {
            if last_disk.elapsed() >= Duration::from_secs(1) {
                last_disk = Instant::now();
                disk_bytes = tree_bytes(dir);
                if disk_bytes > *limit {
                    violations.push(Violation {
                        kind: "disk-limit".into(),
                        limit: limit.to_string(),
                        observed: disk_bytes.to_string(),
                        at,
                    });
                    outcome = Some("disk-limit");
                    kill(w);
                }
            }
        }
    };
    let at = start.elapsed().as_secs_f64();
    let oom = oom.max(oom_kills(&w.group));
    let peak = peak.max(memory_now(&w.group));
    if oom > 0 {
        violations.push(Violation {
            kind: "memory-limit".into(),
            limit: first(&w.group, |d| read_u64(d, "memory.limit_in_bytes"))
                .or_else(|| first(&w.group, |d| read_u64(d, "memory.max")))
                .map_or_else(|| "?".into(), |l| l.to_string()),
            observed: format!("{oom} process(es) killed by the OOM killer"),
            at,
        });
    }
    let mut network = None;
    if let Some(mut f) = net.take() {
        let (v, summary) = f.finish();
        violations.extend(v);
        network = summary;
    }
    let (code, signal) = match exit_code {
        Some(s) if s & 0x7f != 0 => (None, Some(s & 0x7f)),
        Some(s) => (Some((s >> 8) & 0xff), None),
        None => (None, None),
    };
    let outcome = outcome.unwrap_or(match (oom > 0, signal) {
        (true, Some(9)) => "memory-limit",
        (_, Some(_)) => "signaled",
        _ => "exited",
    });
    let report = Report {
        id: w.id.clone(),
        outcome: outcome.into(),
        exit_code: code,
        signal,
        violations,
        usage: Usage {
            wall_seconds: at,
            cpu_seconds: cpu_seconds(&w.group),
            peak_memory_bytes: peak,
            disk_bytes,
            pids_peak,
        },
        command: w.command.clone(),
        started_at,
        network,
    };
    write_report(&w.report, &report);
}

fn write_report(path: &Path, r: &Report) {
    let Ok(json) = serde_json::to_vec_pretty(r) else {
        return;
    };
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_cgroup_files_are_read_by_key() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(keyed(t.path(), "memory.oom_control", "oom_kill"), Some(3));
        assert_eq!(keyed(t.path(), "memory.oom_control", "nothing"), None);
        let g = Group {
            dirs: vec![t.path().to_path_buf()],
        };
        assert_eq!(oom_kills(&g), 3);
        assert_eq!(pids_max_hits(&g), 0);
    }

    #[test]
    fn reports_go_beside_the_containers_under_a_dot_dir() {
        let p = report_path(Path::new("/run/x"), "c1");
        assert_eq!(p, Path::new("/run/x/.reports/c1.json"));
        assert!(crate::state::check_id(".reports").is_err());
    }
}
