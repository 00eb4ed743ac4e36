//! A stand-in for the kernel's cgroup file systems, for unit tests.
//!
//! The drivers only create and remove directories (through [`DirOps`]) and
//! read and write files, so a temporary directory plus these two functions
//! imitating `mkdir` and `rmdir` lets the tests run the real driver code
//! without root. The imitation follows the kernel where it matters to the
//! drivers:
//!
//! - v2 `mkdir` populates the controller files a child gets from its
//!   parent's `cgroup.subtree_control`, so forgetting to enable a
//!   controller shows up as a missing `memory.max`, as it would for real.
//! - v1 `mkdir` populates the files of the hierarchy's controllers, listed
//!   in a `fake.controllers` file at the hierarchy's mount point.
//! - `rmdir` fails with `EBUSY` while `cgroup.procs` is non-empty or a
//!   child group exists.
//! - A `fake.noswap` file in any ancestor drops the swap control files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::detect::{Hierarchy, Plan};
use crate::fsio::DirOps;
use crate::Driver;

pub(crate) const OPS: DirOps = DirOps {
    mkdir: fake_mkdir,
    rmdir: fake_rmdir,
};

fn put(dir: &Path, files: &[(&str, &str)]) -> io::Result<()> {
    files
        .iter()
        .try_for_each(|(name, content)| fs::write(dir.join(name), content))
}

fn has_marker(dir: &Path, marker: &str) -> bool {
    dir.ancestors().any(|a| a.join(marker).exists())
}

/// Controllers of a v1 hierarchy, from the marker at its mount point.
fn v1_controllers(dir: &Path) -> Option<Vec<String>> {
    dir.ancestors().find_map(|a| {
        let text = fs::read_to_string(a.join("fake.controllers")).ok()?;
        Some(text.trim().split(',').map(str::to_owned).collect())
    })
}

fn fake_mkdir(dir: &Path) -> io::Result<()> {
    fs::create_dir(dir)?;
    put(dir, &[("cgroup.procs", "")])?;
    let no_swap = has_marker(dir, "fake.noswap");
    if let Some(controllers) = v1_controllers(dir) {
        for c in &controllers {
            populate_v1(dir, c, no_swap)?;
        }
        return Ok(());
    }
    // v2: a child gets what its parent distributes. The drivers write
    // "+memory +pids" into subtree_control; the real kernel would show the
    // names without "+", the fake simply strips it when reading.
    let parent = dir.parent().expect("a cgroup has a parent");
    let enabled: Vec<String> = fs::read_to_string(parent.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|w| w.trim_start_matches('+').to_owned())
        .collect();
    put(
        dir,
        &[
            ("cgroup.controllers", &enabled.join(" ")),
            ("cgroup.subtree_control", ""),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.kill", ""),
            ("cgroup.freeze", "0\n"),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ],
    )?;
    for c in &enabled {
        match c.as_str() {
            "memory" => {
                put(
                    dir,
                    &[
                        ("memory.max", "max\n"),
                        ("memory.current", "0\n"),
                        ("memory.peak", "0\n"),
                        ("memory.oom.group", "0\n"),
                        (
                            "memory.events",
                            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
                        ),
                    ],
                )?;
                if !no_swap {
                    put(dir, &[("memory.swap.max", "max\n")])?;
                }
            }
            "pids" => put(
                dir,
                &[
                    ("pids.max", "max\n"),
                    ("pids.current", "0\n"),
                    ("pids.peak", "0\n"),
                    ("pids.events", "max 0\n"),
                ],
            )?,
            "cpu" => put(dir, &[("cpu.max", "max 100000\n")])?,
            _ => {}
        }
    }
    Ok(())
}

fn populate_v1(dir: &Path, controller: &str, no_swap: bool) -> io::Result<()> {
    match controller {
        "memory" => {
            put(
                dir,
                &[
                    ("memory.limit_in_bytes", "9223372036854771712\n"),
                    ("memory.usage_in_bytes", "0\n"),
                    ("memory.max_usage_in_bytes", "0\n"),
                    ("memory.kmem.tcp.limit_in_bytes", "9223372036854771712\n"),
                    ("memory.kmem.tcp.max_usage_in_bytes", "0\n"),
                    (
                        "memory.oom_control",
                        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                    ),
                    ("cgroup.event_control", ""),
                ],
            )?;
            if !no_swap {
                put(
                    dir,
                    &[("memory.memsw.limit_in_bytes", "9223372036854771712\n")],
                )?;
            }
            Ok(())
        }
        "pids" => put(
            dir,
            &[
                ("pids.max", "max\n"),
                ("pids.current", "0\n"),
                ("pids.peak", "0\n"),
                ("pids.events", "max 0\n"),
            ],
        ),
        "cpu" => put(
            dir,
            &[
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.cfs_quota_us", "-1\n"),
            ],
        ),
        "cpuacct" => put(dir, &[("cpuacct.usage", "0\n")]),
        "freezer" => put(dir, &[("freezer.state", "THAWED\n")]),
        _ => Ok(()),
    }
}

fn fake_rmdir(dir: &Path) -> io::Result<()> {
    let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
    let has_child = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_type().is_ok_and(|t| t.is_dir()));
    if !procs.trim().is_empty() || has_child {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    fs::remove_dir_all(dir)
}

/// A fake v2 root offering `controllers`, with nothing enabled yet.
pub(crate) fn v2_root(controllers: &str) -> (tempfile::TempDir, Driver) {
    let tmp = tempfile::tempdir().unwrap();
    put(
        tmp.path(),
        &[
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
        ],
    )
    .unwrap();
    let driver = Driver::from_plan(Plan::V2(tmp.path().to_path_buf()), OPS);
    (tmp, driver)
}

/// Fake v1 mounts, one per entry of `mounts` (each a comma-separated
/// controller list that also names the mount directory), found through a
/// generated mountinfo so that parsing is exercised as well.
pub(crate) fn v1_mounts(mounts: &[&str]) -> (tempfile::TempDir, Driver) {
    let tmp = tempfile::tempdir().unwrap();
    let mut mountinfo = String::new();
    for (i, controllers) in mounts.iter().enumerate() {
        let mount: PathBuf = tmp.path().join(controllers);
        fs::create_dir(&mount).unwrap();
        put(
            &mount,
            &[("fake.controllers", controllers), ("cgroup.procs", "")],
        )
        .unwrap();
        mountinfo.push_str(&format!(
            "{} 1 0:{} / {} rw,relatime - cgroup cgroup rw,{}\n",
            40 + i,
            40 + i,
            mount.display(),
            controllers
        ));
    }
    let hierarchies: Vec<Hierarchy> =
        crate::detect::v1_hierarchies(&crate::detect::parse_mountinfo(&mountinfo));
    assert_eq!(hierarchies.len(), mounts.len(), "{mountinfo}");
    let driver = Driver::from_plan(Plan::V1(hierarchies), OPS);
    (tmp, driver)
}

/// Reads a fake control file, trimmed.
pub(crate) fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
        .trim()
        .to_owned()
}
