//! A sandbox's life as the daemon runs it: create, the event pump that
//! follows it, destroy and expiry, and recovery after a daemon restart.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use stockade_core::backend::BackendError;
use stockade_core::Outcome;
use stockade_policy::Policy;

use crate::config::MAX_LIVE_SANDBOXES;
use crate::error::{ApiError, ApiResult};
use crate::events::now;
use crate::state::{AppState, Live, ENDING_EXPIRE, ENDING_NONE};
use crate::store::{SandboxRow, SandboxState, Store};

/// Reason recorded for a sandbox found dead when the daemon starts.
pub const DIED_WHILE_DOWN: &str = "its supervisor died while the daemon was down";
/// Reason recorded for a sandbox whose supervisor went away while the
/// daemon was running.
pub const DIED_UNEXPECTEDLY: &str = "its supervisor exited unexpectedly";

/// What a create request asks for, already validated.
#[derive(Debug)]
pub struct CreateSpec {
    pub policy: Policy,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ttl: Option<Duration>,
}

/// Creates a sandbox: registry row first (reserving the name), then the
/// backend, then the event pump.
pub async fn create(state: &Arc<AppState>, spec: CreateSpec) -> ApiResult<SandboxRow> {
    if state.live_map().len() >= MAX_LIVE_SANDBOXES {
        return Err(ApiError::busy(format!(
            "this daemon already runs {MAX_LIVE_SANDBOXES} sandboxes; destroy some before creating more"
        )));
    }
    let created_at = now();
    let life = match spec.ttl {
        Some(ttl) => ttl.min(spec.policy.limits.timeout.duration()),
        None => spec.policy.limits.timeout.duration(),
    };
    let row = SandboxRow {
        id: crate::state::new_id(),
        name: spec.name,
        state: SandboxState::Running,
        reason: None,
        labels: spec.labels,
        policy: serde_json::to_value(&spec.policy)
            .map_err(|e| ApiError::internal(e.to_string()))?,
        created_at,
        expires_at: Some(created_at + life.as_secs_f64()),
        ended_at: None,
        report: None,
    };
    let r = row.clone();
    state.store(move |s| s.insert(&r)).await?;

    let backend = state.backend.clone();
    let (id, policy, ttl) = (row.id.clone(), spec.policy, spec.ttl);
    let made = tokio::task::spawn_blocking(move || backend.create(&id, &policy, ttl)).await;
    let handle = match made {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let id = row.id.clone();
            state.store(move |s| s.delete(&id)).await?;
            return Err(ApiError::backend(&row.id, e));
        }
        Err(e) => {
            let id = row.id.clone();
            state.store(move |s| s.delete(&id)).await?;
            return Err(ApiError::join(e));
        }
    };
    let live = Arc::new(Live::new(row.id.clone(), handle, row.expires_at));
    state.live_map().insert(row.id.clone(), live.clone());
    spawn_pump(state, live);
    state.metrics.sandbox_created();
    state.hub.publish(
        &row.id,
        Some("created"),
        serde_json::json!({"name": row.name, "labels": row.labels, "expires_at": row.expires_at}),
    );
    Ok(row)
}

/// Destroys (`ENDING_DESTROY`) or expires (`ENDING_EXPIRE`) a live sandbox
/// and records its final report. Returns the final row.
pub async fn end(state: &Arc<AppState>, live: Arc<Live>, how: u8) -> ApiResult<SandboxRow> {
    let _guard = live.end_lock.lock().await;
    let id = live.id.clone();
    if state.live(&id).is_none() {
        // Someone else ended it while we waited.
        return state.row(&id).await;
    }
    live.ending.store(how, Ordering::SeqCst);
    let (final_state, reason) = if how == ENDING_EXPIRE {
        if !live.expired_announced.swap(true, Ordering::SeqCst) {
            state
                .hub
                .publish(&id, Some("expired"), serde_json::Value::Null);
        }
        (
            SandboxState::Expired,
            Some("it reached its ttl or time limit"),
        )
    } else {
        (SandboxState::Destroyed, None)
    };
    let (handle, backend) = (live.handle.clone(), state.backend.clone());
    let idc = id.clone();
    let result = tokio::task::spawn_blocking(move || match handle.destroy_deferred() {
        Ok((r, teardown)) => Ok((Some(r), Some(teardown))),
        Err(BackendError::NotRunning(_)) => Ok((backend.reap(&idc), None)),
        Err(e) => Err(e),
    })
    .await
    .map_err(ApiError::join)?;
    let report = match result {
        Ok((r, teardown)) => {
            // The sandbox is dead; its cgroup and directories go away off
            // the request path (shutdown waits for them).
            if let Some(t) = teardown {
                state.teardowns.spawn(t);
            }
            r
        }
        Err(e) => {
            live.ending.store(ENDING_NONE, Ordering::SeqCst);
            return Err(ApiError::internal(format!(
                "cannot destroy sandbox {id}: {e}; retry the request"
            )));
        }
    };
    finalize(state, &id, final_state, reason, report).await?;
    state.row(&id).await
}

/// Records the end of a sandbox and forgets its handle.
pub async fn finalize(
    state: &Arc<AppState>,
    id: &str,
    st: SandboxState,
    reason: Option<&str>,
    report: Option<stockade_core::Report>,
) -> ApiResult<()> {
    let report = report.and_then(|r| serde_json::to_value(r).ok());
    let (idc, reason) = (id.to_string(), reason.map(str::to_string));
    state
        .store(move |s| s.finish(&idc, st, reason.as_deref(), report.as_ref(), now()))
        .await?;
    state.live_map().remove(id);
    Ok(())
}

/// Follows a sandbox's events on a thread of its own (the backend call
/// blocks), publishing them; notices a sandbox that ends by itself.
fn spawn_pump(state: &Arc<AppState>, live: Arc<Live>) {
    let weak: Weak<AppState> = Arc::downgrade(state);
    let rt = tokio::runtime::Handle::current();
    let name = format!("stockade-ev-{}", live.id);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut last_report = None;
        loop {
            let ev = live.handle.next_event();
            let Some(state) = weak.upgrade() else { return };
            if state.stopping() {
                return;
            }
            let Some(ev) = ev else {
                if live.ending.load(Ordering::SeqCst) == ENDING_NONE {
                    rt.spawn(ended_by_itself(state, live, last_report));
                }
                return;
            };
            let value = serde_json::to_value(&ev).unwrap_or_default();
            let kind = value["type"].as_str().unwrap_or("unknown").to_string();
            if kind == "expired" && live.expired_announced.swap(true, Ordering::SeqCst) {
                continue;
            }
            if let stockade_core::backend::SandboxEvent::Destroyed(r) = ev {
                last_report = Some(*r);
            }
            state.hub.publish(&live.id, Some(&kind), value);
        }
    });
    if let Err(e) = spawned {
        eprintln!("stockade serve: cannot start the event thread of a sandbox: {e}; its events will not be reported");
    }
}

async fn ended_by_itself(
    state: Arc<AppState>,
    live: Arc<Live>,
    report: Option<stockade_core::Report>,
) {
    let _guard = live.end_lock.lock().await;
    if live.ending.load(Ordering::SeqCst) != ENDING_NONE || state.live(&live.id).is_none() {
        return;
    }
    let report = match report {
        Some(r) => Some(r),
        None => {
            let (b, id) = (state.backend.clone(), live.id.clone());
            tokio::task::spawn_blocking(move || b.reap(&id))
                .await
                .ok()
                .flatten()
        }
    };
    let (st, reason) = if live.expired_announced.load(Ordering::SeqCst) {
        (SandboxState::Expired, "it reached its ttl or time limit")
    } else {
        // Killed for a limit is not a crash: its report says which.
        let why = match report.as_ref().map(|r| r.outcome) {
            Some(Outcome::MemoryLimit) => "it exceeded its memory limit and was killed",
            Some(Outcome::DiskLimit) => "it exceeded its disk limit and was killed",
            Some(Outcome::Timeout) => "it reached its time limit",
            _ => DIED_UNEXPECTEDLY,
        };
        (SandboxState::Dead, why)
    };
    if let Err(e) = finalize(&state, &live.id, st, Some(reason), report).await {
        eprintln!(
            "stockade serve: cannot record the end of sandbox {}: {e}",
            live.id
        );
    }
}

/// Destroys sandboxes whose `expires_at` has passed; checks every 250 ms.
pub async fn expiry_loop(state: Weak<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        if state.stopping() {
            return;
        }
        let t = now();
        let due: Vec<Arc<Live>> = state
            .live_map()
            .values()
            .filter(|l| l.expires_at.is_some_and(|e| e <= t) && !l.is_ending())
            .cloned()
            .collect();
        for live in due {
            let st = state.clone();
            tokio::spawn(async move {
                if let Err(e) = end(&st, live.clone(), ENDING_EXPIRE).await {
                    eprintln!("stockade serve: cannot expire sandbox {}: {e}", live.id);
                }
            });
        }
    }
}

/// On start: reattach every sandbox the registry says is running; those
/// whose supervisor is gone are marked dead with what is left of their
/// report. Runs blocking, before the API is served.
pub fn recover(
    store: &Store,
    backend: &Arc<dyn stockade_core::backend::Backend>,
) -> Result<Vec<Live>, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut dead = Vec::new();
    for row in store.list(Some(SandboxState::Running))? {
        match backend.attach(&row.id) {
            Ok(h) => out.push(Live::new(row.id.clone(), h, row.expires_at)),
            Err(e) => {
                let (reason, report) = match e {
                    BackendError::NotRunning(_) => {
                        // Its report now; its leftovers (which a workload
                        // can make slow to remove) after the API is up.
                        dead.push(row.id.clone());
                        (
                            DIED_WHILE_DOWN.to_string(),
                            backend.leftover_report(&row.id),
                        )
                    }
                    other => (
                        format!("cannot reattach after a daemon restart: {other}"),
                        None,
                    ),
                };
                let report = report.and_then(|r| serde_json::to_value(r).ok());
                store.finish(
                    &row.id,
                    SandboxState::Dead,
                    Some(&reason),
                    report.as_ref(),
                    now(),
                )?;
            }
        }
    }
    if !dead.is_empty() {
        let b = backend.clone();
        std::thread::spawn(move || {
            for id in dead {
                b.reap(&id);
            }
        });
    }
    Ok(out)
}

/// Registers recovered sandboxes and starts their event pumps.
pub fn adopt(state: &Arc<AppState>, lives: Vec<Live>) {
    for live in lives {
        let live = Arc::new(live);
        state.live_map().insert(live.id.clone(), live.clone());
        spawn_pump(state, live);
    }
}
