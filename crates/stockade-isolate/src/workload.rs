//! Starting the workload from init: the last steps that turn a process
//! of the sandbox's init into the untrusted program.
//!
//! In the forked child, in this order: default signal handling, its own
//! process group (or session and controlling terminal with `--tty`),
//! supplementary groups cleared, gid set, Landlock applied, capability
//! bounding set dropped, uid set (which clears the remaining capabilities
//! for `agent`), capabilities cleared for root, `no_new_privs`, working
//! directory, seccomp, and `execve`. Seccomp comes last because it forbids
//! calls the earlier steps make.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::idmap::AGENT_ID;
use crate::proto::SpawnRequest;
use crate::spec::SandboxSpec;
use crate::{caps, landlock_rules, seccomp, sys};

/// Opens a terminal pair in the sandbox's own devpts; returns the master
/// side and the path of the slave.
pub fn open_pty() -> nix::Result<(OwnedFd, String)> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let raw = master.as_raw_fd();
    std::mem::forget(master);
    // SAFETY: ownership of the descriptor moves from the forgotten
    // PtyMaster to this OwnedFd; it is closed exactly once.
    Ok((unsafe { OwnedFd::from_raw_fd(raw) }, name))
}

/// Where a new process's stdin, stdout and stderr come from.
#[derive(Debug)]
pub enum Stdio {
    /// These three descriptors, in order.
    Fds([OwnedFd; 3]),
    /// The slave side of a terminal in the sandbox's devpts (by path); it
    /// also becomes the process's controlling terminal.
    Terminal(String),
}

/// What `execve` gets: built before forking, so bad input is an error
/// here rather than a crash in the child.
struct Exec {
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
}

fn exec_of(req: &SpawnRequest) -> Result<Exec, (String, Errno)> {
    let c = |what: &str, s: &str| {
        CString::new(s).map_err(|_| {
            (
                format!("pass {what} {s:?} (it contains a NUL byte)"),
                Errno::EINVAL,
            )
        })
    };
    if req.argv.is_empty() {
        return Err(("start an empty command".into(), Errno::EINVAL));
    }
    Ok(Exec {
        argv: req
            .argv
            .iter()
            .map(|a| c("argument", a))
            .collect::<Result<_, _>>()?,
        env: req
            .env
            .iter()
            .map(|e| c("environment entry", e))
            .collect::<Result<_, _>>()?,
        cwd: c("working directory", &req.cwd)?,
    })
}

/// Forks and execs a process. Returns its pid, or the step that failed
/// and its errno (the child reports failures through a close-on-exec pipe,
/// which stays silent when `execve` succeeds).
pub fn spawn(
    spec: &SandboxSpec,
    req: &SpawnRequest,
    stdio: Stdio,
    ctl: RawFd,
) -> Result<Pid, (String, Errno)> {
    let exec = exec_of(req)?;
    let (rd, wr) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ("create a pipe".to_string(), e))?;
    // SAFETY: init is single-threaded, so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(("fork the workload".into(), e)),
        Ok(ForkResult::Child) => {
            drop(rd);
            let (step, errno) = exec_workload(spec, &exec, stdio, ctl, wr.as_raw_fd());
            let msg = format!("{}:{}", errno as i32, step);
            let _ = nix::unistd::write(&wr, msg.as_bytes());
            // SAFETY: leave without running init's destructors in the child.
            unsafe { libc::_exit(if errno == Errno::ENOENT { 127 } else { 126 }) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(wr);
            let mut buf = [0u8; 512];
            let n = loop {
                match nix::unistd::read(&rd, &mut buf) {
                    Err(Errno::EINTR) => continue,
                    r => break r.unwrap_or(0),
                }
            };
            if n == 0 {
                return Ok(child);
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            let (errno, step) = text.split_once(':').unwrap_or(("5", "start the workload"));
            Err((
                step.to_string(),
                Errno::from_raw(errno.parse().unwrap_or(libc::EIO)),
            ))
        }
    }
}

/// Runs in the forked child. Returns only on failure.
fn exec_workload(
    spec: &SandboxSpec,
    exec: &Exec,
    stdio: Stdio,
    ctl: RawFd,
    report: RawFd,
) -> (String, Errno) {
    macro_rules! step {
        ($what:expr, $e:expr) => {
            if let Err(e) = $e {
                return ($what.to_string(), e);
            }
        };
    }
    // Init blocks these to wait for them; the workload starts clean.
    let _ = SigSet::all().thread_unblock();
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL involves no handler code.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    // SAFETY: closing init's end of the control socket in this child only.
    unsafe { libc::close(ctl) };
    match stdio {
        Stdio::Terminal(path) => {
            step!("start a terminal session", nix::unistd::setsid().map(drop));
            let fd =
                match nix::fcntl::open(path.as_str(), OFlag::O_RDWR, nix::sys::stat::Mode::empty())
                {
                    Ok(fd) => fd,
                    Err(e) => return (format!("open terminal {path}"), e),
                };
            // SAFETY: TIOCSCTTY takes an integer argument; fd is a fresh,
            // valid terminal descriptor; dup2 onto 0-2 is what we want.
            unsafe {
                if libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) < 0 {
                    return ("make the terminal controlling".into(), Errno::last());
                }
                for n in 0..3 {
                    libc::dup2(fd.as_raw_fd(), n);
                }
            }
        }
        Stdio::Fds(fds) => {
            step!(
                "create a process group",
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
            );
            // Move the descriptors above 0-2 first, so that installing one
            // cannot overwrite another that is still to be installed.
            let mut high = Vec::with_capacity(3);
            for fd in &fds {
                // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
                let h = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
                if h < 0 {
                    return ("set up stdio".into(), Errno::last());
                }
                high.push(h);
            }
            drop(fds);
            for (n, h) in high.into_iter().enumerate() {
                // SAFETY: dup2 onto 0-2 replaces whatever was there, which
                // is what we want; `h` is a valid descriptor we own.
                if unsafe { libc::dup2(h, n as RawFd) } < 0 {
                    return ("set up stdio".into(), Errno::last());
                }
            }
        }
    }
    sys::close_fds_from(3, &[report]);

    let id = if spec.as_root { 0 } else { AGENT_ID };
    step!("clear supplementary groups", nix::unistd::setgroups(&[]));
    step!(
        "set the group id",
        nix::unistd::setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id))
    );
    let writable = spec.writable_paths();
    if let Err(e) = landlock_rules::apply(&writable, true) {
        return (format!("apply Landlock rules ({e})"), Errno::EPERM);
    }
    if let Err(e) = caps::drop_all(spec.as_root) {
        return (format!("drop capabilities ({e})"), Errno::EPERM);
    }
    step!(
        "set the user id",
        nix::unistd::setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id))
    );
    if let Err(e) = caps::ensure_no_capabilities() {
        return (format!("drop capabilities ({e})"), Errno::EPERM);
    }
    if let Err(e) = caps::set_no_new_privs() {
        return (format!("set no_new_privs ({e})"), Errno::EPERM);
    }
    if let Err(e) = nix::unistd::chdir(exec.cwd.as_c_str()) {
        return (
            format!("enter the working directory {}", exec.cwd.to_string_lossy()),
            e,
        );
    }
    if let Err(e) = seccomp::install(&spec.seccomp) {
        return (format!("install the seccomp filter ({e})"), Errno::EPERM);
    }
    let argv0 = &exec.argv[0];
    let e = exec_in_path(argv0, exec);
    (format!("run {}", argv0.to_string_lossy()), e)
}

/// `execvpe` as a shell does it, but searching the sandbox's `PATH`, not
/// the one init inherited from the supervisor. Returns why it failed:
/// `EACCES` if some candidate existed but could not be executed, else the
/// last error (normally `ENOENT`).
fn exec_in_path(argv0: &std::ffi::CStr, spec: &Exec) -> Errno {
    let name = argv0.to_bytes();
    if name.contains(&b'/') {
        return nix::unistd::execve(argv0, &spec.argv, &spec.env).unwrap_err();
    }
    let path = spec
        .env
        .iter()
        .find_map(|kv| kv.to_bytes().strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/bin:/bin");
    let mut saw_eacces = false;
    let mut last = Errno::ENOENT;
    for dir in path.split(|&b| b == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(name);
        let Ok(full) = std::ffi::CString::new(full) else {
            continue;
        };
        let e = nix::unistd::execve(&full, &spec.argv, &spec.env).unwrap_err();
        match e {
            Errno::EACCES => saw_eacces = true,
            Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => {}
            other => return other,
        }
        last = e;
    }
    if saw_eacces {
        Errno::EACCES
    } else {
        last
    }
}
