//! `/v1/tasks`: agent tasks through the daemon.
//!
//! A task is run by a `stockade task` process that the daemon starts (the
//! same code as the CLI command: clone, run, collect, each in its own
//! sandbox). Everything about it lives in `<state>/task-runs/<id>/`: the
//! request, the progress log (the task's stderr), and its output
//! directory with `changes.patch` and `report.json` — so a task survives a
//! daemon restart and is found again by reading that directory. Phase
//! changes are published as `task-phase` events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stockade_policy::Policy;

use crate::error::{ApiError, ApiResult};
use crate::http::{json, JsonBody};
use crate::state::AppState;

/// Body of `POST /v1/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    pub repo: String,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    pub cmd: Vec<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub collect: Vec<String>,
    #[serde(default)]
    pub policy: Option<Policy>,
    /// The agent's image (`policy.filesystem.image`, which this overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When to pull it (`policy.filesystem.pull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<stockade_policy::Pull>,
    /// Keep a sandbox on the agent's working tree after the task, for
    /// inspection (its id appears as `sandbox_id`; destroy it when done).
    #[serde(default)]
    pub keep: bool,
    /// Output limits (`stockade task --log-limit` and the like): sizes
    /// such as "64M"; the defaults when absent.
    #[serde(default)]
    pub log_limit: Option<stockade_policy::ByteSize>,
    #[serde(default)]
    pub patch_limit: Option<stockade_policy::ByteSize>,
    #[serde(default)]
    pub artifact_limit: Option<stockade_policy::ByteSize>,
    #[serde(default)]
    pub artifacts_total: Option<stockade_policy::ByteSize>,
}

fn runs_dir(state: &AppState) -> PathBuf {
    state.state_dir.join("task-runs")
}

fn task_dir(state: &AppState, id: &str) -> ApiResult<PathBuf> {
    let valid = id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let dir = runs_dir(state).join(id);
    if valid && dir.is_dir() {
        Ok(dir)
    } else {
        Err(ApiError::not_found(format!(
            "no task has the id {id:?}; list them with GET /v1/tasks"
        )))
    }
}

/// Phases in the order a task goes through them.
const PHASES: [&str; 5] = ["starting", "clone", "run", "collect", "done"];

/// The phase named by the last progress line (`stockade: task: <phase> …`).
fn phase_of(progress: &str) -> &'static str {
    let mut phase = "starting";
    for line in progress.lines() {
        if let Some(rest) = line.strip_prefix("stockade: task: ") {
            phase = match rest.split_whitespace().next() {
                Some("clone") => "clone",
                Some("run") => "run",
                Some("collect") => "collect",
                Some("done:") => "done",
                _ => phase,
            };
        }
    }
    phase
}

fn pid_alive(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

/// The JSON view of a task, read from its directory.
fn view(id: &str, dir: &Path) -> Value {
    let request: Value = std::fs::read(dir.join("request.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let progress = std::fs::read_to_string(dir.join("progress.log")).unwrap_or_default();
    let report: Option<Value> = std::fs::read(dir.join("out/report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (state, phase) = match (&report, pid_alive(dir)) {
        (Some(_), _) => ("done", "done"),
        (None, true) => ("running", phase_of(&progress)),
        (None, false) => ("failed", phase_of(&progress)),
    };
    let error = (state == "failed").then(|| {
        let last = progress
            .lines()
            .rev()
            .find(|l| l.starts_with("stockade:"))
            .unwrap_or("");
        format!("the task ended without a report: {last}")
    });
    let sandbox_id = std::fs::read_to_string(dir.join("sandbox_id"))
        .ok()
        .map(|s| s.trim().to_string());
    json!({
        "id": id,
        "state": state,
        "phase": phase,
        "request": request,
        "report": report,
        "error": error,
        "sandbox_id": sandbox_id,
    })
}

/// `POST /v1/tasks` → 201 with the task.
pub async fn create(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<TaskBody>,
) -> ApiResult<Response> {
    let Some(exe) = state.task_exe.clone() else {
        return Err(ApiError::internal(
            "this daemon was started without a stockade binary to run tasks with",
        ));
    };
    if body.cmd.is_empty() {
        return Err(ApiError::invalid(
            "cmd must name the agent command, e.g. [\"sh\", \"-c\", \"...\"]",
        ));
    }
    let mut policy = body.policy.clone().unwrap_or_default();
    crate::routes::sandboxes::apply_image(&mut policy, &body.image, body.pull);
    policy
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut policy = state.bind_roots.check_policy(policy)?;
    let repo = state.bind_roots.check_repo(&body.repo)?;
    crate::routes::images::prepare_image(&state, &mut policy).await?;
    let id = stockade_core::prepare::new_id();
    let dir = runs_dir(&state).join(&id);
    std::fs::create_dir_all(dir.join("out"))
        .map_err(|e| ApiError::internal(format!("cannot create the task directory: {e}")))?;
    let io = |e: std::io::Error| ApiError::internal(format!("cannot set up the task: {e}"));
    std::fs::write(
        dir.join("request.json"),
        serde_json::to_vec(&body).unwrap_or_default(),
    )
    .map_err(io)?;
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, policy.to_toml_string()).map_err(io)?;
    let progress = std::fs::File::create(dir.join("progress.log")).map_err(io)?;
    let live = std::fs::File::create(dir.join("live.log")).map_err(io)?;
    let mut cmd = Command::new(exe);
    cmd.arg("task")
        .arg("--repo")
        .arg(&repo)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--policy")
        .arg(&policy_file)
        .arg("--state-dir")
        .arg(&state.state_dir);
    if let Some(r) = &body.git_ref {
        cmd.arg("--ref").arg(r);
    }
    if let Some(t) = &body.task {
        cmd.arg("--task").arg(t);
    }
    for g in &body.collect {
        cmd.arg("--collect").arg(g);
    }
    if body.keep {
        cmd.arg("--keep");
    }
    for (flag, size) in [
        ("--log-limit", body.log_limit),
        ("--patch-limit", body.patch_limit),
        ("--artifact-limit", body.artifact_limit),
        ("--artifacts-total", body.artifacts_total),
    ] {
        if let Some(size) = size {
            cmd.arg(flag).arg(size.to_string());
        }
    }
    cmd.arg("--").args(&body.cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(live)
        .stderr(progress)
        .spawn()
        .map_err(|e| ApiError::internal(format!("cannot start the task: {e}")))?;
    std::fs::write(dir.join("pid"), child.id().to_string()).map_err(io)?;
    state.hub.publish(
        &id,
        Some("task-created"),
        json!({ "task_id": id, "repo": body.repo }),
    );
    tokio::spawn(watch(state.clone(), id.clone(), dir.clone(), child));
    Ok(json(StatusCode::CREATED, &view(&id, &dir)))
}

/// Reaps the task process and publishes each phase as it starts.
async fn watch(state: Arc<AppState>, id: String, dir: PathBuf, mut child: std::process::Child) {
    let mut last = 0;
    loop {
        let done = matches!(child.try_wait(), Ok(Some(_)) | Err(_));
        let progress = std::fs::read_to_string(dir.join("progress.log")).unwrap_or_default();
        let now = PHASES
            .iter()
            .position(|p| *p == phase_of(&progress))
            .unwrap_or(0);
        // A fast task passes several phases between two looks: announce
        // each one, in order.
        for phase in PHASES.iter().take(now + 1).skip(last + 1) {
            state.hub.publish(
                &id,
                Some("task-phase"),
                json!({ "task_id": id, "phase": phase }),
            );
        }
        last = last.max(now);
        if done || state.stopping() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = view(&id, &dir);
    if let Some(ws) = v["report"]["kept_workspace"].as_str() {
        keep_sandbox(&state, &id, &dir, ws, &v).await;
    }
    let v = view(&id, &dir);
    state.hub.publish(
        &id,
        Some("task-finished"),
        json!({ "task_id": id, "state": v["state"], "outcome": v["report"]["outcome"] }),
    );
}

/// Creates a sandbox on the task's kept working tree, with the task's
/// policy, labelled with the task's id.
async fn keep_sandbox(state: &Arc<AppState>, id: &str, dir: &Path, workspace: &str, v: &Value) {
    let mut policy: Policy =
        serde_json::from_value(v["request"]["policy"].clone()).unwrap_or_default();
    policy.filesystem.workspace = Some(PathBuf::from(workspace));
    let spec = crate::lifecycle::CreateSpec {
        policy,
        name: None,
        labels: BTreeMap::from([("stockade.task".to_string(), id.to_string())]),
        ttl: None,
    };
    match crate::lifecycle::create(state, spec).await {
        Ok(row) => {
            let _ = std::fs::write(dir.join("sandbox_id"), &row.id);
        }
        Err(e) => {
            let _ = std::fs::write(dir.join("keep_error"), format!("{e:?}"));
        }
    }
}

/// `GET /v1/tasks`.
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let mut tasks = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(runs_dir(&state)) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            tasks.insert(id.clone(), view(&id, &e.path()));
        }
    }
    // An object, like `GET /v1/sandboxes`, so fields can be added.
    let list: Vec<_> = tasks.into_values().collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "tasks": list })))
}

/// `GET /v1/tasks/{id}`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    let dir = task_dir(&state, &id)?;
    Ok(json(StatusCode::OK, &view(&id, &dir)))
}

/// `GET /v1/tasks/{id}/patch`: the patch once collected.
pub async fn patch(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    let dir = task_dir(&state, &id)?;
    match std::fs::read(dir.join("out/changes.patch")) {
        Ok(bytes) if dir.join("out/report.json").exists() => {
            Ok(([(header::CONTENT_TYPE, "text/x-diff")], bytes).into_response())
        }
        _ => Err(ApiError::conflict(format!(
            "task {id} has no patch yet; wait until its state is \"done\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_progress_lines() {
        assert_eq!(phase_of(""), "starting");
        assert_eq!(phase_of("stockade: task: clone /r\n"), "clone");
        assert_eq!(
            phase_of("stockade: task: clone /r\nagent noise\nstockade: task: run sh\n"),
            "run"
        );
        assert_eq!(
            phase_of("stockade: task: collect\nstockade: task: done: agent exited with 0\n"),
            "done"
        );
    }
}
