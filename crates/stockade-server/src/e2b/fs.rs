//! envd's `filesystem.Filesystem` service. Every operation is done by the
//! sandbox's own file helper (`SandboxHandle::files`), as the user the
//! request names, inside the sandbox's mount namespace: a symlink planted
//! in the sandbox leads wherever it leads *in the sandbox*, never to the
//! host's files. Watches poll the directory through a helper (the daemon
//! cannot use inotify on a sandbox's view) and report the differences.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use stockade_core::backend::{Entry, EntryKind, FileClient, FileError, SandboxHandle};

use super::api::rfc3339;
use super::connect::{parse, stream_error, stream_response, Call, Code, RpcError, RpcResult, User};

/// Most entries a listing or a watch covers.
const MAX_ENTRIES: usize = 100_000;
/// How often a watch looks at its directory.
const POLL: Duration = Duration::from_millis(200);
/// Events a watcher keeps until they are fetched; older ones are dropped.
const MAX_PENDING: usize = 10_000;

/// Resolves a request path: absolute as given, relative to the user's
/// home; refuses NUL and absurd lengths.
pub fn resolve(path: &str, user: &User, policy_root: bool) -> RpcResult<String> {
    if path.contains('\0') || path.len() > 4096 {
        return Err(RpcError::invalid(format!(
            "path must be a path inside the sandbox without NUL bytes, got {path:?}"
        )));
    }
    let p = if path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() {
        user.home(policy_root).to_string()
    } else {
        format!("{}/{path}", user.home(policy_root))
    };
    Ok(p)
}

/// The RPC error for a failed file operation on `path`.
pub fn fs_error(path: &str, e: FileError) -> RpcError {
    use nix::errno::Errno;
    let Some(errno) = e.errno() else {
        return RpcError::new(
            Code::Internal,
            format!("cannot access {path}: {}", crate::error::chain(&e)),
        );
    };
    let (code, msg) = match Errno::from_raw(errno) {
        Errno::ENOENT => (Code::NotFound, format!("{path} does not exist in the sandbox")),
        Errno::EEXIST => (Code::AlreadyExists, format!("{path} already exists")),
        Errno::EACCES | Errno::EPERM => (
            Code::PermissionDenied,
            format!("the sandbox's user may not do this to {path}; check its permissions, or act as user \"root\""),
        ),
        Errno::EROFS => (
            Code::PermissionDenied,
            format!("{path} is on a read-only part of the sandbox; write under your home, /workspace or /tmp"),
        ),
        Errno::ENOSPC | Errno::EDQUOT => (
            Code::ResourceExhausted,
            format!("no space left for {path}; free space in the sandbox or use a template with a larger disk limit"),
        ),
        Errno::ENOTDIR => (Code::InvalidArgument, format!("a component of {path} is not a directory")),
        Errno::EISDIR => (Code::InvalidArgument, format!("{path} is a directory")),
        Errno::ENOTEMPTY => (Code::FailedPrecondition, format!("directory {path} is not empty")),
        Errno::ELOOP | Errno::EXDEV | Errno::ENAMETOOLONG | Errno::EINVAL => {
            (Code::InvalidArgument, format!("{path} cannot be used: {e}"))
        }
        Errno::EAGAIN => (
            Code::ResourceExhausted,
            format!("the sandbox is at its process limit, so no file helper could start for {path}; retry later"),
        ),
        _ => (Code::Internal, format!("cannot access {path}: {e}")),
    };
    RpcError::new(code, msg)
}

/// Opens a file helper for `user`.
pub fn helper(h: &Arc<dyn SandboxHandle>, user: &User) -> RpcResult<FileClient> {
    h.files(user.as_root()).map_err(|e| match e {
        stockade_core::backend::BackendError::Spawn { errno, .. } if errno == libc::EAGAIN => {
            RpcError::new(
                Code::ResourceExhausted,
                "the sandbox is at its process limit, so no file helper could start; retry later",
            )
        }
        e => RpcError::new(Code::Unavailable, e.to_string()),
    })
}

/// Runs `f` with a file helper of the call's user, off the async threads.
async fn with_files<T, F>(call: &Call, f: F) -> RpcResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut FileClient) -> RpcResult<T> + Send + 'static,
{
    let (h, user) = (call.t.live.handle.clone(), call.t.user.clone());
    tokio::task::spawn_blocking(move || {
        let mut c = helper(&h, &user)?;
        f(&mut c)
    })
    .await
    .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
}

fn owner_name(id: u32) -> String {
    match id {
        0 => "root".into(),
        AGENT_ID => "user".into(),
        n => n.to_string(),
    }
}

/// The sandbox user's uid and gid inside every sandbox (stockade-isolate's
/// `AGENT_ID`, which this crate does not depend on).
const AGENT_ID: u32 = 1000;

fn permissions(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::File => '-',
        EntryKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn type_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir => "FILE_TYPE_DIRECTORY",
        EntryKind::File => "FILE_TYPE_FILE",
        EntryKind::Symlink => "FILE_TYPE_SYMLINK",
        EntryKind::Other => "FILE_TYPE_UNSPECIFIED",
    }
}

/// An `EntryInfo`. `target_kind` is what a symlink points at, if known.
pub fn entry_info(e: &Entry, target_kind: Option<EntryKind>) -> Value {
    let is_link = e.kind == EntryKind::Symlink;
    let kind = if is_link {
        target_kind.unwrap_or(EntryKind::Symlink)
    } else {
        e.kind
    };
    let mut v = json!({
        "name": e.name,
        "type": type_name(kind),
        "path": e.path,
        "size": e.size.to_string(),
        "mode": e.mode,
        "permissions": permissions(e.kind, e.mode),
        "owner": owner_name(e.uid),
        "group": owner_name(e.gid),
        "modifiedTime": rfc3339(e.mtime as f64),
    });
    if is_link {
        v["isSymlink"] = json!(true);
        if let Some(t) = &e.target {
            v["symlinkTarget"] = json!(t);
        }
    }
    v
}

/// Stat of `path` as an `EntryInfo` (a symlink's type is its target's).
fn stat_info(c: &mut FileClient, path: &str) -> RpcResult<Value> {
    let e = c.stat(path, false).map_err(|e| fs_error(path, e))?;
    let target = if e.kind == EntryKind::Symlink {
        c.stat(path, true).ok().map(|t| t.kind)
    } else {
        None
    };
    Ok(entry_info(&e, target))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PathReq {
    path: String,
    depth: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MoveReq {
    source: String,
    destination: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WatchReq {
    path: String,
    recursive: bool,
    watcher_id: String,
}

/// Unary methods.
pub async fn unary(call: Call, method: &str, msg: &[u8]) -> RpcResult<Value> {
    let (user, root) = (call.t.user.clone(), call.t.policy_root);
    match method {
        "Stat" => {
            let p = resolve(&parse::<PathReq>(msg)?.path, &user, root)?;
            with_files(&call, move |c| Ok(json!({ "entry": stat_info(c, &p)? }))).await
        }
        "MakeDir" => {
            let p = resolve(&parse::<PathReq>(msg)?.path, &user, root)?;
            with_files(&call, move |c| {
                let made = c.make_dir(&p, true).map_err(|e| fs_error(&p, e))?;
                if !made {
                    return Err(RpcError::new(
                        Code::AlreadyExists,
                        format!("directory {p} already exists"),
                    ));
                }
                Ok(json!({ "entry": stat_info(c, &p)? }))
            })
            .await
        }
        "Move" => {
            let req: MoveReq = parse(msg)?;
            let (from, to) = (
                resolve(&req.source, &user, root)?,
                resolve(&req.destination, &user, root)?,
            );
            with_files(&call, move |c| {
                c.rename(&from, &to).map_err(|e| fs_error(&from, e))?;
                Ok(json!({ "entry": stat_info(c, &to)? }))
            })
            .await
        }
        "Remove" => {
            let p = resolve(&parse::<PathReq>(msg)?.path, &user, root)?;
            with_files(&call, move |c| {
                c.remove(&p, true).map_err(|e| fs_error(&p, e))?;
                Ok(json!({}))
            })
            .await
        }
        "ListDir" => {
            let req: PathReq = parse(msg)?;
            let p = resolve(&req.path, &user, root)?;
            let depth = req.depth.filter(|d| *d > 0).unwrap_or(1);
            with_files(&call, move |c| {
                let dir = c.stat(&p, true).map_err(|e| fs_error(&p, e))?;
                if dir.kind != EntryKind::Dir {
                    return Err(RpcError::invalid(format!("{p} is not a directory")));
                }
                let entries = c
                    .list(&p, depth, MAX_ENTRIES)
                    .map_err(|e| fs_error(&p, e))?;
                let base = p.trim_end_matches('/');
                let out: Vec<Value> = entries
                    .iter()
                    .filter(|e| e.path.trim_end_matches('/') != base)
                    .map(|e| entry_info(e, None))
                    .collect();
                Ok(json!({ "entries": out }))
            })
            .await
        }
        "CreateWatcher" => {
            let req: WatchReq = parse(msg)?;
            let p = resolve(&req.path, &user, root)?;
            let w = start_watch(&call, p, req.recursive).await?;
            let id = format!("w{}", NEXT_WATCHER.fetch_add(1, Ordering::Relaxed));
            let pending = Arc::new(Mutex::new(Vec::<Value>::new()));
            let sink = pending.clone();
            let mut rx = w;
            let task = tokio::spawn(async move {
                while let Some(evs) = rx.recv().await {
                    let mut p = sink.lock().unwrap_or_else(|p| p.into_inner());
                    p.extend(evs);
                    let over = p.len().saturating_sub(MAX_PENDING);
                    p.drain(..over);
                }
            });
            call.e2b.watchers.insert(
                id.clone(),
                Watcher {
                    sandbox: call.t.id.clone(),
                    pending,
                    task: task.abort_handle(),
                },
            );
            Ok(json!({ "watcherId": id }))
        }
        "GetWatcherEvents" => {
            let req: WatchReq = parse(msg)?;
            let evs = call.e2b.watchers.take(&call.t.id, &req.watcher_id)?;
            Ok(json!({ "events": evs }))
        }
        "RemoveWatcher" => {
            let req: WatchReq = parse(msg)?;
            call.e2b.watchers.remove(&call.t.id, &req.watcher_id)?;
            Ok(json!({}))
        }
        _ => Err(RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{method} is not implemented"),
        )),
    }
}

static NEXT_WATCHER: AtomicU64 = AtomicU64::new(1);

/// Server-streaming methods: `WatchDir`.
pub async fn stream(call: Call, method: &str, msg: &[u8]) -> Response {
    if method != "WatchDir" {
        return stream_error(RpcError::new(Code::Unimplemented, "not implemented"));
    }
    let req: WatchReq = match parse(msg) {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let p = match resolve(&req.path, &call.t.user, call.t.policy_root) {
        Ok(p) => p,
        Err(e) => return stream_error(e),
    };
    let mut rx = match start_watch(&call, p, req.recursive).await {
        Ok(rx) => rx,
        Err(e) => return stream_error(e),
    };
    let (tx, resp) = stream_response();
    tokio::spawn(async move {
        if !tx.send(&json!({"start": {}})).await {
            return;
        }
        let mut ka = tokio::time::interval(Duration::from_secs(30));
        ka.tick().await;
        loop {
            tokio::select! {
                evs = rx.recv() => match evs {
                    Some(evs) => {
                        for ev in evs {
                            if !tx.send(&json!({"filesystem": ev})).await {
                                return;
                            }
                        }
                    }
                    None => {
                        tx.end(Some(RpcError::new(Code::Unavailable, "the watched directory or its sandbox went away"))).await;
                        return;
                    }
                },
                _ = ka.tick() => {
                    if !tx.send(&json!({"keepalive": {}})).await {
                        return;
                    }
                }
            }
        }
    });
    resp
}

/// A snapshot of a directory: path → (kind, size, mtime, mode).
type Snapshot = BTreeMap<String, (EntryKind, u64, i64, u32)>;

fn snapshot(c: &mut FileClient, dir: &str, recursive: bool) -> Result<Snapshot, FileError> {
    let depth = if recursive { 64 } else { 1 };
    let base = dir.trim_end_matches('/');
    Ok(c.list(dir, depth, MAX_ENTRIES)?
        .into_iter()
        .filter(|e| e.path.trim_end_matches('/') != base)
        .map(|e| (e.path.clone(), (e.kind, e.size, e.mtime, e.mode)))
        .collect())
}

fn diff(dir: &str, old: &Snapshot, new: &Snapshot) -> Vec<Value> {
    let rel = |p: &str| {
        p.strip_prefix(dir.trim_end_matches('/'))
            .unwrap_or(p)
            .trim_start_matches('/')
            .to_string()
    };
    let mut out = Vec::new();
    for (p, n) in new {
        match old.get(p) {
            None => out.push(json!({"name": rel(p), "type": "EVENT_TYPE_CREATE"})),
            Some(o) if o.0 != n.0 => {
                out.push(json!({"name": rel(p), "type": "EVENT_TYPE_REMOVE"}));
                out.push(json!({"name": rel(p), "type": "EVENT_TYPE_CREATE"}));
            }
            Some(o) if (o.1, o.2) != (n.1, n.2) => {
                out.push(json!({"name": rel(p), "type": "EVENT_TYPE_WRITE"}))
            }
            Some(o) if o.3 != n.3 => out.push(json!({"name": rel(p), "type": "EVENT_TYPE_CHMOD"})),
            Some(_) => {}
        }
    }
    for p in old.keys().filter(|p| !new.contains_key(*p)) {
        out.push(json!({"name": rel(p), "type": "EVENT_TYPE_REMOVE"}));
    }
    out
}

/// Starts polling `dir` on a thread of its own; batches of events arrive
/// on the returned channel until the receiver is dropped (or the
/// directory cannot be read any more, which closes it).
async fn start_watch(
    call: &Call,
    dir: String,
    recursive: bool,
) -> RpcResult<tokio::sync::mpsc::Receiver<Vec<Value>>> {
    let (h, user) = (call.t.live.handle.clone(), call.t.user.clone());
    let d = dir.clone();
    let (client, first) = tokio::task::spawn_blocking(move || {
        let mut c = helper(&h, &user)?;
        let e = c.stat(&d, true).map_err(|e| fs_error(&d, e))?;
        if e.kind != EntryKind::Dir {
            return Err(RpcError::invalid(format!("{d} is not a directory")));
        }
        let s = snapshot(&mut c, &d, recursive).map_err(|e| fs_error(&d, e))?;
        Ok((c, s))
    })
    .await
    .map_err(|e| RpcError::new(Code::Internal, e.to_string()))??;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let spawned = std::thread::Builder::new()
        .name("stockade-e2b-watch".into())
        .spawn(move || {
            let (mut c, mut last) = (client, first);
            loop {
                std::thread::sleep(POLL);
                if tx.is_closed() {
                    return;
                }
                let Ok(now) = snapshot(&mut c, &dir, recursive) else {
                    return;
                };
                let evs = diff(&dir, &last, &now);
                last = now;
                if !evs.is_empty() && tx.blocking_send(evs).is_err() {
                    return;
                }
            }
        });
    spawned.map_err(|e| {
        RpcError::new(
            Code::ResourceExhausted,
            format!("cannot start a watch: {e}"),
        )
    })?;
    Ok(rx)
}

/// A watcher made with `CreateWatcher`.
#[derive(Debug)]
pub struct Watcher {
    sandbox: String,
    pending: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::AbortHandle,
}

/// The watchers, by id.
#[derive(Debug, Default)]
pub struct Watchers(Mutex<HashMap<String, Watcher>>);

impl Watchers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watcher>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn insert(&self, id: String, w: Watcher) {
        self.map().insert(id, w);
    }
    fn unknown(id: &str) -> RpcError {
        RpcError::new(Code::NotFound, format!("watcher {id:?} was not found"))
    }
    fn take(&self, sandbox: &str, id: &str) -> RpcResult<Vec<Value>> {
        let m = self.map();
        let w = m
            .get(id)
            .filter(|w| w.sandbox == sandbox)
            .ok_or_else(|| Self::unknown(id))?;
        let evs = std::mem::take(&mut *w.pending.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(evs)
    }
    fn remove(&self, sandbox: &str, id: &str) -> RpcResult<()> {
        let mut m = self.map();
        match m.get(id) {
            Some(w) if w.sandbox == sandbox => {
                w.task.abort();
                m.remove(id);
                Ok(())
            }
            _ => Err(Self::unknown(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_go_to_the_users_home() {
        assert_eq!(
            resolve("a.txt", &User::Default, false).unwrap(),
            "/home/agent/a.txt"
        );
        assert_eq!(resolve("a.txt", &User::Root, false).unwrap(), "/root/a.txt");
        assert_eq!(resolve("/etc/x", &User::Agent, true).unwrap(), "/etc/x");
        assert!(resolve("a\0b", &User::Default, false).is_err());
    }

    #[test]
    fn diffs_name_created_written_and_removed_entries() {
        let mut a = Snapshot::new();
        a.insert("/d/x".into(), (EntryKind::File, 1, 1, 0o644));
        a.insert("/d/y".into(), (EntryKind::File, 1, 1, 0o644));
        let mut b = a.clone();
        b.remove("/d/y");
        b.insert("/d/z".into(), (EntryKind::File, 0, 2, 0o644));
        b.insert("/d/x".into(), (EntryKind::File, 5, 2, 0o644));
        let evs = diff("/d", &a, &b);
        let got: Vec<(String, String)> = evs
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["type"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("x".into(), "EVENT_TYPE_WRITE".into()),
                ("z".into(), "EVENT_TYPE_CREATE".into()),
                ("y".into(), "EVENT_TYPE_REMOVE".into()),
            ]
        );
    }

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(EntryKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(EntryKind::Dir, 0o755), "drwxr-xr-x");
    }
}
