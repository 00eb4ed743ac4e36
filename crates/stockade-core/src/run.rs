//! One sandbox for one command: start, supervise, clean up, report.
//!
//! The supervisor is a single-threaded `poll` loop over the sandbox init's
//! pidfd and control socket, a signalfd for the signals it forwards, the
//! cgroup's OOM notifier and (with a terminal) the pty relay. Between
//! events it checks the deadline, samples the process count and measures
//! disk use. Hard breaches (time, memory, disk) kill the whole sandbox;
//! soft ones (process limit) are recorded and the workload sees `EAGAIN`.
//!
//! With network egress (`allowlist`/`open`) init hands over the sandbox's
//! TUN device before it is ready, and the supervisor serves it with
//! `stockade_net::Egress` on a thread of its own, started only after the
//! clone (which needs a single-threaded process). Its decisions come back
//! over a channel drained by the poll loop ([`NetWatch`]).

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use stockade_cgroup::{Cgroup, Driver, Limits as CgLimits};
use stockade_isolate::launch::{launch_joining, Launched};
use stockade_isolate::proto::{self, FromInit, ToInit};
use stockade_isolate::sys::pidfd_send_signal;
use stockade_net::{Egress, EgressConfig, NetEvent, Protocol, Reason, Verdict};
use stockade_policy::{NetMode, NetworkPolicy, Policy};

use crate::monitor::Monitor;
use crate::prepare::{new_id, prepare};
use crate::report::{NetworkUsage, Outcome, Report, Usage, Violation, ViolationKind};
use crate::state::StateDir;
use crate::teardown::{Leftovers, PendingTeardown};
use crate::tty::TtyRelay;
use crate::RunError;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy: Policy,
    pub command: Vec<String>,
    /// Give the workload a terminal and relay it to ours.
    pub tty: bool,
    /// `TERM` inside with `tty` (the caller's; `xterm` by default).
    pub term: String,
    pub state_dir: PathBuf,
    /// Print one `stockade: <kind>: <detail>` line per breach on stderr.
    pub print_violations: bool,
    /// The command's stdin, stdout and stderr; ours when `None`. The
    /// caller keeps them open for the duration of the run.
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
    /// Host directories counted against the disk limit besides the
    /// sandbox's own scratch space (e.g. a bound workspace that is
    /// scratch to the caller).
    pub extra_metered: Vec<PathBuf>,
    /// A capped subvolume to put the sandbox's scratch directories in
    /// (a task's, which its workspace shares) instead of one of its own.
    pub scratch_within: Option<crate::scratch::Subvol>,
    /// Write every network decision to this file, one JSON object per
    /// line (`stockade_net::NetEvent`). Only with network egress.
    pub net_log: Option<PathBuf>,
    /// Return as soon as the command has ended and nothing else of the
    /// sandbox runs, leaving the rest of the teardown (init's exit, cgroup,
    /// network device, sandbox directory, then garbage collection of older
    /// leftovers) to a detached process. For one-shot callers that exit
    /// right after the run, like `stockade run`; the caller must not fork
    /// or start threads of its own around the call.
    pub defer_teardown: bool,
}

impl RunOptions {
    /// Options for running `command` under `policy` with our own stdio.
    pub fn new(policy: Policy, command: Vec<String>, state_dir: PathBuf) -> RunOptions {
        RunOptions {
            policy,
            command,
            tty: false,
            term: "xterm".into(),
            state_dir,
            print_violations: true,
            stdio: None,
            extra_metered: Vec::new(),
            scratch_within: None,
            net_log: None,
            defer_teardown: false,
        }
    }
}

/// Signals the supervisor takes over and forwards to the sandbox.
const HANDLED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
];

/// Runs the command to its end. Failures before the workload could start
/// come back as a report with `outcome: error` and a message. Nothing of
/// the sandbox is left when it returns.
pub fn run(opts: &RunOptions) -> Report {
    // Dropping the pending teardown does it here.
    run_deferred(opts).0
}

/// Like [`run`], but with `opts.defer_teardown` the sandbox's teardown may
/// come back undone, once the command has ended normally and nothing of
/// the sandbox runs any more: [`PendingTeardown::exit`] leaves it to a
/// detached cleaner as the process exits. (A limit breach, a process left
/// running or a failed setup are always torn down before the return.)
pub fn run_deferred(opts: &RunOptions) -> (Report, Option<PendingTeardown>) {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let id = new_id();
    let mut report = Report {
        id: id.clone(),
        outcome: Outcome::Error,
        exit_code: None,
        signal: None,
        error: None,
        violations: Vec::new(),
        usage: Usage::default(),
        command: opts.command.clone(),
        started_at,
        network: None,
    };
    // Block the forwarded signals before anything else: one that arrives
    // while the sandbox is being built stays pending and is read from the
    // signalfd and forwarded once init exists. Init inherits the mask, so
    // it cannot lose one either before it starts waiting for them.
    let mut mask = SigSet::empty();
    for s in HANDLED {
        mask.add(*s);
    }
    let old_mask = mask
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .ok();
    let _restore = RestoreMask(old_mask);
    let mut pending = None;
    if let Err(e) = run_inner(opts, &id, started, &mut report, &mut pending) {
        report.outcome = Outcome::Error;
        report.exit_code = Some(e.exit_code());
        report.error = Some(e.to_string());
    }
    report.usage.wall_seconds = started.elapsed().as_secs_f64();
    (report, pending)
}

fn run_inner(
    opts: &RunOptions,
    id: &str,
    started: Instant,
    report: &mut Report,
    pending: &mut Option<PendingTeardown>,
) -> Result<(), RunError> {
    let policy = &opts.policy;
    policy
        .validate()
        .map_err(|e| RunError::Invalid(e.to_string()))?;
    let net_log = open_net_log(opts)?;
    let state = StateDir::open(&opts.state_dir).map_err(|e| RunError::Io {
        what: format!("open the state directory {}", opts.state_dir.display()),
        source: e,
    })?;
    let driver =
        Driver::detect().map_err(|e| RunError::Cgroup(stockade_isolate::error_chain(&e)))?;
    if !opts.defer_teardown {
        crate::gc::collect(&state, Some(&driver));
    }

    let dir = state.create_sandbox(id).map_err(|e| RunError::Io {
        what: format!(
            "create the sandbox directory under {}",
            state.sandboxes().display()
        ),
        source: e,
    })?;
    let limits = CgLimits {
        cpus: Some(policy.limits.cpus.0),
        memory_bytes: Some(policy.limits.memory.bytes()),
        pids: Some(policy.limits.pids),
    };
    // A ready user + network namespace pair, if the pool has one: it was
    // made for a host id slot, which the sandbox then runs in. Otherwise
    // a free slot of its own.
    let slot_dir = stockade_isolate::slots::dir();
    let pooled = stockade_isolate::nspool::configured()
        .and_then(|(pool, _)| stockade_isolate::nspool::claim(&pool, &slot_dir));
    let (pool_pair, slot) = match pooled {
        Some((pair, slot)) => (Some(pair), slot),
        None => match stockade_isolate::slots::Slot::acquire(&slot_dir) {
            Ok(slot) => (None, slot),
            Err(e) => {
                let _ = dir.remove();
                return Err(RunError::Invalid(stockade_isolate::error_chain(&e)));
            }
        },
    };
    let place = match &opts.scratch_within {
        Some(s) => crate::prepare::ScratchPlace::Within(s.clone()),
        None => crate::prepare::ScratchPlace::for_host(),
    };
    let setup = (|| {
        let prepared = prepare(policy, &state, &dir, slot, &place)?;
        let request = prepared.request(
            1,
            &opts.command,
            &Default::default(),
            None,
            opts.tty.then_some(opts.term.as_str()),
        )?;
        let cgroup = driver
            .create(id, &limits)
            .map_err(|e| RunError::Cgroup(stockade_isolate::error_chain(&e)))?;
        Ok::<_, RunError>((prepared, request, cgroup))
    })();
    let (mut prepared, request, cgroup) = match setup {
        Ok(s) => s,
        Err(e) => {
            let _ = dir.remove();
            if let Some(pair) = &pool_pair {
                stockade_isolate::nspool::release(&pair.entry);
            }
            return Err(e);
        }
    };
    let mut net = NetWatch::new(&policy.network, id, report.started_at, net_log);
    prepared.pool_pair = pool_pair;
    let r = supervise(opts, &prepared, request, &cgroup, started, report, &mut net);
    // Init holds the pair now (or new namespaces, if it could not be
    // entered). Its files leave the pool with the teardown: unmounting
    // them while init builds the sandbox would make the kernel wait for
    // RCU grace periods (expedited: an interrupt on every CPU).
    let claimed = prepared.pool_pair.take().map(|p| p.entry);
    let (r, dying) = match r {
        Ok(dying) => (Ok(()), dying),
        Err(e) => (Err(e), None),
    };
    let device = net.take_device();
    match dying {
        // The command is done and only init is left, already killed:
        // nothing of the sandbox runs any more. The rest of the teardown
        // (init's exit, the cgroup, the network device, the directory)
        // costs milliseconds the caller need not wait for.
        Some(init) => {
            let left = Leftovers {
                init,
                device,
                cgroup,
                dir,
                claimed,
                scratch: prepared.scratch,
                slot: prepared.slot,
            };
            let refill = crate::teardown::Refill::configured();
            *pending = Some(PendingTeardown::new(left, state, driver, refill));
            return r;
        }
        None => {
            // Whatever happened, nothing may outlive the run (destroy
            // kills whatever is still in the group first).
            drop(device);
            let _ = cgroup.destroy();
            let _ = dir.remove();
            if let Some(entry) = &claimed {
                stockade_isolate::nspool::release(entry);
            }
            if let Some(s) = &prepared.scratch {
                s.remove();
            }
            // Nothing runs under the slot's ids any more.
            drop(prepared.slot);
        }
    }
    if opts.defer_teardown {
        // Not done before the start (see above): older leftovers now.
        crate::gc::collect(&state, Some(&driver));
    }
    r
}

fn supervise(
    opts: &RunOptions,
    prepared: &crate::prepare::Prepared,
    request: stockade_isolate::proto::SpawnRequest,
    cgroup: &Cgroup,
    started: Instant,
    report: &mut Report,
    net: &mut NetWatch,
) -> Result<Option<Launched>, RunError> {
    let limits = &opts.policy.limits;
    let mut mask = SigSet::empty();
    for s in HANDLED {
        mask.add(*s);
    }
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| RunError::Sys("create a signalfd".into(), e))?;

    // On cgroup v1 init moves itself into its group (cheaper than being
    // moved: see `launch_joining`).
    // (`STOCKADE_BENCH_V1_ATTACH=move` keeps the old way, so benchmarks
    // can show what this buys.)
    let self_join = match std::env::var_os("STOCKADE_BENCH_V1_ATTACH") {
        Some(v) if v == "move" => Vec::new(),
        _ => cgroup.self_join_files(),
    };
    // SAFETY: `stockade run` is single-threaded; nothing else runs while
    // the sandbox's init is cloned.
    let launched = unsafe {
        launch_joining(
            &prepared.spec,
            cgroup.dir_fd_v2(),
            &self_join,
            prepared.pool_pair.as_ref(),
            |pid| {
                cgroup
                    .add_pid(pid)
                    .map_err(|e| stockade_isolate::error_chain(&e))
            },
        )
    };
    drop(self_join);
    // (A claimed pair goes back with the teardown, on failure too.)
    let mut launched: Launched =
        launched.map_err(|e| RunError::Launch(stockade_isolate::error_chain(&e)))?;
    let mut pipes_for_init: Vec<OwnedFd> = Vec::new();
    // The egress stack serves the TUN device made at launch; started now,
    // after the clone: from here on the supervisor has a second thread.
    if let Some(tun) = launched.tun.take() {
        if let Err(e) = net.start(Some(tun)) {
            kill_init(&launched);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launched.pid), None);
            return Err(RunError::Setup(e));
        }
    }
    // The command goes right behind the go-ahead; init serves it once the
    // sandbox is built. Without a terminal of its own it gets our stdio,
    // except that a terminal among it is relayed through a pipe (made only
    // now, after the clone, so that init holds no copy of its other end):
    // the caller's terminal never enters the sandbox.
    let own = opts.stdio.unwrap_or([0, 1, 2]);
    let mut stdio_relay = None;
    let stdio: Vec<i32> = if request.tty {
        Vec::new()
    } else {
        match crate::relay::StdioRelay::wrap(own) {
            Ok(w) => {
                stdio_relay = w.relay;
                // `keep` stays open until the message is sent below.
                let fds = w.fds.to_vec();
                pipes_for_init = w.keep;
                fds
            }
            Err(e) => {
                kill_init(&launched);
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launched.pid), None);
                return Err(RunError::Sys(
                    "create the pipes for the command's stdio".into(),
                    e,
                ));
            }
        }
    };
    let spawn = ToInit::Spawn(request);
    if proto::send_msg(launched.ctl.as_fd(), &spawn, &stdio).is_err() {
        kill_init(&launched);
    }
    // Init has its copies now; ours must go, or the pipes never end.
    drop(std::mem::take(&mut pipes_for_init));
    let oom_fd = cgroup.oom_notifier().ok();
    let print = opts.print_violations;
    let disk = match &prepared.scratch {
        Some(s) => crate::monitor::DiskSource::Quota(s.subvol.clone()),
        None => {
            let mut metered = prepared.metered.clone();
            metered.extend(opts.extra_metered.iter().cloned());
            crate::monitor::DiskSource::Walk(metered)
        }
    };
    let mut monitor = Monitor::new(
        limits.clone(),
        started,
        started + limits.timeout.duration(),
        disk,
        Box::new(move |v, detail| {
            if print {
                eprintln!("stockade: {}: {detail}", v.kind.as_str());
            }
        }),
    );
    let mut main_pid: Option<i32> = None;
    let mut ended: Option<FromInit> = None;
    let mut setup_error: Option<String> = None;
    let mut spawn_error: Option<(String, i32)> = None;
    let mut relay: Option<TtyRelay> = None;
    let mut ctl_open = true;
    let mut interrupts = 0;
    let mut early_signals: Vec<i32> = Vec::new();
    let mut early = false;

    loop {
        // Once the command has ended the sandbox is going down anyway.
        if ended.is_none() && monitor.tick(cgroup).is_some() {
            kill_init(&launched);
        }
        let wake = monitor
            .next_wake()
            .saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(wake.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        let mut fds: Vec<PollFd<'_>> = vec![
            PollFd::new(launched.pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        let ctl_idx = ctl_open.then(|| {
            fds.push(PollFd::new(launched.ctl.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let oom_idx = oom_fd.as_ref().map(|f| {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let relay_base = fds.len();
        if let Some(r) = &relay {
            r.poll_fds(&mut fds);
        }
        let stdio_base = fds.len();
        if let Some(r) = &stdio_relay {
            r.poll_fds(&mut fds);
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(RunError::Sys("poll".into(), e)),
        }
        let ready = |fds: &[PollFd<'_>], i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let init_done = ready(&fds, 0);
        let sig_ready = ready(&fds, 1);
        let ctl_ready = ctl_idx.is_some_and(|i| ready(&fds, i));
        let oom_ready = oom_idx.is_some_and(|i| ready(&fds, i));
        let relay_events: Vec<bool> = (relay_base..stdio_base).map(|i| ready(&fds, i)).collect();
        let stdio_events: Vec<bool> = (stdio_base..fds.len()).map(|i| ready(&fds, i)).collect();
        drop(fds);

        if ctl_ready || (init_done && ctl_open) {
            // Drain every message already sent: init reports before it
            // can be killed, so its last words are queued by now.
            while ctl_open {
                let mut pfd = [PollFd::new(launched.ctl.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0) {
                    break;
                }
                match proto::recv_msg::<FromInit>(launched.ctl.as_fd()) {
                    Ok(Some((msg, mut fds))) => match msg {
                        FromInit::Ready | FromInit::FilesStarted { .. } => {}
                        FromInit::Spawned { pid, .. } => {
                            main_pid = Some(pid);
                            // Signals that came while it was starting.
                            for sig in early_signals.drain(..) {
                                let _ = proto::send_msg(
                                    launched.ctl.as_fd(),
                                    &ToInit::Signal { pid, sig },
                                    &[],
                                );
                            }
                            if let Some(master) = fds.pop() {
                                relay = TtyRelay::start(master).ok();
                            }
                        }
                        FromInit::SetupFailed { message } => {
                            setup_error = Some(message);
                            kill_init(&launched);
                        }
                        FromInit::SpawnFailed { step, errno, .. } => {
                            spawn_error = Some((step, errno));
                            kill_init(&launched);
                        }
                        FromInit::Exited { pid, .. } | FromInit::Signaled { pid, .. }
                            if Some(pid) == main_pid =>
                        {
                            // The command is done: whatever it left running
                            // goes with the sandbox.
                            ended = Some(msg);
                            kill_init(&launched);
                        }
                        FromInit::Exited { .. } | FromInit::Signaled { .. } => {}
                    },
                    Ok(None) | Err(_) => ctl_open = false,
                }
            }
        }
        if let Some(r) = relay.as_mut() {
            r.handle(&relay_events);
        }
        if let Some(r) = stdio_relay.as_mut() {
            r.handle(&stdio_events);
        }
        if sig_ready {
            while let Ok(Some(info)) = sigfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGWINCH {
                    if let Some(r) = &relay {
                        r.copy_window_size();
                    }
                    continue;
                }
                interrupts += 1;
                match main_pid {
                    // The workload ignores us; the user insists.
                    _ if interrupts >= 3 => kill_init(&launched),
                    Some(pid) => {
                        let _ = proto::send_msg(
                            launched.ctl.as_fd(),
                            &ToInit::Signal { pid, sig },
                            &[],
                        );
                    }
                    // Still starting (it may already run but init has not
                    // told us its pid): deliver once it has.
                    None => early_signals.push(sig),
                }
            }
        }
        if oom_ready {
            if let Some(f) = &oom_fd {
                Cgroup::drain_notifier(f.as_fd());
            }
            if monitor.check_oom(cgroup).is_some() {
                kill_init(&launched);
            }
        }
        net.drain(&mut |_, detail| {
            if print {
                eprintln!("stockade: {detail}");
            }
        });
        if init_done {
            break;
        }
        // With the teardown deferred, the run is over once the command has
        // ended normally and nothing but init (killed above) is left.
        if opts.defer_teardown
            && ended.is_some()
            && monitor.killed_for.is_none()
            && setup_error.is_none()
            && spawn_error.is_none()
            && cgroup.holds_only(launched.pid)
        {
            early = true;
            break;
        }
    }
    if !early {
        // Init has exited; everything else in its pid namespace died with it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launched.pid), None);
    }
    if let Some(mut r) = relay.take() {
        r.finish();
    }
    if let Some(mut r) = stdio_relay.take() {
        r.finish();
    }
    report.network = net.finish(&mut |_, detail| {
        if print {
            eprintln!("stockade: {detail}");
        }
    });

    report.usage = monitor.final_usage(cgroup);
    report.violations = std::mem::take(&mut monitor.violations);
    report.violations.append(&mut net.violations);
    report.violations.sort_by(|a, b| a.at.total_cmp(&b.at));

    if let Some(m) = setup_error {
        return Err(RunError::Setup(m));
    }
    if let Some((step, errno)) = spawn_error {
        return Err(RunError::Spawn { step, errno });
    }
    match (monitor.killed_for, ended) {
        (Some(kind), _) => {
            report.outcome = match kind {
                ViolationKind::Timeout => Outcome::Timeout,
                ViolationKind::DiskLimit => Outcome::DiskLimit,
                _ => Outcome::MemoryLimit,
            };
            report.signal = Some(libc::SIGKILL);
        }
        (None, Some(FromInit::Exited { code, .. })) => {
            report.outcome = Outcome::Exited;
            report.exit_code = Some(code);
        }
        (None, Some(FromInit::Signaled { sig, .. })) => {
            report.outcome = Outcome::Signaled;
            report.signal = Some(sig);
        }
        _ => {
            report.outcome = Outcome::Signaled;
            report.signal = Some(libc::SIGKILL);
            report.error = Some("the sandbox's init was killed".into());
        }
    }
    // Init, killed but perhaps not gone yet, for the deferred teardown.
    Ok(early.then_some(launched))
}

/// Ends the sandbox: killing init makes the kernel kill everything else
/// in its pid namespace, which is every process of the sandbox. (The
/// cgroup is emptied and removed again afterwards, as a second net.)
fn kill_init(l: &Launched) {
    let _ = pidfd_send_signal(&l.pidfd, libc::SIGKILL);
}

struct RestoreMask(Option<SigSet>);

impl Drop for RestoreMask {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            let _ = m.thread_set_mask();
        }
    }
}

/// Opens `--net-log` before anything is built, so a bad path fails early.
fn open_net_log(opts: &RunOptions) -> Result<Option<std::fs::File>, RunError> {
    let Some(path) = &opts.net_log else {
        return Ok(None);
    };
    if opts.policy.network.mode == NetMode::None {
        return Err(RunError::Invalid(format!(
            "--net-log {}: network mode is \"none\", so there is nothing to log; \
             add --net allowlist or --net open",
            path.display()
        )));
    }
    std::fs::File::create(path)
        .map(Some)
        .map_err(|e| RunError::Io {
            what: format!("create the network log {}", path.display()),
            source: e,
        })
}

/// Distinct denials kept as violations; the rest only count in the totals
/// (and appear in `--net-log`).
const MAX_NET_VIOLATIONS: usize = 100;
/// Denials printed on stderr; after these, one line says more were hidden.
const MAX_NET_PRINTED: usize = 20;
/// Events queued between the egress thread and the poll loop; beyond it
/// events are dropped from the violations list (never from the totals or
/// the log, which the egress thread keeps itself).
const NET_QUEUE: usize = 4096;

/// Called with each new network violation and its one-line description.
pub(crate) type NetSink<'a> = dyn FnMut(&Violation, &str) + 'a;

/// A sandbox's egress stack, seen from its supervisor's poll loop (shared
/// by `stockade run` and the shim): starts it when init hands over the
/// TUN, turns its denials into violations, and stops it at the end.
pub(crate) struct NetWatch {
    policy: NetworkPolicy,
    sandbox_id: String,
    /// Unix time the sandbox started; violations are timed from it.
    started_at: f64,
    log: Option<Arc<Mutex<std::fs::File>>>,
    egress: Option<Egress>,
    /// A second descriptor of the TUN device: the last close unregisters
    /// the device, which takes the kernel milliseconds (RCU grace periods),
    /// so the supervisor decides when that happens ([`NetWatch::take_device`]).
    device: Option<OwnedFd>,
    events: Option<mpsc::Receiver<NetEvent>>,
    seen: HashSet<String>,
    printed: usize,
    rate_limit: Option<usize>,
    /// Network violations so far, in order.
    pub violations: Vec<Violation>,
}

impl std::fmt::Debug for NetWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetWatch")
            .field("sandbox_id", &self.sandbox_id)
            .field("running", &self.egress.is_some())
            .finish_non_exhaustive()
    }
}

impl NetWatch {
    pub(crate) fn new(
        policy: &NetworkPolicy,
        sandbox_id: &str,
        started_at: f64,
        log: Option<std::fs::File>,
    ) -> NetWatch {
        NetWatch {
            policy: policy.clone(),
            sandbox_id: sandbox_id.to_string(),
            started_at,
            log: log.map(|f| Arc::new(Mutex::new(f))),
            egress: None,
            device: None,
            events: None,
            seen: HashSet::new(),
            printed: 0,
            rate_limit: None,
            violations: Vec::new(),
        }
    }

    /// Serves the TUN init sent (`FromInit::Tun`). The caller must be done
    /// cloning: this starts a thread.
    pub(crate) fn start(&mut self, tun: Option<OwnedFd>) -> Result<(), String> {
        if self.egress.is_some() {
            return Err("the sandbox's init sent a second network device".into());
        }
        if self.policy.mode == NetMode::None {
            return Err(
                "the sandbox's init sent a network device, but its network mode is \"none\"".into(),
            );
        }
        let Some(tun) = tun else {
            return Err("the sandbox's init sent no descriptor with its network device".into());
        };
        let device = tun
            .try_clone()
            .map_err(|e| format!("cannot duplicate the network device's descriptor: {e}"))?;
        let (tx, rx) = mpsc::sync_channel(NET_QUEUE);
        let log = self.log.clone();
        let callback = move |ev: NetEvent| {
            if let Some(log) = &log {
                if let Ok(mut line) = serde_json::to_vec(&ev) {
                    line.push(b'\n');
                    let _ = log
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .write_all(&line);
                }
            }
            if ev.verdict == Verdict::Deny {
                let _ = tx.try_send(ev);
            }
        };
        let cfg = EgressConfig::new(self.policy.clone(), self.sandbox_id.clone());
        let egress = Egress::start(tun, cfg, callback).map_err(|e| {
            format!(
                "cannot start the network egress filter: {}",
                stockade_isolate::error_chain(&e)
            )
        })?;
        self.egress = Some(egress);
        self.device = Some(device);
        self.events = Some(rx);
        Ok(())
    }

    /// Turns the denials reported so far into violations; `sink` hears of
    /// each new one (and of the line that says further ones are not shown).
    pub(crate) fn drain(&mut self, sink: &mut NetSink<'_>) {
        let Some(rx) = &self.events else {
            return;
        };
        let events: Vec<NetEvent> = rx.try_iter().collect();
        for ev in events {
            self.record(&ev, sink);
        }
    }

    fn record(&mut self, ev: &NetEvent, sink: &mut NetSink<'_>) {
        let at = (ev.time - self.started_at).max(0.0);
        if ev.reason == Reason::RateLimit {
            if self.rate_limit.is_some() {
                return;
            }
            let limit = self
                .policy
                .rate_per_minute
                .map_or_else(|| "unlimited".to_string(), |r| format!("{r}/min"));
            let v = Violation {
                kind: ViolationKind::NetworkRateLimit,
                limit: limit.clone(),
                observed: "new connections refused".into(),
                at,
            };
            let detail = format!(
                "{}: more than {limit} new connections; further ones are refused (RST) for now",
                v.kind.as_str()
            );
            sink(&v, &detail);
            self.rate_limit = Some(self.violations.len());
            self.violations.push(v);
            return;
        }
        let target = match (&ev.name, ev.address, ev.port) {
            (Some(n), Some(a), Some(p)) => format!("{n} ({a}:{p})"),
            (Some(n), _, _) => n.clone(),
            (None, Some(a), Some(p)) => format!("{a}:{p}"),
            (None, Some(a), None) => a.to_string(),
            (None, None, _) => "?".into(),
        };
        let key = ev
            .name
            .clone()
            .or_else(|| ev.address.map(|a| a.to_string()))
            .unwrap_or_default();
        let kind = ViolationKind::NetworkDenied;
        if self.seen.len() >= MAX_NET_VIOLATIONS || !self.seen.insert(key) {
            return;
        }
        let what = match ev.protocol {
            Protocol::Dns => format!("name {target}"),
            p => format!("{p} to {target}"),
        };
        let v = Violation {
            kind,
            limit: format!(
                "network.mode = {}",
                match self.policy.mode {
                    NetMode::None => "none",
                    NetMode::Allowlist => "allowlist",
                    NetMode::Open => "open",
                }
            ),
            observed: format!("{what}: {}", ev.reason),
            at,
        };
        if self.printed < MAX_NET_PRINTED {
            sink(
                &v,
                &format!("{}: {what} refused ({})", kind.as_str(), ev.reason),
            );
        } else if self.printed == MAX_NET_PRINTED {
            sink(
                &v,
                &format!(
                    "{}: further denials are not shown here (the report counts them all; \
                     --net-log lists them)",
                    kind.as_str()
                ),
            );
        }
        self.printed += 1;
        self.violations.push(v);
    }

    /// Stops the egress stack (closing the TUN and every proxied socket),
    /// records what it reported last, and returns its totals; `None`
    /// when it never ran.
    /// The sandbox's TUN device, once the egress thread is done with it.
    pub(crate) fn take_device(&mut self) -> Option<OwnedFd> {
        if self.egress.is_some() {
            return None;
        }
        self.device.take()
    }

    pub(crate) fn finish(&mut self, sink: &mut NetSink<'_>) -> Option<NetworkUsage> {
        let egress = self.egress.take()?;
        let summary = egress.shutdown();
        self.drain(sink);
        self.events = None;
        if let Some(i) = self.rate_limit {
            if let Some(v) = self.violations.get_mut(i) {
                v.observed = format!("{} new connections refused", summary.rate_limit_hits);
            }
        }
        Some(summary)
    }
}
