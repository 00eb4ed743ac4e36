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

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(io_err(&p))
}

/// Makes (or reuses: engines may pre-create the pod's parent) the cgroup
/// and writes the limits.
pub fn create(rel: &Path, resources: Option<&Resources>) -> Result<Group, CgroupError> {
    let hs = hierarchies();
    if hs.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    let pure_v2 = hs.iter().all(|h| h.v2);
    let mut dirs = Vec::new();
    for h in &hs {
        let dir = h.mount.join(rel);
        // Each level made on the way: a v1 cpuset level needs its parent's
        // cpus and mems copied in before a process can join.
        let mut cur = h.mount.clone();
        for c in rel.components() {
            let parent = cur.clone();
            cur.push(c);
            if pure_v2 {
                enable_v2_controllers(&parent)?;
            }
            match std::fs::create_dir(&cur) {
                Ok(()) => {
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
        dirs.push(dir);
    }
    let g = Group { dirs };
    if let Some(r) = resources {
        if let Err(e) = g.apply(r, pure_v2) {
            g.remove();
            return Err(e);
        }
    }
    Ok(g)
}

fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let avail = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<String> = avail
        .split_whitespace()
        .filter(|c| matches!(*c, "cpu" | "cpuset" | "memory" | "pids"))
        .map(|c| format!("+{c}"))
        .collect();
    if !want.is_empty() {
        // Refused at the root of a v2 hierarchy that has processes in
        // leaves already enabled, harmlessly: best effort.
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), want.join(" "));
    }
    Ok(())
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

    /// Writes `linux.resources` (also `update`).
    pub fn apply(&self, r: &Resources, pure_v2: bool) -> Result<(), CgroupError> {
        let d = &self.dirs;
        if let Some(m) = &r.memory {
            let limit = m.limit.filter(|l| *l > 0);
            if pure_v2 {
                for dir in has(d, "memory.max") {
                    if let Some(l) = limit {
                        write(&dir, "memory.max", &l.to_string())?;
                    }
                    if let (Some(l), Some(s)) = (limit, m.swap) {
                        if dir.join("memory.swap.max").exists() {
                            let v = if s < 0 {
                                "max".into()
                            } else {
                                (s - l).max(0).to_string()
                            };
                            write(&dir, "memory.swap.max", &v)?;
                        }
                    }
                }
            } else {
                for dir in has(d, "memory.limit_in_bytes") {
                    if let Some(l) = limit {
                        // Raising past memsw first would be refused.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        let _ = std::fs::write(&memsw, "-1");
                        write(&dir, "memory.limit_in_bytes", &l.to_string())?;
                        // Swap may not extend the limit unless asked.
                        let s = m.swap.unwrap_or(l);
                        if memsw.exists() {
                            write(&dir, "memory.memsw.limit_in_bytes", &s.to_string())?;
                        }
                    }
                }
            }
        }
        if let Some(c) = &r.cpu {
            if pure_v2 {
                for dir in has(d, "cpu.max") {
                    if let Some(q) = c.quota {
                        let period = c.period.unwrap_or(100_000);
                        let q = if q <= 0 { "max".into() } else { q.to_string() };
                        write(&dir, "cpu.max", &format!("{q} {period}"))?;
                    }
                    if let Some(s) = c.shares.filter(|s| *s >= 2) {
                        let w = 1 + ((s.min(262_144) - 2) * 9999) / 262_142;
                        write(&dir, "cpu.weight", &w.to_string())?;
                    }
                }
            } else {
                for dir in has(d, "cpu.cfs_quota_us") {
                    if let Some(p) = c.period {
                        write(&dir, "cpu.cfs_period_us", &p.to_string())?;
                    }
                    if let Some(q) = c.quota {
                        write(&dir, "cpu.cfs_quota_us", &q.to_string())?;
                    }
                }
                for dir in has(d, "cpu.shares") {
                    if let Some(s) = c.shares {
                        write(&dir, "cpu.shares", &s.to_string())?;
                    }
                }
            }
            for dir in has(d, "cpuset.cpus") {
                if let Some(cpus) = c.cpus.as_deref().filter(|s| !s.is_empty()) {
                    write(&dir, "cpuset.cpus", cpus)?;
                }
                if let Some(mems) = c.mems.as_deref().filter(|s| !s.is_empty()) {
                    write(&dir, "cpuset.mems", mems)?;
                }
            }
        }
        if let Some(p) = &r.pids {
            for dir in has(d, "pids.max") {
                let v = if p.limit <= 0 {
                    "max".into()
                } else {
                    p.limit.to_string()
                };
                write(&dir, "pids.max", &v)?;
            }
        }
        Ok(())
    }

    /// Moves `pid` into every hierarchy's directory.
    pub fn join(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(dir, "cgroup.procs", &pid.to_string())?;
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
