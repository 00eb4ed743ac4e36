//! `/v1/images`: pull (server-sent progress or one JSON answer), list,
//! inspect, remove, prune — the daemon's face of the image store
//! (`<state>/images`, `stockade_image::Store`).
//!
//! A pull runs on a blocking thread and reports through a channel; the
//! answer's stream only reads that channel. A client that goes away
//! therefore stops nothing: the pull finishes (or fails) on its own, and
//! the store never shows a half-written blob or layer (it writes under
//! `tmp/` and renames).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use stockade_image::auth::AuthError;
use stockade_image::{Digest, Image, Progress, PullError, Source, Store, StoreError};

use crate::error::{chain, ApiError, ApiResult};
use crate::events::until_shutdown;
use crate::http::{flag, json, only_params, query_pairs, JsonBody};
use crate::state::AppState;

/// Body of `POST /v1/images/pull`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    image: String,
    #[serde(default)]
    creds: Option<Creds>,
}

/// Registry credentials for one pull (instead of the daemon's own).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Creds {
    username: String,
    password: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Opens the store (cheap; made on first use).
fn open(state: &AppState) -> Result<Store, StoreError> {
    stockade_core::image::open_store_at(&state.image_root, state.image_limits)
}

/// Runs `f` on the store off the async threads.
async fn with_store<T, F>(state: &Arc<AppState>, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let st = state.clone();
    tokio::task::spawn_blocking(move || open(&st).and_then(|s| f(&s)))
        .await
        .map_err(ApiError::join)?
        .map_err(|e| store_error(&e))
}

/// What the store knows `input` by: a digest (or 12+ hex digits of one)
/// as given; a name canonicalised (`python:3.11` →
/// `docker.io/library/python:3.11`); a local source by the name its pull
/// recorded.
pub fn store_key(input: &str) -> ApiResult<String> {
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    if (12..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(input.to_ascii_lowercase());
    }
    let source = Source::parse(input).map_err(|e| ApiError::invalid(chain(&e)))?;
    match source {
        Source::Registry(r) => Ok(r.canonical()),
        local => local.store_name().ok_or_else(|| {
            ApiError::invalid(format!(
                "{input:?} names no image in the store; give its digest (GET /v1/images lists them)"
            ))
        }),
    }
}

/// `image` of a request as a source; a local one (a path on the daemon's
/// host) only under a directory the administrator allowed, like binds
/// (`--allow-bind-root`), and resolved.
fn source_of(state: &AppState, image: &str) -> ApiResult<Source> {
    let source = Source::parse(image).map_err(|e| ApiError::invalid(chain(&e)))?;
    let roots = &state.bind_roots;
    Ok(match source {
        Source::Registry(r) => Source::Registry(r),
        Source::OciDir { path, tag } => Source::OciDir {
            path: roots.check("image source", &path)?,
            tag,
        },
        Source::OciArchive { path, tag } => Source::OciArchive {
            path: roots.check("image source", &path)?,
            tag,
        },
        Source::DockerArchive { path, name } => Source::DockerArchive {
            path: roots.check("image source", &path)?,
            name,
        },
    })
}

/// The summary a finished pull answers with.
fn done_json(image: &Image) -> Value {
    json!({ "digest": image.digest, "names": image.names, "size": image.size })
}

/// One event of a pull's stream.
#[derive(Debug)]
struct PullEvent {
    name: &'static str,
    data: Value,
}

/// `progress` events come at most every 100 ms per layer (and always at
/// a layer's last byte); every other event is passed on.
#[derive(Default)]
struct Throttle {
    last: HashMap<Digest, Instant>,
}

const PROGRESS_EVERY: Duration = Duration::from_millis(100);

impl Throttle {
    fn event(&mut self, p: &Progress, now: Instant) -> Option<PullEvent> {
        let (name, data) = match p {
            Progress::Resolved { digest, layers } => {
                let layers: Vec<Value> = layers
                    .iter()
                    .map(
                        |(d, size, present)| json!({"digest": d, "size": size, "present": present}),
                    )
                    .collect();
                ("resolved", json!({ "digest": digest, "layers": layers }))
            }
            Progress::Downloading { layer, done, total } => {
                let due = self
                    .last
                    .get(layer)
                    .is_none_or(|t| now.duration_since(*t) >= PROGRESS_EVERY);
                if !due && done < total {
                    return None;
                }
                self.last.insert(layer.clone(), now);
                (
                    "progress",
                    json!({ "layer": layer, "done": done, "total": total }),
                )
            }
            Progress::Unpacking { layer } => ("unpacking", json!({ "layer": layer })),
            Progress::LayerDone { layer } => ("layer-done", json!({ "layer": layer })),
        };
        Some(PullEvent { name, data })
    }
}

/// `POST /v1/images/pull[?stream=false]`.
pub async fn pull(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    JsonBody(body): JsonBody<PullBody>,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    only_params(&pairs, &["stream"])?;
    let mut streaming = true;
    for (k, v) in &pairs {
        if k == "stream" {
            streaming = flag(k, v)?;
        }
    }
    if body.image.trim().is_empty() {
        return Err(ApiError::invalid(
            "image must name an image, e.g. \"python:3.11\" or \"oci:/srv/images/app:1\"",
        ));
    }
    let source = source_of(&state, &body.image)?;
    let mut opts = state.pull_options.clone();
    if let Some(c) = body.creds {
        opts.creds = Some((c.username, c.password));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || {
        let store = open(&st).map_err(PullError::Store)?;
        let mut throttle = Throttle::default();
        // A send fails only when the client went away: the pull goes on.
        let result = stockade_image::pull(&store, &source, &opts, &mut |p| {
            if let Some(ev) = throttle.event(p, Instant::now()) {
                let _ = tx.send(ev);
            }
        });
        let last = match &result {
            Ok(image) => PullEvent {
                name: "done",
                data: done_json(image),
            },
            Err(e) => {
                let a = pull_error(e);
                PullEvent {
                    name: "error",
                    data: json!({ "error": a.message, "code": a.code, "status": a.status.as_u16() }),
                }
            }
        };
        let _ = tx.send(last);
        result
    });
    if !streaming {
        drop(rx);
        let image = job
            .await
            .map_err(ApiError::join)?
            .map_err(|e| pull_error(&e))?;
        return Ok(json(StatusCode::OK, &done_json(&image)));
    }
    // The stream ends with the channel: after `done` or `error`.
    drop(job);
    let events = stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|ev| {
            ev.map(|ev| {
                Ok::<_, Infallible>(Event::default().event(ev.name).data(ev.data.to_string()))
            })
        })
    });
    Ok(Sse::new(until_shutdown(events, state.shutdown.clone()))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A pull failure as an answer. Wrong registry credentials are 403
/// `registry_unauthorized`, not 401: 401 is this API's own answer to a
/// missing or wrong bearer token.
pub fn pull_error(e: &PullError) -> ApiError {
    let (status, code) = match e {
        PullError::Reference(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        PullError::NotFound(_) => (StatusCode::NOT_FOUND, "image_not_found"),
        PullError::Unauthorized { .. } | PullError::NeedsCredentials { .. } => {
            (StatusCode::FORBIDDEN, "registry_unauthorized")
        }
        // The daemon's own auth file: its administrator's to fix.
        PullError::Auth(AuthError::Read { .. } | AuthError::Malformed { .. }) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
        PullError::Auth(_) => (StatusCode::BAD_GATEWAY, "registry_error"),
        PullError::Unreachable { .. } => (StatusCode::BAD_GATEWAY, "registry_unreachable"),
        PullError::Status { .. } | PullError::DigestMismatch { .. } => {
            (StatusCode::BAD_GATEWAY, "registry_error")
        }
        PullError::Untrusted { .. } => (StatusCode::BAD_GATEWAY, "registry_untrusted"),
        PullError::NoTag { .. } => (StatusCode::NOT_FOUND, "image_not_found"),
        PullError::NoPlatform { .. } | PullError::MediaType(_) | PullError::Malformed { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_image")
        }
        PullError::Insecure { .. } => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "insecure_registry",
                format!(
                    "{} (the daemon's option: `stockade serve --insecure-registry HOST:PORT`)",
                    chain(e)
                ),
            )
        }
        PullError::Local { .. } => (StatusCode::BAD_REQUEST, "invalid_source"),
        PullError::Store(s) => return store_error(s),
    };
    ApiError::new(status, code, chain(e))
}

/// A store failure as an answer.
pub fn store_error(e: &StoreError) -> ApiError {
    let (status, code) = match e {
        StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        StoreError::Ambiguous(_) | StoreError::BadHolder(_) => {
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
        StoreError::LeaseTaken(_) => (StatusCode::CONFLICT, "conflict"),
        StoreError::InUse { .. } => {
            return ApiError::conflict(format!(
                "{}; destroy the sandbox first, or remove with force=true to drop only the name",
                chain(e)
            ))
        }
        StoreError::StoreFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
        StoreError::DigestMismatch { .. }
        | StoreError::Truncated { .. }
        | StoreError::DiffIdMismatch { .. }
        | StoreError::CorruptLayer { .. } => (StatusCode::BAD_GATEWAY, "registry_error"),
        StoreError::HostileLayer { .. }
        | StoreError::LayerTooLarge { .. }
        | StoreError::TooManyEntries { .. }
        | StoreError::MediaType(_) => (StatusCode::UNPROCESSABLE_ENTITY, "image_refused"),
        StoreError::Io { .. }
        | StoreError::BadRecord { .. }
        | StoreError::MissingLayer(_)
        | StoreError::Userns(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        // The daemon's host cannot keep images as it runs (a rootless
        // daemon whose user has no subordinate ids, or a store of the other
        // kind); the message says what the host's owner must do.
        StoreError::WrongFormat { .. } | StoreError::NeedsSubids => {
            (StatusCode::SERVICE_UNAVAILABLE, "unsupported")
        }
    };
    ApiError::new(status, code, chain(e))
}

/// `GET /v1/images`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    only_params(&query_pairs(q.as_deref())?, &[])?;
    let images = with_store(&state, |s| s.list()).await?;
    Ok(json(StatusCode::OK, &json!({ "images": images })))
}

/// `GET /v1/images/{ref}`: the image and its configuration blob. `ref`
/// may hold `/` as is or percent-encoded (`docker.io%2Flibrary%2Fpython:3.11`).
pub async fn inspect(
    State(state): State<Arc<AppState>>,
    Path(reference): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    only_params(&query_pairs(q.as_deref())?, &[])?;
    let key = store_key(&reference)?;
    let shown = reference.clone();
    let answer = with_store(&state, move |s| {
        let Some(image) = s.resolve(&key)? else {
            return Ok(None);
        };
        let config = s.config_json(&image)?;
        Ok(Some(json!({
            "digest": image.digest,
            "names": image.names,
            "size": image.size,
            "created": image.created,
            "layers": image.layers.iter().map(|l| json!({
                "digest": l.blob, "diff_id": l.diff_id, "size": l.size, "media_type": l.media_type,
            })).collect::<Vec<_>>(),
            "config": config,
        })))
    })
    .await?;
    match answer {
        Some(v) => Ok(json(StatusCode::OK, &v)),
        None => Err(ApiError::not_found(format!(
            "no image {shown:?} in the store; GET /v1/images lists them, POST /v1/images/pull fetches one"
        ))),
    }
}

/// `DELETE /v1/images/{ref}[?force=true]`.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(reference): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    only_params(&pairs, &["force"])?;
    let mut force = false;
    for (k, v) in &pairs {
        if k == "force" {
            force = flag(k, v)?;
        }
    }
    let key = store_key(&reference)?;
    let removed = with_store(&state, move |s| s.remove(&key, force))
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::not_found(format!(
                    "no image {reference:?} in the store; GET /v1/images lists them"
                ))
            } else {
                e
            }
        })?;
    Ok(json(StatusCode::OK, &removed))
}

/// `POST /v1/images/prune`.
pub async fn prune(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    only_params(&query_pairs(q.as_deref())?, &[])?;
    let removed = with_store(&state, |s| s.prune()).await?;
    Ok(json(StatusCode::OK, &removed))
}

/// A sandbox's or task's image, made present before its shim (or task
/// runner) starts: pulled here, with the daemon's registry options (a shim
/// has none), and a local source (`oci:…`) only under a root the daemon
/// allows binds from — the shim would otherwise read any host path for an
/// API client. Afterwards the policy asks for `missing`: the image is in
/// the store, and the shim takes its lease on it.
pub async fn prepare_image(
    state: &Arc<AppState>,
    policy: &mut stockade_policy::Policy,
) -> ApiResult<()> {
    if let Some(name) = &policy.filesystem.image {
        if matches!(
            Source::parse(name),
            Ok(Source::OciDir { .. } | Source::OciArchive { .. } | Source::DockerArchive { .. })
        ) {
            // From here on the source is named by the path that was checked
            // (symlinks resolved), so that neither this pull nor the shim
            // reads a path swapped after the check.
            let checked = local_name(&source_of(state, name)?)?;
            policy.filesystem.image = Some(checked);
        }
    }
    ensure_image(state, policy).await
}

/// A local source written back as a name `Source::parse` reads.
fn local_name(source: &Source) -> ApiResult<String> {
    let (scheme, path, suffix) = match source {
        Source::OciDir { path, tag } => ("oci", path, tag.as_deref()),
        Source::OciArchive { path, tag } => ("oci-archive", path, tag.as_deref()),
        Source::DockerArchive { path, name } => ("docker-archive", path, name.as_deref()),
        Source::Registry(r) => return Ok(r.canonical()),
    };
    let path = path.to_str().filter(|p| !p.contains(':')).ok_or_else(|| {
        ApiError::invalid(format!(
            "image source {} resolves to a path with ':' or non-UTF-8 bytes, which an image name cannot carry; move it",
            path.display()
        ))
    })?;
    Ok(match suffix {
        Some(s) => format!("{scheme}:{path}:{s}"),
        None => format!("{scheme}:{path}"),
    })
}

/// [`prepare_image`] for an image the daemon's own configuration names
/// (an E2B template): a local source is the administrator's choice.
pub async fn ensure_image(
    state: &Arc<AppState>,
    policy: &mut stockade_policy::Policy,
) -> ApiResult<()> {
    let Some(name) = policy.filesystem.image.clone() else {
        return Ok(());
    };
    let mode = stockade_core::image::pull_policy(policy.filesystem.pull);
    let opts = state.pull_options.clone();
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let store = open(&st).map_err(PullError::Store)?;
        stockade_image::pull::ensure(&store, &name, mode, &opts, &mut |_| {})
    })
    .await
    .map_err(ApiError::join)?
    .map_err(|e| pull_error(&e))?;
    policy.filesystem.pull = stockade_policy::Pull::Missing;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn progress_is_thinned_to_ten_a_second_per_layer_but_keeps_the_last_byte() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let mut sent = 0;
        for i in 1..=1000u64 {
            let p = Progress::Downloading {
                layer: d('a'),
                done: i,
                total: 1000,
            };
            if let Some(ev) = t.event(&p, t0 + Duration::from_millis(i)) {
                assert_eq!(ev.name, "progress");
                sent += 1;
                if i == 1000 {
                    assert_eq!(ev.data["done"], 1000);
                }
            }
        }
        assert!((10..=12).contains(&sent), "{sent} progress events");
        let ev = t.event(&Progress::LayerDone { layer: d('a') }, t0).unwrap();
        assert_eq!(ev.name, "layer-done");
        assert_eq!(ev.data["layer"], d('a').to_string());
    }

    #[test]
    fn errors_get_the_documented_statuses() {
        let e = pull_error(&PullError::Unauthorized {
            registry: "localhost:5000".into(),
            hint: String::new(),
        });
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, "registry_unauthorized")
        );
        let e = pull_error(&PullError::NotFound("x".into()));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = pull_error(&PullError::Store(StoreError::InUse {
            name: "a".into(),
            holder: "0123456789ab".into(),
        }));
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert!(e.message.contains("0123456789ab"), "{}", e.message);
        let r = pull_error(&PullError::Unreachable {
            registry: "r".into(),
            source: "refused".into(),
        });
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(r.message.contains("refused"), "{}", r.message);
        // The host's set-up, not the request and not a bug: 503, and the
        // message carries the fix.
        let e = store_error(&StoreError::NeedsSubids);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "unsupported")
        );
        assert!(e.message.contains("subordinate"), "{}", e.message);
        let e = store_error(&StoreError::WrongFormat {
            path: "/s/images".into(),
            found: "by root".into(),
            wanted: "by a user".into(),
        });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("rm -rf /s/images"), "{}", e.message);
    }

    #[test]
    fn hex_ids_are_store_keys_as_given() {
        assert_eq!(store_key("ABCDEF012345").unwrap(), "abcdef012345");
        let full = d('b').to_string();
        assert_eq!(store_key(&full).unwrap(), full);
    }
}
