//! The sandbox's init: pid 1 of its pid namespace.
//!
//! It is the child `launch` cloned into the new namespaces. It waits for
//! the supervisor's go-ahead (id maps and cgroup in place), builds the root
//! filesystem, then starts the workload and stays behind as its reaper:
//! it collects every zombie, forwards SIGINT/SIGTERM/SIGHUP (and the other
//! job-control signals) to the workload's process group, and reports the
//! workload's end to the supervisor. When init exits, the kernel kills
//! whatever else is left in the pid namespace, so no orphan survives.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::proto::{self, FromInit, ProtoError, SpawnRequest, ToInit};
use crate::spec::SandboxSpec;
use crate::{rootfs, sys, workload};

/// Signals init passes on to the workload.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Name of the sandbox's TUN device, its only interface besides loopback
/// when it has network egress.
pub const TUN_NAME: &str = "tun0";

fn init_sigset() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set
}

fn send(ctl: &OwnedFd, msg: &FromInit, fds: &[RawFd]) {
    let _ = proto::send_msg(ctl.as_fd(), msg, fds);
}

/// Entry point of the cloned child. Never returns. With `net_ready` the
/// network namespace came from the pool (see [`crate::nspool`]) with its
/// loopback already up.
pub fn main(spec: &SandboxSpec, ctl: OwnedFd, net_ready: bool) -> ! {
    let code =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(spec, &ctl, net_ready)))
        {
            Ok(code) => code,
            Err(_) => {
                send(
                    &ctl,
                    &FromInit::SetupFailed {
                        message: "the sandbox's init panicked".into(),
                    },
                    &[],
                );
                125
            }
        };
    // SAFETY: _exit ends the process without running the supervisor's
    // atexit handlers or destructors, which belong to the parent's copy.
    unsafe { libc::_exit(code) }
}

/// Reports a failure before init has started (nothing is built yet) and
/// ends the process.
pub(crate) fn fail_early(ctl: &OwnedFd, message: String) -> ! {
    send(ctl, &FromInit::SetupFailed { message }, &[]);
    // SAFETY: as in `main`: the parent's handlers and destructors are not
    // ours to run.
    unsafe { libc::_exit(125) }
}

fn run(spec: &SandboxSpec, ctl: &OwnedFd, net_ready: bool) -> i32 {
    // Die with the supervisor. Checked against the go-ahead below: if the
    // supervisor died before we set this, the read sees end-of-file.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    // We are a copy of the supervisor: its command line and environment
    // would show in the sandbox's /proc/1.
    sys::blank_command_line("stockade-init");
    // Idmapped lower layers (copy-on-write root only), then the go-ahead.
    let mut lowers = Vec::new();
    loop {
        match proto::recv_msg::<ToInit>(ctl.as_fd()) {
            Ok(Some((ToInit::Go, _))) => break,
            Ok(Some((ToInit::Lower { name }, mut fds))) if fds.len() == 1 => {
                lowers.extend(fds.pop().map(|fd| (name, fd)));
            }
            _ => return 1,
        }
    }
    if let Err(message) = setup(spec, lowers, net_ready) {
        send(ctl, &FromInit::SetupFailed { message }, &[]);
        return 1;
    }
    // The supervisor may have died before the parent-death signal was set
    // again in `setup`; its end of the socket is then closed.
    let mut pfd = [nix::poll::PollFd::new(
        ctl.as_fd(),
        nix::poll::PollFlags::empty(),
    )];
    if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).is_ok()
        && pfd[0]
            .revents()
            .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
    {
        return 1;
    }
    serve(spec, ctl)
}

/// Builds the sandbox.
fn setup(spec: &SandboxSpec, lowers: rootfs::Lowers, net_ready: bool) -> Result<(), String> {
    // We still carry the supervisor's host ids, which the namespace does
    // not map; become the namespace's root (a block id on the host) so
    // files we create have an owner the sandbox can see.
    // A rootless sandbox with a single id has no root inside: init stays
    // the caller (that one id), with every capability of the namespace it
    // made, and `setgroups` is denied there.
    let single = spec.rootless == Some(crate::rootless::RootlessIds::Single);
    if single {
        crate::workload::deny_setgroups();
    }
    if spec.uid_map.to_host(0).is_some() && spec.gid_map.to_host(0).is_some() {
        let root = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        nix::unistd::setresgid(root.1, root.1, root.1)
            .and_then(|_| {
                if single {
                    Ok(())
                } else {
                    nix::unistd::setgroups(&[])
                }
            })
            .and_then(|_| nix::unistd::setresuid(root.0, root.0, root.0))
            .map_err(|e| format!("cannot become root of the user namespace: {e}"))?;
    }
    if let Some(n) = spec.nproc_limit {
        // Counted per uid inside this user namespace, so it caps the
        // workloads' processes (they all run as one id); no capability
        // inside lets them raise it (that needs CAP_SYS_RESOURCE over the
        // host's namespace).
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n)
            .map_err(|e| format!("cannot set the process limit (RLIMIT_NPROC): {e}"))?;
    }
    // A change of credentials clears the parent-death signal; set it again.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    // Entering the cgroup namespace now, after the supervisor moved us into
    // the sandbox's cgroup, makes that cgroup the root the workload sees.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("cannot create the cgroup namespace: {e}"))?;
    rootfs::build(spec, lowers).map_err(|e| crate::error_chain(&e))?;
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| format!("cannot set the host name: {e}"))?;
    if !net_ready {
        sys::loopback_up().map_err(|e| format!("cannot bring up loopback: {e}"))?;
    }
    // Our own session: the sandbox has no controlling terminal from the
    // host, so TIOCSTI-style input injection into the host's terminal is
    // impossible, and job-control signals from the host's terminal do not
    // reach the workload behind the supervisor's back.
    nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
    let _ = sys::set_undumpable();
    Ok(())
}

fn serve(spec: &SandboxSpec, ctl: &OwnedFd) -> i32 {
    let set = init_sigset();
    // The supervisor blocked these before cloning us, so none was lost;
    // from now on they are read from a signalfd.
    let _ = set.thread_block();
    let sigfd = match SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => {
            send(
                ctl,
                &FromInit::SetupFailed {
                    message: format!("cannot create a signalfd: {e}"),
                },
                &[],
            );
            return 1;
        }
    };
    // Without a cgroup (a rootless sandbox without a delegated one, the
    // only kind with a process rlimit), the supervisor finds the
    // sandbox's processes through our /proc: it lists this pid namespace
    // only, where the host's /proc would need a check of every host
    // process. Opened now, before any workload runs.
    let proc_dir = spec.nproc_limit.and_then(|_| {
        nix::fcntl::open(
            "/proc",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
    });
    let proc_fds: Vec<RawFd> = proc_dir.iter().map(|f| f.as_raw_fd()).collect();
    send(ctl, &FromInit::Ready, &proc_fds);
    drop(proc_dir);
    // Processes we started, whose exits the supervisor wants to hear of.
    let mut spawned: HashSet<i32> = HashSet::new();
    let mut rules = workload::Rules::default();
    loop {
        let mut fds = [
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return 1,
        }
        let ctl_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let sig_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if sig_ready {
            while let Ok(Some(info)) = sigfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGCHLD {
                    reap(ctl, &mut spawned);
                } else if let Ok(sig) = Signal::try_from(sig) {
                    // A signal sent to init itself goes to every workload.
                    for pid in &spawned {
                        let _ = nix::sys::signal::kill(Pid::from_raw(-pid), sig);
                    }
                }
            }
        }
        if ctl_ready {
            match proto::recv_msg::<ToInit>(ctl.as_fd()) {
                // The supervisor is gone or asks us to stop: exiting kills
                // everything in the pid namespace.
                Ok(None) | Ok(Some((ToInit::Shutdown, _))) => return 0,
                Ok(Some((ToInit::Spawn(req), fds))) => {
                    if let Some(pid) = spawn(spec, ctl, req, fds, &mut rules) {
                        spawned.insert(pid);
                    }
                }
                Ok(Some((ToInit::Files { tag, root }, fds))) => {
                    start_file_helper(spec, ctl, tag, root, fds, &mut rules);
                }
                Ok(Some((ToInit::Signal { pid, sig }, _))) => {
                    if spawned.contains(&pid) {
                        if let Ok(sig) = Signal::try_from(sig) {
                            let _ = nix::sys::signal::kill(Pid::from_raw(-pid), sig);
                        }
                    }
                }
                // Out of order or unknown: ignore, the sandbox stays up.
                Ok(Some(_)) | Err(ProtoError::Malformed(_)) => {}
                Err(ProtoError::Io(_)) => return 1,
            }
        }
    }
}

/// Starts one process and answers the supervisor.
fn spawn(
    spec: &SandboxSpec,
    ctl: &OwnedFd,
    req: SpawnRequest,
    fds: Vec<OwnedFd>,
    rules: &mut workload::Rules,
) -> Option<i32> {
    let tag = req.tag;
    let fail = |step: String, errno: Errno| {
        send(
            ctl,
            &FromInit::SpawnFailed {
                tag,
                step,
                errno: errno as i32,
            },
            &[],
        );
        None
    };
    let (stdio, pty) = if req.tty {
        match workload::open_pty() {
            Ok((master, path)) => {
                if let Some((rows, cols)) = req.tty_size {
                    let ws = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize we own, on the
                    // master we just opened.
                    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
                (workload::Stdio::Terminal(path), Some(master))
            }
            Err(e) => return fail("allocate a terminal".into(), e),
        }
    } else {
        match <[OwnedFd; 3]>::try_from(fds) {
            Ok(three) => (workload::Stdio::Fds(three), None),
            Err(_) => return fail("receive stdin, stdout and stderr".into(), Errno::EINVAL),
        }
    };
    match workload::spawn(spec, &req, stdio, ctl.as_raw_fd(), rules) {
        Ok(pid) => {
            let pty_fd: Vec<RawFd> = pty.as_ref().map(|m| m.as_raw_fd()).into_iter().collect();
            send(
                ctl,
                &FromInit::Spawned {
                    tag,
                    pid: pid.as_raw(),
                },
                &pty_fd,
            );
            Some(pid.as_raw())
        }
        Err((step, errno)) => fail(step, errno),
    }
}

/// Forks a file helper (see [`crate::files`]) serving the socket that
/// came with the request, and tells the supervisor its pid. The helper
/// takes the sandbox's identity as a workload does (user, Landlock, no
/// capabilities, `no_new_privs`, seccomp) and is never reported as a
/// process: init reaps it like any orphan.
fn start_file_helper(
    spec: &SandboxSpec,
    ctl: &OwnedFd,
    tag: u64,
    root: bool,
    mut fds: Vec<OwnedFd>,
    rules: &mut workload::Rules,
) {
    let fail = |step: &str, errno: Errno| {
        send(
            ctl,
            &FromInit::SpawnFailed {
                tag,
                step: step.to_string(),
                errno: errno as i32,
            },
            &[],
        )
    };
    let (Some(sock), true) = (fds.pop(), fds.is_empty()) else {
        return fail("receive the file helper's socket", Errno::EINVAL);
    };
    let landlock = match rules.get(spec) {
        Ok(l) => l,
        Err((step, e)) => return fail(&step, e),
    };
    // SAFETY: init is single-threaded, so the child is a complete copy;
    // it only runs `file_helper`, which never returns.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => file_helper(spec, ctl, sock, root, landlock),
        Ok(nix::unistd::ForkResult::Parent { child }) => send(
            ctl,
            &FromInit::FilesStarted {
                tag,
                pid: child.as_raw(),
            },
            &[],
        ),
        Err(e) => fail("start the file helper", e),
    }
}

/// The file helper's process: sheds everything of init's, becomes the
/// sandbox's user and serves its socket until the client hangs up.
fn file_helper(
    spec: &SandboxSpec,
    ctl: &OwnedFd,
    sock: OwnedFd,
    root: bool,
    landlock: Option<RawFd>,
) -> ! {
    let sock_fd = sock.as_raw_fd();
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Signals init forwards to workloads' process groups are not for
        // us; default dispositions, nothing blocked.
        let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
        let _ = SigSet::all().thread_unblock();
        // SAFETY: closing init's end of the control socket in this
        // process only; the OwnedFd in init's memory is never dropped
        // here (we leave with _exit).
        unsafe { libc::close(ctl.as_raw_fd()) };
        // Nothing of init's stays open: stdio on /dev/null (the
        // supervisor's terminal or pipes must not reach the sandbox).
        if let Ok(null) = nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
            for n in 0..3 {
                // SAFETY: dup2 onto 0-2 replaces whatever init had there,
                // in this process's table only.
                unsafe { libc::dup2(null.as_raw_fd(), n) };
            }
        }
        sys::close_fds_from(3, &[sock_fd, landlock.unwrap_or(-1)]);
        let ids = if root { (0, 0) } else { spec.workload_ids() };
        // The file helper keeps no capability, even as root.
        let taken = workload::take_identity(ids, landlock, 0)
            .and_then(|()| nix::unistd::chdir("/").map_err(|e| ("enter /", e)))
            .and_then(|()| {
                crate::seccomp::install(&spec.seccomp)
                    .map_err(|_| ("install the seccomp filter", Errno::EPERM))
            });
        if let Err((step, e)) = taken {
            let mut w = std::os::unix::net::UnixStream::from(sock);
            let _ =
                crate::files::greet_failed(&mut w, e, &format!("the file helper cannot {step}"));
            return 1;
        }
        let _ = sys::set_undumpable();
        crate::files::serve(sock, &crate::files::Root::Here);
        0
    }))
    .unwrap_or(1);
    // SAFETY: leave without running init's destructors or exit handlers.
    unsafe { libc::_exit(code) }
}

/// Collects every exited child; reports those the supervisor started.
fn reap(ctl: &OwnedFd, spawned: &mut HashSet<i32>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                if spawned.remove(&pid.as_raw()) {
                    send(
                        ctl,
                        &FromInit::Exited {
                            pid: pid.as_raw(),
                            code,
                        },
                        &[],
                    );
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                if spawned.remove(&pid.as_raw()) {
                    send(
                        ctl,
                        &FromInit::Signaled {
                            pid: pid.as_raw(),
                            sig: sig as i32,
                        },
                        &[],
                    );
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
