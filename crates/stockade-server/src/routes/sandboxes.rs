//! `/v1/sandboxes`: create, list, show, destroy.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use stockade_policy::{Policy, Span};

use crate::error::{ApiError, ApiResult};
use crate::http::{json, only_params, query_pairs, JsonBody};
use crate::lifecycle::{self, CreateSpec};
use crate::state::{AppState, ENDING_DESTROY};
use crate::store::{SandboxRow, SandboxState};

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ttl: Option<Span>,
    /// The sandbox's image (`policy.filesystem.image`, which this
    /// overrides).
    #[serde(default)]
    image: Option<String>,
    /// When to pull it (`policy.filesystem.pull`).
    #[serde(default)]
    pull: Option<stockade_policy::Pull>,
}

/// A body's top-level `image` and `pull` over its policy's.
pub fn apply_image(
    policy: &mut Policy,
    image: &Option<String>,
    pull: Option<stockade_policy::Pull>,
) {
    if let Some(i) = image {
        policy.filesystem.image = Some(i.clone());
    }
    if let Some(p) = pull {
        policy.filesystem.pull = p;
    }
}

/// The JSON form of a registry row.
pub fn view(row: &SandboxRow) -> Value {
    json!({
        "id": row.id,
        "name": row.name,
        "state": row.state,
        "reason": row.reason,
        "labels": row.labels,
        "policy": row.policy,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "ended_at": row.ended_at,
    })
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let looks_like_id =
        name.len() == 12 && name.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    if !ok || looks_like_id {
        return Err(ApiError::invalid(format!(
            "name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, and not look like a sandbox id (12 hex digits); got {name:?}"
        )));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> ApiResult<()> {
    if labels.len() > 64 {
        return Err(ApiError::invalid(
            "a sandbox takes at most 64 labels; drop some",
        ));
    }
    for (k, v) in labels {
        let key_ok = (1..=63).contains(&k.len())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            return Err(ApiError::invalid(format!(
                "label key {k:?} is not valid; use 1-63 letters, digits, '.', '_', '-' or '/'"
            )));
        }
        if v.len() > 255 || v.contains('\0') {
            return Err(ApiError::invalid(format!(
                "the value of label {k:?} must be at most 255 bytes without NUL"
            )));
        }
    }
    Ok(())
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<Response> {
    let mut policy = body.policy.unwrap_or_default();
    apply_image(&mut policy, &body.image, body.pull);
    policy
        .validate()
        .map_err(|e| ApiError::invalid(format!("the policy is not valid: {e}")))?;
    let mut policy = state.bind_roots.check_policy(policy)?;
    crate::routes::images::prepare_image(&state, &mut policy).await?;
    if let Some(n) = &body.name {
        check_name(n)?;
    }
    check_labels(&body.labels)?;
    if body.ttl.is_some_and(|t| t.duration().is_zero()) {
        return Err(ApiError::invalid(
            "ttl must be longer than 0s, e.g. \"30m\"",
        ));
    }
    let spec = CreateSpec {
        policy,
        name: body.name,
        labels: body.labels,
        ttl: body.ttl.map(Span::duration),
    };
    // On a task of its own, so that a client hanging up mid-way cannot
    // leave a half-created sandbox behind.
    let st = state.clone();
    let row = tokio::spawn(async move { lifecycle::create(&st, spec).await })
        .await
        .map_err(ApiError::join)??;
    Ok(json(StatusCode::CREATED, &view(&row)))
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    only_params(&pairs, &["label", "state"])?;
    let mut want_state = None;
    let mut want_labels = Vec::new();
    for (k, v) in &pairs {
        if k == "state" {
            want_state = Some(SandboxState::parse(v).ok_or_else(|| {
                ApiError::invalid(format!(
                    "state must be running, destroyed, dead or expired, got {v:?}"
                ))
            })?);
        } else {
            let (lk, lv) = v.split_once('=').ok_or_else(|| {
                ApiError::invalid(format!("label filter must be KEY=VALUE, got {v:?}"))
            })?;
            want_labels.push((lk.to_string(), lv.to_string()));
        }
    }
    let rows = state.store(move |s| s.list(want_state)).await?;
    let items: Vec<Value> = rows
        .iter()
        .filter(|r| want_labels.iter().all(|(k, v)| r.labels.get(k) == Some(v)))
        .map(view)
        .collect();
    Ok(json(StatusCode::OK, &json!({ "sandboxes": items })))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let row = state.row(&id).await?;
    let mut v = view(&row);
    if let Some(live) = state.live(&row.id) {
        let h = live.handle.clone();
        if let Ok(Ok(st)) = tokio::task::spawn_blocking(move || h.status()).await {
            v["usage"] = json!(st.usage);
            v["violations"] = json!(st.violations);
            v["processes"] = json!(st.processes);
            v["current"] = json!(st.current);
        }
    }
    if row.state != SandboxState::Running {
        v["report"] = row.report.clone().unwrap_or(Value::Null);
    }
    Ok(json(StatusCode::OK, &v))
}

pub async fn destroy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let row = state.row(&id).await?;
    let final_row = match state.live(&row.id) {
        Some(live) => {
            let st = state.clone();
            tokio::spawn(async move { lifecycle::end(&st, live, ENDING_DESTROY).await })
                .await
                .map_err(ApiError::join)??
        }
        None if row.state == SandboxState::Running => {
            return Err(ApiError::conflict(format!(
                "sandbox {} is still being created; retry in a moment",
                row.id
            )))
        }
        None => row,
    };
    let mut v = view(&final_row);
    v["report"] = final_row.report.clone().unwrap_or(Value::Null);
    Ok(json(StatusCode::OK, &v))
}
