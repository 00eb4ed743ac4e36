//! The shim: one small supervisor process per long-lived sandbox.
//!
//! The daemon starts it (`stockade shim`, policy on stdin); it detaches
//! into its own session, creates the sandbox exactly as `stockade run`
//! does, reports readiness on its stdout, and then serves the daemon's
//! requests on a unix socket until the sandbox is destroyed, expires or
//! breaks a hard limit. Because the shim, not the daemon, is the parent of
//! the sandbox's init, a restart or `kill -9` of the daemon leaves the
//! sandbox running; killing the shim kills the sandbox (parent-death
//! signal), and the next daemon marks it dead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal};
use stockade_cgroup::{Cgroup, Driver, Limits as CgLimits};
use stockade_isolate::proto::{self as iproto, FromInit, ToInit};

use super::proto::{report_path, socket_path, FailKind, ShimReply, ShimRequest, ShimStart};
use crate::backend::{ProcessInfo, SandboxEvent, SandboxStatus};
use crate::netwatch::NetWatch;
use crate::prepare::{prepare, Prepared};
use crate::report::{Outcome, Report, Violation, ViolationKind};
use crate::sandbox::{outcome_for, sandbox_outcome, Control, Owner, Sandbox, V1Attach};
use crate::state::StateDir;
use crate::RunError;

/// Finished processes remembered for `processes` listings.
const KEEP_FINISHED: usize = 256;

#[derive(Debug)]
enum Client {
    /// Sent `Exec`; waits for init's answer to spawn request `tag`.
    AwaitSpawn {
        tag: u64,
    },
    /// Waits for `pid` to end.
    Waiting {
        pid: i32,
    },
    Subscriber,
    AwaitDestroy,
    /// Sent `Files`; waits for init to start file helper `tag`.
    AwaitFiles {
        tag: u64,
    },
}

/// Runs a shim to the end. `ready` is where the readiness line goes;
/// `known` is the host's cgroup layout if the caller found it already.
pub fn main(start: ShimStart, ready: std::fs::File, known: Option<Driver>) -> i32 {
    let mut ready = Some(ready);
    let started = Instant::now();
    // Errors are written but the pipe stays open until this process ends,
    // after its cleanup: the daemon reads on to end-of-file, so a failed
    // create leaves nothing behind by the time it is reported.
    let fail = |ready: &mut Option<std::fs::File>, e: &dyn std::fmt::Display| {
        if let Some(r) = ready.as_mut() {
            let _ = writeln!(r, "error {e}");
        }
        1
    };
    let state = match StateDir::open(&start.state_dir) {
        Ok(s) => s,
        Err(e) => return fail(&mut ready, &e),
    };
    let dir = match state.create_sandbox(&start.id) {
        Ok(d) => d,
        Err(e) => {
            return fail(
                &mut ready,
                &format!("cannot create the sandbox directory: {e}"),
            )
        }
    };
    let code = (|| {
        let slot = match stockade_isolate::slots::Slot::for_caller(&stockade_isolate::slots::dir())
        {
            Ok(s) => s,
            Err(e) => return fail(&mut ready, &stockade_isolate::error_chain(&e)),
        };
        let place = crate::prepare::ScratchPlace::for_host();
        // The daemon's shims pull with the default options (anonymous;
        // plain HTTP for loopback registries only).
        let image = match crate::image::resolve(
            &start.policy,
            &start.state_dir,
            &stockade_image::PullOptions::default(),
            &mut |_| {},
        ) {
            Ok(i) => i,
            Err(e) => {
                if let Some(r) = ready.as_mut() {
                    let _ = writeln!(r, "invalid {}", e.message());
                }
                return 1;
            }
        };
        let prepared = match prepare(&start.policy, &state, &dir, slot, &place, image.as_ref()) {
            Ok(p) => p,
            // The request named something unusable (a missing workspace,
            // a bind source that does not exist): the caller's mistake,
            // told apart from the host failures reported as `error`.
            Err(e @ RunError::Invalid(_)) => {
                if let Some(r) = ready.as_mut() {
                    let _ = writeln!(r, "invalid {}", e.message());
                }
                return 1;
            }
            Err(e) => return fail(&mut ready, &e.message()),
        };
        let limits = CgLimits {
            cpus: Some(start.policy.limits.cpus.0),
            memory_bytes: Some(start.policy.limits.memory.bytes()),
            pids: Some(start.policy.limits.pids),
        };
        let (driver, cgroup) = match create_cgroup(known, &start.id, &limits) {
            Ok(made) => made,
            Err(e) => {
                if let Some(s) = &prepared.scratch {
                    s.remove();
                }
                return fail(&mut ready, &RunError::Cgroup(e).message());
            }
        };
        let scratch = &prepared.scratch;
        // Cleanup runs inside `serve`, right after the final answers go
        // out (see the end of `serve`).
        let code = serve(
            &start,
            &state,
            &prepared,
            &cgroup,
            started,
            &mut ready,
            &mut || {
                if let Some(cg) = driver.open_existing(&start.id) {
                    let _ = cg.destroy();
                }
                let _ = crate::state::remove_tree(&dir.path);
                if let Some(s) = scratch {
                    s.remove();
                }
            },
        );
        // Idempotent: the cleanup above normally did this already.
        cgroup.kill_all();
        let _ = cgroup.destroy();
        if let Some(s) = scratch {
            s.remove();
        }
        code
    })();
    let _ = dir.remove();
    code
}

/// The sandbox's cgroup and the layout it was made with: `known` (found
/// earlier, by the zygote) while it works, else a fresh look at the host,
/// whose cgroups may have changed since.
fn create_cgroup(
    known: Option<Driver>,
    id: &str,
    limits: &CgLimits,
) -> Result<(Driver, Cgroup), stockade_cgroup::CgroupError> {
    if let Some(driver) = known {
        if let Ok(cgroup) = driver.create(id, limits) {
            return Ok((driver, cgroup));
        }
    }
    let driver = Driver::detect()?;
    let cgroup = driver.create(id, limits)?;
    Ok((driver, cgroup))
}

fn serve(
    start: &ShimStart,
    state: &StateDir,
    prepared: &Prepared,
    cgroup: &Cgroup,
    started: Instant,
    ready: &mut Option<std::fs::File>,
    cleanup: &mut dyn FnMut(),
) -> i32 {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    let _ = mask.thread_block();
    let say = |ready: &mut Option<std::fs::File>, e: &dyn std::fmt::Display| {
        if let Some(r) = ready.as_mut() {
            let _ = writeln!(r, "error {e}");
        }
        1
    };
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        - started.elapsed().as_secs_f64();
    let net = NetWatch::new(&start.policy.network, &start.id, started_at, None);
    // SAFETY: the shim is a freshly exec'd, single-threaded process.
    let created =
        unsafe { Sandbox::create(&prepared.spec, cgroup, None, V1Attach::SelfJoin, &mask, net) };
    let mut sb = match created {
        Ok(sb) => sb,
        Err(e) => return say(ready, &e.message()),
    };
    // Creation is synchronous for the daemon: wait for init to finish
    // building the sandbox (or to say why it could not).
    if let Err(why) = sb.wait_ready() {
        sb.kill();
        return say(ready, &why);
    }
    let sock = socket_path(&state.root, &start.id);
    let _ = std::fs::remove_file(&sock);
    let listener = match bind_seqpacket(&sock) {
        Ok(l) => l,
        Err(e) => {
            sb.kill();
            return say(
                ready,
                &format_args!("cannot listen on {}: {e}", sock.display()),
            );
        }
    };
    if let Some(mut r) = ready.take() {
        let _ = writeln!(r, "ready {}", sb.init_pid());
    }

    let mut deadline = started + start.policy.limits.timeout.duration();
    if let Some(ttl) = start.ttl {
        deadline = deadline.min(started + ttl);
    }
    sb.watch(
        &start.policy.limits,
        started,
        deadline,
        match &prepared.scratch {
            Some(s) => crate::monitor::DiskSource::Quota(s.subvol.clone()),
            None => crate::monitor::DiskSource::Walk(prepared.metered.clone()),
        },
    );
    let mut shim = Shim {
        prepared,
        listener,
        clients: Vec::new(),
        polled: RefCell::default(),
        processes: HashMap::new(),
        order: Vec::new(),
        tags: HashMap::new(),
        next_tag: 1,
        ending: None,
    };
    let early = match sb.supervise(&mut shim) {
        Ok(early) => early,
        Err(_) => return 1,
    };
    let end = sb.finish(&mut shim);
    let outcome = sandbox_outcome(end.killed_for, shim.ending);
    let report = Report {
        id: start.id.clone(),
        outcome,
        exit_code: None,
        signal: (outcome != Outcome::Destroyed).then_some(libc::SIGKILL),
        error: (outcome == Outcome::Signaled).then(|| "the sandbox's init died".to_string()),
        violations: end.violations,
        usage: end.usage,
        command: Vec::new(),
        started_at,
        network: end.network,
    };
    // Left for a daemon that was down, then told to everyone listening.
    let path = report_path(&state.root, &start.id);
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Ok(json) = serde_json::to_vec(&report) {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    let _ = std::fs::remove_file(&sock);
    // The sandbox is irrevocably gone: init was reaped, and the kernel
    // reaps every other process of a pid namespace before its init.
    // Answer now; the filesystem and cgroup teardown below is invisible
    // to the sandbox's processes (there are none) and to later sandboxes
    // (they have other ids), so nobody waits for it. This process keeps
    // the directory's lock until it is done, so `gc` never races it, and
    // if it dies half-way `gc` finishes the job.
    // Whatever still ran died with the sandbox.
    for pid in shim.waiting_pids() {
        shim.reply_waiters(pid, None, Some(libc::SIGKILL), end.killed_for);
    }
    shim.broadcast(&SandboxEvent::Destroyed(Box::new(report.clone())));
    for (fd, c) in &shim.clients {
        if matches!(c, Some(Client::AwaitDestroy)) {
            reply(
                fd,
                &ShimReply::Destroyed {
                    report: Box::new(report.clone()),
                },
            );
        }
    }
    // Hang up on everyone but the destroyers (subscribers see the end of
    // their stream); a destroyer sees the end once the teardown is done.
    shim.clients
        .retain(|(_, c)| matches!(c, Some(Client::AwaitDestroy)));
    let Shim { listener, .. } = shim;
    drop(listener);
    // (The network device's last close, slow, comes after the cleanup.)
    let (launched, _device) = sb.into_parts();
    if early {
        // Init was killed; reap it before its cgroup goes.
        crate::teardown::wait_gone(&launched.pidfd);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launched.pid), None);
    }
    cleanup();
    0
}

struct Shim<'p> {
    prepared: &'p Prepared,
    listener: OwnedFd,
    clients: Vec<(OwnedFd, Option<Client>)>,
    /// The clients' descriptors as last polled, in order.
    polled: RefCell<Vec<RawFd>>,
    processes: HashMap<i32, ProcessInfo>,
    /// Pids in start order, to forget the oldest finished ones.
    order: Vec<i32>,
    tags: HashMap<u64, Vec<String>>,
    next_tag: u64,
    ending: Option<Outcome>,
}

impl Owner for Shim<'_> {
    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        let mut polled = self.polled.borrow_mut();
        polled.clear();
        for (fd, _) in &self.clients {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            polled.push(fd.as_raw_fd());
        }
    }

    fn on_ready(&mut self, sb: &mut dyn Control, ready: &[bool]) {
        let accept_ready = ready.first().copied().unwrap_or(false);
        // Clients by descriptor, not index: answering init's messages
        // (before this) and requests drops clients (waiters answered,
        // subscribers gone), which moves the others.
        let client_ready: Vec<RawFd> = ready
            .iter()
            .skip(1)
            .zip(self.polled.borrow().iter())
            .filter(|(r, _)| **r)
            .map(|(_, fd)| *fd)
            .collect();
        // Requests from clients that were already connected (and still
        // are); new ones are accepted after, so no descriptor is reused
        // meanwhile.
        for raw in client_ready {
            if let Some(i) = self
                .clients
                .iter()
                .position(|(fd, _)| fd.as_raw_fd() == raw)
            {
                self.serve_client(i, sb);
            }
        }
        if accept_ready {
            if let Ok(fd) =
                nix::sys::socket::accept4(&self.listener, nix::sys::socket::SockFlag::SOCK_CLOEXEC)
            {
                self.clients.push((fd, None));
            }
        }
    }

    fn on_init(&mut self, sb: &mut dyn Control, msg: FromInit, fds: Vec<OwnedFd>) {
        self.init_said(sb, msg, fds);
    }

    fn on_signal(&mut self, sb: &mut dyn Control, _: i32) {
        self.end(sb, Outcome::Destroyed);
    }

    fn on_breach(&mut self, sb: &mut dyn Control, kind: ViolationKind) {
        self.end(sb, outcome_for(kind));
    }

    fn on_violation(&mut self, v: &Violation, _: &str) {
        self.broadcast(&SandboxEvent::Violation(v.clone()));
        if v.kind == ViolationKind::Timeout {
            self.broadcast(&SandboxEvent::Expired);
        }
    }

    /// The final reading's findings are in the report only.
    fn on_last_violation(&mut self, _: &Violation, _: &str) {}

    fn watching(&self) -> bool {
        self.ending.is_none()
    }

    /// Destroyed with nothing but init (killed) left, and no spawn in
    /// flight (init cannot fork once the kill is pending): nothing of the
    /// sandbox can act any more, so the answer need not wait for the
    /// kernel to tear init's namespaces down.
    fn may_end_early(&self, _: &dyn Control) -> bool {
        self.ending == Some(Outcome::Destroyed) && self.tags.is_empty()
    }
}

impl Shim<'_> {
    fn end(&mut self, sb: &dyn Control, why: Outcome) {
        if self.ending.is_none() {
            self.ending = Some(why);
        }
        sb.kill();
    }

    fn broadcast(&mut self, ev: &SandboxEvent) {
        let msg = ShimReply::Event { event: ev.clone() };
        self.clients.retain(|(fd, c)| {
            !matches!(c, Some(Client::Subscriber))
                || iproto::send_msg(fd.as_fd(), &msg, &[]).is_ok()
        });
    }

    fn waiting_pids(&self) -> Vec<i32> {
        self.processes
            .values()
            .filter(|p| p.running)
            .map(|p| p.pid)
            .collect()
    }

    fn reply_waiters(
        &mut self,
        pid: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        killed_for: Option<ViolationKind>,
    ) {
        let msg = ShimReply::Ended {
            pid,
            exit_code,
            signal,
            killed_for,
        };
        self.clients.retain(|(fd, c)| match c {
            Some(Client::Waiting { pid: p }) if *p == pid => {
                reply(fd, &msg);
                false
            }
            _ => true,
        });
    }

    /// The hard breach behind a process killed by SIGKILL: one the
    /// sandbox was already killed for, or an OOM kill the notifier has not
    /// told yet (the kernel counts it before the victim dies, so it is
    /// never missed here; the sandbox then ends as it would have).
    fn killed_by_breach(&mut self, sb: &mut dyn Control, signal: i32) -> Option<ViolationKind> {
        if signal != libc::SIGKILL {
            return None;
        }
        if let Some(k) = sb.killed_for() {
            return Some(k);
        }
        let k = sb.check_oom()?;
        self.end(sb, outcome_for(k));
        Some(k)
    }

    fn init_said(&mut self, sb: &mut dyn Control, msg: FromInit, fds: Vec<OwnedFd>) {
        match msg {
            FromInit::Spawned { tag, pid } => {
                let cmd = self.tags.remove(&tag).unwrap_or_default();
                self.processes.insert(
                    pid,
                    ProcessInfo {
                        pid,
                        cmd: cmd.clone(),
                        running: true,
                        exit_code: None,
                        signal: None,
                    },
                );
                self.order.push(pid);
                // A terminal's master, passed on; our copy closes here.
                self.answer_spawn(tag, pid, fds.first());
                self.broadcast(&SandboxEvent::ExecStarted { pid, cmd });
            }
            FromInit::SpawnFailed { tag, step, errno } => {
                self.tags.remove(&tag);
                let message = nix::errno::Errno::from_raw(errno).desc().to_string();
                let msg = ShimReply::Failed {
                    kind: FailKind::Spawn,
                    message,
                    step: Some(step),
                    errno: Some(errno),
                };
                self.clients.retain(|(fd, c)| match c {
                    Some(Client::AwaitSpawn { tag: t } | Client::AwaitFiles { tag: t })
                        if *t == tag =>
                    {
                        reply(fd, &msg);
                        false
                    }
                    _ => true,
                });
            }
            FromInit::FilesStarted { tag, .. } => {
                self.clients.retain(|(fd, c)| match c {
                    Some(Client::AwaitFiles { tag: t }) if *t == tag => {
                        reply(fd, &ShimReply::Done);
                        false
                    }
                    _ => true,
                });
            }
            FromInit::Exited { pid, code } => self.finished(pid, Some(code), None, None),
            FromInit::Signaled { pid, sig } => {
                let killed_for = self.killed_by_breach(sb, sig);
                self.finished(pid, None, Some(sig), killed_for)
            }
            FromInit::Ready | FromInit::SetupFailed { .. } => {}
        }
    }

    /// Tells the client that asked for spawn `tag` its pid; the client
    /// then waits on the same connection for the process's end (one that
    /// only wanted the pid hangs up, which drops it).
    fn answer_spawn(&mut self, tag: u64, pid: i32, master: Option<&OwnedFd>) {
        let attached: Vec<RawFd> = master.map(|m| m.as_raw_fd()).into_iter().collect();
        for (fd, c) in &mut self.clients {
            if matches!(c, Some(Client::AwaitSpawn { tag: t }) if *t == tag) {
                let _ = iproto::send_msg(fd.as_fd(), &ShimReply::Started { pid }, &attached);
                *c = Some(Client::Waiting { pid });
            }
        }
    }

    fn finished(
        &mut self,
        pid: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        killed_for: Option<ViolationKind>,
    ) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.running = false;
            p.exit_code = exit_code;
            p.signal = signal;
        }
        self.reply_waiters(pid, exit_code, signal, killed_for);
        self.broadcast(&SandboxEvent::ExecExited {
            pid,
            exit_code,
            signal,
        });
        // Forget the oldest finished processes beyond the cap.
        let finished = self.processes.values().filter(|p| !p.running).count();
        if finished > KEEP_FINISHED {
            if let Some(pos) = self
                .order
                .iter()
                .position(|p| self.processes.get(p).is_some_and(|i| !i.running))
            {
                let old = self.order.remove(pos);
                self.processes.remove(&old);
            }
        }
    }

    fn serve_client(&mut self, i: usize, sb: &mut dyn Control) {
        let prepared = self.prepared;
        if self.clients[i].1.is_some() {
            // Only subscribers, waiters and the like remain; readable now
            // means they hung up.
            self.clients.remove(i);
            return;
        }
        let req = iproto::recv_msg::<ShimRequest>(self.clients[i].0.as_fd());
        let (msg, fds) = match req {
            Ok(Some(m)) => m,
            Ok(None) => {
                self.clients.remove(i);
                return;
            }
            Err(e) => {
                reply(
                    &self.clients[i].0,
                    &failed(FailKind::Invalid, e.to_string()),
                );
                self.clients.remove(i);
                return;
            }
        };
        let fd = &self.clients[i].0;
        let next = match msg {
            ShimRequest::Exec { req } => {
                if self.ending.is_some() {
                    reply(
                        fd,
                        &failed(FailKind::NotFound, "the sandbox is shutting down".into()),
                    );
                    None
                } else {
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    let spawn = prepared
                        .request(tag, &req.cmd, &req.env, req.cwd.as_deref(), None)
                        .map(|mut s| {
                            s.as_root = req.root;
                            s
                        });
                    match spawn {
                        Err(e) => {
                            reply(fd, &failed(FailKind::Invalid, e.to_string()));
                            None
                        }
                        Ok(_) if !req.tty && fds.len() != 3 => {
                            reply(
                                fd,
                                &failed(
                                    FailKind::Invalid,
                                    "exec needs stdin, stdout and stderr descriptors".into(),
                                ),
                            );
                            None
                        }
                        Ok(mut spawn) => {
                            // A terminal is made by init; its master comes
                            // back with `Spawned` and goes to the client.
                            spawn.tty = req.tty;
                            spawn.tty_size = req.tty_size;
                            let raw: Vec<RawFd> = if req.tty {
                                Vec::new()
                            } else {
                                fds.iter().map(|f| f.as_raw_fd()).collect()
                            };
                            if sb.exec(spawn, &raw).is_err() {
                                reply(
                                    fd,
                                    &failed(
                                        FailKind::Internal,
                                        "the sandbox's init is gone".into(),
                                    ),
                                );
                                None
                            } else {
                                self.tags.insert(tag, req.cmd.clone());
                                Some(Client::AwaitSpawn { tag })
                            }
                        }
                    }
                }
            }
            ShimRequest::Wait { pid } => match self.processes.get(&pid) {
                None => {
                    reply(
                        fd,
                        &failed(
                            FailKind::NotFound,
                            format!("no process {pid} was started in this sandbox"),
                        ),
                    );
                    None
                }
                Some(p) if !p.running => {
                    reply(
                        fd,
                        &ShimReply::Ended {
                            pid,
                            exit_code: p.exit_code,
                            signal: p.signal,
                            killed_for: sb.killed_for().filter(|_| p.signal == Some(libc::SIGKILL)),
                        },
                    );
                    None
                }
                Some(_) => Some(Client::Waiting { pid }),
            },
            ShimRequest::Signal { pid, sig } => {
                if self.processes.get(&pid).is_some_and(|p| p.running) {
                    sb.signal(pid, sig);
                    reply(fd, &ShimReply::Done);
                } else {
                    reply(
                        fd,
                        &failed(
                            FailKind::NotFound,
                            format!("no running process {pid} in this sandbox"),
                        ),
                    );
                }
                None
            }
            ShimRequest::Files { root } => {
                if self.ending.is_some() {
                    reply(
                        fd,
                        &failed(FailKind::NotFound, "the sandbox is shutting down".into()),
                    );
                    None
                } else if fds.len() != 1 {
                    reply(
                        fd,
                        &failed(
                            FailKind::Invalid,
                            "a file helper needs exactly one socket".into(),
                        ),
                    );
                    None
                } else {
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    let msg = ToInit::Files {
                        tag,
                        root: root.unwrap_or(prepared.spec.as_root),
                    };
                    if sb.send(&msg, &[fds[0].as_raw_fd()]).is_err() {
                        reply(
                            fd,
                            &failed(FailKind::Internal, "the sandbox's init is gone".into()),
                        );
                        None
                    } else {
                        Some(Client::AwaitFiles { tag })
                    }
                }
            }
            ShimRequest::Status => {
                let mut processes: Vec<ProcessInfo> = self.processes.values().cloned().collect();
                processes.sort_by_key(|p| p.pid);
                let status = SandboxStatus {
                    id: prepared.spec.id.clone(),
                    init_pid: sb.init_pid(),
                    owner: prepared.owner,
                    usage: sb.usage(),
                    violations: sb.limit_violations().to_vec(),
                    processes,
                    current: sb.current(),
                };
                reply(fd, &ShimReply::Status { status });
                None
            }
            ShimRequest::Subscribe => {
                // One who subscribes after the sandbox began to expire
                // (a create slow enough to outlast a short ttl) still
                // hears that it did; the end follows as for everyone.
                if self.ending == Some(Outcome::Timeout) {
                    reply(
                        fd,
                        &ShimReply::Event {
                            event: SandboxEvent::Expired,
                        },
                    );
                }
                Some(Client::Subscriber)
            }
            ShimRequest::Destroy => {
                self.end(sb, Outcome::Destroyed);
                Some(Client::AwaitDestroy)
            }
        };
        match next {
            Some(c) => self.clients[i].1 = Some(c),
            None => {
                self.clients.remove(i);
            }
        }
    }
}

fn failed(kind: FailKind, message: String) -> ShimReply {
    ShimReply::Failed {
        kind,
        message,
        step: None,
        errno: None,
    }
}

fn reply(fd: &OwnedFd, msg: &ShimReply) {
    let _ = iproto::send_msg(fd.as_fd(), msg, &[]);
}

/// A listening `SOCK_SEQPACKET` unix socket at `path`, mode 0600.
fn bind_seqpacket(path: &std::path::Path) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    listen(&fd, Backlog::new(64)?)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: creates cgroups"]
    fn a_stale_known_cgroup_layout_gives_way_to_a_fresh_look() {
        let limits = CgLimits {
            cpus: Some(1.0),
            memory_bytes: Some(64 << 20),
            pids: Some(64),
        };
        let host = Driver::detect().expect("this host has cgroups");
        // As if the host's cgroups had moved since the zygote looked.
        let stale = Driver::with_v2_root("/nonexistent/stockade-stale-layout");
        assert!(stale.create("shim-unit-c1", &limits).is_err());
        let (driver, cgroup) = create_cgroup(Some(stale), "shim-unit-c1", &limits)
            .expect("created after a fresh look");
        assert_eq!(driver.version(), host.version());
        assert!(driver.open_existing("shim-unit-c1").is_some());
        cgroup.destroy().unwrap();
        // A layout that still works is used as it is.
        let (_, cgroup) = create_cgroup(Some(host.clone()), "shim-unit-c2", &limits).unwrap();
        assert!(host.open_existing("shim-unit-c2").is_some());
        cgroup.destroy().unwrap();
        assert!(host.open_existing("shim-unit-c2").is_none());
    }
}
