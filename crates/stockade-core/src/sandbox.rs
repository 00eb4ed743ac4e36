//! One running sandbox as an object, and the one event loop that
//! supervises it, for `stockade run` (and so the task runner) and for the
//! daemon's shims.
//!
//! The lifecycle: [`Sandbox::create`] launches init from a prepared spec
//! into its cgroup (and starts the egress stack on the TUN init made);
//! [`Control::exec`] asks init to start a process (argv, env, cwd, user,
//! terminal, stdio descriptors: a [`SpawnRequest`]); [`Control::signal`]
//! and [`Control::kill`] reach into it; [`Sandbox::watch`] arms the limits
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
//! Another backend (a microVM) plugs in behind
//! [`crate::backend::Backend`] / [`crate::backend::SandboxHandle`] for the
//! daemon, and at [`Control`] for the event handlers: a guest agent that
//! speaks init's protocol serves `run`'s and the shim's owners unchanged.
//! Its own loop sources (the VMM's pidfd, a vsock) replace init's here,
//! and its limits reach the same [`Monitor`] through
//! [`crate::monitor::StatsSource`] and [`crate::monitor::DiskGauge`].

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

/// What an owner may do with its sandbox from an event handler. A
/// [`Sandbox`]; a recording fake in the tests.
pub trait Control {
    /// Host pid of the sandbox's init.
    fn init_pid(&self) -> i32;
    /// Sends init a message with descriptors.
    fn send(&self, msg: &ToInit, fds: &[RawFd]) -> Result<(), proto::ProtoError>;
    /// Ends the sandbox (kills init, and so everything).
    fn kill(&self);
    /// Usage so far.
    fn usage(&mut self) -> Usage;
    /// What it holds right now.
    fn current(&self) -> crate::backend::Current {
        crate::backend::Current::default()
    }
    /// The limit violations so far (not the network's).
    fn limit_violations(&self) -> &[Violation];
    /// The hard breach the sandbox was killed for, if any.
    fn killed_for(&self) -> Option<ViolationKind>;
    /// Reads the cgroup's OOM kills now (rather than when the notifier is
    /// next polled): a memory breach found here is returned once, and the
    /// caller must end the sandbox for it.
    fn check_oom(&mut self) -> Option<ViolationKind> {
        None
    }

    /// Asks init to start a process with these stdio descriptors (none
    /// with a terminal: init sends its master back).
    fn exec(&self, request: SpawnRequest, stdio: &[RawFd]) -> Result<(), proto::ProtoError> {
        self.send(&ToInit::Spawn(request), stdio)
    }

    /// Delivers `sig` to process `pid` of the sandbox (a host pid that
    /// init reported).
    fn signal(&self, pid: i32, sig: i32) {
        let _ = self.send(&ToInit::Signal { pid, sig }, &[]);
    }
}

/// What the owner of a sandbox makes of its events. Every handler gets
/// the sandbox back to act on it (signal, kill, send to init).
pub(crate) trait Owner {
    /// Descriptors of the owner's own to poll, after the sandbox's.
    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>);
    /// Which of them were ready, in the order given.
    fn on_ready(&mut self, sb: &mut dyn Control, ready: &[bool]);
    /// A message from init, with the descriptors that came with it.
    fn on_init(&mut self, sb: &mut dyn Control, msg: FromInit, fds: Vec<OwnedFd>);
    /// A signal read from the signalfd.
    fn on_signal(&mut self, sb: &mut dyn Control, sig: i32);
    /// A hard breach (time, memory, disk): the sandbox must end.
    fn on_breach(&mut self, sb: &mut dyn Control, kind: ViolationKind);
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
    fn may_end_early(&self, sb: &dyn Control) -> bool;
}

/// Violations the monitor found, waiting for the owner's handler.
type Breaches = Arc<Mutex<Vec<(Violation, String)>>>;

/// A running sandbox: its init, cgroup, signals, limits watch and egress.
pub struct Sandbox<'c> {
    launched: Launched,
    cgroup: &'c Cgroup,
    net: NetWatch,
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
        mut net: NetWatch,
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
                cgroup
                    .add_pid(pid)
                    .map_err(|e| stockade_isolate::error_chain(&e))
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

    /// Kills init and reaps it: for a failure before the event loop runs.
    pub fn abort(&self) {
        self.kill();
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.launched.pid), None);
    }

    /// Waits for init to finish building the sandbox: `Err` says why it
    /// could not.
    pub fn wait_ready(&self) -> Result<(), String> {
        match proto::recv_msg::<FromInit>(self.launched.ctl.as_fd()) {
            Ok(Some((FromInit::Ready, fds))) => {
                self.take_proc_dir(fds);
                Ok(())
            }
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
                Ok(Some((FromInit::Ready, fds))) => {
                    self.take_proc_dir(fds);
                    owner.on_init(self, FromInit::Ready, Vec::new());
                }
                Ok(Some((msg, fds))) => owner.on_init(self, msg, fds),
                Ok(None) | Err(_) => self.ctl_open = false,
            }
        }
    }

    /// Init's `/proc`, sent with its ready message when the sandbox has
    /// no cgroup: the group lists the sandbox's processes there.
    fn take_proc_dir(&self, fds: Vec<OwnedFd>) {
        if let Some(fd) = fds.into_iter().next() {
            self.cgroup.set_proc_dir(fd);
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

    /// Init, for a teardown that waits for it (see `teardown.rs`), and the
    /// sandbox's TUN device once the egress stack is done with it: its
    /// last close takes the kernel milliseconds, so the caller decides
    /// when that happens.
    pub fn into_parts(mut self) -> (Launched, Option<OwnedFd>) {
        let device = self.net.take_device();
        (self.launched, device)
    }
}

impl Control for Sandbox<'_> {
    fn init_pid(&self) -> i32 {
        self.launched.pid
    }

    fn send(&self, msg: &ToInit, fds: &[RawFd]) -> Result<(), proto::ProtoError> {
        proto::send_msg(self.launched.ctl.as_fd(), msg, fds)
    }

    /// Killing init makes the kernel kill everything else in its pid
    /// namespace, which is every process of the sandbox. (The cgroup is
    /// emptied and removed afterwards, as a second net.)
    fn kill(&self) {
        let _ = pidfd_send_signal(&self.launched.pidfd, libc::SIGKILL);
    }

    fn usage(&mut self) -> Usage {
        let cgroup = self.cgroup;
        self.monitor
            .as_mut()
            .map(|m| m.usage(cgroup))
            .unwrap_or_default()
    }

    fn current(&self) -> crate::backend::Current {
        let s = StatsSource::stats(self.cgroup);
        crate::backend::Current {
            memory_bytes: s.memory_current,
            pids: s.pids_current,
        }
    }

    fn limit_violations(&self) -> &[Violation] {
        self.monitor.as_ref().map_or(&[], |m| &m.violations)
    }

    fn killed_for(&self) -> Option<ViolationKind> {
        self.monitor.as_ref().and_then(|m| m.killed_for)
    }

    fn check_oom(&mut self) -> Option<ViolationKind> {
        let cgroup = self.cgroup;
        self.monitor.as_mut().and_then(|m| m.check_oom(cgroup))
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

#[cfg(test)]
mod tests {
    //! The supervisor's decisions, driven with a fake cgroup, a fake disk
    //! and a fake sandbox: no root, no processes.

    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use stockade_cgroup::Stats;
    use stockade_policy::{ByteSize, Span};

    use super::*;
    use crate::monitor::{DiskGauge, TICK};

    /// A cgroup whose counters the test sets.
    #[derive(Default)]
    struct FakeGroup {
        stats: RefCell<Stats>,
        only_init: Cell<bool>,
    }

    impl StatsSource for FakeGroup {
        fn stats(&self) -> Stats {
            self.stats.borrow().clone()
        }

        fn holds_only(&self, _: i32) -> bool {
            self.only_init.get()
        }
    }

    /// A disk reading the test sets.
    #[derive(Debug)]
    struct FakeDisk {
        used: Arc<AtomicU64>,
        kernel: bool,
    }

    impl DiskGauge for FakeDisk {
        fn used(&mut self) -> u64 {
            self.used.load(Ordering::Relaxed)
        }

        fn enforced_elsewhere(&self) -> bool {
            self.kernel
        }
    }

    struct Watch {
        monitor: Monitor,
        group: FakeGroup,
        disk: Arc<AtomicU64>,
        started: Instant,
        /// Lines the violation sink heard.
        heard: Arc<Mutex<Vec<String>>>,
    }

    fn watch(timeout: Duration, kernel_disk: bool) -> Watch {
        let limits = Limits {
            memory: ByteSize::mib(64),
            pids: 32,
            disk: ByteSize::mib(1),
            timeout: Span::secs(timeout.as_secs().max(1)),
            ..Limits::default()
        };
        let started = Instant::now();
        let disk = Arc::new(AtomicU64::new(0));
        let heard: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = heard.clone();
        let monitor = Monitor::new(
            limits,
            started,
            started + timeout,
            DiskSource::Gauge(Box::new(FakeDisk {
                used: disk.clone(),
                kernel: kernel_disk,
            })),
            Box::new(move |v, detail| {
                sink.lock()
                    .unwrap()
                    .push(format!("{}: {detail}", v.kind.as_str()))
            }),
        );
        Watch {
            monitor,
            group: FakeGroup::default(),
            disk,
            started,
            heard,
        }
    }

    impl Watch {
        /// A moment the `n`th sample is due by (the first is due a
        /// [`TICK`] after the monitor was made, a little after `started`).
        fn due(&self, n: u32) -> Instant {
            self.started + n * TICK + Duration::from_millis(50)
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_deadline_kills_once_with_a_timeout_violation_and_outcome() {
        let mut w = watch(Duration::from_secs(5), false);
        let before = w.started + Duration::from_secs(4);
        assert_eq!(w.monitor.tick_at(&w.group, before), None);
        assert!(w.monitor.violations.is_empty());
        let after = w.started + Duration::from_secs(5);
        assert_eq!(
            w.monitor.tick_at(&w.group, after),
            Some(ViolationKind::Timeout)
        );
        // Acted on once: later ticks leave it to the kill.
        assert_eq!(w.monitor.tick_at(&w.group, after + TICK), None);
        assert_eq!(w.monitor.violations.len(), 1);
        assert_eq!(w.monitor.violations[0].kind, ViolationKind::Timeout);
        assert_eq!(w.heard.lock().unwrap().len(), 1);
        assert!(w.heard.lock().unwrap()[0].starts_with("timeout: killed after"));
        // The command's own end, reported after the kill, does not count.
        let exited = FromInit::Exited { pid: 7, code: 0 };
        let e = command_ending(w.monitor.killed_for, Some(&exited));
        assert_eq!(e.outcome, Outcome::Timeout);
        assert_eq!((e.exit_code, e.signal), (None, Some(libc::SIGKILL)));
        assert_eq!(
            sandbox_outcome(w.monitor.killed_for, Some(Outcome::Destroyed)),
            Outcome::Timeout
        );
    }

    #[test]
    fn an_oom_kill_is_a_memory_breach_from_the_notifier_or_the_sample() {
        // From the notifier.
        let mut w = watch(HOUR, false);
        assert_eq!(w.monitor.check_oom(&w.group), None);
        w.group.stats.borrow_mut().oom_kills = 1;
        w.group.stats.borrow_mut().memory_peak = 64 << 20;
        assert_eq!(
            w.monitor.check_oom(&w.group),
            Some(ViolationKind::MemoryLimit)
        );
        assert_eq!(w.monitor.check_oom(&w.group), None);
        assert_eq!(w.monitor.violations.len(), 1);
        assert_eq!(w.monitor.violations[0].limit, ByteSize::mib(64).to_string());
        assert_eq!(
            command_ending(w.monitor.killed_for, None).outcome,
            Outcome::MemoryLimit
        );
        // From the periodic sample, when the notification came too early.
        let mut w = watch(HOUR, false);
        w.group.stats.borrow_mut().oom_kills = 2;
        assert_eq!(w.monitor.tick_at(&w.group, w.started), None, "not due yet");
        assert_eq!(
            w.monitor.tick_at(&w.group, w.due(1)),
            Some(ViolationKind::MemoryLimit)
        );
        assert_eq!(w.monitor.killed_for, Some(ViolationKind::MemoryLimit));
    }

    #[test]
    fn the_process_limit_is_recorded_once_and_kills_nothing() {
        let mut w = watch(HOUR, false);
        w.group.stats.borrow_mut().pids_limit_hits = 3;
        w.group.stats.borrow_mut().pids_current = 32;
        for n in 1..4 {
            assert_eq!(w.monitor.tick_at(&w.group, w.due(n)), None);
        }
        assert_eq!(w.monitor.killed_for, None);
        assert_eq!(w.monitor.violations.len(), 1);
        assert_eq!(w.monitor.violations[0].kind, ViolationKind::PidsLimit);
        assert_eq!(w.monitor.violations[0].observed, "3 forks refused");
        // The command's own ending stands.
        let exited = FromInit::Exited { pid: 7, code: 3 };
        let e = command_ending(w.monitor.killed_for, Some(&exited));
        assert_eq!(e.outcome, Outcome::Exited);
        assert_eq!((e.exit_code, e.signal), (Some(3), None));
    }

    #[test]
    fn polled_disk_over_the_limit_kills_and_at_the_end_only_records() {
        let mut w = watch(HOUR, false);
        w.disk.store(1 << 20, Ordering::Relaxed);
        // At the limit is not over it.
        assert_eq!(w.monitor.tick_at(&w.group, w.due(1)), None);
        w.disk.store((1 << 20) + 1, Ordering::Relaxed);
        assert_eq!(
            w.monitor.tick_at(&w.group, w.due(2)),
            Some(ViolationKind::DiskLimit)
        );
        assert_eq!(
            command_ending(w.monitor.killed_for, None).outcome,
            Outcome::DiskLimit
        );
        // Over the limit only in the final reading: recorded, not killed.
        let mut w = watch(HOUR, false);
        w.disk.store(2 << 20, Ordering::Relaxed);
        let usage = w.monitor.final_usage(&w.group);
        assert_eq!(usage.disk_bytes, 2 << 20);
        assert_eq!(usage.disk_enforced, "polling");
        assert_eq!(w.monitor.killed_for, None);
        assert_eq!(w.monitor.violations[0].kind, ViolationKind::DiskLimit);
        assert!(w.heard.lock().unwrap()[0].contains("ended with"));
    }

    #[test]
    fn disk_enforced_elsewhere_is_reported_when_reached_and_not_killed_for() {
        let mut w = watch(HOUR, true);
        w.disk.store(1 << 20, Ordering::Relaxed);
        assert_eq!(w.monitor.tick_at(&w.group, w.due(1)), None);
        assert_eq!(w.monitor.killed_for, None);
        assert_eq!(w.monitor.violations.len(), 1);
        assert_eq!(w.monitor.violations[0].kind, ViolationKind::DiskLimit);
        assert_eq!(w.monitor.final_usage(&w.group).disk_enforced, "kernel");
    }

    #[test]
    fn usage_keeps_the_peaks_seen_between_samples() {
        let mut w = watch(HOUR, false);
        w.group.stats.borrow_mut().pids_current = 9;
        w.group.stats.borrow_mut().socket_memory = 4096;
        w.monitor.tick_at(&w.group, w.due(1));
        *w.group.stats.borrow_mut() = Stats::default();
        let usage = w.monitor.final_usage(&w.group);
        assert_eq!(usage.pids_peak, 9);
        assert_eq!(usage.socket_memory_peak_bytes, 4096);
    }

    #[test]
    fn the_loop_ends_early_only_when_the_owner_is_done_and_init_is_alone() {
        let group = FakeGroup::default();
        assert!(!may_end_early(true, &group, 1));
        group.only_init.set(true);
        assert!(may_end_early(true, &group, 1));
        assert!(!may_end_early(false, &group, 1));
    }

    #[test]
    fn a_sandbox_without_a_breach_ends_as_its_owner_said_or_as_init_died() {
        assert_eq!(
            sandbox_outcome(None, Some(Outcome::Destroyed)),
            Outcome::Destroyed
        );
        assert_eq!(sandbox_outcome(None, None), Outcome::Signaled);
        let signaled = FromInit::Signaled { pid: 7, sig: 15 };
        let e = command_ending(None, Some(&signaled));
        assert_eq!((e.outcome, e.signal), (Outcome::Signaled, Some(15)));
        let e = command_ending(None, None);
        assert_eq!(e.outcome, Outcome::Signaled);
        assert_eq!(e.error.as_deref(), Some("the sandbox's init was killed"));
    }

    #[test]
    fn violations_come_out_in_time_order() {
        let v = |kind, at| Violation {
            kind,
            limit: String::new(),
            observed: String::new(),
            at,
        };
        let mut all = vec![
            v(ViolationKind::Timeout, 3.0),
            v(ViolationKind::NetworkDenied, 1.0),
            v(ViolationKind::PidsLimit, 2.0),
        ];
        sort_violations(&mut all);
        let at: Vec<f64> = all.iter().map(|v| v.at).collect();
        assert_eq!(at, [1.0, 2.0, 3.0]);
    }

    /// A sandbox that records what its owner did to it.
    #[derive(Default)]
    struct FakeSandbox {
        sent: RefCell<Vec<ToInit>>,
        kills: Cell<u32>,
        killed_for: Option<ViolationKind>,
    }

    impl Control for FakeSandbox {
        fn init_pid(&self) -> i32 {
            1
        }

        fn send(&self, msg: &ToInit, _: &[RawFd]) -> Result<(), proto::ProtoError> {
            self.sent.borrow_mut().push(msg.clone());
            Ok(())
        }

        fn kill(&self) {
            self.kills.set(self.kills.get() + 1);
        }

        fn usage(&mut self) -> Usage {
            Usage::default()
        }

        fn limit_violations(&self) -> &[Violation] {
            &[]
        }

        fn killed_for(&self) -> Option<ViolationKind> {
            self.killed_for
        }
    }

    fn signals_sent(sb: &FakeSandbox) -> Vec<(i32, i32)> {
        sb.sent
            .borrow()
            .iter()
            .filter_map(|m| match m {
                ToInit::Signal { pid, sig } => Some((*pid, *sig)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn run_forwards_signals_kills_on_breach_and_ends_with_its_command() {
        let mut cmd = crate::run::OneCommand::new(false, true);
        let mut sb = FakeSandbox::default();
        // A signal before init said the command's pid waits for it.
        cmd.on_signal(&mut sb, libc::SIGTERM);
        assert!(signals_sent(&sb).is_empty());
        cmd.on_init(&mut sb, FromInit::Spawned { tag: 1, pid: 42 }, Vec::new());
        assert_eq!(signals_sent(&sb), [(42, libc::SIGTERM)]);
        assert!(cmd.watching());
        // A process other than the command ends: nothing happens.
        cmd.on_init(&mut sb, FromInit::Exited { pid: 43, code: 1 }, Vec::new());
        assert_eq!(sb.kills.get(), 0);
        assert!(!cmd.may_end_early(&sb));
        // The command ends: the sandbox goes, limits are no longer
        // watched (OOM still is), and the loop may end early.
        cmd.on_init(&mut sb, FromInit::Exited { pid: 42, code: 0 }, Vec::new());
        assert_eq!(sb.kills.get(), 1);
        assert!(!cmd.watching());
        assert!(cmd.watching_oom());
        assert!(cmd.may_end_early(&sb));
        // Not after a breach: that run is torn down before the report.
        sb.killed_for = Some(ViolationKind::MemoryLimit);
        assert!(!cmd.may_end_early(&sb));
    }

    #[test]
    fn run_kills_on_a_breach_and_on_the_third_interrupt() {
        let mut cmd = crate::run::OneCommand::new(false, false);
        let mut sb = FakeSandbox::default();
        cmd.on_breach(&mut sb, ViolationKind::Timeout);
        assert_eq!(sb.kills.get(), 1);
        let mut sb = FakeSandbox::default();
        cmd.on_init(&mut sb, FromInit::Spawned { tag: 1, pid: 42 }, Vec::new());
        cmd.on_signal(&mut sb, libc::SIGINT);
        cmd.on_signal(&mut sb, libc::SIGWINCH);
        cmd.on_signal(&mut sb, libc::SIGINT);
        assert_eq!(sb.kills.get(), 0);
        assert_eq!(signals_sent(&sb).len(), 2, "SIGWINCH is not forwarded");
        cmd.on_signal(&mut sb, libc::SIGINT);
        assert_eq!(sb.kills.get(), 1);
        // Without deferred teardown the loop always waits for init.
        cmd.on_init(&mut sb, FromInit::Exited { pid: 42, code: 0 }, Vec::new());
        assert!(!cmd.may_end_early(&sb));
    }

    #[test]
    fn a_failed_setup_or_spawn_kills_and_never_ends_early() {
        let mut cmd = crate::run::OneCommand::new(false, true);
        let mut sb = FakeSandbox::default();
        let failed = FromInit::SpawnFailed {
            tag: 1,
            step: "run x".into(),
            errno: libc::ENOENT,
        };
        cmd.on_init(&mut sb, failed, Vec::new());
        assert_eq!(sb.kills.get(), 1);
        assert!(!cmd.may_end_early(&sb));
    }
}
