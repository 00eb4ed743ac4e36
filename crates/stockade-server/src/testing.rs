//! An in-memory [`Backend`] for tests of the daemon (and of its clients):
//! a "sandbox" is a directory standing in for its root, and exec runs the
//! command on the host with the given stdio. It isolates nothing.
//!
//! Sandboxes live in the `FakeBackend`, not in the daemon, so a test can
//! stop a daemon and start another on the same backend and state
//! directory, as after a daemon restart; [`FakeBackend::kill_supervisor`]
//! plays a supervisor that died meanwhile.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stockade_core::backend::{
    files, Backend, BackendError, ExecRequest, FileClient, ProcessInfo, SandboxEvent,
    SandboxHandle, SandboxStatus, Teardown,
};
use stockade_core::{Outcome, Report, Usage, Violation};
use stockade_policy::Policy;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct FakeProc {
    cmd: Vec<String>,
    child: Option<Child>,
    exit: Option<(Option<i32>, Option<i32>)>,
}

struct FakeSandbox {
    id: String,
    root: PathBuf,
    started: Instant,
    started_at: f64,
    alive: AtomicBool,
    procs: Mutex<HashMap<i32, FakeProc>>,
    subscribers: Mutex<Vec<mpsc::Sender<SandboxEvent>>>,
    violations: Mutex<Vec<Violation>>,
}

impl FakeSandbox {
    fn emit(&self, ev: SandboxEvent) {
        lock(&self.subscribers).retain(|s| s.send(ev.clone()).is_ok());
    }

    fn kill_all(&self) {
        for (pid, p) in lock(&self.procs).iter() {
            if p.exit.is_none() {
                // SAFETY: kill(2) with a negative pid signals the process
                // group the fake created for that child; no memory involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }

    fn report(&self) -> Report {
        Report {
            id: self.id.clone(),
            outcome: Outcome::Exited,
            exit_code: Some(0),
            signal: None,
            error: None,
            violations: lock(&self.violations).clone(),
            usage: Usage {
                wall_seconds: self.started.elapsed().as_secs_f64(),
                ..Usage::default()
            },
            command: vec![],
            started_at: self.started_at,
            network: None,
        }
    }
}

#[derive(Default)]
struct Inner {
    sandboxes: Mutex<HashMap<String, Arc<FakeSandbox>>>,
    leftovers: Mutex<HashMap<String, Report>>,
    /// While true, teardowns after `destroy_deferred` block.
    teardowns_held: Mutex<bool>,
    teardowns_released: std::sync::Condvar,
    teardowns_done: std::sync::atomic::AtomicUsize,
    shutdowns: std::sync::atomic::AtomicUsize,
}

/// The fake backend. Cloning shares its sandboxes.
#[derive(Clone)]
pub struct FakeBackend {
    inner: Arc<Inner>,
    base: PathBuf,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl FakeBackend {
    /// Sandbox roots are made under `base` (one directory per id, with
    /// `workspace/` in it).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        FakeBackend {
            inner: Arc::default(),
            base: base.into(),
        }
    }

    fn get(&self, id: &str) -> Option<Arc<FakeSandbox>> {
        lock(&self.inner.sandboxes).get(id).cloned()
    }

    /// The directory standing in for the root of sandbox `id`.
    pub fn root_of(&self, id: &str) -> PathBuf {
        self.base.join(id)
    }

    /// Teardowns (the part of a destroy after the sandbox is dead) block
    /// from now until [`release_teardowns`](Self::release_teardowns).
    pub fn hold_teardowns(&self) {
        *lock(&self.inner.teardowns_held) = true;
    }

    pub fn release_teardowns(&self) {
        *lock(&self.inner.teardowns_held) = false;
        self.inner.teardowns_released.notify_all();
    }

    /// Teardowns finished so far.
    pub fn teardowns_done(&self) -> usize {
        self.inner.teardowns_done.load(Ordering::SeqCst)
    }

    /// How many times the daemon called `Backend::shutdown`.
    pub fn shutdowns(&self) -> usize {
        self.inner.shutdowns.load(Ordering::SeqCst)
    }

    /// Pushes an event to everyone following sandbox `id`.
    pub fn inject(&self, id: &str, ev: SandboxEvent) {
        if let Some(sb) = self.get(id) {
            if let SandboxEvent::Violation(v) = &ev {
                lock(&sb.violations).push(v.clone());
            }
            sb.emit(ev);
        }
    }

    /// Plays a supervisor that dies: the sandbox's processes are killed,
    /// its event streams end, `attach` says `NotRunning` and `reap`
    /// returns its report.
    pub fn kill_supervisor(&self, id: &str) {
        if let Some(sb) = lock(&self.inner.sandboxes).remove(id) {
            sb.alive.store(false, Ordering::SeqCst);
            sb.kill_all();
            lock(&self.inner.leftovers).insert(id.to_string(), sb.report());
            lock(&sb.subscribers).clear();
        }
    }

    /// Ids of the sandboxes alive in the backend.
    pub fn alive(&self) -> Vec<String> {
        lock(&self.inner.sandboxes)
            .values()
            .filter(|s| s.alive.load(Ordering::SeqCst))
            .map(|s| s.id.clone())
            .collect()
    }

    fn handle(&self, sb: Arc<FakeSandbox>) -> Box<dyn SandboxHandle> {
        let (tx, rx) = mpsc::channel();
        lock(&sb.subscribers).push(tx);
        Box::new(FakeHandle {
            sb,
            events: Mutex::new(rx),
            inner: self.inner.clone(),
        })
    }
}

impl Backend for FakeBackend {
    fn create(
        &self,
        id: &str,
        _policy: &Policy,
        _ttl: Option<Duration>,
    ) -> Result<Box<dyn SandboxHandle>, BackendError> {
        let root = self.root_of(id);
        std::fs::create_dir_all(root.join("workspace")).map_err(|e| {
            BackendError::Internal(format!("cannot create {}: {e}", root.display()))
        })?;
        let sb = Arc::new(FakeSandbox {
            id: id.to_string(),
            root,
            started: Instant::now(),
            started_at: crate::events::now(),
            alive: AtomicBool::new(true),
            procs: Mutex::default(),
            subscribers: Mutex::default(),
            violations: Mutex::default(),
        });
        lock(&self.inner.sandboxes).insert(id.to_string(), sb.clone());
        Ok(self.handle(sb))
    }

    fn attach(&self, id: &str) -> Result<Box<dyn SandboxHandle>, BackendError> {
        match self.get(id) {
            Some(sb) if sb.alive.load(Ordering::SeqCst) => Ok(self.handle(sb)),
            _ => Err(BackendError::NotRunning(id.to_string())),
        }
    }

    fn reap(&self, id: &str) -> Option<Report> {
        lock(&self.inner.leftovers).remove(id)
    }

    fn shutdown(&self) {
        self.inner.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
}

struct FakeHandle {
    sb: Arc<FakeSandbox>,
    events: Mutex<mpsc::Receiver<SandboxEvent>>,
    inner: Arc<Inner>,
}

impl FakeHandle {
    fn gone(&self) -> BackendError {
        BackendError::NotRunning(self.sb.id.clone())
    }
}

impl SandboxHandle for FakeHandle {
    fn id(&self) -> &str {
        &self.sb.id
    }

    fn exec(&self, req: &ExecRequest, stdio: [OwnedFd; 3]) -> Result<i32, BackendError> {
        if !self.sb.alive.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        let [i, o, e] = stdio;
        let cwd = req
            .cwd
            .as_deref()
            .map(|c| self.sb.root.join(c.trim_start_matches('/')))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| self.sb.root.join("workspace"));
        let mut cmd = Command::new(&req.cmd[0]);
        cmd.args(&req.cmd[1..])
            .envs(&req.env)
            .current_dir(cwd)
            .process_group(0)
            .stdin(Stdio::from(i))
            .stdout(Stdio::from(o))
            .stderr(Stdio::from(e));
        let child = cmd.spawn().map_err(|err| BackendError::Spawn {
            step: format!("run {}", req.cmd[0]),
            errno: err.raw_os_error().unwrap_or(0),
            message: err.to_string(),
        })?;
        drop(cmd);
        let pid = child.id() as i32;
        lock(&self.sb.procs).insert(
            pid,
            FakeProc {
                cmd: req.cmd.clone(),
                child: Some(child),
                exit: None,
            },
        );
        self.sb.emit(SandboxEvent::ExecStarted {
            pid,
            cmd: req.cmd.clone(),
        });
        Ok(pid)
    }

    fn wait(
        &self,
        pid: i32,
        timeout: Option<Duration>,
    ) -> Result<(Option<i32>, Option<i32>), BackendError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let child = {
            let mut procs = lock(&self.sb.procs);
            let p = procs
                .get_mut(&pid)
                .ok_or_else(|| BackendError::Invalid(format!("no process {pid}")))?;
            if let Some(x) = p.exit {
                return Ok(x);
            }
            p.child.take()
        };
        let Some(mut child) = child else {
            // Someone else waits for it: poll for the exit they record.
            loop {
                if let Some(x) = lock(&self.sb.procs).get(&pid).and_then(|p| p.exit) {
                    return Ok(x);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(BackendError::Internal(format!("process {pid} still runs")));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let status = child
            .wait()
            .map_err(|e| BackendError::Internal(format!("cannot wait for {pid}: {e}")))?;
        let x = (status.code(), status.signal());
        if let Some(p) = lock(&self.sb.procs).get_mut(&pid) {
            p.exit = Some(x);
        }
        self.sb.emit(SandboxEvent::ExecExited {
            pid,
            exit_code: x.0,
            signal: x.1,
        });
        Ok(x)
    }

    fn signal(&self, pid: i32, sig: i32) -> Result<(), BackendError> {
        let running = lock(&self.sb.procs)
            .get(&pid)
            .is_some_and(|p| p.exit.is_none());
        if !running {
            return Err(BackendError::Invalid(format!(
                "process {pid} is not running"
            )));
        }
        // SAFETY: kill(2) takes plain integers; the pid is a child of this
        // process that has not been reaped (its exit is not recorded).
        unsafe { libc::kill(pid, sig) };
        Ok(())
    }

    fn files(&self, _root: Option<bool>) -> Result<FileClient, BackendError> {
        if !self.sb.alive.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        // The real helper's loop, on a thread, over the fake's directory
        // as its root.
        let dir = std::fs::File::open(&self.sb.root)
            .map_err(|e| BackendError::Internal(format!("cannot open the fake root: {e}")))?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let root = files::Root::Dir(OwnedFd::from(dir));
        std::thread::spawn(move || files::serve(OwnedFd::from(theirs), &root));
        FileClient::new(OwnedFd::from(ours))
            .map_err(|e| BackendError::Internal(crate::error::chain(&e)))
    }

    /// The fake has no cgroup to freeze: pausing only checks that the
    /// sandbox is alive.
    fn set_frozen(&self, _frozen: bool) -> Result<(), BackendError> {
        if !self.sb.alive.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        Ok(())
    }

    fn status(&self) -> Result<SandboxStatus, BackendError> {
        if !self.sb.alive.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        let processes = lock(&self.sb.procs)
            .iter()
            .map(|(pid, p)| ProcessInfo {
                pid: *pid,
                cmd: p.cmd.clone(),
                running: p.exit.is_none(),
                exit_code: p.exit.and_then(|x| x.0),
                signal: p.exit.and_then(|x| x.1),
            })
            .collect();
        Ok(SandboxStatus {
            id: self.sb.id.clone(),
            init_pid: std::process::id() as i32,
            // SAFETY: geteuid/getegid cannot fail and touch no memory.
            owner: unsafe { (libc::geteuid(), libc::getegid()) },
            usage: Usage {
                wall_seconds: self.sb.started.elapsed().as_secs_f64(),
                ..Usage::default()
            },
            violations: lock(&self.sb.violations).clone(),
            processes,
            current: Default::default(),
        })
    }

    fn next_event(&self) -> Option<SandboxEvent> {
        lock(&self.events).recv().ok()
    }

    fn destroy(&self) -> Result<Report, BackendError> {
        if !self.sb.alive.swap(false, Ordering::SeqCst) {
            return Err(self.gone());
        }
        self.sb.kill_all();
        let report = self.sb.report();
        self.sb
            .emit(SandboxEvent::Destroyed(Box::new(report.clone())));
        lock(&self.sb.subscribers).clear();
        Ok(report)
    }

    fn destroy_deferred(&self) -> Result<(Report, Teardown), BackendError> {
        let report = self.destroy()?;
        let inner = self.inner.clone();
        Ok((
            report,
            Box::new(move || {
                let mut held = lock(&inner.teardowns_held);
                while *held {
                    held = inner
                        .teardowns_released
                        .wait(held)
                        .unwrap_or_else(|p| p.into_inner());
                }
                drop(held);
                inner.teardowns_done.fetch_add(1, Ordering::SeqCst);
            }),
        ))
    }
}
