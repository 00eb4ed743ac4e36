//! The subcommands after `create`: start, state, kill, delete, exec, ps,
//! list, pause, resume, update; and `features`, `spec`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroups::{self, Group};
use crate::config::{Process, Resources};
use crate::state::{Dir, Saved, StateJson, Status};
use crate::{hooks, process, sys};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Create(#[from] crate::create::CreateError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error("container {id:?} is {status}; {what}")]
    WrongStatus {
        id: String,
        status: Status,
        what: &'static str,
    },
    #[error("{0:?} is not a signal: give a number or a name such as TERM, SIGKILL or 9")]
    BadSignal(String),
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: Errno,
    },
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("exec failed: {0}")]
    Exec(String),
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> OpError {
    let what = what.into();
    move |source| OpError::Sys { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpError {
    let what = what.into();
    move |source| OpError::Io { what, source }
}

fn load(root: &Path, id: &str) -> Result<(Dir, Saved), OpError> {
    let dir = Dir::of(root, id)?;
    let saved = dir.load()?;
    Ok((dir, saved))
}

/// `state`: the runtime-spec state.
pub fn state(root: &Path, id: &str) -> Result<StateJson, OpError> {
    let (dir, saved) = load(root, id)?;
    let status = saved.status(&dir);
    Ok(saved.to_json(status))
}

/// `start`: lets init run the container's process.
pub fn start(root: &Path, id: &str) -> Result<(), OpError> {
    let (dir, saved) = load(root, id)?;
    let status = saved.status(&dir);
    if status != Status::Created {
        return Err(OpError::WrongStatus {
            id: id.into(),
            status,
            what: "only a created container can be started",
        });
    }
    let fifo = nix::fcntl::open(
        &dir.fifo(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open the start fifo"))?;
    loop {
        let mut p = libc::pollfd {
            fd: fifo.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        let mut b = [0u8; 1];
        match nix::unistd::read(&fifo, &mut b) {
            Ok(1) => break,
            Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Err(e) => return Err(sys_err("read the start fifo")(e)),
        }
        if !saved.init_alive() {
            return Err(OpError::WrongStatus {
                id: id.into(),
                status: Status::Stopped,
                what: "its init exited before it could start",
            });
        }
    }
    let _ = std::fs::remove_file(dir.fifo());
    let spec = crate::config::Spec::load(&saved.bundle).ok();
    if let Some(h) = spec.and_then(|s| s.hooks) {
        let st = saved.to_json(Status::Running);
        for hook in &h.poststart {
            // A failing poststart hook is reported, not fatal (runtime-spec).
            if let Err(e) = hooks::run(hook, &st) {
                eprintln!(
                    "stockade-runc: warning: {}",
                    stockade_isolate::error_chain(&e)
                );
            }
        }
    }
    Ok(())
}

/// A signal by number or name (`9`, `KILL`, `SIGKILL`).
pub fn parse_signal(s: &str) -> Result<Signal, OpError> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| OpError::BadSignal(s.into()));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| OpError::BadSignal(s.into()))
}

/// `kill [--all] ID SIGNAL`.
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<(), OpError> {
    let sig = parse_signal(signal)?;
    let (dir, saved) = load(root, id)?;
    let status = saved.status(&dir);
    if status == Status::Stopped && !all {
        return Err(OpError::WrongStatus {
            id: id.into(),
            status,
            what: "there is no process to signal",
        });
    }
    if all {
        let g = Group::open(&saved.cgroup_dirs);
        for pid in g.pids() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
        }
        if sig == Signal::SIGKILL && status == Status::Paused {
            let _ = g.freeze(false);
        }
        return Ok(());
    }
    nix::sys::signal::kill(Pid::from_raw(saved.pid), sig)
        .map_err(sys_err("signal the container's init"))
}

/// `delete [--force]`.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), OpError> {
    let (dir, saved) = load(root, id)?;
    let status = saved.status(&dir);
    let g = Group::open(&saved.cgroup_dirs);
    match status {
        Status::Stopped => {}
        // Never started: nothing of the workload ran, runc deletes it too.
        Status::Created => kill_all(&g, &saved),
        _ if force => kill_all(&g, &saved),
        _ => {
            return Err(OpError::WrongStatus {
                id: id.into(),
                status,
                what: "stop it first or use delete --force",
            })
        }
    }
    // The keeper reads its last figures from the cgroup.
    crate::supervise::wait_for_keeper(&dir.path);
    g.remove();
    if let Some(w) = &saved.overlay_work {
        let _ = std::fs::remove_dir_all(w);
    }
    let st = saved.to_json(Status::Stopped);
    for hook in &saved.poststop {
        if let Err(e) = hooks::run(hook, &st) {
            eprintln!(
                "stockade-runc: warning: {}",
                stockade_isolate::error_chain(&e)
            );
        }
    }
    dir.remove()?;
    Ok(())
}

fn kill_all(g: &Group, saved: &Saved) {
    let _ = nix::sys::signal::kill(Pid::from_raw(saved.pid), Signal::SIGKILL);
    for pid in g.pids() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = g.freeze(false);
    // Wait (bounded) until they are gone so the cgroup can be removed.
    for _ in 0..500 {
        if g.pids().is_empty() && !saved.init_alive() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `ps`: the host pids in the container's cgroup.
pub fn ps(root: &Path, id: &str) -> Result<Vec<i32>, OpError> {
    let (_, saved) = load(root, id)?;
    Ok(Group::open(&saved.cgroup_dirs).pids())
}

/// `list`: every container under the root.
pub fn list(root: &Path) -> Vec<StateJson> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        if let Some(id) = e.file_name().to_str() {
            if let Ok(s) = state(root, id) {
                out.push(s);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// `pause` / `resume`.
pub fn pause(root: &Path, id: &str, frozen: bool) -> Result<(), OpError> {
    let (dir, saved) = load(root, id)?;
    let status = saved.status(&dir);
    let ok = if frozen {
        status == Status::Running
    } else {
        status == Status::Paused
    };
    if !ok {
        return Err(OpError::WrongStatus {
            id: id.into(),
            status,
            what: if frozen {
                "only a running container can be paused"
            } else {
                "only a paused container can be resumed"
            },
        });
    }
    Group::open(&saved.cgroup_dirs).freeze(frozen)?;
    Ok(())
}

/// `update --resources`: new limits from a runtime-spec resources JSON.
pub fn update(root: &Path, id: &str, resources_json: &[u8]) -> Result<(), OpError> {
    let (_, saved) = load(root, id)?;
    let r: Resources = serde_json::from_slice(resources_json).map_err(|e| {
        OpError::Invalid(format!(
            "--resources is not a runtime-spec resources object: {e}"
        ))
    })?;
    let g = Group::open(&saved.cgroup_dirs);
    let v2 = saved
        .cgroup_dirs
        .iter()
        .all(|d| d.join("cgroup.controllers").exists());
    g.apply(&r, v2)?;
    Ok(())
}

/// What `exec` is given.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub root: PathBuf,
    pub id: String,
    /// The process to run (`--process FILE`, or built from the command
    /// line over the container's own process).
    pub process: Process,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub detach: bool,
    /// `--preserve-fds N`: the caller's fds 3..3+N stay open in the
    /// process (as runc).
    pub preserve_fds: u32,
}

/// The container's configured process, the base of `exec ID CMD…`.
pub fn base_process(root: &Path, id: &str) -> Result<Process, OpError> {
    Ok(load(root, id)?.1.process)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
enum ExecMsg {
    Started { pid: i32 },
    Error { msg: String },
}

/// `exec`: a new process in the running container. Returns its exit
/// status (0 at once with `detach`).
pub fn exec(o: &ExecOptions) -> Result<i32, OpError> {
    let (dir, saved) = load(&o.root, &o.id)?;
    let status = saved.status(&dir);
    if !matches!(status, Status::Running | Status::Created) {
        return Err(OpError::WrongStatus {
            id: o.id.clone(),
            status,
            what: "a process can only be started in a running container",
        });
    }
    if o.process.args.is_empty() {
        return Err(OpError::Invalid(
            "exec: the process has no args: name the program to run".into(),
        ));
    }
    if let Err(crate::config::ConfigError::Invalid(msg)) =
        crate::floor::check_capabilities(&o.process)
    {
        return Err(OpError::Invalid(format!("exec: {msg}")));
    }
    let console = if o.process.terminal {
        let p = o.console_socket.as_ref().ok_or_else(|| {
            OpError::Invalid(
                "exec: a terminal was asked for but no --console-socket was given".into(),
            )
        })?;
        Some(sys::connect_console(p).map_err(io_err(format!(
            "connect to the console socket {}",
            p.display()
        )))?)
    } else {
        None
    };
    for r in &o.process.rlimits {
        crate::create::set_rlimit(0, &r.kind, r.soft, r.hard)?;
    }
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys_err("make the exec socket"))?;
    // SAFETY: the CLI is single-threaded.
    let joiner = match unsafe { nix::unistd::fork() }.map_err(sys_err("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            let msg = match join_and_spawn(
                &saved,
                &o.process,
                console.as_ref(),
                theirs.as_raw_fd(),
                o.preserve_fds,
            ) {
                Ok(pid) => ExecMsg::Started { pid },
                Err(msg) => ExecMsg::Error { msg },
            };
            let _ = sys::send(theirs.as_raw_fd(), &msg, &[]);
            // SAFETY: leaves without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(theirs);
    drop(console);
    let _ = nix::sys::wait::waitpid(joiner, None);
    let mut pid = None;
    // The joiner's report, then (if the last step failed) the process's.
    while let Ok(Some((m, _))) = sys::recv::<ExecMsg>(ours.as_raw_fd()) {
        match m {
            ExecMsg::Started { pid: p } => pid = Some(p),
            ExecMsg::Error { msg } => {
                if let Some(p) = pid {
                    let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
                }
                return Err(OpError::Exec(msg));
            }
        }
        if o.detach {
            break;
        }
    }
    let pid = pid.ok_or_else(|| OpError::Exec("the process was not started".into()))?;
    if let Some(p) = &o.pid_file {
        crate::create::write_pid_file(p, pid)?;
    }
    if o.detach {
        return Ok(0);
    }
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(sys_err("wait for the process")(e)),
        }
    }
}

/// In the forked joiner: enters the container's cgroup and namespaces,
/// then clones the process as a sibling (`CLONE_PARENT`: the `exec`
/// caller's child, so `--detach` hands it to the engine's subreaper).
fn join_and_spawn(
    saved: &Saved,
    p: &Process,
    console: Option<&OwnedFd>,
    sock: i32,
    preserve_fds: u32,
) -> Result<i32, String> {
    Group::open(&saved.cgroup_dirs)
        .join_self()
        .map_err(|e| stockade_isolate::error_chain(&e))?;
    let pid = saved.pid;
    let flags = [
        ("net", libc::CLONE_NEWNET),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
        ("user", libc::CLONE_NEWUSER),
    ];
    // Open all first: after entering the mount namespace, /proc is the
    // container's.
    let mut fds = Vec::new();
    for (name, flag) in flags {
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let mine = std::fs::metadata(format!("/proc/self/ns/{name}"));
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (&theirs, &mine) {
            if a.ino() == b.ino() && a.dev() == b.dev() {
                continue;
            }
        }
        let f = nix::fcntl::open(
            format!("/proc/{pid}/ns/{name}").as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("cannot open the container's {name} namespace: {e}"))?;
        fds.push((name, flag, f));
    }
    for (name, flag, f) in &fds {
        // SAFETY: a live namespace descriptor and its type.
        Errno::result(unsafe { libc::setns(f.as_raw_fd(), *flag) })
            .map_err(|e| format!("cannot join the container's {name} namespace: {e}"))?;
    }
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::setresgid(0, 0, 0) })
        .map_err(|e| format!("cannot become root in the container: {e}"))?;
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::setresuid(0, 0, 0) })
        .map_err(|e| format!("cannot become root in the container: {e}"))?;
    let prepared = process::prepare(p, saved.seccomp.as_ref(), saved.landlock.as_ref())
        .map_err(|e| stockade_isolate::error_chain(&e))?;
    // SAFETY: this joiner is single-threaded (a fork of the CLI).
    let cloned = unsafe { stockade_isolate::sys::clone_fork(libc::CLONE_PARENT) }
        .map_err(|e| format!("cannot start the process: {e}"))?;
    match cloned {
        Some((child, _)) => Ok(child),
        None => {
            let r = spawn_child(&prepared, p, console, preserve_fds);
            let msg = ExecMsg::Error { msg: r };
            let _ = sys::send(sock, &msg, &[]);
            // SAFETY: leaves without running destructors.
            unsafe { libc::_exit(127) }
        }
    }
}

fn spawn_child(
    prepared: &process::Prepared,
    p: &Process,
    console: Option<&OwnedFd>,
    preserve_fds: u32,
) -> String {
    let _ = nix::unistd::setsid();
    if p.terminal {
        let Some(console) = console else {
            return "no console socket".into();
        };
        let (master, slave) = match stockade_isolate::workload::open_pty() {
            Ok(x) => x,
            Err(e) => return format!("cannot open a terminal: {e}"),
        };
        if let Some(sz) = p.console_size {
            let ws = libc::winsize {
                ws_row: sz.height,
                ws_col: sz.width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one live winsize.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
        let s = match nix::fcntl::open(
            slave.as_str(),
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(s) => s,
            Err(e) => return format!("cannot open the terminal: {e}"),
        };
        // SAFETY: makes the terminal ours (we lead a new session).
        unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCSCTTY, 0) };
        for fd in 0..3 {
            // SAFETY: dup2 onto our own standard descriptors.
            unsafe { libc::dup2(s.as_raw_fd(), fd) };
        }
        if let Err(e) = sys::send_console(console.as_raw_fd(), master.as_raw_fd()) {
            return format!("cannot send the terminal: {e}");
        }
    }
    sys::cloexec_from(3 + preserve_fds);
    stockade_isolate::error_chain(&process::exec(prepared))
}

/// `features`: what this runtime supports (runtime-spec features.json).
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": crate::state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "bind", "rbind", "noatime", "relatime", "strictatime", "nodiratime"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": crate::floor::CEILING,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "org.opencontainers.runc.version": "stockade",
            "org.stockade.runtime": "stockade-runc"
        }
    })
}

/// `spec`: a default config.json for a bundle with `rootfs/`.
pub fn default_spec() -> serde_json::Value {
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "stockade",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGHUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("sigint").unwrap(), Signal::SIGINT);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn the_default_spec_is_a_valid_config() {
        let s: crate::config::Spec = serde_json::from_value(default_spec()).unwrap();
        s.validate().unwrap();
    }
}
