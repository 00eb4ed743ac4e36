//! E2B's control API (`E2B_API_URL`): sandboxes created, listed,
//! inspected, timed out, paused, connected to and killed. Every request
//! needs `X-API-KEY` with the listener's key.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{self, check_timeout, E2bBox};
use super::templates::DEFAULT_TEMPLATE;
use super::{E2b, E2bError, E2bResult, ENVD_VERSION};
use crate::http::{json, query_pairs, BodyBytes};
use crate::lifecycle::{self, CreateSpec};

/// The E2B default sandbox timeout, in seconds.
const DEFAULT_TIMEOUT: u64 = 15;
/// Longest page of a listing.
const MAX_LIMIT: usize = 100;

pub fn router(e2b: Arc<E2b>) -> Router {
    Router::new()
        .route("/sandboxes", get(list_v1).post(create))
        .route("/v2/sandboxes", get(list_v2).post(create))
        .route("/sandboxes/{id}", get(show).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/resume", post(connect))
        .fallback(super::not_found)
        .layer(axum::middleware::from_fn_with_state(
            e2b.clone(),
            require_key,
        ))
        .with_state(e2b)
}

/// Middleware: 401 unless `X-API-KEY` is the listener's key.
async fn require_key(State(e2b): State<Arc<E2b>>, req: Request, next: Next) -> Response {
    let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    match given {
        Some(k) if e2b.keys.api_key_ok(k.trim()) => next.run(req).await,
        Some(_) => E2bError::new(
            StatusCode::UNAUTHORIZED,
            "the API key is wrong; use the key in the daemon's state directory (e2b-api-key)",
        )
        .into_response(),
        None => E2bError::new(
            StatusCode::UNAUTHORIZED,
            "this API needs an X-API-KEY header (set E2B_API_KEY to the key in the daemon's state directory, file e2b-api-key)",
        )
        .into_response(),
    }
}

/// Parses an optional JSON body into `T` (empty means `{}`).
fn body<T: for<'a> Deserialize<'a>>(b: &[u8]) -> E2bResult<T> {
    let text: &[u8] = if b.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        b
    };
    serde_json::from_slice(text)
        .map_err(|e| E2bError::invalid(format!("the request body is not valid: {e}")))
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    #[serde(rename = "autoPause", default)]
    auto_pause: Option<bool>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "envVars", default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    allow_internet_access: Option<bool>,
    #[serde(default)]
    secure: Option<bool>,
    #[serde(default)]
    network: Option<Value>,
    #[serde(default)]
    mcp: Option<Value>,
    #[serde(rename = "volumeMounts", default)]
    volume_mounts: Option<Value>,
    #[serde(default)]
    iam: Option<Value>,
    #[serde(rename = "autoResume", default)]
    auto_resume: Option<Value>,
}

fn unsupported(field: &str, v: &Option<Value>) -> E2bResult<()> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        Some(_) => Err(E2bError::invalid(format!(
            "{field} is not supported by stockade's E2B listener; leave it out (docs/e2b.md lists what is supported)"
        ))),
    }
}

fn env_name_ok(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `Sandbox` answer of create and connect.
fn sandbox_json(e2b: &E2b, bx: &E2bBox) -> Value {
    json!({
        "templateID": bx.template_id,
        "sandboxID": bx.id,
        "clientID": "stockade",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": e2b.keys.access_token(&bx.id),
        "domain": null,
    })
}

async fn create(State(e2b): State<Arc<E2b>>, BodyBytes(b): BodyBytes) -> Response {
    match create_inner(&e2b, &b).await {
        Ok(v) => json(StatusCode::CREATED, &v),
        Err(e) => e.into_response(),
    }
}

async fn create_inner(e2b: &Arc<E2b>, b: &[u8]) -> E2bResult<Value> {
    let req: CreateBody = body(b)?;
    unsupported("network", &req.network)?;
    unsupported("mcp", &req.mcp)?;
    unsupported("volumeMounts", &req.volume_mounts)?;
    unsupported("iam", &req.iam)?;
    if matches!(req.auto_resume, Some(Value::Object(ref m)) if m.get("enabled") == Some(&Value::Bool(true)))
    {
        return Err(E2bError::invalid(
            "autoResume is not supported; resume a paused sandbox with connect",
        ));
    }
    let _ = req.secure;
    let name = req
        .template_id
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
    let template = e2b.templates.get(&name).ok_or_else(|| {
        let known: Vec<&str> = e2b.templates.names().collect();
        E2bError::not_found(format!(
            "template {name:?} was not found; this daemon has {} (add templates with --e2b-templates FILE)",
            known.join(", ")
        ))
    })?;
    let mut policy = template.policy.clone();
    let max = policy.limits.timeout.duration().as_secs();
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT.min(max));
    check_timeout(timeout, max)?;
    let metadata = req.metadata.unwrap_or_default();
    if metadata.len() > 64
        || metadata
            .iter()
            .any(|(k, v)| k.len() > 256 || v.len() > 4096)
    {
        return Err(E2bError::invalid(
            "metadata takes at most 64 entries, keys up to 256 and values up to 4096 bytes",
        ));
    }
    for (k, v) in req.env_vars.unwrap_or_default() {
        if !env_name_ok(&k) || v.contains('\0') {
            return Err(E2bError::invalid(format!(
                "envVars: {k:?} is not a valid variable (letters, digits and '_', not starting with a digit; no NUL in the value)"
            )));
        }
        policy.process.env.insert(k, v);
    }
    policy
        .process
        .env
        .insert("E2B_SANDBOX".into(), "true".into());
    if req.allow_internet_access == Some(false) {
        policy.network = stockade_policy::NetworkPolicy::default();
    }
    policy
        .validate()
        .map_err(|e| E2bError::invalid(format!("the template's policy is not valid: {e}")))?;
    crate::routes::images::ensure_image(&e2b.app, &mut policy).await?;
    let spec = CreateSpec {
        policy: policy.clone(),
        name: None,
        labels: BTreeMap::from([("e2b.template".to_string(), sanitize_label(&name))]),
        // The E2B timeout is kept here (it can be extended); the policy's
        // time limit caps the sandbox's life in the shim as always.
        ttl: None,
    };
    let row = lifecycle::create(&e2b.app, spec).await?;
    let bx = Arc::new(E2bBox::new(
        row.id.clone(),
        name,
        metadata,
        timeout,
        req.auto_pause.unwrap_or(false),
        &policy,
    ));
    e2b.boxes.insert(bx.clone());
    Ok(sandbox_json(e2b, &bx))
}

fn sanitize_label(s: &str) -> String {
    s.chars().take(255).filter(|c| *c != '\0').collect()
}

/// A time as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(t: f64) -> String {
    let ms = (t * 1000.0).round() as i64;
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn state_of(bx: &E2bBox) -> &'static str {
    if bx.is_paused() {
        "paused"
    } else {
        "running"
    }
}

/// A listed sandbox (`ListedSandbox`).
fn listed(bx: &E2bBox) -> Value {
    json!({
        "templateID": bx.template_id,
        "sandboxID": bx.id,
        "clientID": "stockade",
        "startedAt": rfc3339(bx.started_at),
        "endAt": rfc3339(bx.end_at()),
        "cpuCount": bx.cpu_count,
        "memoryMB": bx.memory_mb,
        "diskSizeMB": bx.disk_mb,
        "state": state_of(bx),
        "envdVersion": ENVD_VERSION,
        "metadata": bx.metadata,
    })
}

/// The box of a running sandbox, or 404.
fn find(e2b: &E2b, id: &str) -> E2bResult<Arc<E2bBox>> {
    match (e2b.boxes.get(id), e2b.app.live(id)) {
        (Some(b), Some(l)) if !l.is_ending() => Ok(b),
        _ => Err(E2bError::no_sandbox(id)),
    }
}

async fn show(State(e2b): State<Arc<E2b>>, Path(id): Path<String>) -> Response {
    match find(&e2b, &id) {
        Ok(bx) => {
            let mut v = listed(&bx);
            v["envdAccessToken"] = json!(e2b.keys.access_token(&bx.id));
            v["domain"] = Value::Null;
            v["lifecycle"] = json!({
                "onTimeout": if bx.auto_pause { "pause" } else { "kill" },
                "autoResume": false,
            });
            json(StatusCode::OK, &v)
        }
        Err(e) => e.into_response(),
    }
}

async fn kill(State(e2b): State<Arc<E2b>>, Path(id): Path<String>) -> Response {
    let r = async {
        let bx = find(&e2b, &id)?;
        registry::kill(&e2b, &bx, false).await
    }
    .await;
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: Option<u64>,
}

async fn set_timeout(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    BodyBytes(b): BodyBytes,
) -> Response {
    let r = (|| {
        let req: TimeoutBody = body(&b)?;
        let bx = find(&e2b, &id)?;
        let t = req
            .timeout
            .ok_or_else(|| E2bError::invalid("the body needs timeout, in seconds"))?;
        bx.check_timeout(t)?;
        bx.set_timeout(t);
        Ok::<_, E2bError>(())
    })();
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct RefreshBody {
    duration: Option<u64>,
}

async fn refresh(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    BodyBytes(b): BodyBytes,
) -> Response {
    let r = (|| {
        let req: RefreshBody = body(&b)?;
        let bx = find(&e2b, &id)?;
        let t = req.duration.unwrap_or(DEFAULT_TIMEOUT);
        bx.check_timeout(t)?;
        bx.extend(t);
        Ok::<_, E2bError>(())
    })();
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn pause(State(e2b): State<Arc<E2b>>, Path(id): Path<String>) -> Response {
    let r = async {
        let bx = find(&e2b, &id)?;
        registry::pause(&e2b, &bx).await
    }
    .await;
    match r {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn connect(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    BodyBytes(b): BodyBytes,
) -> Response {
    let r = async {
        let req: TimeoutBody = body(&b)?;
        let bx = find(&e2b, &id)?;
        let resumed = registry::resume(&e2b, &bx).await?;
        if let Some(t) = req.timeout {
            bx.check_timeout(t)?;
            bx.extend(t);
        } else if resumed {
            bx.extend(DEFAULT_TIMEOUT.min(bx.max_timeout));
        }
        Ok::<_, E2bError>((resumed, sandbox_json(&e2b, &bx)))
    }
    .await;
    match r {
        Ok((true, v)) => json(StatusCode::CREATED, &v),
        Ok((false, v)) => json(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// The filters of a listing.
struct Filter {
    metadata: Vec<(String, String)>,
    template: Option<String>,
    states: Vec<String>,
    limit: usize,
    next: Option<String>,
}

fn filter(q: Option<&str>, v2: bool) -> E2bResult<Filter> {
    let mut f = Filter {
        metadata: Vec::new(),
        template: None,
        states: if v2 {
            vec!["running".into(), "paused".into()]
        } else {
            vec!["running".into()]
        },
        limit: MAX_LIMIT,
        next: None,
    };
    for (k, v) in query_pairs(q)? {
        match k.as_str() {
            // `key=value&key2=value2`, each part URL-encoded once more.
            "metadata" | "query" => {
                for (mk, mv) in query_pairs(Some(&v))? {
                    f.metadata.push((mk, mv));
                }
            }
            "state" if v2 => {
                f.states = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = f
                    .states
                    .iter()
                    .find(|s| !matches!(s.as_str(), "running" | "paused"))
                {
                    return Err(E2bError::invalid(format!(
                        "state must be running or paused (comma-separated), got {bad:?}"
                    )));
                }
            }
            "limit" if v2 => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        E2bError::invalid(format!(
                            "limit must be a number from 1 to {MAX_LIMIT}, got {v:?}"
                        ))
                    })?;
            }
            "nextToken" if v2 => f.next = Some(v),
            "template" if v2 => f.template = Some(v),
            "order" | "startedAfter" if v2 => {}
            _ => {
                return Err(E2bError::invalid(format!(
                    "unknown query parameter {k:?}; this route takes metadata{}",
                    if v2 {
                        ", state, limit and nextToken"
                    } else {
                        ""
                    }
                )))
            }
        }
    }
    Ok(f)
}

/// The sandboxes matching `f`, newest first, and the token of the next
/// page.
fn select(e2b: &E2b, f: &Filter) -> E2bResult<(Vec<Value>, Option<String>)> {
    let mut all: Vec<Arc<E2bBox>> = e2b
        .boxes
        .all()
        .into_iter()
        .filter(|b| e2b.app.live(&b.id).is_some_and(|l| !l.is_ending()))
        .filter(|b| f.states.iter().any(|s| s == state_of(b)))
        .filter(|b| match &f.template {
            None => true,
            Some(t) => *t == b.template_id,
        })
        .filter(|b| {
            f.metadata
                .iter()
                .all(|(k, v)| b.metadata.get(k).is_some_and(|x| x == v))
        })
        .collect();
    all.sort_by(|a, b| {
        b.started_at
            .total_cmp(&a.started_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let start = match &f.next {
        None => 0,
        Some(t) => all.iter().position(|b| &b.id == t).ok_or_else(|| {
            E2bError::invalid(format!(
                "nextToken {t:?} does not name a listed sandbox (it may have ended); list again from the start"
            ))
        })?,
    };
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(f.limit)
        .map(|b| listed(b))
        .collect();
    let next = all.get(start + f.limit).map(|b| b.id.clone());
    Ok((page, next))
}

async fn list_v1(State(e2b): State<Arc<E2b>>, RawQuery(q): RawQuery) -> Response {
    match filter(q.as_deref(), false).and_then(|mut f| {
        f.limit = usize::MAX;
        select(&e2b, &f)
    }) {
        Ok((page, _)) => json(StatusCode::OK, &page),
        Err(e) => e.into_response(),
    }
}

async fn list_v2(State(e2b): State<Arc<E2b>>, RawQuery(q): RawQuery) -> Response {
    match filter(q.as_deref(), true).and_then(|f| select(&e2b, &f)) {
        Ok((page, next)) => {
            let mut r = json(StatusCode::OK, &page);
            if let Some(t) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
                r.headers_mut().insert("x-next-token", t);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(rfc3339(1_767_225_599.0), "2025-12-31T23:59:59.000Z");
    }

    #[test]
    fn metadata_filters_are_decoded_twice() {
        // What the SDK sends for {"team": "a b", "k=": "v&"}.
        let f = filter(
            Some("metadata=team%3Da%2520b%26k%253D%3Dv%2526&state=running"),
            true,
        )
        .unwrap();
        assert_eq!(
            f.metadata,
            vec![("team".into(), "a b".into()), ("k=".into(), "v&".into())]
        );
        assert_eq!(f.states, vec!["running".to_string()]);
        assert!(filter(Some("state=gone"), true).is_err());
        assert!(filter(Some("limit=0"), true).is_err());
        assert!(filter(Some("bogus=1"), true).is_err());
    }
}
