//! The daemon's side: a [`Backend`] whose sandboxes are each run by a
//! shim process, reached over the shim's unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use stockade_isolate::proto as iproto;
use stockade_policy::Policy;

use super::proto::{report_path, socket_path, FailKind, ShimReply, ShimRequest, ShimStart};
use crate::backend::{
    Backend, BackendError, ExecRequest, ExitWaiter, FileClient, FileError, SandboxEvent,
    SandboxHandle, SandboxStatus, Teardown,
};
use crate::report::Report;

/// Sandboxes run by shim processes (`<exe> shim`).
#[derive(Debug, Clone)]
pub struct ShimBackend {
    state_dir: PathBuf,
    /// The `stockade` binary, started as `<exe> shim`.
    exe: PathBuf,
    pool: Arc<Pool>,
}

/// Nice value pooled shims are started with (see `Pool::refill`).
const POOL_NICE: libc::c_int = 10;

/// How many idle shims [`ShimBackend::new`] keeps ready.
pub const DEFAULT_POOL_SIZE: usize = 2;

impl ShimBackend {
    /// A backend that keeps [`DEFAULT_POOL_SIZE`] idle shims ready.
    pub fn new(state_dir: PathBuf, exe: PathBuf) -> ShimBackend {
        ShimBackend::with_pool(state_dir, exe, DEFAULT_POOL_SIZE)
    }

    /// A backend that keeps `pool_size` idle shims ready (0: none; each
    /// create then starts its shim itself).
    pub fn with_pool(state_dir: PathBuf, exe: PathBuf, pool_size: usize) -> ShimBackend {
        let b = ShimBackend {
            state_dir,
            pool: Arc::new(Pool::new(exe.clone(), pool_size)),
            exe,
        };
        Pool::refill_in_background(&b.pool);
        b
    }

    /// Pids of the idle shims in the pool (for tests and diagnostics).
    pub fn pooled_pids(&self) -> Vec<u32> {
        self.pool.lock().idle.iter().map(|s| s.pid).collect()
    }
}

impl Backend for ShimBackend {
    fn create(
        &self,
        id: &str,
        policy: &Policy,
        ttl: Option<Duration>,
    ) -> Result<Box<dyn SandboxHandle>, BackendError> {
        policy
            .validate()
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let start = ShimStart {
            id: id.to_string(),
            state_dir: self.state_dir.clone(),
            policy: policy.clone(),
            ttl,
        };
        let json = serde_json::to_vec(&start).map_err(|e| BackendError::Internal(e.to_string()))?;
        // A pooled shim shows this sandbox's id on its command line only
        // if the id fits where the placeholder was (daemon ids always do).
        let pooled = (id.len() == super::POOLED_ID.len())
            .then(|| self.pool.take())
            .flatten();
        let fresh = || {
            start_shim(&self.exe, id)
                .map(IdleShim::exec_child)
                .map_err(|e| {
                    BackendError::Internal(format!(
                        "cannot start the shim {}: {e}",
                        self.exe.display()
                    ))
                })
        };
        let send = |shim: &mut IdleShim| {
            shim.stdin
                .take()
                .is_some_and(|mut stdin| stdin.write_all(&json).is_ok())
        };
        let mut shim = match pooled {
            Some(mut s) => {
                if send(&mut s) {
                    s
                } else {
                    // A pooled shim that died before reading its request.
                    s.kill();
                    let mut s = fresh()?;
                    send(&mut s);
                    s
                }
            }
            None => {
                let mut s = fresh()?;
                send(&mut s);
                s
            }
        };
        let mut line = String::new();
        let mut reader = shim.stdout.take().map(BufReader::new);
        if let Some(r) = reader.as_mut() {
            let _ = r.read_line(&mut line);
        }
        // An exec'd shim's first process forks the real shim and exits at
        // once; it is reaped only now, so that its exit overlaps the
        // sandbox's creation. (A zygote's children are the zygote's.)
        shim.reap();
        // Only now: starting a replacement competes for the CPU with the
        // sandbox being built. (Also after a create that found the pool
        // empty, in case an earlier refill could not start a shim.)
        Pool::refill_in_background(&self.pool);
        match line.trim().split_once(' ') {
            Some(("ready", _)) => Ok(Box::new(ShimHandle::new(&self.state_dir, id))),
            Some((kind @ ("error" | "invalid"), msg)) => {
                // The shim closes the pipe only once it has cleaned up, so
                // a failed create leaves nothing behind when reported.
                if let Some(r) = reader.as_mut() {
                    let _ = std::io::Read::read_to_end(r, &mut Vec::new());
                }
                Err(if kind == "invalid" {
                    BackendError::Invalid(msg.to_string())
                } else {
                    BackendError::Internal(msg.to_string())
                })
            }
            _ => Err(BackendError::Internal(
                "the shim exited without reporting".into(),
            )),
        }
    }

    fn attach(&self, id: &str) -> Result<Box<dyn SandboxHandle>, BackendError> {
        let handle = ShimHandle::new(&self.state_dir, id);
        handle.connect()?;
        Ok(Box::new(handle))
    }

    fn shutdown(&self) {
        self.pool.shutdown();
    }

    fn leftover_report(&self, id: &str) -> Option<Report> {
        std::fs::read(report_path(&self.state_dir, id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn reap(&self, id: &str) -> Option<Report> {
        // The shim is gone: collect what it or its death left.
        if let Ok(state) = crate::state::StateDir::open(&self.state_dir) {
            crate::gc::collect(&state, stockade_cgroup::Driver::detect().ok().as_ref());
        }
        let path = report_path(&self.state_dir, id);
        let report = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let _ = std::fs::remove_file(&path);
        report
    }
}

/// Starts `<exe> shim --id ID`, which waits for its start request on
/// stdin.
fn start_shim(exe: &Path, id: &str) -> std::io::Result<Child> {
    Command::new(exe)
        .arg("shim")
        .arg("--id")
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

/// Idle shims, started ahead of need so that a create does not wait for
/// the binary to be exec'd and linked (about a millisecond and a half).
///
/// A pooled shim is a `stockade shim` blocked reading its start request,
/// and each one serves exactly one sandbox: it holds no state of any
/// earlier sandbox because it never had one. Its command line says `--id`
/// [`super::POOLED_ID`] until it gets its sandbox's id. Idle shims are
/// forked by a zygote (`stockade shim --id pool-waiting --zygote`, see
/// [`super::zygote`]), itself started once and never given a sandbox;
/// when the zygote cannot be had, each is exec'd as before. Its stdin is
/// a pipe only we hold: if the daemon dies, even by `kill -9`, an idle shim
/// reads end-of-file and exits, and so does the zygote on its socket.
/// [`Pool::shutdown`] (and dropping the pool) kills the idle ones.
#[derive(Debug)]
struct Pool {
    exe: PathBuf,
    size: usize,
    state: Mutex<PoolState>,
    /// The zygote, used by one refill at a time.
    zygote: Mutex<Option<Zygote>>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Oldest first: the one taken has had the longest to finish starting.
    idle: std::collections::VecDeque<IdleShim>,
    /// A refill thread is running.
    refilling: bool,
    closed: bool,
}

/// A shim waiting for its start request.
#[derive(Debug)]
struct IdleShim {
    pid: u32,
    /// Where the start request goes; closing it unused ends the shim.
    stdin: Option<std::fs::File>,
    /// The readiness line comes back here.
    stdout: Option<std::fs::File>,
    /// Polls readable once the shim has exited.
    pidfd: Option<OwnedFd>,
    /// Set when we exec'd it ourselves: our child, to be reaped.
    child: Option<Child>,
}

impl IdleShim {
    /// A shim we exec'd ourselves (`start_shim`).
    fn exec_child(mut child: Child) -> IdleShim {
        let pid = child.id();
        // Our unreaped child: its pid cannot have been reused.
        let pidfd = stockade_isolate::sys::pidfd_open(pid as i32).ok();
        IdleShim {
            pid,
            stdin: child
                .stdin
                .take()
                .map(|s| std::fs::File::from(OwnedFd::from(s))),
            stdout: child
                .stdout
                .take()
                .map(|s| std::fs::File::from(OwnedFd::from(s))),
            pidfd,
            child: Some(child),
        }
    }

    fn alive(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            return matches!(c.try_wait(), Ok(None));
        }
        self.pidfd.as_ref().is_some_and(|fd| {
            let mut fds = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            matches!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
                Ok(0)
            )
        })
    }

    /// Reaps it if it is our child (an exec'd shim's first process exits
    /// once it has forked the real shim).
    fn reap(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.wait();
        }
    }

    /// Kills an idle shim; returns once it has exited (bounded).
    fn kill(&mut self) {
        self.stdin = None;
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
            return;
        }
        if let Some(fd) = self.pidfd.as_ref() {
            let _ = stockade_isolate::sys::pidfd_send_signal(fd, libc::SIGKILL);
            crate::teardown::wait_gone(fd);
        }
    }
}

/// The daemon's end of a zygote.
#[derive(Debug)]
struct Zygote {
    child: Child,
    sock: OwnedFd,
}

impl Zygote {
    fn start(exe: &Path) -> std::io::Result<Zygote> {
        use nix::sys::socket::socketpair;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let child = Command::new(exe)
            .args(["shim", "--id", super::POOLED_ID, super::ZYGOTE_FLAG])
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Zygote { child, sock: ours })
    }

    /// One idle shim, forked by the zygote; `None` if the zygote failed
    /// (it is then killed).
    fn fork_idle(&mut self) -> Option<IdleShim> {
        let shim = self.ask();
        if shim.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        shim
    }

    fn ask(&mut self) -> Option<IdleShim> {
        let (req_r, req_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        iproto::send_msg(
            self.sock.as_fd(),
            &super::ZygoteRequest {},
            &[req_r.as_raw_fd(), ready_w.as_raw_fd()],
        )
        .ok()?;
        drop((req_r, ready_w));
        // A zygote answers at once; one that does not is broken.
        let mut fds = [nix::poll::PollFd::new(
            self.sock.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ZYGOTE_ANSWER_MS)),
            Ok(1)
        ) {
            return None;
        }
        let (reply, mut pidfds) =
            iproto::recv_msg::<super::ZygoteReply>(self.sock.as_fd()).ok()??;
        if reply.pid <= 0 || pidfds.len() != 1 {
            return None;
        }
        Some(IdleShim {
            pid: reply.pid as u32,
            stdin: Some(std::fs::File::from(req_w)),
            stdout: Some(std::fs::File::from(ready_r)),
            pidfd: pidfds.pop(),
            child: None,
        })
    }
}

/// How long a zygote may take to answer before it counts as broken.
const ZYGOTE_ANSWER_MS: u16 = 5000;

impl Pool {
    fn new(exe: PathBuf, size: usize) -> Pool {
        Pool {
            exe,
            size,
            state: Mutex::default(),
            zygote: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle shim that is still alive, if there is one.
    fn take(&self) -> Option<IdleShim> {
        let mut st = self.lock();
        while let Some(mut s) = st.idle.pop_front() {
            // One that died (killed by someone) is useless.
            if s.alive() {
                return Some(s);
            }
            s.reap();
        }
        None
    }

    /// Tops the pool up on a thread of its own, unless one already does.
    fn refill_in_background(pool: &Arc<Pool>) {
        {
            let mut st = pool.lock();
            if pool.size == 0 || st.closed || st.refilling || st.idle.len() >= pool.size {
                return;
            }
            st.refilling = true;
        }
        let p = pool.clone();
        let spawned = std::thread::Builder::new()
            .name("stockade-shim-pool".into())
            .spawn(move || p.refill());
        if spawned.is_err() {
            // Creates start their own shims meanwhile; retried next time.
            pool.lock().refilling = false;
        }
    }

    fn refill(&self) {
        // Starting a shim is work for later: at low priority it yields
        // the CPU to the requests in flight. The nice value is this
        // thread's own (Linux), inherited by the zygote and the shims it
        // forks; each resets it once it gets a sandbox.
        // SAFETY: setpriority and gettid only read their integer
        // arguments; no memory is involved.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, POOL_NICE);
        }
        loop {
            if self.lock().idle.len() >= self.size {
                break;
            }
            let Some(mut shim) = self.start_idle() else {
                break;
            };
            let mut st = self.lock();
            if st.closed {
                drop(st);
                shim.kill();
                break;
            }
            st.idle.push_back(shim);
        }
        self.lock().refilling = false;
    }

    /// One idle shim: forked by the zygote (started first if need be), or
    /// exec'd if the zygote cannot be had.
    fn start_idle(&self) -> Option<IdleShim> {
        {
            let mut z = self.zygote.lock().unwrap_or_else(|p| p.into_inner());
            let alive = z
                .as_mut()
                .is_some_and(|z| matches!(z.child.try_wait(), Ok(None)));
            if !alive {
                if let Some(mut old) = z.take() {
                    let _ = old.child.wait();
                }
                *z = Zygote::start(&self.exe).ok();
            }
            if let Some(shim) = z.as_mut().and_then(Zygote::fork_idle) {
                return Some(shim);
            }
            *z = None;
        }
        start_shim(&self.exe, super::POOLED_ID)
            .map(IdleShim::exec_child)
            .ok()
    }

    /// Kills every idle shim and the zygote; no more are started.
    fn shutdown(&self) {
        let idle = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.idle)
        };
        for mut s in idle {
            s.kill();
        }
        if let Some(mut z) = self.zygote.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = z.child.kill();
            let _ = z.child.wait();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One sandbox's shim, reached by path.
#[derive(Debug)]
pub struct ShimHandle {
    id: String,
    socket: PathBuf,
    /// Where the shim leaves its final report.
    report: PathBuf,
    events: Mutex<Events>,
}

/// Where `next_event` stands.
#[derive(Debug)]
enum Events {
    NotSubscribed,
    Subscribed(OwnedFd),
    /// The shim was gone before we subscribed: the end it recorded.
    Replay(std::collections::VecDeque<SandboxEvent>),
    Ended,
}

impl ShimHandle {
    fn new(state_dir: &Path, id: &str) -> ShimHandle {
        ShimHandle {
            id: id.to_string(),
            socket: socket_path(state_dir, id),
            report: report_path(state_dir, id),
            events: Mutex::new(Events::NotSubscribed),
        }
    }

    /// The end of a sandbox whose shim is already gone, from the report it
    /// left: `expired` if it expired, then `destroyed`.
    fn recorded_end(&self) -> std::collections::VecDeque<SandboxEvent> {
        let report: Option<Report> = std::fs::read(&self.report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut out = std::collections::VecDeque::new();
        if let Some(r) = report {
            if r.outcome == crate::report::Outcome::Timeout {
                out.push_back(SandboxEvent::Expired);
            }
            out.push_back(SandboxEvent::Destroyed(Box::new(r)));
        }
        out
    }

    fn connect(&self) -> Result<OwnedFd, BackendError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| BackendError::Internal(format!("cannot create a socket: {e}")))?;
        let addr =
            UnixAddr::new(&self.socket).map_err(|e| BackendError::Internal(e.to_string()))?;
        connect(fd.as_raw_fd(), &addr).map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        Ok(fd)
    }

    fn call(&self, req: &ShimRequest, fds: &[RawFd]) -> Result<(OwnedFd, ShimReply), BackendError> {
        let fd = self.connect()?;
        iproto::send_msg(fd.as_fd(), req, fds)
            .map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        let reply = recv(&fd, &self.id)?;
        Ok((fd, reply))
    }
}

fn recv(fd: &OwnedFd, id: &str) -> Result<ShimReply, BackendError> {
    match iproto::recv_msg::<ShimReply>(fd.as_fd()) {
        Ok(Some((
            ShimReply::Failed {
                kind,
                message,
                step,
                errno,
            },
            _,
        ))) => Err(match kind {
            FailKind::Invalid => BackendError::Invalid(message),
            FailKind::NotFound => BackendError::Invalid(message),
            FailKind::Spawn => BackendError::Spawn {
                step: step.unwrap_or_default(),
                errno: errno.unwrap_or(0),
                message,
            },
            FailKind::Internal => BackendError::Internal(message),
        }),
        Ok(Some((reply, _))) => Ok(reply),
        Ok(None) | Err(_) => Err(BackendError::NotRunning(id.to_string())),
    }
}

fn unexpected(r: ShimReply) -> BackendError {
    BackendError::Internal(format!("unexpected answer from the shim: {r:?}"))
}

impl SandboxHandle for ShimHandle {
    fn id(&self) -> &str {
        &self.id
    }

    fn exec(&self, req: &ExecRequest, stdio: [OwnedFd; 3]) -> Result<i32, BackendError> {
        let raw: Vec<RawFd> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        let (_, reply) = self.call(&ShimRequest::Exec { req: req.clone() }, &raw)?;
        match reply {
            ShimReply::Started { pid } => Ok(pid),
            r => Err(unexpected(r)),
        }
    }

    fn exec_waiting(
        self: Arc<Self>,
        req: &ExecRequest,
        stdio: [OwnedFd; 3],
    ) -> Result<(i32, ExitWaiter), BackendError> {
        let raw: Vec<RawFd> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        let (fd, reply) = self.call(&ShimRequest::Exec { req: req.clone() }, &raw)?;
        // Our copies of the process's stdio must close now: its readers
        // see end-of-file only once every writer is gone.
        drop(stdio);
        let pid = match reply {
            ShimReply::Started { pid } => pid,
            r => return Err(unexpected(r)),
        };
        // The shim answers `Ended` on the connection that started the
        // process. One that hangs up instead (a shim from an older
        // daemon) is asked again with a `Wait` of its own.
        let waiter = move || match recv(&fd, &self.id) {
            Ok(ShimReply::Ended {
                exit_code, signal, ..
            }) => Ok((exit_code, signal)),
            Ok(r) => Err(unexpected(r)),
            Err(BackendError::NotRunning(_)) => self.wait(pid, None),
            Err(e) => Err(e),
        };
        Ok((pid, Box::new(waiter)))
    }

    fn wait(
        &self,
        pid: i32,
        timeout: Option<Duration>,
    ) -> Result<(Option<i32>, Option<i32>), BackendError> {
        let fd = self.connect()?;
        iproto::send_msg(fd.as_fd(), &ShimRequest::Wait { pid }, &[])
            .map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        if let Some(t) = timeout {
            let mut pfd = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = nix::poll::PollTimeout::try_from(t.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(nix::poll::PollTimeout::MAX);
            if matches!(nix::poll::poll(&mut pfd, ms), Ok(0)) {
                return Err(BackendError::Internal(format!(
                    "process {pid} is still running"
                )));
            }
        }
        match recv(&fd, &self.id)? {
            ShimReply::Ended {
                exit_code, signal, ..
            } => Ok((exit_code, signal)),
            r => Err(unexpected(r)),
        }
    }

    fn signal(&self, pid: i32, sig: i32) -> Result<(), BackendError> {
        match self.call(&ShimRequest::Signal { pid, sig }, &[])?.1 {
            ShimReply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn files(&self, root: Option<bool>) -> Result<FileClient, BackendError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| BackendError::Internal(format!("cannot create a socket pair: {e}")))?;
        match self
            .call(&ShimRequest::Files { root }, &[theirs.as_raw_fd()])?
            .1
        {
            ShimReply::Done => {}
            r => return Err(unexpected(r)),
        }
        drop(theirs);
        FileClient::new(OwnedFd::from(ours)).map_err(|e| match e {
            FileError::Failed { message, .. } => BackendError::Internal(message),
            e => BackendError::Internal(stockade_isolate::error_chain(&e)),
        })
    }

    fn status(&self) -> Result<SandboxStatus, BackendError> {
        match self.call(&ShimRequest::Status, &[])?.1 {
            ShimReply::Status { status } => Ok(status),
            r => Err(unexpected(r)),
        }
    }

    fn next_event(&self) -> Option<SandboxEvent> {
        let mut guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*guard, Events::NotSubscribed) {
            let subscribed = self
                .connect()
                .ok()
                .filter(|fd| iproto::send_msg(fd.as_fd(), &ShimRequest::Subscribe, &[]).is_ok());
            *guard = match subscribed {
                Some(fd) => Events::Subscribed(fd),
                // A sandbox can end before anyone subscribes (a ttl
                // shorter than a slow create): tell its recorded end.
                None => Events::Replay(self.recorded_end()),
            };
        }
        let next = match &mut *guard {
            Events::Subscribed(fd) => match recv(fd, &self.id) {
                Ok(ShimReply::Event { event }) => Some(event),
                _ => None,
            },
            Events::Replay(queue) => queue.pop_front(),
            Events::NotSubscribed | Events::Ended => None,
        };
        if next.is_none() {
            *guard = Events::Ended;
        }
        next
    }

    fn destroy(&self) -> Result<Report, BackendError> {
        let (report, teardown) = self.destroy_deferred()?;
        teardown();
        Ok(report)
    }

    fn destroy_deferred(&self) -> Result<(Report, Teardown), BackendError> {
        match self.call(&ShimRequest::Destroy, &[])? {
            // The shim answers once the sandbox is dead, removes its
            // cgroup and directory, and hangs up when done.
            (fd, ShimReply::Destroyed { report }) => Ok((
                *report,
                Box::new(
                    move || {
                        while let Ok(Some(_)) = iproto::recv_msg::<ShimReply>(fd.as_fd()) {}
                    },
                ),
            )),
            (_, r) => Err(unexpected(r)),
        }
    }
}
