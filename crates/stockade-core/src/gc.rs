//! Garbage collection of what dead supervisors left behind.
//!
//! A supervisor holds an exclusive `flock` on its sandbox's `lock` file for
//! as long as it lives, and the kernel drops that lock when the process
//! dies, however it dies. So a sandbox directory whose lock can be taken
//! belongs to nobody: its cgroup is killed and removed and its directory
//! deleted. Mounts and namespaces need no collecting: they live only in the
//! sandbox's own mount namespace and die with its last process, which the
//! parent-death signal and the cgroup kill guarantee.

use std::fs::{self, File};
use std::time::Duration;

use stockade_cgroup::Driver;

use crate::state::{flock, remove_tree, StateDir};

/// What one collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcSummary {
    pub sandboxes: Vec<String>,
    pub cgroups: Vec<String>,
    /// Scratch subvolumes whose owner is gone (see `scratch.rs`).
    pub scratch: Vec<String>,
}

/// Directories younger than this without a lock file are being created
/// right now by another supervisor and are left alone.
const CREATING_GRACE: Duration = Duration::from_secs(60);

/// Removes every sandbox whose supervisor is gone, and every empty
/// stockade cgroup that has no sandbox directory.
pub fn collect(state: &StateDir, cgroups: Option<&Driver>) -> GcSummary {
    let mut summary = GcSummary::default();
    let mut live = Vec::new();
    if let Ok(entries) = fs::read_dir(state.sandboxes()) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let stale = match File::open(path.join("lock")) {
                Ok(f) => flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok(),
                Err(_) => e
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > CREATING_GRACE)
                    .unwrap_or(true),
            };
            if !stale {
                live.push(id);
                continue;
            }
            if let Some(cg) = cgroups.and_then(|d| d.open_existing(&id)) {
                let _ = cg.destroy();
            }
            if remove_keeping_lock_last(&path).is_ok() {
                summary.sandboxes.push(id);
            }
        }
    }
    if let Some(driver) = cgroups {
        for name in driver.list() {
            if live.contains(&name) || summary.sandboxes.contains(&name) {
                continue;
            }
            // A cgroup is created after its sandbox's directory and
            // removed before it, so one without a directory is stale —
            // unless it belongs to a stockade using another state
            // directory. A dead supervisor's sandbox dies with it (parent
            // death signal), so only empty groups are ours to remove.
            if state.sandboxes().join(&name).exists() {
                continue;
            }
            if let Some(cg) = driver.open_existing(&name) {
                // A group that was just created is about to receive its
                // sandbox (possibly one of another state directory).
                let young = cg
                    .paths()
                    .first()
                    .and_then(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
                    .map(|t| t.elapsed().unwrap_or_default() < CREATING_GRACE)
                    .unwrap_or(false);
                if !young && cg.remove_if_empty().unwrap_or(false) {
                    summary.cgroups.push(name);
                }
            }
        }
    }
    // Capped scratch subvolumes of sandboxes (and tasks) that are gone,
    // whatever state directory they used.
    if let Some(fs) = crate::scratch::ScratchFs::existing() {
        summary.scratch = fs.collect(&stockade_isolate::slots::dir(), false);
    }
    summary
}

/// Removes a stale sandbox directory with its `lock` file last: a
/// removal cut short (a killed cleaner, a daemon stopping) leaves a
/// directory that still has its lock, which the next collection takes
/// for stale again, rather than one without, which it would take for a
/// sandbox being created and leave for a minute.
fn remove_keeping_lock_last(dir: &std::path::Path) -> std::io::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                if e.file_name() != "lock" {
                    remove_tree(&e.path())?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    remove_tree(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_unlocked_sandboxes_and_keeps_locked_ones() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::open(root.path()).unwrap();
        let live = state.create_sandbox("live-1").unwrap();
        let dead = state.create_sandbox("dead-1").unwrap();
        fs::write(dead.path.join("junk"), b"x").unwrap();
        let dead_path = dead.path.clone();
        drop(dead); // the lock goes with the "supervisor"
        let summary = collect(&state, None);
        assert_eq!(summary.sandboxes, vec!["dead-1".to_string()]);
        assert!(!dead_path.exists());
        assert!(live.path.exists());
    }

    #[test]
    fn never_takes_a_sandbox_being_created() {
        // Collection runs concurrently with new sandboxes (a detached
        // cleaner of one run collects while the next run starts): a
        // directory caught between its creation and its lock must survive.
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::open(root.path()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let failure = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    collect(&state, None);
                }
            });
            let failure = (0..3000).find_map(|i| {
                let made = state
                    .create_sandbox(&format!("sb-{i}"))
                    .and_then(|dir| dir.subdir("workspace", None).map(|_| dir))
                    .and_then(|dir| dir.remove());
                made.err()
                    .map(|e| format!("sandbox {i} was collected while alive: {e}"))
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            failure
        });
        assert_eq!(failure, None);
    }
}
