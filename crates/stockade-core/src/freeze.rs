//! Pausing a sandbox: freezing its cgroup (v1 `freezer.state`, v2
//! `cgroup.freeze`); the default of `SandboxHandle::set_frozen`. Every process of the sandbox stops where it is and
//! keeps its memory; thawing lets them go on. The cgroup is found from the
//! sandbox init's `/proc/PID/cgroup`, and only a directory whose path
//! names the sandbox's id is ever written, so a confused lookup cannot
//! freeze anything else.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a sandbox could not be frozen or thawed.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// The sandbox's freezer cgroup could not be found (the message says
    /// why); nothing was written.
    #[error("{0}")]
    NoCgroup(String),
    /// A cgroup file could not be read or written.
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The freeze did not take effect in time (it was undone).
    #[error("the cgroup {} did not settle within {SETTLE:?}; retry", .0.display())]
    Stuck(PathBuf),
}

/// How long a freeze may take to settle before it is reported stuck.
const SETTLE: Duration = Duration::from_secs(5);

/// Where the freezer of `pid` lives: (directory, is v1).
fn freezer_dir(pid: i32, id: &str) -> Result<(PathBuf, bool), FreezeError> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| FreezeError::Io {
            what: "read",
            path: p,
            source,
        })
    };
    let cg = read(PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    let mounts = read(PathBuf::from("/proc/self/mountinfo"))?;
    let none = |m: String| FreezeError::NoCgroup(m);
    let (rel, v1) = if let Some(rel) = cg.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
        ctrl.split(',')
            .any(|c| c == "freezer")
            .then(|| path.to_string())
    }) {
        (rel, true)
    } else if let Some(rel) = cg.lines().find_map(|l| l.strip_prefix("0::")) {
        (rel.to_string(), false)
    } else {
        return Err(none(
            "the sandbox is in no freezer cgroup (neither a v1 freezer nor cgroup v2); pausing needs one".into(),
        ));
    };
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next()?;
            let opts = post.next().unwrap_or("");
            let mountpoint = pre.split(' ').nth(4)?;
            let ok = if v1 {
                fstype == "cgroup" && opts.split(',').any(|o| o == "freezer")
            } else {
                fstype == "cgroup2"
            };
            ok.then(|| PathBuf::from(mountpoint))
        })
        .ok_or_else(|| {
            none("the freezer cgroup hierarchy is not mounted in the daemon's view".into())
        })?;
    // The sandbox's own directory: the path up to the component naming it.
    let mut dir = mount;
    let mut found = false;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        if comp == ".." {
            return Err(none(format!(
                "the sandbox's cgroup path {rel:?} is not plain"
            )));
        }
        dir.push(comp);
        if comp.contains(id) {
            found = true;
            break;
        }
    }
    if !found {
        return Err(none(format!(
            "the sandbox's cgroup ({rel}) does not name it; refusing to freeze a cgroup it does not own"
        )));
    }
    Ok((dir, v1))
}

fn write(path: &Path, value: &str) -> Result<(), FreezeError> {
    std::fs::write(path, value).map_err(|source| FreezeError::Io {
        what: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Freezes (`frozen`) or thaws the cgroup of the sandbox whose init is
/// `pid` (a host pid) and whose id is `id`; returns once the change has
/// taken effect.
pub fn set_frozen(pid: i32, id: &str, frozen: bool) -> Result<(), FreezeError> {
    let (dir, v1) = freezer_dir(pid, id)?;
    let (file, value, check, want): (&str, &str, &str, &str) = if v1 {
        let v = if frozen { "FROZEN" } else { "THAWED" };
        ("freezer.state", v, "freezer.state", v)
    } else {
        (
            "cgroup.freeze",
            if frozen { "1" } else { "0" },
            "cgroup.events",
            if frozen { "frozen 1" } else { "frozen 0" },
        )
    };
    write(&dir.join(file), value)?;
    let start = Instant::now();
    loop {
        let now = std::fs::read_to_string(dir.join(check)).unwrap_or_default();
        if now.lines().any(|l| l.trim() == want) {
            return Ok(());
        }
        if start.elapsed() > SETTLE {
            if frozen {
                let _ = write(&dir.join(file), if v1 { "THAWED" } else { "0" });
            }
            return Err(FreezeError::Stuck(dir));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refuses_a_cgroup_that_does_not_name_the_sandbox() {
        // This test process's own cgroup names no sandbox.
        let e = super::freezer_dir(std::process::id() as i32, "nosuchsandbox0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not name it") || e.contains("no freezer"),
            "{e}"
        );
    }
}
