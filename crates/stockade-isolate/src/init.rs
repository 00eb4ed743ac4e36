//! The sandbox's init: pid 1 of its pid namespace.
//!
//! It is the child `launch` cloned into the new namespaces. It waits for
//! the supervisor's go-ahead (id maps and cgroup in place), builds the root
//! filesystem, then starts the workload and stays behind as its reaper:
//! it collects every zombie, forwards SIGINT/SIGTERM/SIGHUP (and the other
//! job-control signals) to the workload's process group, and reports the
//! workload's end to the supervisor. When init exits, the kernel kills
//! whatever else is left in the pid namespace, so no orphan survives.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::proto::{self, InitMsg, SupervisorMsg};
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

fn init_sigset() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set
}

fn send(ctl: &OwnedFd, msg: &InitMsg, fd: Option<RawFd>) {
    let _ = proto::send(ctl.as_fd(), &msg.encode(), fd);
}

/// Entry point of the cloned child. Never returns.
pub fn main(spec: &SandboxSpec, ctl: OwnedFd) -> ! {
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(spec, &ctl))) {
        Ok(code) => code,
        Err(_) => {
            send(
                &ctl,
                &InitMsg::SetupFailed("the sandbox's init panicked".into()),
                None,
            );
            125
        }
    };
    // SAFETY: _exit ends the process without running the supervisor's
    // atexit handlers or destructors, which belong to the parent's copy.
    unsafe { libc::_exit(code) }
}

fn run(spec: &SandboxSpec, ctl: &OwnedFd) -> i32 {
    // Die with the supervisor. Checked against the go-ahead below: if the
    // supervisor died before we set this, the read sees end-of-file.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    // Idmapped lower layers (copy-on-write root only), then the go-ahead.
    let mut lowers = Vec::new();
    loop {
        match proto::recv(ctl.as_fd()) {
            Ok(Some((b, _))) if b == [b'G'] => break,
            Ok(Some((b, Some(fd)))) if b.first() == Some(&b'L') => {
                lowers.push((String::from_utf8_lossy(&b[1..]).into_owned(), fd));
            }
            _ => return 1,
        }
    }
    let _ = SupervisorMsg::Go;
    if let Err(msg) = setup(spec, lowers) {
        send(ctl, &InitMsg::SetupFailed(msg), None);
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

fn setup(spec: &SandboxSpec, lowers: rootfs::Lowers) -> Result<(), String> {
    // We still carry the supervisor's host ids, which the namespace does
    // not map; become the namespace's root (a block id on the host) so
    // files we create have an owner the sandbox can see.
    let root = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setresgid(root.1, root.1, root.1)
        .and_then(|_| nix::unistd::setgroups(&[]))
        .and_then(|_| nix::unistd::setresuid(root.0, root.0, root.0))
        .map_err(|e| format!("cannot become root of the user namespace: {e}"))?;
    // A change of credentials clears the parent-death signal; set it again.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    // Entering the cgroup namespace now, after the supervisor moved us into
    // the sandbox's cgroup, makes that cgroup the root the workload sees.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("cannot create the cgroup namespace: {e}"))?;
    rootfs::build(spec, lowers).map_err(|e| e.to_string())?;
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| format!("cannot set the host name: {e}"))?;
    sys::loopback_up().map_err(|e| format!("cannot bring up loopback: {e}"))?;
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
    if let Err(e) = set.thread_block() {
        send(
            ctl,
            &InitMsg::SetupFailed(format!("cannot block signals: {e}")),
            None,
        );
        return 1;
    }
    let pty = if spec.tty {
        match workload::open_pty() {
            Ok(p) => Some(p),
            Err(e) => {
                send(
                    ctl,
                    &InitMsg::SetupFailed(format!("cannot allocate a terminal: {e}")),
                    None,
                );
                return 1;
            }
        }
    } else {
        None
    };
    let child = match workload::spawn(spec, pty.as_ref().map(|p| p.1.as_str()), ctl.as_raw_fd()) {
        Ok(pid) => pid,
        Err((step, errno)) => {
            send(
                ctl,
                &InitMsg::SpawnFailed {
                    step,
                    errno: errno as i32,
                },
                None,
            );
            // The child (if any) exits on its own; reap before leaving.
            while waitpid(None, None).is_ok() {}
            return 1;
        }
    };
    // The terminal's master side goes to the supervisor, which relays it.
    send(
        ctl,
        &InitMsg::Ready(child.as_raw()),
        pty.as_ref().map(|p| p.0.as_raw_fd()),
    );
    drop(pty);
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(Errno::EINTR) => continue,
            Err(_) => Signal::SIGCHLD,
        };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(Pid::from_raw(-child.as_raw()), sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    send(ctl, &InitMsg::Exited(code), None);
                    return 0;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    send(ctl, &InitMsg::Signaled(sig as i32), None);
                    return 0;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}
