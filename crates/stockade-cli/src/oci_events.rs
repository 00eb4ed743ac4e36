//! `stockade events --oci`: the reports `stockade-runc` writes when a
//! container ends (`<root>/.reports/<id>.json`, see stockade-oci's
//! `supervise::report_path`), as one JSON line each, like the daemon's
//! event stream. Engines give the runtime a state root of their own, so
//! the follower looks under each root it is given, or under the roots the
//! engines use by default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

/// State roots engines give a runc-compatible runtime when the user set
/// none: stockade-runc's own, podman's (`/run/runc` with runc's name),
/// containerd's shim (`/run/containerd/runc/<namespace>`) and dockerd's
/// (`/run/docker/runtime-runc/<namespace>`). A trailing `*` stands for
/// each subdirectory.
const DEFAULT_ROOTS: &[&str] = &[
    "/run/stockade-runc",
    "/run/runc",
    "/run/containerd/runc/*",
    "/run/docker/runtime-runc/*",
];

/// How often the report directories are looked at again.
const POLL: Duration = Duration::from_millis(300);

/// Options of the follower.
pub struct Follow {
    /// Roots to watch (a trailing `/*`: each subdirectory); empty for
    /// [`DEFAULT_ROOTS`].
    pub roots: Vec<PathBuf>,
    /// Only this container's reports.
    pub id: Option<String>,
    /// Print the reports already there first.
    pub all: bool,
    /// Stop after the reports already there (implies `all`).
    pub once: bool,
}

fn expand(roots: &[PathBuf]) -> Vec<PathBuf> {
    let given: Vec<PathBuf> = if roots.is_empty() {
        DEFAULT_ROOTS.iter().map(PathBuf::from).collect()
    } else {
        roots.to_vec()
    };
    let mut out = Vec::new();
    for r in given {
        if r.file_name().is_some_and(|n| n == "*") {
            let parent = r.parent().unwrap_or(Path::new("/"));
            if let Ok(rd) = std::fs::read_dir(parent) {
                let mut subs: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect();
                subs.sort();
                out.extend(subs);
            }
        } else {
            out.push(r);
        }
    }
    out
}

/// The reports present now: (root, id, path, modification time).
fn scan(roots: &[PathBuf], id: Option<&str>) -> Vec<(PathBuf, String, PathBuf, SystemTime)> {
    let mut found = Vec::new();
    for root in expand(roots) {
        let Ok(rd) = std::fs::read_dir(root.join(".reports")) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(cid) = p.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            if id.is_some_and(|want| want != cid) {
                continue;
            }
            // Only regular files: a report is written by rename, never
            // through a link.
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((root.clone(), cid, p, mtime));
        }
    }
    found.sort_by_key(|f| f.3);
    found
}

/// One event line for a report file; `None` if it is not (yet) valid JSON.
fn line(root: &Path, id: &str, path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let report: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let ev = serde_json::json!({
        "type": "oci-report",
        "root": root,
        "id": id,
        "report": report,
    });
    Some(ev.to_string())
}

/// Prints reports as they appear, until interrupted (or, with `once`,
/// after those already there).
pub fn follow(opts: Follow) -> anyhow::Result<u8> {
    if let Some(id) = &opts.id {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            bail!("{id:?} is not a container id");
        }
    }
    let mut seen: HashMap<PathBuf, SystemTime> = HashMap::new();
    let mut first = true;
    loop {
        for (root, id, path, mtime) in scan(&opts.roots, opts.id.as_deref()) {
            if seen.get(&path) == Some(&mtime) {
                continue;
            }
            let show = !first || opts.all || opts.once;
            match line(&root, &id, &path) {
                Some(l) => {
                    seen.insert(path, mtime);
                    if show {
                        use std::io::Write;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{l}")
                            .and_then(|()| out.flush())
                            .context("cannot write to stdout")?;
                    }
                }
                // Half-written cannot happen (rename), but a file put there
                // by hand may be anything: it is skipped, and looked at
                // again if it changes.
                None => {
                    seen.insert(path, mtime);
                }
            }
        }
        if opts.once {
            return Ok(0);
        }
        first = false;
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_root_stands_for_each_subdirectory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("k8s.io")).unwrap();
        std::fs::create_dir_all(d.path().join("moby")).unwrap();
        std::fs::write(d.path().join("file"), "").unwrap();
        let got = expand(&[d.path().join("*"), PathBuf::from("/x")]);
        assert_eq!(
            got,
            vec![
                d.path().join("k8s.io"),
                d.path().join("moby"),
                PathBuf::from("/x")
            ]
        );
    }

    #[test]
    fn only_json_reports_of_the_wanted_id_are_found() {
        let d = tempfile::tempdir().unwrap();
        let reports = d.path().join(".reports");
        std::fs::create_dir_all(&reports).unwrap();
        std::fs::write(reports.join("a.json"), "{}").unwrap();
        std::fs::write(reports.join("b.json"), "{}").unwrap();
        std::fs::write(reports.join("a.tmp"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", reports.join("c.json")).unwrap();
        let all: Vec<String> = scan(&[d.path().into()], None)
            .into_iter()
            .map(|f| f.1)
            .collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b"]);
        let one = scan(&[d.path().into()], Some("b"));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, "b");
        let l = line(d.path(), "b", &one[0].2).unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["type"], "oci-report");
        assert_eq!(v["id"], "b");
        std::fs::write(reports.join("bad.json"), "{").unwrap();
        assert!(line(d.path(), "bad", &reports.join("bad.json")).is_none());
    }
}
