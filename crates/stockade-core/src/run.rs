//! One sandbox for one command: start, supervise, clean up, report.
//!
//! Create a [`Sandbox`], exec the command in it, supervise it until it
//! ends (the event loop is `Sandbox`'s; this module's [`Owner`] relays the
//! command's terminal or stdio and forwards our signals to it), and tear
//! down — in place, or deferred to a detached cleaner. Hard breaches
//! (time, memory, disk) kill the whole sandbox; soft ones (process limit)
//! are recorded and the workload sees `EAGAIN`.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::poll::PollFd;
use nix::sys::signal::{SigSet, Signal};
use stockade_cgroup::{Cgroup, Driver, Limits as CgLimits};
use stockade_isolate::launch::Launched;
use stockade_isolate::proto::FromInit;
use stockade_policy::{NetMode, Policy};

use crate::netwatch::NetWatch;
use crate::prepare::{new_id, prepare};
use crate::report::{Outcome, Report, Usage, Violation, ViolationKind};
use crate::sandbox::{command_ending, Control, Owner, Sandbox, V1Attach};
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
    /// How init enters its cgroup on cgroup v1 (benchmarks compare).
    pub v1_attach: V1Attach,
    /// How to reach registries when the policy's image must be pulled.
    pub pull: stockade_image::PullOptions,
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
            v1_attach: V1Attach::SelfJoin,
            pull: stockade_image::PullOptions::default(),
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
        report.error = Some(e.message());
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
    policy.validate()?;
    let net_log = open_net_log(opts)?;
    let state = StateDir::open(&opts.state_dir).map_err(|e| RunError::Io {
        what: format!("open the state directory {}", opts.state_dir.display()),
        source: e,
    })?;
    let driver = Driver::detect()?;
    if !opts.defer_teardown {
        crate::gc::collect(&state, Some(&driver));
    }
    let image = crate::image::resolve(
        policy,
        &opts.state_dir,
        &opts.pull,
        &mut pull_progress(opts.print_violations, policy),
    )?;

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
        None => match stockade_isolate::slots::Slot::for_caller(&slot_dir) {
            Ok(slot) => (None, slot),
            Err(e) => {
                let _ = dir.remove();
                return Err(RunError::Slot(e));
            }
        },
    };
    let place = match &opts.scratch_within {
        Some(s) => crate::prepare::ScratchPlace::Within(s.clone()),
        None => crate::prepare::ScratchPlace::for_host(),
    };
    let setup = (|| {
        let prepared = prepare(policy, &state, &dir, slot, &place, image.as_ref())?;
        let request = prepared.request(
            1,
            &prepared.command(&opts.command),
            &Default::default(),
            None,
            opts.tty.then_some(opts.term.as_str()),
        )?;
        let cgroup = driver.create(id, &limits)?;
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
    let net = NetWatch::new(&policy.network, id, report.started_at, net_log);
    // An ordinary user's pool is keyed by the sandbox's maps, known only
    // now (see `stockade_isolate::userpool`).
    prepared.pool_pair = pool_pair.or_else(|| {
        stockade_isolate::userpool::claim(
            prepared.spec.rootless,
            &prepared.spec.uid_map,
            &prepared.spec.gid_map,
        )
    });
    let r = supervise(opts, &prepared, request, &cgroup, started, report, net);
    // Init holds the pair now (or new namespaces, if it could not be
    // entered). Its files leave the pool with the teardown: unmounting
    // them while init builds the sandbox would make the kernel wait for
    // RCU grace periods (expedited: an interrupt on every CPU).
    let claimed = prepared.pool_pair.take().map(|p| p.entry);
    let (r, dying, device) = match r {
        Ok((dying, device)) => (Ok(()), dying, device),
        Err(e) => (Err(e), None, None),
    };
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
                lease: prepared.image_lease,
            };
            let refill = crate::teardown::Refill::configured(&prepared.spec);
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
            // Nothing runs under the slot's ids any more, nor on the image.
            drop(prepared.slot);
            drop(prepared.image_lease);
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
    net: NetWatch,
) -> Result<(Option<Launched>, Option<OwnedFd>), RunError> {
    let limits = &opts.policy.limits;
    let mut mask = SigSet::empty();
    for s in HANDLED {
        mask.add(*s);
    }
    // SAFETY: `stockade run` is single-threaded; nothing else runs while
    // the sandbox's init is cloned. (A claimed pair goes back with the
    // teardown, on failure too.)
    let mut sb = unsafe {
        Sandbox::create(
            &prepared.spec,
            cgroup,
            prepared.pool_pair.as_ref(),
            opts.v1_attach,
            &mask,
            net,
        )?
    };
    // The command goes right behind the go-ahead; init serves it once the
    // sandbox is built. Without a terminal of its own it gets our stdio,
    // except that a terminal among it is relayed through a pipe (made only
    // now, after the clone, so that init holds no copy of its other end):
    // the caller's terminal never enters the sandbox.
    let own = opts.stdio.unwrap_or([0, 1, 2]);
    let mut stdio_relay = None;
    let mut pipes_for_init: Vec<OwnedFd> = Vec::new();
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
                sb.abort();
                return Err(RunError::Sys(
                    "create the pipes for the command's stdio".into(),
                    e,
                ));
            }
        }
    };
    if sb.exec(request, &stdio).is_err() {
        sb.kill();
    }
    // Init has its copies now; ours must go, or the pipes never end.
    drop(std::mem::take(&mut pipes_for_init));
    let disk = match &prepared.scratch {
        Some(s) => crate::monitor::DiskSource::Quota(s.subvol.clone()),
        None => {
            let mut metered = prepared.metered.clone();
            metered.extend(opts.extra_metered.iter().cloned());
            crate::monitor::DiskSource::Walk(metered)
        }
    };
    sb.watch(limits, started, started + limits.timeout.duration(), disk);
    let mut cmd = OneCommand::new(opts.print_violations, opts.defer_teardown);
    cmd.stdio_relay = stdio_relay;
    let early = sb.supervise(&mut cmd)?;
    if let Some(mut r) = cmd.relay.take() {
        r.finish();
    }
    if let Some(mut r) = cmd.stdio_relay.take() {
        r.finish();
    }
    let end = sb.finish(&mut cmd);
    report.network = end.network;
    report.usage = end.usage;
    report.violations = end.violations;

    if let Some(m) = cmd.setup_error {
        return Err(RunError::Setup(m));
    }
    if let Some((step, errno)) = cmd.spawn_error {
        return Err(RunError::Spawn { step, errno });
    }
    let ending = command_ending(end.killed_for, cmd.ended.as_ref());
    report.outcome = ending.outcome;
    report.exit_code = ending.exit_code;
    report.signal = ending.signal;
    report.error = ending.error;
    // Init, killed but perhaps not gone yet, for the deferred teardown.
    let (init, device) = sb.into_parts();
    Ok((early.then_some(init), device))
}

/// `stockade run`'s side of the event loop: one command, with its
/// terminal or stdio relayed and our signals forwarded to it.
pub(crate) struct OneCommand {
    print: bool,
    defer_teardown: bool,
    main_pid: Option<i32>,
    ended: Option<FromInit>,
    setup_error: Option<String>,
    spawn_error: Option<(String, i32)>,
    relay: Option<TtyRelay>,
    /// How many descriptors the terminal relay polls (the stdio relay's
    /// follow).
    relay_fds: Cell<usize>,
    stdio_relay: Option<crate::relay::StdioRelay>,
    interrupts: u32,
    early_signals: Vec<i32>,
}

impl OneCommand {
    pub(crate) fn new(print: bool, defer_teardown: bool) -> OneCommand {
        OneCommand {
            print,
            defer_teardown,
            main_pid: None,
            ended: None,
            setup_error: None,
            spawn_error: None,
            relay: None,
            relay_fds: Cell::new(0),
            stdio_relay: None,
            interrupts: 0,
            early_signals: Vec::new(),
        }
    }
}

impl Owner for OneCommand {
    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        let before = fds.len();
        if let Some(r) = &self.relay {
            r.poll_fds(fds);
        }
        self.relay_fds.set(fds.len() - before);
        if let Some(r) = &self.stdio_relay {
            r.poll_fds(fds);
        }
    }

    fn on_ready(&mut self, _: &mut dyn Control, ready: &[bool]) {
        let (tty, stdio) = ready.split_at(self.relay_fds.get().min(ready.len()));
        if let Some(r) = self.relay.as_mut() {
            r.handle(tty);
        }
        if let Some(r) = self.stdio_relay.as_mut() {
            r.handle(stdio);
        }
    }

    fn on_init(&mut self, sb: &mut dyn Control, msg: FromInit, mut fds: Vec<OwnedFd>) {
        match msg {
            FromInit::Ready | FromInit::FilesStarted { .. } => {}
            FromInit::Spawned { pid, .. } => {
                self.main_pid = Some(pid);
                // Signals that came while it was starting.
                for sig in self.early_signals.drain(..) {
                    sb.signal(pid, sig);
                }
                if let Some(master) = fds.pop() {
                    self.relay = TtyRelay::start(master).ok();
                }
            }
            FromInit::SetupFailed { message } => {
                self.setup_error = Some(message);
                sb.kill();
            }
            FromInit::SpawnFailed { step, errno, .. } => {
                self.spawn_error = Some((step, errno));
                sb.kill();
            }
            FromInit::Exited { pid, .. } | FromInit::Signaled { pid, .. }
                if Some(pid) == self.main_pid =>
            {
                // The command is done: whatever it left running goes
                // with the sandbox.
                self.ended = Some(msg);
                sb.kill();
            }
            FromInit::Exited { .. } | FromInit::Signaled { .. } => {}
        }
    }

    fn on_signal(&mut self, sb: &mut dyn Control, sig: i32) {
        if sig == libc::SIGWINCH {
            if let Some(r) = &self.relay {
                r.copy_window_size();
            }
            return;
        }
        self.interrupts += 1;
        match self.main_pid {
            // The workload ignores us; the user insists.
            _ if self.interrupts >= 3 => sb.kill(),
            Some(pid) => sb.signal(pid, sig),
            // Still starting (it may already run but init has not told us
            // its pid): deliver once it has.
            None => self.early_signals.push(sig),
        }
    }

    fn on_breach(&mut self, sb: &mut dyn Control, _: ViolationKind) {
        sb.kill();
    }

    fn on_violation(&mut self, _: &Violation, line: &str) {
        if self.print {
            eprintln!("stockade: {line}");
        }
    }

    /// Once the command has ended the sandbox is going down anyway.
    fn watching(&self) -> bool {
        self.ended.is_none()
    }

    fn watching_oom(&self) -> bool {
        true
    }

    /// With the teardown deferred, the run is over once the command has
    /// ended normally and nothing but init (killed) is left.
    fn may_end_early(&self, sb: &dyn Control) -> bool {
        self.defer_teardown
            && self.ended.is_some()
            && sb.killed_for().is_none()
            && self.setup_error.is_none()
            && self.spawn_error.is_none()
    }
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
/// A pull's progress as `stockade:` lines on stderr (one per layer),
/// when `print`; `stockade pull` draws bars of its own.
fn pull_progress(print: bool, policy: &Policy) -> impl FnMut(&stockade_image::Progress) + '_ {
    move |p| {
        if !print {
            return;
        }
        let name = policy.filesystem.image.as_deref().unwrap_or_default();
        match p {
            stockade_image::Progress::Resolved { digest, layers } => {
                let missing = layers.iter().filter(|l| !l.2).count();
                eprintln!(
                    "stockade: pulling {name} ({digest}): {missing} of {} layers to fetch",
                    layers.len()
                );
            }
            stockade_image::Progress::LayerDone { layer } => {
                eprintln!("stockade: {name}: layer {layer} done");
            }
            _ => {}
        }
    }
}

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
