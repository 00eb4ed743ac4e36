//! The daemon's side: a [`Backend`] whose sandboxes are each run by a
//! shim process, reached over the shim's unix socket ([`super::handle`]),
//! with idle shims kept ready by [`super::pool`].

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use stockade_policy::Policy;

use super::proto::{report_path, ShimStart};
use crate::backend::{Backend, BackendError, SandboxHandle};
use crate::report::Report;

use super::handle::ShimHandle;
use super::pool::{IdleShim, Pool};

/// Sandboxes run by shim processes (`<exe> shim`).
#[derive(Debug, Clone)]
pub struct ShimBackend {
    state_dir: PathBuf,
    /// The `stockade` binary, started as `<exe> shim`.
    exe: PathBuf,
    pool: Arc<Pool>,
}

/// Nice value pooled shims are started with (see `Pool::refill`).
pub(super) const POOL_NICE: libc::c_int = 10;

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
pub(super) fn start_shim(exe: &Path, id: &str) -> std::io::Result<Child> {
    Command::new(exe)
        .arg("shim")
        .arg("--id")
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}
