//! The end of a one-shot sandbox, off the caller's critical path.
//!
//! Once the command has ended and nothing but the (already killed) init is
//! left in the sandbox, the run's outcome is known and nothing of the
//! sandbox can touch the workspace any more. What remains costs the
//! kernel milliseconds without changing anything the caller can observe:
//! init's exit (its mount namespace is torn down), the cgroup's removal,
//! the last close of a TUN device (unregistering a network device waits
//! for RCU grace periods: 10–15 ms) and the sandbox directory's removal.
//! [`in_background`] hands all of that to a forked, detached process, so
//! `stockade run` returns (and its caller sees the exit status) first.
//!
//! The cleaner keeps the sandbox directory's lock (a `flock` is shared by
//! both processes after the fork), so garbage collection elsewhere leaves
//! the sandbox alone until the cleaner is done; a cleaner that is killed
//! leaves a stale sandbox that the next `gc` removes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use stockade_cgroup::{Cgroup, Driver};
use stockade_isolate::launch::Launched;

use crate::state::{SandboxDir, StateDir};

/// How long the cleaner waits for a killed init to be gone before it goes
/// on regardless (the cgroup removal then kills whatever is left).
const INIT_EXIT_WAIT: Duration = Duration::from_secs(10);

/// What is left of a sandbox whose command has ended.
#[derive(Debug)]
pub(crate) struct Leftovers {
    pub init: Launched,
    pub device: Option<OwnedFd>,
    pub cgroup: Cgroup,
    pub dir: SandboxDir,
}

impl Leftovers {
    /// Tears everything down here and now. Init must have been killed and
    /// must be our child.
    pub(crate) fn finish(self) {
        wait_gone(&self.init.pidfd);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.init.pid), None);
        self.remove_rest();
    }

    fn remove_rest(self) {
        drop(self.init);
        let _ = self.cgroup.destroy();
        drop(self.device);
        let _ = self.dir.remove();
    }
}

/// Forks a detached cleaner that waits for init to be gone, removes the
/// cgroup, closes the network device, removes the sandbox directory and
/// then collects older leftovers in `state`. Returns at once in the
/// caller. Where forking is unsafe (another thread runs) or fails, the
/// leftovers come back for [`Leftovers::finish`].
pub(crate) fn in_background(
    init: Launched,
    device: Option<OwnedFd>,
    cgroup: Cgroup,
    dir: SandboxDir,
    state: &StateDir,
    driver: &Driver,
) -> Result<(), Leftovers> {
    let left = Leftovers {
        init,
        device,
        cgroup,
        dir,
    };
    // fork copies only the calling thread: with another thread alive (a
    // lock it holds would stay held forever in the child) run it here.
    if thread_count() != Some(1) {
        return Err(left);
    }
    // SAFETY: the process has a single thread (checked just above), so the
    // child starts with every lock free and may run ordinary code; it
    // leaves with `_exit`, never returning into the caller's code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            // Our copies go; the child's keep everything (the directory's
            // lock included) alive.
            drop(left);
            Ok(())
        }
        Ok(nix::unistd::ForkResult::Child) => {
            detach();
            wait_gone(&left.init.pidfd);
            left.remove_rest();
            crate::gc::collect(state, Some(driver));
            // SAFETY: ends the cleaner without running the parent's exit
            // handlers or flushing its buffered output a second time.
            unsafe { libc::_exit(0) }
        }
        Err(_) => Err(left),
    }
}

/// Waits until the process behind `pidfd` has exited (it was killed), for
/// at most [`INIT_EXIT_WAIT`]. A pidfd polls readable on exit whether or
/// not the process is our child.
pub(crate) fn wait_gone(pidfd: &OwnedFd) {
    let deadline = std::time::Instant::now() + INIT_EXIT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Makes the cleaner independent of its caller: a session of its own (no
/// terminal signals), stdio on /dev/null (whoever reads our output sees
/// its end when the parent exits), and no descriptors the caller passed
/// in. Everything stockade itself opened is close-on-exec; what is not was
/// inherited from the caller and is closed here.
fn detach() {
    // SAFETY: setsid has no memory effects; it fails harmlessly if we
    // already lead a group.
    unsafe {
        libc::setsid();
    }
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for target in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which nothing in
            // the cleaner owns as a Rust object.
            unsafe {
                libc::dup2(null.as_raw_fd(), target);
            }
        }
    }
    for fd in inherited_fds() {
        // SAFETY: `fd` lacks close-on-exec, so no Rust object of ours owns
        // it (all of ours are opened close-on-exec); closing it cannot
        // invalidate anything we use.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Descriptors above stderr without close-on-exec.
fn inherited_fds() -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    fds.into_iter()
        .filter(|&fd| {
            // SAFETY: F_GETFD only reads the descriptor's flags; a stale
            // number (the directory listing's own fd) fails with EBADF.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC == 0
        })
        .collect()
}

/// Threads of this process, from /proc/self/status.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}
