//! The container's cgroup at the path the engine names (`linux.cgroupsPath`):
//! the engines read statistics and OOM events there, so it cannot be
//! stockade's own `stockade/<name>` layout. cgroupfs paths are used as they
//! are; systemd's `slice:prefix:name` form is mapped to the path systemd
//! would use (`/system.slice/prefix-name.scope`), made directly in cgroupfs
//! (no systemd D-Bus call). v1 (every mounted hierarchy, including a
//! hybrid host's empty unified one) and v2 are both handled.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::config::Resources;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The path is not one stockade will make.
    #[error("linux.cgroupsPath {0:?} is not valid: give a path such as /docker/<id> or, with --systemd-cgroup, slice:prefix:name")]
    BadPath(String),
    /// No cgroup file system is mounted.
    #[error("no cgroup file system is mounted under /sys/fs/cgroup; mount cgroup v1 controllers or cgroup2 there")]
    NoHierarchy,
    /// A limit was asked for but its controller is not there: the limit
    /// would silently not hold.
    #[error("linux.resources asks for {what}, but the {controller} controller is not available in {dir}: on cgroup v2 its parent must list {controller} in cgroup.subtree_control (a parent with processes of its own cannot; move them to a leaf), on v1 the {controller} hierarchy must be mounted")]
    MissingController {
        what: &'static str,
        controller: &'static str,
        dir: PathBuf,
    },
    /// A directory or control file could not be written.
    #[error("cannot set up the container's cgroup at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.into(),
        source,
    }
}

/// The cgroup's path relative to each hierarchy's root.
pub fn relative_path(
    cgroups_path: Option<&str>,
    id: &str,
    systemd: bool,
) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadPath(cgroups_path.unwrap_or_default().into());
    let raw = match cgroups_path {
        None | Some("") => format!("/stockade-runc/{id}"),
        Some(p) if systemd || (!p.starts_with('/') && p.matches(':').count() == 2) => {
            systemd_path(p).ok_or_else(bad)?
        }
        Some(p) => p.to_string(),
    };
    let mut out = PathBuf::new();
    for c in Path::new(&raw).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return Err(bad()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// `slice:prefix:name` → `/a.slice/a-b.slice/prefix-name.scope`.
fn systemd_path(p: &str) -> Option<String> {
    let mut parts = p.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() || name.contains('/') || slice.contains('/') {
        return None;
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let stem = slice.strip_suffix(".slice")?;
    let mut path = String::new();
    if stem != "-" {
        let mut acc = String::new();
        for piece in stem.split('-') {
            if piece.is_empty() {
                return None;
            }
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(piece);
            path.push('/');
            path.push_str(&acc);
            path.push_str(".slice");
        }
    }
    path.push('/');
    if name.ends_with(".slice") {
        path.push_str(name);
    } else if prefix.is_empty() {
        path.push_str(&format!("{name}.scope"));
    } else {
        path.push_str(&format!("{prefix}-{name}.scope"));
    }
    Some(path)
}

/// A mounted hierarchy: its mount point and controllers (`["cgroup2"]` for
/// the unified one).
#[derive(Debug, Clone)]
struct Hierarchy {
    mount: PathBuf,
    controllers: Vec<String>,
    v2: bool,
}

fn hierarchies() -> Vec<Hierarchy> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut seen_dev = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let (dev, root, mount) = (l[2], l[3], l[4]);
        let v2 = match r[0] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        if root != "/" || seen_dev.contains(&dev) {
            continue;
        }
        seen_dev.push(dev);
        let controllers = if v2 {
            vec!["cgroup2".into()]
        } else {
            r[2].split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro")
                        && !o.starts_with("release_agent")
                        && *o != "clone_children"
                        && *o != "noprefix"
                        && *o != "xattr"
                })
                .map(String::from)
                .collect()
        };
        out.push(Hierarchy {
            mount: PathBuf::from(mount.replace("\\040", " ")),
            controllers,
            v2,
        });
    }
    out
}

/// The container's cgroup: one directory per hierarchy.
#[derive(Debug, Clone)]
pub struct Group {
    pub dirs: Vec<PathBuf>,
}

fn has(dirs: &[PathBuf], name: &str) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|d| d.join(name).exists())
        .cloned()
        .collect()
}

/// The directories that have `file`; when `limited` (a limit, not its
/// removal, is asked for), an error naming the controller if none does:
/// a requested limit holds or fails loudly.
fn need_if(
    limited: bool,
    dirs: &[PathBuf],
    file: &str,
    controller: &'static str,
    what: &'static str,
) -> Result<Vec<PathBuf>, CgroupError> {
    let found = has(dirs, file);
    if found.is_empty() && limited {
        return Err(CgroupError::MissingController {
            what,
            controller,
            dir: dirs.first().cloned().unwrap_or_default(),
        });
    }
    Ok(found)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(io_err(&p))
}

/// Makes (or reuses: engines may pre-create the pod's parent) the cgroup
/// and writes the limits. On failure every directory this call made is
/// removed again (and none it found).
pub fn create(rel: &Path, resources: Option<&Resources>) -> Result<Group, CgroupError> {
    let hs = hierarchies();
    if hs.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    let pure_v2 = hs.iter().all(|h| h.v2);
    let mut made = Vec::new();
    let result = make_levels(&hs, rel, pure_v2, &mut made).and_then(|dirs| {
        let g = Group { dirs };
        match resources {
            Some(r) => g.apply(r, pure_v2).map(|()| g),
            None => Ok(g),
        }
    });
    if result.is_err() {
        // Deepest first; nothing has joined them yet.
        for dir in made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

/// Each level of `rel` in every hierarchy, recording in `made` those it
/// creates; the container's directories.
fn make_levels(
    hs: &[Hierarchy],
    rel: &Path,
    pure_v2: bool,
    made: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, CgroupError> {
    let mut dirs = Vec::new();
    for h in hs {
        // Each level made on the way: a v1 cpuset level needs its parent's
        // cpus and mems copied in before a process can join.
        let mut cur = h.mount.clone();
        for c in rel.components() {
            let parent = cur.clone();
            cur.push(c);
            if pure_v2 {
                enable_v2_controllers(&parent);
            }
            match std::fs::create_dir(&cur) {
                Ok(()) => {
                    made.push(cur.clone());
                    if h.controllers.iter().any(|c| c == "cpuset") {
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                            write(&cur, f, v.trim())?;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&cur)(e)),
            }
        }
        dirs.push(cur);
    }
    Ok(dirs)
}

/// A v2 `*.max` value: a positive number, `max` for none.
fn v2_max(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// Delegates cpu, cpuset, memory and pids from `dir` to its children,
/// best effort: refused under a parent with processes of its own (no
/// internal processes), which `apply` then reports for the limit that
/// needs the missing controller.
fn enable_v2_controllers(dir: &Path) {
    let avail = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    // One at a time: a write naming several is refused whole when one of
    // them is (cpu, while a real-time thread sits in a child).
    for c in avail
        .split_whitespace()
        .filter(|c| matches!(*c, "cpu" | "cpuset" | "memory" | "pids"))
    {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
}

impl Group {
    pub fn open(dirs: &[PathBuf]) -> Group {
        Group {
            dirs: dirs.to_vec(),
        }
    }

    fn is_v2(&self) -> bool {
        self.dirs
            .iter()
            .all(|d| d.join("cgroup.controllers").exists())
    }

    /// Writes `linux.resources` (also `update`). A limit whose controller
    /// is missing is an error, never skipped.
    pub fn apply(&self, r: &Resources, pure_v2: bool) -> Result<(), CgroupError> {
        let d = &self.dirs;
        if let Some(m) = &r.memory {
            // runtime-spec: a positive limit, -1 for none (0 is unset).
            let limit = m.limit.filter(|l| *l != 0);
            if pure_v2 {
                if let Some(l) = limit {
                    for dir in need_if(l > 0, d, "memory.max", "memory", "a memory limit")? {
                        write(&dir, "memory.max", &v2_max(l))?;
                        // memory.swap is memory + swap; v2 counts swap alone.
                        if let Some(s) = m.swap.filter(|s| *s != 0) {
                            if dir.join("memory.swap.max").exists() {
                                let v = if s < 0 || l < 0 {
                                    "max".into()
                                } else {
                                    (s - l).max(0).to_string()
                                };
                                write(&dir, "memory.swap.max", &v)?;
                            }
                        }
                    }
                }
            } else if let Some(l) = limit {
                let l = l.max(-1);
                let dirs = need_if(
                    l > 0,
                    d,
                    "memory.limit_in_bytes",
                    "memory",
                    "a memory limit",
                )?;
                for dir in dirs {
                    // Raising past memsw first would be refused.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    let _ = std::fs::write(&memsw, "-1");
                    write(&dir, "memory.limit_in_bytes", &l.to_string())?;
                    // Swap may not extend the limit unless asked.
                    let s = m.swap.filter(|s| *s != 0).unwrap_or(l).max(-1);
                    if memsw.exists() {
                        write(&dir, "memory.memsw.limit_in_bytes", &s.to_string())?;
                    }
                }
            }
        }
        if let Some(c) = &r.cpu {
            let quota = c.quota.filter(|q| *q != 0);
            let period = c.period.filter(|p| *p != 0);
            let shares = c.shares.filter(|s| *s != 0);
            if pure_v2 {
                if quota.is_some() || period.is_some() {
                    // As runc: "max" unless a positive quota; the period
                    // only when given (an update keeps the one set).
                    let mut v = match quota {
                        Some(q) if q > 0 => q.to_string(),
                        _ => "max".into(),
                    };
                    if let Some(p) = period {
                        v.push_str(&format!(" {p}"));
                    }
                    let limited = quota.is_some_and(|q| q > 0) || period.is_some();
                    for dir in need_if(limited, d, "cpu.max", "cpu", "a cpu quota or period")? {
                        write(&dir, "cpu.max", &v)?;
                    }
                }
                if let Some(s) = shares {
                    // runc's mapping of shares (2..262144) onto weight (1..10000).
                    let s = s.clamp(2, 262_144);
                    let w = 1 + ((s - 2) * 9999) / 262_142;
                    for dir in need_if(true, d, "cpu.weight", "cpu", "cpu shares")? {
                        write(&dir, "cpu.weight", &w.to_string())?;
                    }
                }
            } else {
                if quota.is_some() || period.is_some() {
                    let limited = quota.is_some_and(|q| q > 0) || period.is_some();
                    let dirs = need_if(
                        limited,
                        d,
                        "cpu.cfs_quota_us",
                        "cpu",
                        "a cpu quota or period",
                    )?;
                    for dir in dirs {
                        if let Some(p) = period {
                            write(&dir, "cpu.cfs_period_us", &p.to_string())?;
                        }
                        if let Some(q) = quota {
                            write(&dir, "cpu.cfs_quota_us", &q.max(-1).to_string())?;
                        }
                    }
                }
                if let Some(s) = shares {
                    for dir in need_if(true, d, "cpu.shares", "cpu", "cpu shares")? {
                        write(&dir, "cpu.shares", &s.to_string())?;
                    }
                }
            }
            let cpus = c.cpus.as_deref().filter(|s| !s.is_empty());
            let mems = c.mems.as_deref().filter(|s| !s.is_empty());
            if cpus.is_some() || mems.is_some() {
                for dir in need_if(true, d, "cpuset.cpus", "cpuset", "cpus or mems")? {
                    if let Some(v) = cpus {
                        write(&dir, "cpuset.cpus", v)?;
                    }
                    if let Some(v) = mems {
                        write(&dir, "cpuset.mems", v)?;
                    }
                }
            }
        }
        if let Some(p) = &r.pids {
            // 0 and -1 both mean no limit (runtime-spec).
            let v = if p.limit <= 0 {
                "max".into()
            } else {
                p.limit.to_string()
            };
            for dir in need_if(p.limit > 0, d, "pids.max", "pids", "a pids limit")? {
                write(&dir, "pids.max", &v)?;
            }
        }
        Ok(())
    }

    /// For init to join by itself: in every hierarchy's directory, the
    /// file a process writes `0` to in order to move itself — v1's
    /// `tasks` (one thread moving itself skips the kernel's global
    /// threadgroup lock, whose RCU wait costs a move by another process
    /// 10–20 ms on a quiet v1 host), v2's `cgroup.procs`. Opened here, by
    /// host root: the kernel checks the opener's credentials.
    pub fn self_join_files(&self) -> Result<Vec<std::fs::File>, CgroupError> {
        self.dirs
            .iter()
            .map(|dir| {
                let tasks = dir.join("tasks");
                let path = if tasks.exists() {
                    tasks
                } else {
                    dir.join("cgroup.procs")
                };
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| CgroupError::Io { path, source })
            })
            .collect()
    }

    /// Moves the calling (single-threaded) process into every
    /// hierarchy's directory, the cheap way (see [`Group::self_join_files`]).
    pub fn join_self(&self) -> Result<(), CgroupError> {
        use std::io::Write;
        for (mut f, dir) in self.self_join_files()?.into_iter().zip(&self.dirs) {
            f.write_all(b"0").map_err(|source| CgroupError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The host pids inside (from the first hierarchy that lists them).
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for dir in &self.dirs {
            if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for p in t.lines().filter_map(|l| l.trim().parse().ok()) {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Freezes or thaws every process.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        if self.is_v2() {
            for dir in has(&self.dirs, "cgroup.freeze") {
                write(&dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
            }
            return Ok(());
        }
        let dirs = has(&self.dirs, "freezer.state");
        if dirs.is_empty() {
            return Err(CgroupError::Io {
                path: self.dirs.first().cloned().unwrap_or_default(),
                source: io::Error::other("no freezer controller is mounted"),
            });
        }
        for dir in dirs {
            write(
                &dir,
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            )?;
        }
        Ok(())
    }

    /// Removes the directories (deepest level only: parents may be the
    /// engine's), retrying while the last processes leave.
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..200 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}

/// Whether the group's freezer says frozen.
pub fn is_frozen(dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| {
        std::fs::read_to_string(d.join("freezer.state"))
            .map(|s| s.trim() == "FROZEN" || s.trim() == "FREEZING")
            .unwrap_or(false)
            || std::fs::read_to_string(d.join("cgroup.freeze"))
                .map(|s| s.trim() == "1")
                .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_form_maps_to_the_scope_path() {
        let p = relative_path(Some("machine.slice:libpod:abc"), "abc", true).unwrap();
        assert_eq!(p, Path::new("machine.slice/libpod-abc.scope"));
        let p = relative_path(
            Some("kubepods-besteffort-pod1.slice:cri-containerd:x"),
            "x",
            true,
        )
        .unwrap();
        assert_eq!(
            p,
            Path::new("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-x.scope")
        );
        let p = relative_path(Some(":docker:x"), "x", true).unwrap();
        assert_eq!(p, Path::new("system.slice/docker-x.scope"));
    }

    /// A fake v2 cgroup directory with the given control files (empty).
    fn fake_v2(files: &[&str]) -> (tempfile::TempDir, Group) {
        let t = tempfile::tempdir().unwrap();
        for f in files.iter().chain(&["cgroup.controllers"]) {
            std::fs::write(t.path().join(f), "").unwrap();
        }
        let g = Group::open(&[t.path().to_path_buf()]);
        (t, g)
    }

    fn resources(json: &str) -> Resources {
        serde_json::from_str(json).unwrap()
    }

    fn read(t: &tempfile::TempDir, f: &str) -> String {
        std::fs::read_to_string(t.path().join(f)).unwrap()
    }

    #[test]
    fn v2_limits_are_written_in_v2_terms() {
        let (t, g) = fake_v2(&[
            "memory.max",
            "memory.swap.max",
            "pids.max",
            "cpu.max",
            "cpu.weight",
        ]);
        let r = resources(
            r#"{"memory": {"limit": 67108864, "swap": 100663296},
                "pids": {"limit": 32},
                "cpu": {"quota": 25000, "period": 100000, "shares": 1024}}"#,
        );
        g.apply(&r, true).unwrap();
        assert_eq!(read(&t, "memory.max"), "67108864");
        // memory.swap is memory + swap; memory.swap.max is swap alone.
        assert_eq!(read(&t, "memory.swap.max"), "33554432");
        assert_eq!(read(&t, "pids.max"), "32");
        assert_eq!(read(&t, "cpu.max"), "25000 100000");
        assert_eq!(read(&t, "cpu.weight"), "39");
    }

    #[test]
    fn v2_updates_keep_what_they_do_not_name_and_lift_limits() {
        let (t, g) = fake_v2(&["memory.max", "memory.swap.max", "pids.max", "cpu.max"]);
        // A quota alone leaves the period the kernel has.
        g.apply(&resources(r#"{"cpu": {"quota": 50000}}"#), true)
            .unwrap();
        assert_eq!(read(&t, "cpu.max"), "50000");
        g.apply(&resources(r#"{"cpu": {"period": 20000}}"#), true)
            .unwrap();
        assert_eq!(read(&t, "cpu.max"), "max 20000");
        g.apply(
            &resources(r#"{"memory": {"limit": -1, "swap": -1}, "pids": {"limit": 0}}"#),
            true,
        )
        .unwrap();
        assert_eq!(read(&t, "memory.max"), "max");
        assert_eq!(read(&t, "memory.swap.max"), "max");
        assert_eq!(read(&t, "pids.max"), "max");
    }

    #[test]
    fn a_limit_without_its_controller_is_refused_not_skipped() {
        // A v2 cgroup whose parent did not delegate memory, pids or cpu.
        let (t, g) = fake_v2(&[]);
        for (json, controller) in [
            (r#"{"memory": {"limit": 33554432}}"#, "memory"),
            (r#"{"pids": {"limit": 16}}"#, "pids"),
            (r#"{"cpu": {"quota": 25000}}"#, "cpu"),
        ] {
            match g.apply(&resources(json), true) {
                Err(CgroupError::MissingController {
                    controller: c, dir, ..
                }) => {
                    assert_eq!(c, controller);
                    assert_eq!(dir, t.path());
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        // Lifting a limit needs no controller.
        g.apply(
            &resources(r#"{"memory": {"limit": -1}, "pids": {"limit": 0}}"#),
            true,
        )
        .unwrap();
    }

    #[test]
    fn cgroupfs_paths_are_kept_and_escapes_refused() {
        assert_eq!(
            relative_path(Some("/docker/abc"), "abc", false).unwrap(),
            Path::new("docker/abc")
        );
        assert_eq!(
            relative_path(None, "abc", false).unwrap(),
            Path::new("stockade-runc/abc")
        );
        for bad in ["/../../etc", "/a/../..", "/"] {
            assert!(relative_path(Some(bad), "x", false).is_err(), "{bad}");
        }
    }
}
