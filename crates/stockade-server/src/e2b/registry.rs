//! What the E2B listener keeps about its sandboxes on top of the daemon's
//! registry: template, metadata, the E2B timeout (extendable, unlike the
//! daemon's ttl), pause state and process tags. Kept in memory: after a
//! daemon restart the sandboxes still run (and show in `stockade ps`) but
//! the E2B API no longer lists them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{E2b, E2bError, E2bResult};
use crate::events::now;
use crate::state::{ENDING_DESTROY, ENDING_EXPIRE};

/// A command started through envd, as `process.List` shows it.
#[derive(Debug, Clone, Default)]
pub struct ProcMeta {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub tag: Option<String>,
}

/// One sandbox made through the E2B API.
#[derive(Debug)]
pub struct E2bBox {
    pub id: String,
    pub template_id: String,
    pub metadata: BTreeMap<String, String>,
    pub started_at: f64,
    end_at: Mutex<f64>,
    pub auto_pause: bool,
    paused: AtomicBool,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub policy_root: bool,
    /// Longest life the template allows, in seconds from now at each
    /// extension.
    pub max_timeout: u64,
    pub procs: Mutex<HashMap<i32, ProcMeta>>,
    /// Serialises pause, resume and kill of this sandbox.
    pub op: tokio::sync::Mutex<()>,
}

impl E2bBox {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        template_id: String,
        metadata: BTreeMap<String, String>,
        timeout: u64,
        auto_pause: bool,
        policy: &stockade_policy::Policy,
    ) -> Self {
        let started_at = now();
        E2bBox {
            id,
            template_id,
            metadata,
            started_at,
            end_at: Mutex::new(started_at + timeout as f64),
            auto_pause,
            paused: AtomicBool::new(false),
            cpu_count: policy.limits.cpus.0.ceil().max(1.0) as u32,
            memory_mb: policy.limits.memory.bytes() / (1024 * 1024),
            disk_mb: policy.limits.disk.bytes() / (1024 * 1024),
            policy_root: policy.process.root,
            max_timeout: policy.limits.timeout.duration().as_secs(),
            procs: Mutex::new(HashMap::new()),
            op: tokio::sync::Mutex::new(()),
        }
    }

    pub fn end_at(&self) -> f64 {
        *self.end_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the end to `timeout` seconds from now.
    pub fn set_timeout(&self, timeout: u64) {
        *self.end_at.lock().unwrap_or_else(|p| p.into_inner()) = now() + timeout as f64;
    }

    /// Moves the end to `timeout` seconds from now unless it is later.
    pub fn extend(&self, timeout: u64) {
        let mut e = self.end_at.lock().unwrap_or_else(|p| p.into_inner());
        *e = e.max(now() + timeout as f64);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<i32, ProcMeta>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a requested timeout against the template's limit.
    pub fn check_timeout(&self, timeout: u64) -> E2bResult<()> {
        check_timeout(timeout, self.max_timeout)
    }
}

/// A timeout must be at least 1 s and at most the template's time limit.
pub fn check_timeout(timeout: u64, max: u64) -> E2bResult<()> {
    if timeout == 0 || timeout > max {
        return Err(E2bError::invalid(format!(
            "timeout must be from 1 to {max} seconds (this template's time limit), got {timeout}"
        )));
    }
    Ok(())
}

/// The E2B sandboxes, by id.
#[derive(Debug, Default)]
pub struct Boxes(Mutex<HashMap<String, Arc<E2bBox>>>);

impl Boxes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<E2bBox>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn get(&self, id: &str) -> Option<Arc<E2bBox>> {
        self.map().get(id).cloned()
    }
    pub fn insert(&self, b: Arc<E2bBox>) {
        self.map().insert(b.id.clone(), b);
    }
    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }
    pub fn all(&self) -> Vec<Arc<E2bBox>> {
        self.map().values().cloned().collect()
    }
}

/// The cgroup freeze of `bx`'s sandbox: on (pause) or off (resume).
async fn set_frozen(e2b: &E2b, bx: &E2bBox, frozen: bool) -> E2bResult<()> {
    let live = e2b
        .app
        .live(&bx.id)
        .ok_or_else(|| E2bError::no_sandbox(&bx.id))?;
    let h = live.handle.clone();
    tokio::task::spawn_blocking(move || h.set_frozen(frozen))
        .await
        .map_err(|e| E2bError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            E2bError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "cannot {} sandbox {}: {e}",
                    if frozen { "pause" } else { "resume" },
                    bx.id
                ),
            )
        })
}

/// Pauses (freezes) a sandbox; false if it already was.
pub async fn pause(e2b: &E2b, bx: &E2bBox) -> E2bResult<bool> {
    let _g = bx.op.lock().await;
    if bx.is_paused() {
        return Ok(false);
    }
    set_frozen(e2b, bx, true).await?;
    bx.paused.store(true, Ordering::SeqCst);
    e2b.app
        .hub
        .publish(&bx.id, Some("paused"), serde_json::Value::Null);
    Ok(true)
}

/// Resumes (thaws) a paused sandbox; false if it was not paused.
pub async fn resume(e2b: &E2b, bx: &E2bBox) -> E2bResult<bool> {
    let _g = bx.op.lock().await;
    if !bx.is_paused() {
        return Ok(false);
    }
    set_frozen(e2b, bx, false).await?;
    bx.paused.store(false, Ordering::SeqCst);
    e2b.app
        .hub
        .publish(&bx.id, Some("resumed"), serde_json::Value::Null);
    Ok(true)
}

/// Destroys a sandbox (thawing it first: frozen processes cannot die).
pub async fn kill(e2b: &Arc<E2b>, bx: &E2bBox, expired: bool) -> E2bResult<()> {
    let _g = bx.op.lock().await;
    if bx.is_paused() {
        set_frozen(e2b, bx, false).await?;
        bx.paused.store(false, Ordering::SeqCst);
    }
    e2b.boxes.remove(&bx.id);
    let Some(live) = e2b.app.live(&bx.id) else {
        return Ok(());
    };
    let how = if expired {
        ENDING_EXPIRE
    } else {
        ENDING_DESTROY
    };
    crate::lifecycle::end(&e2b.app, live, how).await?;
    Ok(())
}

/// Every 250 ms: ends (or, with autoPause, pauses) the sandboxes whose
/// E2B timeout has passed, and forgets those that ended otherwise
/// (destroyed through the daemon's own API, or dead).
pub async fn timeout_loop(e2b: Weak<E2b>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(e2b) = e2b.upgrade() else { return };
        if e2b.app.stopping() {
            return;
        }
        let t = now();
        for bx in e2b.boxes.all() {
            if e2b.app.live(&bx.id).is_none() {
                e2b.boxes.remove(&bx.id);
                continue;
            }
            if bx.is_paused() || bx.end_at() > t {
                continue;
            }
            let e = e2b.clone();
            tokio::spawn(async move {
                let r = if bx.auto_pause {
                    pause(&e, &bx).await.map(|_| ())
                } else {
                    kill(&e, &bx, true).await
                };
                if let Err(err) = r {
                    eprintln!(
                        "stockade serve: cannot end sandbox {} at its E2B timeout: {}",
                        bx.id, err.message
                    );
                }
            });
        }
    }
}
