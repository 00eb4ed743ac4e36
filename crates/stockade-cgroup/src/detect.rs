//! Finding the cgroup layout of the host at run time.
//!
//! Pure v2 is recognised by the file-system magic of `/sys/fs/cgroup` (or of the
//! directory given to [`set_root`], `STOCKADE_CGROUP_ROOT` in the CLI). Anything else is treated as v1, and the
//! controllers' mount points come from `/proc/self/mountinfo`, because
//! distributions disagree on them: some co-mount `cpu,cpuacct` in one
//! hierarchy, others (and this project's CI machine) mount each separately.

use std::io;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};

use crate::CgroupError;

/// Where a host mounts its cgroup2 root on every distribution we know.
pub(crate) const DEFAULT_V2_ROOT: &str = "/sys/fs/cgroup";

/// Environment variable that points stockade at another cgroup2 directory,
/// for example a subtree delegated to an unprivileged user. Read by the
/// program's entry point, which passes it to [`set_root`].
pub const ROOT_ENV: &str = "STOCKADE_CGROUP_ROOT";

static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Whether a cgroup2 directory was given to [`set_root`] (a delegated
/// subtree, for an ordinary user).
pub fn root_configured() -> bool {
    ROOT.get().is_some_and(|r| r.is_some())
}

/// Points detection at another cgroup2 directory (`None`: the host's).
/// Set once, by the program's entry point, before the first detection;
/// the first call wins.
pub fn set_root(root: Option<PathBuf>) {
    let _ = ROOT.set(root.filter(|r| !r.as_os_str().is_empty()));
}

/// The v1 controllers stockade uses, in the order `describe` lists them.
/// `cpuset`, `devices`, `blkio` and named hierarchies are left alone.
pub(crate) const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

/// One line of `/proc/self/mountinfo`, reduced to what detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_options: String,
}

/// A mounted v1 hierarchy and the controllers of ours that it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub mount: PathBuf,
    pub controllers: Vec<&'static str>,
}

impl Hierarchy {
    pub(crate) fn has(&self, controller: &str) -> bool {
        self.controllers.contains(&controller)
    }
}

/// The layout detection settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    V1(Vec<Hierarchy>),
    V2(PathBuf),
}

/// Undoes the octal escapes (`\040` for a space and so on) that the kernel
/// applies to paths in mountinfo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text. Lines that do not have the documented shape are
/// skipped rather than failing detection as a whole.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // "id parent major:minor root mount-point options [optional...] - fstype source super-options"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_options = right.next().unwrap_or("");
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
                super_options: super_options.to_owned(),
            })
        })
        .collect()
}

/// The v1 hierarchies that carry at least one controller we use. When a
/// controller is mounted more than once (bind mounts, containers), the first
/// mount wins.
pub(crate) fn v1_hierarchies(mounts: &[MountEntry]) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for mount in mounts.iter().filter(|m| m.fstype == "cgroup") {
        let controllers: Vec<&'static str> = V1_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| mount.super_options.split(',').any(|o| o == *c))
            .filter(|c| !found.iter().any(|h| h.has(c)))
            .collect();
        if !controllers.is_empty() {
            found.push(Hierarchy {
                mount: mount.mount_point.clone(),
                controllers,
            });
        }
    }
    found
}

/// Whether `path` is on a cgroup2 file system.
pub(crate) fn is_cgroup2(path: &Path) -> nix::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// Decides the layout from the environment override, the file-system type
/// of the default root and, for v1, the mount table. The probes are passed
/// in so the decision can be tested without a kernel.
pub(crate) fn plan(
    env_root: Option<PathBuf>,
    is_v2: impl Fn(&Path) -> nix::Result<bool>,
    mountinfo: impl FnOnce() -> io::Result<String>,
) -> Result<Plan, CgroupError> {
    if let Some(root) = env_root {
        return match is_v2(&root) {
            Ok(true) => Ok(Plan::V2(root)),
            Ok(false) => Err(CgroupError::RootNotCgroup2 {
                path: root,
                source: None,
            }),
            Err(e) => Err(CgroupError::RootNotCgroup2 {
                path: root,
                source: Some(e),
            }),
        };
    }
    let default_root = Path::new(DEFAULT_V2_ROOT);
    if matches!(is_v2(default_root), Ok(true)) {
        return Ok(Plan::V2(default_root.to_path_buf()));
    }
    let text = mountinfo().map_err(|source| CgroupError::Mountinfo { source })?;
    let hierarchies = v1_hierarchies(&parse_mountinfo(&text));
    if hierarchies.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    Ok(Plan::V1(hierarchies))
}

/// The layout of this host.
pub(crate) fn detect_plan() -> Result<Plan, CgroupError> {
    let root = ROOT.get().cloned().flatten();
    plan(root, is_cgroup2, || {
        crate::fsio::read_sized(Path::new("/proc/self/mountinfo"), 16 << 10)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian-style hybrid with every controller on its own mount, as on the
    /// CI machine (cpu and cpuacct separate).
    const HYBRID_SEPARATE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// systemd hybrid with `cpu,cpuacct` co-mounted and optional fields.
    const HYBRID_COMOUNTED: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
33 25 0:30 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,freezer
34 25 0:31 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,net_cls,net_prio
";

    /// A modern pure-v2 host.
    const PURE_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 18 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn hierarchy(mount: &str, controllers: &[&'static str]) -> Hierarchy {
        Hierarchy {
            mount: PathBuf::from(mount),
            controllers: controllers.to_vec(),
        }
    }

    #[test]
    fn finds_each_controller_on_its_own_mount() {
        let found = v1_hierarchies(&parse_mountinfo(HYBRID_SEPARATE));
        assert_eq!(
            found,
            vec![
                hierarchy("/sys/fs/cgroup/cpu", &["cpu"]),
                hierarchy("/sys/fs/cgroup/cpuacct", &["cpuacct"]),
                hierarchy("/sys/fs/cgroup/memory", &["memory"]),
                hierarchy("/sys/fs/cgroup/freezer", &["freezer"]),
                hierarchy("/sys/fs/cgroup/pids", &["pids"]),
            ]
        );
    }

    #[test]
    fn finds_cpu_and_cpuacct_co_mounted_in_one_hierarchy() {
        let found = v1_hierarchies(&parse_mountinfo(HYBRID_COMOUNTED));
        assert_eq!(
            found,
            vec![
                hierarchy("/sys/fs/cgroup/cpu,cpuacct", &["cpu", "cpuacct"]),
                hierarchy("/sys/fs/cgroup/memory", &["memory"]),
                hierarchy("/sys/fs/cgroup/pids", &["pids"]),
                hierarchy("/sys/fs/cgroup/freezer", &["freezer"]),
            ]
        );
    }

    #[test]
    fn pure_v2_mount_table_has_no_v1_hierarchy() {
        let mounts = parse_mountinfo(PURE_V2);
        assert!(v1_hierarchies(&mounts).is_empty());
        assert_eq!(mounts[1].fstype, "cgroup2");
        assert_eq!(mounts[1].mount_point, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn first_mount_of_a_controller_wins_over_bind_mounts() {
        let text = "\
1 0 0:1 / /a/memory rw - cgroup cgroup rw,memory
2 0 0:1 / /b/memory rw - cgroup cgroup rw,memory
";
        let found = v1_hierarchies(&parse_mountinfo(text));
        assert_eq!(found, vec![hierarchy("/a/memory", &["memory"])]);
    }

    #[test]
    fn unescapes_spaces_in_mount_points_and_skips_garbage_lines() {
        let text = "garbage\n1 0 0:1 / /mnt/my\\040cgroups rw - cgroup cgroup rw,pids\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/my cgroups"));
    }

    #[test]
    fn plan_prefers_cgroup2_at_the_default_root() {
        let plan = plan(None, |_| Ok(true), || panic!("mountinfo not needed")).unwrap();
        assert_eq!(plan, Plan::V2(PathBuf::from(DEFAULT_V2_ROOT)));
    }

    #[test]
    fn plan_falls_back_to_v1_mounts_when_the_root_is_tmpfs() {
        let plan = plan(None, |_| Ok(false), || Ok(HYBRID_SEPARATE.into())).unwrap();
        assert!(matches!(plan, Plan::V1(h) if h.len() == 5));
    }

    #[test]
    fn plan_uses_the_environment_root_only_if_it_is_cgroup2() {
        let root = PathBuf::from("/sys/fs/cgroup/delegated");
        let ok = plan(Some(root.clone()), |_| Ok(true), || unreachable!()).unwrap();
        assert_eq!(ok, Plan::V2(root.clone()));
        let err = plan(Some(root), |_| Ok(false), || unreachable!()).unwrap_err();
        assert!(err.to_string().contains("STOCKADE_CGROUP_ROOT"), "{err}");
    }

    #[test]
    fn plan_reports_a_host_without_usable_cgroups() {
        let err = plan(None, |_| Ok(false), || Ok(PURE_V2.into())).unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy));
    }
}
