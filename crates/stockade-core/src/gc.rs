//! Garbage collection of what dead supervisors left behind.
//!
//! A supervisor holds an exclusive `flock` on its sandbox's `lock` file for
//! as long as it lives, and the kernel drops that lock when the process
//! dies, however it dies. So a sandbox directory whose lock can be taken
//! belongs to nobody: its cgroup is killed and removed and its directory
//! deleted. Mounts and namespaces need no collecting: they live only in the
//! sandbox's own mount namespace and die with its last process, which the
//! parent-death signal and the cgroup kill guarantee.
//!
//! [`collect`] is what every supervisor and the daemon do after them;
//! [`gc`] is all of `stockade gc`: the collection, old generated `/etc`
//! copies, namespace pairs claimed by dead supervisors, and on request kept
//! task workspaces, the scratch filesystem and the namespace pool.

use std::fs::{self, File};
use std::path::PathBuf;
use std::time::Duration;

use stockade_cgroup::Driver;

use crate::scratch::{ScratchError, ScratchFs};
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

/// What [`gc`] does beyond the collection.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Also delete the workspaces `stockade task --keep` kept.
    pub drop_kept: bool,
    /// Also unmount the scratch filesystem and remove its image (refused
    /// while sandboxes use it).
    pub reset_scratch: bool,
    /// Also release every pooled namespace pair.
    pub drain_pool: bool,
    /// The hostname whose generated `/etc` copies stay (the policy's
    /// default); copies for any other go once nothing can see them.
    pub hostname: String,
    /// The namespace pool's directory.
    pub pool_dir: PathBuf,
    /// The directory of id slot locks.
    pub slot_dir: PathBuf,
}

impl Default for GcOptions {
    /// Nothing optional; the default hostname, the configured pool and
    /// slot directories.
    fn default() -> GcOptions {
        GcOptions {
            drop_kept: false,
            reset_scratch: false,
            drain_pool: false,
            hostname: stockade_policy::ProcessPolicy::default().hostname,
            pool_dir: stockade_isolate::nspool::dir(),
            slot_dir: stockade_isolate::slots::dir(),
        }
    }
}

/// What [`gc`] did. `None` for a step that was not asked for or had
/// nothing to work on (no scratch filesystem).
#[derive(Debug, Default)]
pub struct GcReport {
    /// The collection of dead supervisors' sandboxes, cgroups and scratch
    /// subvolumes.
    pub collected: GcSummary,
    /// Namespace pairs left claimed by dead supervisors, released.
    pub orphan_pairs: usize,
    /// Kept task workspaces deleted (`drop_kept`).
    pub kept_dropped: Option<Vec<String>>,
    /// The scratch filesystem's reset (`reset_scratch`). When it failed,
    /// gc stopped there: no pool drain followed.
    pub scratch_reset: Option<Result<(), ScratchError>>,
    /// Pooled namespace pairs released (`drain_pool`).
    pub drained: Option<usize>,
    /// The pid of the ordinary user's base namespace holder stopped
    /// (`drain_pool`).
    pub base_stopped: Option<i32>,
}

/// All of `stockade gc`, in order: [`collect`]; generated `/etc` copies
/// but the current ones (for `opts.hostname`, with and without network)
/// where nothing can see them any more; claims of dead supervisors in the
/// namespace pool; then what `opts` asks for.
pub fn gc(state: &StateDir, cgroups: Option<&Driver>, opts: &GcOptions) -> GcReport {
    let mut report = GcReport {
        collected: collect(state, cgroups),
        ..GcReport::default()
    };
    // Generated /etc copies are seen through bind mounts by running
    // sandboxes, so old ones go only when none is running.
    let dns = crate::prepare::egress_tun().dns;
    let idle = fs::read_dir(state.sandboxes())
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    if idle {
        stockade_isolate::etc::remove_stale(&state.root, &opts.hostname, dns);
    }
    // With a scratch filesystem the copies live there, shared by every
    // state directory's sandboxes.
    let scratch = ScratchFs::existing();
    if let Some(fs) = &scratch {
        if fs.idle() {
            stockade_isolate::etc::remove_stale(fs.root(), &opts.hostname, dns);
        }
    }
    // Claims of supervisors that were killed before their teardown.
    report.orphan_pairs = stockade_isolate::nspool::release_orphans(&opts.pool_dir, &opts.slot_dir);
    if opts.drop_kept {
        report.kept_dropped = scratch.as_ref().map(|fs| fs.collect(&opts.slot_dir, true));
    }
    if opts.reset_scratch {
        if let Some(fs) = &scratch {
            let reset = fs.reset(&opts.slot_dir);
            let failed = reset.is_err();
            report.scratch_reset = Some(reset);
            if failed {
                return report;
            }
        }
    }
    if opts.drain_pool {
        report.drained = Some(stockade_isolate::nspool::drain(
            &opts.pool_dir,
            &opts.slot_dir,
        ));
        // An ordinary user's counterpart: the base user namespace's holder
        // (the next start makes another).
        if let Some(dir) = stockade_isolate::basens::dir() {
            let n = stockade_isolate::userpool::drain(dir);
            report.drained = Some(report.drained.unwrap_or(0) + n);
            report.base_stopped = stockade_isolate::basens::stop(dir);
        }
    }
    report
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

    /// Options for a test: its own (empty) pool and slot directories.
    fn test_options(dir: &std::path::Path) -> GcOptions {
        GcOptions {
            pool_dir: dir.join("nspool"),
            slot_dir: dir.join("ids"),
            ..GcOptions::default()
        }
    }

    #[test]
    fn gc_collects_and_removes_old_etc_copies_only_when_idle() {
        let root = tempfile::tempdir().unwrap();
        let places = tempfile::tempdir().unwrap();
        let state = StateDir::open(root.path()).unwrap();
        let opts = test_options(places.path());
        let dns = crate::prepare::egress_tun().dns;
        let current =
            stockade_isolate::etc::prepare(&state.root, &opts.hostname, Some(dns)).unwrap();
        let old = stockade_isolate::etc::prepare(&state.root, "old-name", None).unwrap();

        // A live sandbox may see the old copy: it stays.
        let live = state.create_sandbox("live-1").unwrap();
        let dead = state.create_sandbox("dead-1").unwrap();
        drop(dead);
        let report = gc(&state, None, &opts);
        assert_eq!(report.collected.sandboxes, vec!["dead-1".to_string()]);
        assert!(old.exists() && current.exists());
        assert_eq!(report.orphan_pairs, 0);
        // Nothing optional was asked for.
        assert!(report.kept_dropped.is_none());
        assert!(report.scratch_reset.is_none());
        assert!(report.drained.is_none());

        // Once nothing runs, only the current copies stay.
        live.remove().unwrap();
        let report = gc(&state, None, &opts);
        assert!(report.collected.sandboxes.is_empty());
        assert!(!old.exists());
        assert!(current.exists());
    }

    #[test]
    fn gc_drains_the_pool_when_asked() {
        let root = tempfile::tempdir().unwrap();
        let places = tempfile::tempdir().unwrap();
        let state = StateDir::open(root.path()).unwrap();
        let opts = GcOptions {
            drain_pool: true,
            ..test_options(places.path())
        };
        assert_eq!(gc(&state, None, &opts).drained, Some(0));
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
