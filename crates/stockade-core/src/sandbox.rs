//! One running sandbox as an object, and the one event loop that
//! supervises it, for `stockade run` (and so the task runner) and for the
//! daemon's shims.
//!
//! The lifecycle: [`Sandbox::create`] launches init from a prepared spec
//! into its cgroup (and starts the egress stack on the TUN init made);
//! [`Sandbox::exec`] asks init to start a process (argv, env, cwd, user,
//! terminal, stdio descriptors: a [`SpawnRequest`]); [`Sandbox::signal`]
//! and [`Sandbox::kill`] reach into it; [`Sandbox::watch`] arms the limits
//! watch ([`Monitor`]); [`Sandbox::supervise`] runs the event loop until
//! init is gone (or, when the owner allows it, until only killed init is
//! left); [`Sandbox::finish`] stops the egress stack and returns usage and
//! the violations, merged and in time order, from which the owner builds
//! its [`crate::Report`]. Destroying the cgroup and files stays with the
//! caller, which made them (`run.rs` tears down in place or defers it, the
//! shim answers first and cleans up after).
//!
//! The event loop is a single-threaded `poll` over init's pidfd and control
//! socket, a signalfd, the cgroup's OOM notifier, and the owner's own
//! descriptors (`run`'s terminal and stdio relays, the shim's socket and
//! clients). Each source has one handler; what differs between `run` and
//! the shim — what a message of init, a signal, a breach means to them —
//! is the [`Owner`] trait. The decisions themselves (when to kill, when
//! the loop may end early, which outcome a run has) are plain functions
//! and [`Monitor`] methods, tested below without root.
//!
//! Another backend (a microVM) would not implement this type: it plugs in
//! behind [`crate::backend::Backend`] / [`crate::backend::SandboxHandle`]
//! for the daemon, and behind `run`'s report for one-shot runs, reusing
//! [`Monitor`] through [`crate::monitor::StatsSource`] and
//! [`crate::monitor::DiskGauge`] for its limits.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use stockade_cgroup::Cgroup;
use stockade_isolate::launch::{launch_joining, Launched};
use stockade_isolate::nspool::Pooled;
use stockade_isolate::proto::{self, FromInit, SpawnRequest, ToInit};
use stockade_isolate::spec::SandboxSpec;
use stockade_isolate::sys::pidfd_send_signal;
use stockade_policy::Limits;

use crate::monitor::{DiskSource, Monitor, StatsSource};
use crate::netwatch::NetWatch;
use crate::report::{NetworkUsage, Outcome, Usage, Violation, ViolationKind};
use crate::RunError;

/// How init enters its cgroup on cgroup v1 (on v2 it is cloned into it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum V1Attach {
    /// Init writes itself into the group's `tasks` files (cheaper).
    #[default]
    SelfJoin,
    /// The supervisor moves init after the clone: the old way, kept for
    /// benchmarks that show what joining itself buys.
    Move,
}

/// What the owner of a sandbox makes of its events. Every handler gets
/// the sandbox back to act on it (signal, kill, send to init).
pub(crate) trait Owner {
    /// Descriptors of the owner's own to poll, after the sandbox's.
    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>);
    /// Which of them were ready, in the order given.
    fn on_ready(&mut self, sb: &mut Sandbox<'_>, ready: &[bool]);
    /// A message from init, with the descriptors that came with it.
    fn on_init(&mut self, sb: &mut Sandbox<'_>, msg: FromInit, fds: Vec<OwnedFd>);
    /// A signal read from the signalfd.
    fn on_signal(&mut self, sb: &mut Sandbox<'_>, sig: i32);
    /// A hard breach (time, memory, disk): the sandbox must end.
    fn on_breach(&mut self, sb: &mut Sandbox<'_>, kind: ViolationKind);
    /// A new violation, with its one-line description (`kind: detail`).
    fn on_violation(&mut self, v: &Violation, line: &str);
    /// A violation found by the final reading, after the loop.
    fn on_last_violation(&mut self, v: &Violation, line: &str) {
        self.on_violation(v, line);
    }
    /// Whether the deadline and samples are still watched.
    fn watching(&self) -> bool;
    /// Whether an OOM notification still counts.
    fn watching_oom(&self) -> bool {
        self.watching()
    }
    /// Whether the loop may end once nothing but init is left in the
    /// cgroup (init then being killed already).
    fn may_end_early(&self, sb: &Sandbox<'_>) -> bool;
}

/// Violations the monitor found, waiting for the owner's handler.
type Breaches = Arc<Mutex<Vec<(Violation, String)>>>;

/// A running sandbox: its init, cgroup, signals, limits watch and egress.
pub struct Sandbox<'c> {
    launched: Launched,
    cgroup: &'c Cgroup,
    net: &'c mut NetWatch,
    sigfd: SignalFd,
    oom_fd: Option<OwnedFd>,
    monitor: Option<Monitor>,
    breaches: Breaches,
    ctl_open: bool,
}

impl std::fmt::Debug for Sandbox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("init", &self.launched.pid)
            .field("monitor", &self.monitor)
            .finish_non_exhaustive()
    }
}

/// What a supervised sandbox ended with.
#[derive(Debug)]
pub struct Finished {
    pub usage: Usage,
    /// Limit and network violations, in time order.
    pub violations: Vec<Violation>,
    pub network: Option<NetworkUsage>,
    /// The hard breach the sandbox was killed for, if any.
    pub killed_for: Option<ViolationKind>,
}

impl<'c> Sandbox<'c> {
    /// Launches the sandbox's init into `cgroup` and, if it made a TUN
    /// device, starts serving it. `signals` must be blocked by the caller
    /// already: they are read from a signalfd from here on (and init
    /// inherits the mask, so none is lost before it waits for them).
    ///
    /// # Safety
    ///
    /// The calling process must be single-threaded: init is cloned.
    pub unsafe fn create(
        spec: &SandboxSpec,
        cgroup: &'c Cgroup,
        pooled: Option<&Pooled>,
        attach: V1Attach,
        signals: &SigSet,
        net: &'c mut NetWatch,
    ) -> Result<Sandbox<'c>, RunError> {
        let sigfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| RunError::Sys("create a signalfd".into(), e))?;
        // On cgroup v1 init moves itself into its group (cheaper than being
        // moved: see `launch_joining`).
        let self_join = match attach {
            V1Attach::SelfJoin => cgroup.self_join_files(),
            V1Attach::Move => Vec::new(),
        };
        // SAFETY: the caller guarantees a single-threaded process; nothing
        // else runs while the sandbox's init is cloned.
        let launched = unsafe {
            launch_joining(spec, cgroup.dir_fd_v2(), &self_join, pooled, |pid| {
                cgroup.add_pid(pid).map_err(|e| e.to_string())
            })
        };
        drop(self_join);
        let mut launched = launched?;
        // The egress stack serves the TUN device made at launch; started
        // now, after the clone: from here on there is a second thread.
        if let Some(tun) = launched.tun.take() {
            if let Err(e) = net.start(Some(tun)) {
                let _ = pidfd_send_signal(&launched.pidfd, libc::SIGKILL);
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launched.pid), None);
                return Err(RunError::Setup(e));
            }
        }
        Ok(Sandbox {
            launched,
            cgroup,
            net,
            sigfd,
            oom_fd: None,
            monitor: None,
            breaches: Arc::default(),
            ctl_open: true,
        })
    }

    /// Host pid of the sandbox's init.
    pub fn init_pid(&self) -> i32 {
        self.launched.pid
    }

    /// Sends init a message with descriptors.
    pub fn send(&self, msg: &ToInit, fds: &[RawFd]) -> Result<(), proto::ProtoError> {
        proto::send_msg(self.launched.ctl.as_fd(), msg, fds)
    }

    /// Asks init to start a process with these stdio descriptors (none
    /// with a terminal: init sends its master back).
    pub fn exec(&self, request: SpawnRequest, stdio: &[RawFd]) -> Result<(), proto::ProtoError> {
        self.send(&ToInit::Spawn(request), stdio)
    }

    /// Delivers `sig` to process `pid` of the sandbox (a host pid that
    /// init reported).
    pub fn signal(&self, pid: i32, sig: i32) {
        let _ = self.send(&ToInit::Signal { pid, sig }, &[]);
    }

    /// Ends the sandbox: killing init makes the kernel kill everything
    /// else in its pid namespace, which is every process of the sandbox.
    /// (The cgroup is emptied and removed afterwards, as a second net.)
    pub fn kill(&self) {
        let _ = pidfd_send_signal(&self.launched.pidfd, libc::SIGKILL);
    }

    /// Kills init and reaps it: for a failure before the event loop runs.
    pub fn abort(&self) {
        self.kill();
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.launched.pid), None);
    }

    /// Waits for init to finish building the sandbox: `Err` says why it
    /// could not.
    pub fn wait_ready(&self) -> Result<(), String> {
        match proto::recv_msg::<FromInit>(self.launched.ctl.as_fd()) {
            Ok(Some((FromInit::Ready, _))) => Ok(()),
            Ok(Some((FromInit::SetupFailed { message }, _))) => {
                Err(format!("cannot set up the sandbox: {message}"))
            }
            _ => Err("the sandbox's init exited while starting".to_string()),
        }
    }

    /// Arms the limits watch: from `started` on, until `deadline`, disk
    /// read from `disk`; and the cgroup's OOM notifier.
    pub fn watch(
        &mut self,
        limits: &Limits,
        started: Instant,
        deadline: Instant,
        disk: DiskSource,
    ) {
        let sink = self.breaches.clone();
        self.monitor = Some(Monitor::new(
            limits.clone(),
            started,
            deadline,
            disk,
            Box::new(move |v, detail| {
                let line = format!("{}: {detail}", v.kind.as_str());
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((v.clone(), line));
            }),
        ));
        self.oom_fd = self.cgroup.oom_notifier().ok();
    }

    /// Usage so far.
    pub fn usage(&mut self) -> Usage {
        let cgroup = self.cgroup;
        self.monitor
            .as_mut()
            .map(|m| m.usage(cgroup))
            .unwrap_or_default()
    }

    /// The limit violations so far (not the network's).
    pub fn limit_violations(&self) -> &[Violation] {
        self.monitor.as_ref().map_or(&[], |m| &m.violations)
    }

    /// The hard breach the sandbox was killed for, if any.
    pub fn killed_for(&self) -> Option<ViolationKind> {
        self.monitor.as_ref().and_then(|m| m.killed_for)
    }

    /// Runs the event loop until init has exited and been reaped, or
    /// until the owner allows an early end and only init (killed) is
    /// left: `Ok(true)` then, and init is not reaped yet.
    pub(crate) fn supervise(&mut self, owner: &mut dyn Owner) -> Result<bool, RunError> {
        let cgroup = self.cgroup;
        loop {
            if owner.watching() {
                let breach = self.monitor.as_mut().and_then(|m| m.tick(cgroup));
                if let Some(kind) = breach {
                    owner.on_breach(self, kind);
                }
                self.deliver(owner);
            }
            let wake = self
                .monitor
                .as_ref()
                .map_or(std::time::Duration::from_secs(60), |m| {
                    m.next_wake().saturating_duration_since(Instant::now())
                });
            let timeout = PollTimeout::try_from(wake.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX);
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(8);
            fds.push(PollFd::new(self.launched.pidfd.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
            let ctl_idx = self.ctl_open.then(|| {
                fds.push(PollFd::new(self.launched.ctl.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let oom_idx = self.oom_fd.as_ref().map(|f| {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let base = fds.len();
            owner.poll_fds(&mut fds);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(RunError::Sys("poll".into(), e)),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let init_done = ready(0);
            let sig_ready = ready(1);
            let ctl_ready = ctl_idx.is_some_and(ready);
            let oom_ready = oom_idx.is_some_and(ready);
            let owner_ready: Vec<bool> = (base..fds.len()).map(ready).collect();
            drop(fds);

            if ctl_ready || (init_done && self.ctl_open) {
                self.drain_init(owner);
            }
            owner.on_ready(self, &owner_ready);
            if sig_ready {
                while let Ok(Some(info)) = self.sigfd.read_signal() {
                    owner.on_signal(self, info.ssi_signo as i32);
                }
            }
            if oom_ready {
                if let Some(f) = &self.oom_fd {
                    Cgroup::drain_notifier(f.as_fd());
                }
                if owner.watching_oom() {
                    let breach = self.monitor.as_mut().and_then(|m| m.check_oom(cgroup));
                    if let Some(kind) = breach {
                        owner.on_breach(self, kind);
                    }
                    self.deliver(owner);
                }
            }
            self.net.drain(&mut |v, line| owner.on_violation(v, line));
            if init_done {
                break;
            }
            if may_end_early(owner.may_end_early(self), cgroup, self.launched.pid) {
                return Ok(true);
            }
        }
        // Init has exited; everything else in its pid namespace died with it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.launched.pid), None);
        Ok(false)
    }

    /// Hands every message init sent so far to the owner: init reports
    /// before it can be killed, so its last words are queued by the time
    /// its pidfd is readable.
    fn drain_init(&mut self, owner: &mut dyn Owner) {
        while self.ctl_open {
            let mut pfd = [PollFd::new(self.launched.ctl.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0) {
                break;
            }
            match proto::recv_msg::<FromInit>(self.launched.ctl.as_fd()) {
                Ok(Some((msg, fds))) => owner.on_init(self, msg, fds),
                Ok(None) | Err(_) => self.ctl_open = false,
            }
        }
    }

    /// Passes the monitor's new violations to the owner.
    fn deliver(&mut self, owner: &mut dyn Owner) {
        let new =
            std::mem::take(&mut *self.breaches.lock().unwrap_or_else(PoisonError::into_inner));
        for (v, line) in &new {
            owner.on_violation(v, line);
        }
    }

    /// Stops the egress stack and takes the final readings: usage, and
    /// every violation in time order.
    pub(crate) fn finish(&mut self, owner: &mut dyn Owner) -> Finished {
        let network = self.net.finish(&mut |v, line| owner.on_violation(v, line));
        let cgroup = self.cgroup;
        let (usage, mut violations, killed_for) = match self.monitor.as_mut() {
            Some(m) => {
                let usage = m.final_usage(cgroup);
                (usage, std::mem::take(&mut m.violations), m.killed_for)
            }
            None => (Usage::default(), Vec::new(), None),
        };
        let last =
            std::mem::take(&mut *self.breaches.lock().unwrap_or_else(PoisonError::into_inner));
        for (v, line) in &last {
            owner.on_last_violation(v, line);
        }
        violations.append(&mut self.net.violations);
        sort_violations(&mut violations);
        Finished {
            usage,
            violations,
            network,
            killed_for,
        }
    }

    /// Init, for a teardown that waits for it (see `teardown.rs`).
    pub fn into_launched(self) -> Launched {
        self.launched
    }
}

/// Whether the loop may end before init is reaped: the owner is done with
/// the sandbox (init killed) and nothing but init is left in its cgroup.
pub(crate) fn may_end_early(owner_done: bool, cgroup: &dyn StatsSource, init: i32) -> bool {
    owner_done && cgroup.holds_only(init)
}

/// Violations in the order they happened.
pub(crate) fn sort_violations(v: &mut [Violation]) {
    v.sort_by(|a, b| a.at.total_cmp(&b.at));
}

/// How one command's run ended, for its report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ending {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
}

/// The ending of a run whose command's last word from init was `ended`
/// (`Exited` or `Signaled`, if any came): a hard breach wins, the command
/// then being killed with the sandbox.
pub(crate) fn command_ending(
    killed_for: Option<ViolationKind>,
    ended: Option<&FromInit>,
) -> Ending {
    let mut e = Ending {
        outcome: Outcome::Signaled,
        exit_code: None,
        signal: Some(libc::SIGKILL),
        error: None,
    };
    match (killed_for, ended) {
        (Some(kind), _) => e.outcome = outcome_for(kind),
        (None, Some(FromInit::Exited { code, .. })) => {
            e.outcome = Outcome::Exited;
            e.exit_code = Some(*code);
            e.signal = None;
        }
        (None, Some(FromInit::Signaled { sig, .. })) => e.signal = Some(*sig),
        _ => e.error = Some("the sandbox's init was killed".into()),
    }
    e
}

/// The outcome of a long-lived sandbox: the hard breach it was killed
/// for, else the ending its owner chose (destroyed), else its init died.
pub(crate) fn sandbox_outcome(
    killed_for: Option<ViolationKind>,
    ending: Option<Outcome>,
) -> Outcome {
    match (killed_for, ending) {
        (Some(kind), _) => outcome_for(kind),
        (None, Some(o)) => o,
        (None, None) => Outcome::Signaled,
    }
}

/// The outcome a hard breach gives a sandbox.
pub(crate) fn outcome_for(kind: ViolationKind) -> Outcome {
    match kind {
        ViolationKind::Timeout => Outcome::Timeout,
        ViolationKind::DiskLimit => Outcome::DiskLimit,
        ViolationKind::MemoryLimit => Outcome::MemoryLimit,
        ViolationKind::PidsLimit
        | ViolationKind::NetworkDenied
        | ViolationKind::NetworkRateLimit => Outcome::Signaled,
    }
}
