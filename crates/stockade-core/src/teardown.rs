//! The end of a one-shot sandbox, off the caller's critical path.
//!
//! Once the command has ended and nothing but the (already killed) init is
//! left in the sandbox, the run's outcome is known and nothing of the
//! sandbox can touch the workspace any more. What remains costs the
//! kernel milliseconds without changing anything the caller can observe:
//! init's exit (its mount namespace is torn down), the cgroup's removal,
//! the last close of a TUN device (unregistering a network device waits
//! for RCU grace periods: 10–15 ms) and the sandbox directory's removal.
//! `run::run_deferred` returns that remainder as a [`PendingTeardown`];
//! [`PendingTeardown::exit`] hands it to a detached cleaner and ends the
//! process at once, so `stockade run`'s caller sees the exit status first.
//! Dropped instead, it tears down in place.
//!
//! The cleaner is started with `clone(CLONE_VM)`: it shares the exiting
//! process's memory instead of copying its page tables, and the exit no
//! longer unmaps anything (the cleaner still holds the memory). Both are
//! costs of a `fork` on this path (measured in benches/OPTIMISATIONS.md).
//! Sharing memory is
//! sound only because the parent does nothing after the clone but
//! `_exit`, and no other thread exists (checked first).
//!
//! The cleaner keeps the sandbox directory's lock (a `flock` belongs to the
//! open file, which both processes share after the clone), so garbage
//! collection elsewhere leaves the sandbox alone until the cleaner is done;
//! a cleaner that is killed leaves a stale sandbox that the next `gc`
//! removes.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use stockade_cgroup::{Cgroup, Driver};
use stockade_isolate::launch::Launched;
use stockade_isolate::nspool;

use crate::state::{SandboxDir, StateDir};

/// How long the cleaner waits for a killed init to be gone before it goes
/// on regardless (the cgroup removal then kills whatever is left).
const INIT_EXIT_WAIT: Duration = Duration::from_secs(10);

/// The cleaner's stack. Only the pages it touches cost memory; removing a
/// deep workspace tree recurses, so it is as large as a main thread's.
const CLEANER_STACK: usize = 8 << 20;

/// What is left of a sandbox whose command has ended.
#[derive(Debug)]
pub(crate) struct Leftovers {
    pub init: Launched,
    pub device: Option<OwnedFd>,
    pub cgroup: Cgroup,
    pub dir: SandboxDir,
    /// The namespace pool entry the sandbox started from, still mounted.
    pub claimed: Option<std::path::PathBuf>,
    /// The sandbox's capped scratch space.
    pub scratch: Option<crate::prepare::Scratch>,
    /// The sandbox's host id range, free again once everything is gone.
    pub slot: stockade_isolate::slots::Slot,
    /// The sandbox's hold on its image, released once everything is gone.
    pub lease: Option<stockade_image::Lease>,
}

impl Leftovers {
    fn remove_rest(self) {
        drop(self.init);
        let _ = self.cgroup.destroy();
        drop(self.device);
        let _ = self.dir.remove();
        if let Some(s) = &self.scratch {
            s.remove();
        }
        if let Some(entry) = &self.claimed {
            nspool::release(entry);
        }
        drop(self.slot);
        drop(self.lease);
    }
}

/// The end of a finished one-shot sandbox, not yet done: init's exit, the
/// cgroup, the network device and the sandbox directory, then garbage
/// collection of older leftovers in the state directory.
///
/// [`exit`](PendingTeardown::exit) leaves all of it to a detached cleaner
/// and ends the process; dropping it does it here, before returning.
#[derive(Debug)]
#[must_use = "dropping it tears the sandbox down in place; `exit` defers that"]
pub struct PendingTeardown {
    job: Option<Box<Job>>,
}

#[derive(Debug)]
struct Job {
    left: Leftovers,
    state: StateDir,
    driver: Driver,
    refill: Option<Refill>,
}

/// Nice value of a pool refill (see [`Refill::run`]).
const REFILL_NICE: libc::c_int = 10;

/// Tops the namespace pool up (see [`stockade_isolate::nspool`], or for an
/// ordinary user [`stockade_isolate::userpool`]): the next start finds its
/// user and network namespaces ready.
#[derive(Debug)]
pub(crate) enum Refill {
    /// Root's pool, of pairs made for host id slots.
    Slots {
        pool: std::path::PathBuf,
        per_key: usize,
    },
    /// An ordinary user's, of pairs with the maps of the sandbox that just
    /// ran (the next start of the same kind takes one).
    User {
        ids: Option<stockade_isolate::rootless::RootlessIds>,
        uids: stockade_isolate::idmap::IdMap,
        gids: stockade_isolate::idmap::IdMap,
    },
}

impl Refill {
    /// `None` when the pool is turned off (or, for an ordinary user, the
    /// sandbox could not have used one).
    pub(crate) fn configured(spec: &stockade_isolate::spec::SandboxSpec) -> Option<Refill> {
        if let Some((pool, per_key)) = nspool::configured() {
            return Some(Refill::Slots { pool, per_key });
        }
        (spec.rootless.is_some() && stockade_isolate::basens::configured().is_some()).then(|| {
            Refill::User {
                ids: spec.rootless,
                uids: spec.uid_map.clone(),
                gids: spec.gid_map.clone(),
            }
        })
    }

    /// Makes the missing entries, at low priority: the caller is a
    /// process whose work is otherwise done (a cleaner, an exiting shim),
    /// and the sandboxes starting meanwhile come first. A pool that
    /// cannot be filled (no `/run`, a kernel refusing the namespaces) only
    /// costs the next start its own namespaces, so failures are not
    /// reported.
    pub(crate) fn run(&self) {
        // SAFETY: setpriority only reads its integer arguments; `who` 0
        // is the calling thread, the only one of this process by now.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, REFILL_NICE);
        }
        match self {
            Refill::Slots { pool, per_key } => {
                let _ = nspool::refill(pool, &stockade_isolate::slots::dir(), *per_key);
            }
            Refill::User { ids, uids, gids } => {
                let _ = stockade_isolate::userpool::refill(
                    *ids,
                    uids,
                    gids,
                    stockade_isolate::userpool::PER_KEY,
                );
            }
        }
    }
}

impl Job {
    /// The whole teardown, in the calling process. Init may have been
    /// reparented (in the cleaner), so it is waited for through its pidfd.
    fn run(self) {
        wait_gone(&self.left.init.pidfd);
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(self.left.init.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        self.left.remove_rest();
        crate::gc::collect(&self.state, Some(&self.driver));
    }
}

impl PendingTeardown {
    pub(crate) fn new(
        left: Leftovers,
        state: StateDir,
        driver: Driver,
        refill: Option<Refill>,
    ) -> PendingTeardown {
        PendingTeardown {
            job: Some(Box::new(Job {
                left,
                state,
                driver,
                refill,
            })),
        }
    }

    /// Ends the process with `code` and leaves the teardown to a detached
    /// cleaner: its own session, stdio on /dev/null, none of the caller's
    /// inherited descriptors, so whoever waits for our exit or for the end
    /// of our output is not held up by it.
    ///
    /// Standard output and error are flushed first. Call it last: nothing
    /// after it runs, not even destructors or exit handlers. Where the
    /// cleaner cannot be started (another thread runs, `clone` fails) the
    /// teardown runs here first and the process then exits all the same.
    pub fn exit(mut self, code: i32) -> ! {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let job = self.job.take().expect("a pending teardown holds its job");
        if let Err(job) = spawn_cleaner(job) {
            job.run();
        }
        // SAFETY: ends the process without returning into code that
        // could touch memory the cleaner now shares with us (see
        // `spawn_cleaner`): no exit handlers, no destructors.
        unsafe { libc::_exit(code) }
    }
}

impl Drop for PendingTeardown {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.run();
        }
    }
}

/// Starts the cleaner with `clone(CLONE_VM)` on a stack of its own. The
/// caller must `_exit` right after a success: the cleaner runs ordinary
/// code (it allocates, for one) in memory it shares with the caller, and
/// glibc's malloc takes no locks in a process it believes single-threaded,
/// so nothing may run beside it. Gives the job back where that cannot be
/// guaranteed or the clone fails.
fn spawn_cleaner(job: Box<Job>) -> Result<(), Box<Job>> {
    // With another thread alive (the clone would run beside it in the
    // same memory, and our `_exit` would kill it mid-way) stay here.
    if thread_count() != Some(1) {
        return Err(job);
    }
    let Ok(stack) = stockade_isolate::sys::Stack::new(CLEANER_STACK) else {
        return Err(job);
    };
    // The cleaner inherits these dispositions at the clone. Until it has
    // its own session (`detach`), it is in our process group: a terminal
    // closing as we exit (`stockade run -t` under `script`, an ssh session
    // ending) would hang it up, and Ctrl-C or a stop key would reach it.
    // Killed there, it would leave the cgroup and the directory behind.
    // Nothing it does needs these signals, so it ignores them for good;
    // SIGKILL still ends it. We `_exit` right after, so ours do not matter.
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGPIPE,
    ] {
        // SAFETY: installing SIG_IGN runs no handler code.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let arg = Box::into_raw(job);
    // SAFETY: `cleaner_main` takes ownership of `arg` in the child and
    // never returns; the child runs on `stack`, which nothing else uses.
    // CLONE_VM shares our memory: we only `_exit` after this (see above).
    // SIGCHLD as the exit signal lets whichever process reaps orphans
    // (pid 1, a subreaper) collect the cleaner with a plain `wait`.
    let pid = unsafe {
        libc::clone(
            cleaner_main,
            stack.top(),
            libc::CLONE_VM | libc::SIGCHLD,
            arg.cast(),
        )
    };
    if pid < 0 {
        // SAFETY: the clone failed, so no child took `arg`: it is ours
        // again (and `stack`, unmapped as it drops).
        return Err(unsafe { Box::from_raw(arg) });
    }
    // The cleaner runs on it in our shared memory: never unmapped.
    stack.leak();
    Ok(())
}

/// The cleaner: detach from the caller, wait for init to be gone, remove
/// the rest, collect older leftovers, `_exit`.
extern "C" fn cleaner_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Box<Job>` that `spawn_cleaner` leaked for us;
    // the parent no longer touches it (it only `_exit`s).
    let mut job = unsafe { Box::from_raw(arg.cast::<Job>()) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        detach();
        // Only here, where nobody waits: a teardown done in place (a
        // library caller, `stockade run --wait-for-teardown`) leaves the pool
        // as it is.
        let refill = job.refill.take();
        job.run();
        if let Some(r) = refill {
            r.run();
        }
    }));
    // SAFETY: ends the cleaner without running exit handlers or flushing
    // buffers that belong to the process it was cloned from.
    unsafe { libc::_exit(0) }
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

/// Threads of this process: procfs gives `/proc/self/task` two links
/// plus one per thread (one `stat`, where `/proc/self/status` took
/// eight growing reads).
fn thread_count() -> Option<usize> {
    use std::os::unix::fs::MetadataExt;
    let links = std::fs::metadata("/proc/self/task").ok()?.nlink();
    usize::try_from(links).ok()?.checked_sub(2)
}
