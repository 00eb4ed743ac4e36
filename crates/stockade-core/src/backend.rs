//! Long-lived sandboxes, as the daemon sees them.
//!
//! `stockade run` supervises one sandbox in its own process. The daemon
//! instead keeps many sandboxes that must outlive it (a restart or a
//! `kill -9` of the daemon must not stop them), so each sandbox gets its
//! own small supervisor process, the *shim*, and the daemon talks to shims
//! through this trait. The trait is blocking (shims are reached over unix
//! sockets with descriptor passing); async callers use `spawn_blocking`.
//!
//! [`Backend`] is implemented by the shim backend (`crate::shim`) and, in
//! the server's unit tests, by an in-memory fake.

use std::os::fd::OwnedFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stockade_policy::Policy;

use crate::report::{Report, Usage, Violation, ViolationKind};
pub use stockade_isolate::files;
pub use stockade_isolate::files::{Entry, EntryKind, FileClient, FileError, CHUNK as FILE_CHUNK};

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The sandbox does not exist (or no longer runs).
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The request itself is wrong (bad policy, empty command, bad path).
    #[error("{0}")]
    Invalid(String),
    /// The sandbox's process could not be started: step and errno, as
    /// `stockade run` reports them (exit status 126/127 semantics).
    #[error("cannot {step}: {message}")]
    Spawn {
        step: String,
        errno: i32,
        message: String,
    },
    /// Anything else: the message says what failed.
    #[error("{0}")]
    Internal(String),
}

/// A command to run in a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// Added to (and overriding) the sandbox's environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory inside the sandbox; the policy's when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run as root inside (`Some(true)`) or as the agent (`Some(false)`)
    /// rather than as the policy says (`None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<bool>,
    /// Run it on a terminal of its own, allocated in the sandbox (see
    /// [`SandboxHandle::exec_tty`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The terminal's size (rows, columns) from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<(u16, u16)>,
}

/// A process running (or finished) in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Pid inside the sandbox.
    pub pid: i32,
    pub cmd: Vec<String>,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Live state of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxStatus {
    pub id: String,
    /// Host pid of the sandbox's init (for `/proc/PID/root` file access).
    pub init_pid: i32,
    /// Host uid and gid files written for the workload should belong to.
    pub owner: (u32, u32),
    pub usage: Usage,
    pub violations: Vec<Violation>,
    pub processes: Vec<ProcessInfo>,
    /// What it holds right now (`usage` has peaks and totals). Absent
    /// from a shim older than this field: zeros then.
    #[serde(default)]
    pub current: Current,
}

/// What a running sandbox holds right now, read from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    /// Memory charged to it now, in bytes.
    pub memory_bytes: u64,
    /// Processes and threads in it now.
    pub pids: u64,
}

/// Something that happened in a sandbox, pushed to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SandboxEvent {
    ExecStarted {
        pid: i32,
        cmd: Vec<String>,
    },
    ExecExited {
        pid: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    Violation(Violation),
    /// The sandbox reached its ttl or time limit and is being destroyed.
    Expired,
    /// The sandbox is gone; its final report.
    Destroyed(Box<Report>),
}

/// How a process started by exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEnd {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The hard breach (memory, time, disk) that ended the sandbox, and
    /// this process with it; `None` when it ended for another reason.
    pub killed_for: Option<ViolationKind>,
}

impl ProcessEnd {
    /// An end without a breach.
    pub fn plain((exit_code, signal): (Option<i32>, Option<i32>)) -> Self {
        ProcessEnd {
            exit_code,
            signal,
            killed_for: None,
        }
    }
}

/// Blocks until a process started by [`SandboxHandle::exec_waiting`] ends;
/// returns how.
pub type ExitWaiter = Box<dyn FnOnce() -> Result<ProcessEnd, BackendError> + Send>;

/// One running sandbox, however it is supervised.
pub trait SandboxHandle: Send + Sync {
    fn id(&self) -> &str;
    /// Starts a process with the given stdin, stdout and stderr; returns
    /// its pid inside the sandbox at once.
    fn exec(&self, req: &ExecRequest, stdio: [OwnedFd; 3]) -> Result<i32, BackendError>;
    /// Like `exec`, and also returns a way to wait for the process's end.
    /// The default waits with a separate [`wait`](Self::wait) call; a
    /// backend that can follow the process on the channel that started it
    /// (the shim's) overrides this to save a round trip per process.
    fn exec_waiting(
        self: std::sync::Arc<Self>,
        req: &ExecRequest,
        stdio: [OwnedFd; 3],
    ) -> Result<(i32, ExitWaiter), BackendError>
    where
        Self: 'static,
    {
        let pid = self.exec(req, stdio)?;
        Ok((
            pid,
            Box::new(move || self.wait(pid, None).map(ProcessEnd::plain)),
        ))
    }
    /// Starts a process on a terminal allocated in the sandbox's devpts
    /// (it is the session leader, the terminal its controlling one);
    /// returns its pid, the terminal's master side (read its output,
    /// write its input, set its window size) and a way to wait for it.
    fn exec_tty(
        self: std::sync::Arc<Self>,
        req: &ExecRequest,
    ) -> Result<(i32, OwnedFd, ExitWaiter), BackendError>
    where
        Self: 'static,
    {
        let _ = req;
        Err(BackendError::Invalid(
            "this backend cannot give a process a terminal; run it without tty".into(),
        ))
    }
    /// Waits until `pid` ends; returns (exit_code, signal).
    fn wait(
        &self,
        pid: i32,
        timeout: Option<Duration>,
    ) -> Result<(Option<i32>, Option<i32>), BackendError>;
    fn signal(&self, pid: i32, sig: i32) -> Result<(), BackendError>;
    /// A connection to a file helper inside the sandbox, which does what
    /// it is asked with the sandbox's own identity and view of its files
    /// (see `stockade_isolate::files`): as root inside (`Some(true)`), as
    /// the agent (`Some(false)`) or as the policy's user (`None`).
    fn files(&self, root: Option<bool>) -> Result<FileClient, BackendError>;
    fn status(&self) -> Result<SandboxStatus, BackendError>;
    /// Freezes (`true`) or thaws every process of the sandbox (pausing):
    /// they stop where they are and keep their memory. The default finds
    /// the sandbox's freezer cgroup from its init (`crate::freeze`).
    fn set_frozen(&self, frozen: bool) -> Result<(), BackendError> {
        let st = self.status()?;
        crate::freeze::set_frozen(st.init_pid, self.id(), frozen)
            .map_err(|e| BackendError::Internal(crate::error_chain(&e)))
    }
    /// Blocks until the next event; `None` once the sandbox is gone.
    fn next_event(&self) -> Option<SandboxEvent>;
    /// Kills everything and cleans up; returns the final report.
    fn destroy(&self) -> Result<Report, BackendError>;
    /// Like `destroy`, but returns as soon as the sandbox is dead (no
    /// process of it runs, its report is final), with a call that blocks
    /// until the rest of the teardown (cgroup, directories) is done. The
    /// default does everything in `destroy`.
    fn destroy_deferred(&self) -> Result<(Report, Teardown), BackendError> {
        Ok((self.destroy()?, Box::new(|| ())))
    }
}

/// Blocks until a destroyed sandbox's teardown is complete (see
/// [`SandboxHandle::destroy_deferred`]).
pub type Teardown = Box<dyn FnOnce() + Send>;

/// Creates sandboxes and finds them again after a daemon restart.
pub trait Backend: Send + Sync {
    /// Creates and starts a sandbox (no process runs until `exec`). `ttl`
    /// caps its life; the policy's timeout caps it too.
    fn create(
        &self,
        id: &str,
        policy: &Policy,
        ttl: Option<Duration>,
    ) -> Result<Box<dyn SandboxHandle>, BackendError>;
    /// Reattaches to a sandbox created earlier (by this or a previous
    /// daemon). `NotRunning` if its supervisor is gone; then `leftover_report`
    /// says what is known of its end.
    fn attach(&self, id: &str) -> Result<Box<dyn SandboxHandle>, BackendError>;
    /// The final report a dead sandbox left, if any; also removes its
    /// leftovers (cgroup, directories).
    fn reap(&self, id: &str) -> Option<Report>;
    /// The final report a dead sandbox left, without collecting anything
    /// (fast; `reap` does the rest later). The default reaps.
    fn leftover_report(&self, id: &str) -> Option<Report> {
        self.reap(id)
    }
    /// The daemon is stopping: release what the backend keeps for future
    /// sandboxes (the shim backend's pool of idle shims). Running
    /// sandboxes are left alone.
    fn shutdown(&self) {}
}
