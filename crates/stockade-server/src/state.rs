//! The daemon's shared state: the registry, the live sandbox handles, the
//! event hub and the limits every request is held to.

use std::collections::HashMap;
use std::io;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use stockade_core::backend::{Backend, SandboxHandle};
use tokio::sync::{watch, Semaphore};

use crate::error::{ApiError, ApiResult};
use crate::events::Hub;
use crate::metrics::Metrics;
use crate::process::ProcTable;
use crate::store::{SandboxRow, Store};

/// Why a live sandbox is being ended (`Live::ending`).
pub const ENDING_NONE: u8 = 0;
pub const ENDING_DESTROY: u8 = 1;
pub const ENDING_EXPIRE: u8 = 2;

/// A sandbox the daemon holds a handle to.
pub struct Live {
    pub id: String,
    pub handle: Arc<dyn SandboxHandle>,
    pub expires_at: Option<f64>,
    pub procs: Mutex<ProcTable>,
    /// Set (to `ENDING_*`) by whoever is destroying the sandbox, before
    /// the backend is asked; the event pump then leaves the registry alone.
    pub ending: AtomicU8,
    /// Serialises destroy and expiry of this sandbox.
    pub end_lock: tokio::sync::Mutex<()>,
    /// An `expired` event was published (by the daemon or the backend).
    pub expired_announced: AtomicBool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Live {
    pub fn new(id: String, handle: Box<dyn SandboxHandle>, expires_at: Option<f64>) -> Self {
        Live {
            id,
            handle: Arc::from(handle),
            expires_at,
            procs: Mutex::new(ProcTable::default()),
            ending: AtomicU8::new(ENDING_NONE),
            end_lock: tokio::sync::Mutex::new(()),
            expired_announced: AtomicBool::new(false),
        }
    }

    pub fn procs(&self) -> std::sync::MutexGuard<'_, ProcTable> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::SeqCst) != ENDING_NONE
    }
}

/// Teardowns of destroyed sandboxes still under way (see
/// `SandboxHandle::destroy_deferred`): started by destroy before it
/// answers, waited for at shutdown. Each runs on a thread of its own, not
/// the runtime's blocking pool, so that a teardown that hangs cannot hold
/// up the runtime's own shutdown.
#[derive(Debug, Default)]
pub struct Teardowns {
    pending: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

impl Teardowns {
    /// Runs `t` (blocking) on a thread of its own.
    pub fn spawn(self: &Arc<Self>, t: stockade_core::backend::Teardown) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("stockade-teardown".into())
            .spawn(move || {
                t();
                me.pending.fetch_sub(1, Ordering::SeqCst);
                me.done.notify_waiters();
            });
        if spawned.is_err() {
            // Nobody waits then: the shim finishes the teardown anyway.
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// How many teardowns are under way.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Waits for every teardown under way, at most `limit`; returns how
    /// many were still running then (they finish on their own: the shims
    /// do the work, and `gc` collects what a dead shim left).
    pub async fn wait(&self, limit: std::time::Duration) -> usize {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.pending() == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        self.pending()
    }
}

/// Everything the request handlers share.
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub store: Arc<Store>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub live: Mutex<HashMap<String, Arc<Live>>>,
    /// One permit per running process (see `MAX_RUNNING_PROCESSES`).
    pub process_permits: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    pub max_body_bytes: usize,
    /// The daemon's state directory (task runs live under it).
    pub state_dir: std::path::PathBuf,
    /// Binary started as `stockade task` for `POST /v1/tasks`.
    pub task_exe: Option<std::path::PathBuf>,
    /// Host paths API clients may put into sandboxes.
    pub bind_roots: crate::hostpaths::BindRoots,
    pub teardowns: Arc<Teardowns>,
    /// The image store's directory (`<state>/images`) and bounds.
    pub image_root: std::path::PathBuf,
    pub image_limits: stockade_image::StoreLimits,
    /// How image pulls reach registries.
    pub pull_options: stockade_image::PullOptions,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.live_map().get(id).cloned()
    }

    /// Runs a blocking registry call off the async threads.
    pub async fn store<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(ApiError::join)?
            .map_err(ApiError::store)
    }

    /// The registry row of `id_or_name`, or 404.
    pub async fn row(&self, id_or_name: &str) -> ApiResult<SandboxRow> {
        let key = id_or_name.to_string();
        self.store(move |s| s.get(&key))
            .await?
            .ok_or_else(|| ApiError::no_sandbox(id_or_name))
    }

    /// The live handle of a running sandbox, or 404 / 409; like
    /// [`running`](Self::running) without the registry row, which it only
    /// reads when `id_or_name` is not the id of a live sandbox (a name, or
    /// an error to explain).
    pub async fn running_handle(&self, id_or_name: &str) -> ApiResult<Arc<Live>> {
        match self.live(id_or_name) {
            Some(l) if !l.is_ending() => Ok(l),
            _ => Ok(self.running(id_or_name).await?.1),
        }
    }

    /// The live handle of a running sandbox, or 404 / 409.
    pub async fn running(&self, id_or_name: &str) -> ApiResult<(SandboxRow, Arc<Live>)> {
        let row = self.row(id_or_name).await?;
        match self.live(&row.id) {
            Some(l) if !l.is_ending() => Ok((row, l)),
            Some(_) => Err(ApiError::not_running(&row.id, "being destroyed")),
            None if row.state == crate::store::SandboxState::Running => {
                Err(ApiError::conflict(format!(
                    "sandbox {} is still being created; retry in a moment",
                    row.id
                )))
            }
            None => Err(ApiError::not_running(&row.id, row.state.as_str())),
        }
    }
}

/// A new sandbox id: 12 lowercase hex digits from the kernel's CSPRNG.
pub fn new_id() -> String {
    let mut buf = [0u8; 6];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `buf`, which is valid for writes for that many bytes.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // getrandom cannot fail on Linux >= 3.17 except by EINTR; fall
            // back to the clock and pid so that an id is still produced.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
                ^ u64::from(std::process::id()) << 32;
            buf.copy_from_slice(&t.to_le_bytes()[..6]);
            break;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_twelve_lowercase_hex_digits_and_differ() {
        let a = super::new_id();
        let b = super::new_id();
        assert_eq!(a.len(), 12);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
