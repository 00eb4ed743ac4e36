//! What an ordinary user's sandboxes have: which limits hold and how (the
//! line `stockade run` prints at start, and `stockade doctor`), and the
//! usual reasons a host refuses them, each with its exact fix.
//!
//! Detection reads files under a root directory (`/` on a real host), so
//! the tests give it fake `/proc/sys` values.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stockade_cgroup::Version;

/// How each limit of a rootless sandbox is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsSummary {
    /// Enforced by the kernel: cannot be exceeded.
    pub kernel: Vec<&'static str>,
    /// Enforced by the supervisor: measured (or timed) and the sandbox
    /// killed once over.
    pub supervisor: Vec<&'static str>,
    /// Not enforced.
    pub none: Vec<&'static str>,
}

/// The limits of a rootless sandbox on cgroup driver `version` (a
/// delegated v2 subtree, or [`Version::Polled`]).
pub fn limits_summary(version: Version) -> LimitsSummary {
    match version {
        Version::Polled => LimitsSummary {
            kernel: vec!["processes (RLIMIT_NPROC in the sandbox's user namespace)"],
            supervisor: vec![
                "time (deadline)",
                "memory (resident memory polled every 200 ms; can overshoot between samples)",
                "disk (polled)",
            ],
            none: vec!["cpu"],
        },
        Version::V1 | Version::V2 => LimitsSummary {
            kernel: vec!["cpu", "memory", "processes (delegated cgroup)"],
            supervisor: vec!["time (deadline)", "disk (polled)"],
            none: vec![],
        },
    }
}

impl LimitsSummary {
    /// One line: `kernel: …; supervisor: …; not enforced: …`.
    pub fn line(&self) -> String {
        let part = |name: &str, v: &[&str]| {
            format!(
                "{name}: {}",
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(", ")
                }
            )
        };
        [
            part("enforced by the kernel", &self.kernel),
            part("by the supervisor", &self.supervisor),
            part("not enforced", &self.none),
        ]
        .join("; ")
    }
}

/// The line `stockade run` prints (stderr) when started by an ordinary
/// user.
pub fn start_line() -> String {
    let version = stockade_cgroup::Driver::detect()
        .map(|d| d.version())
        .unwrap_or(Version::Polled);
    let ids = match stockade_isolate::rootless::detect() {
        stockade_isolate::rootless::RootlessIds::Subordinate { uids, .. } => {
            format!("subordinate ids {}+{}", uids.start, uids.count)
        }
        stockade_isolate::rootless::RootlessIds::Single => {
            "a single id: files in /workspace are yours, every other id shows as nobody".into()
        }
    };
    format!(
        "stockade: rootless ({ids}); limits {}",
        limits_summary(version).line()
    )
}

/// The caller, as doctor needs it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Option<String>,
    pub uid: u32,
    /// `STOCKADE_CGROUP_ROOT` given.
    pub cgroup_root: bool,
}

/// A reason this host refuses (part of) a rootless sandbox, with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether `stockade run` cannot work at all without the fix.
    pub fatal: bool,
    pub problem: String,
    pub fix: String,
}

fn read(root: &Path, p: &str) -> Option<String> {
    std::fs::read_to_string(root.join(p.trim_start_matches('/')))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Everything doctor finds wrong for `caller`'s rootless sandboxes on the
/// host whose files are under `root`.
pub fn findings(root: &Path, caller: &Caller) -> Vec<Finding> {
    let mut out = Vec::new();
    let who = caller
        .name
        .clone()
        .unwrap_or_else(|| caller.uid.to_string());
    if read(
        root,
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    )
    .as_deref()
        == Some("1")
    {
        out.push(Finding {
            fatal: true,
            problem: "AppArmor forbids unprivileged user namespaces \
                      (kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10 and later)"
                .into(),
            fix: "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (and put \
                  `kernel.apparmor_restrict_unprivileged_userns=0` in /etc/sysctl.d/60-stockade.conf \
                  to keep it), or give the stockade binary an AppArmor profile with `userns,`"
                .into(),
        });
    }
    if read(root, "/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        out.push(Finding {
            fatal: true,
            problem: "unprivileged user namespaces are turned off \
                      (kernel.unprivileged_userns_clone=0, Debian's switch)"
                .into(),
            fix: "sudo sysctl -w kernel.unprivileged_userns_clone=1 (and put \
                  `kernel.unprivileged_userns_clone=1` in /etc/sysctl.d/60-stockade.conf to keep it)"
                .into(),
        });
    }
    if read(root, "/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        out.push(Finding {
            fatal: true,
            problem: "no user namespaces may be created (user.max_user_namespaces=0)".into(),
            fix: "sudo sysctl -w user.max_user_namespaces=15000 (and put \
                  `user.max_user_namespaces=15000` in /etc/sysctl.d/60-stockade.conf to keep it)"
                .into(),
        });
    }
    let subs =
        stockade_isolate::rootless::subordinate_ranges(root, caller.name.as_deref(), caller.uid);
    if subs.is_none() {
        out.push(Finding {
            fatal: false,
            problem: format!(
                "{who} has no subordinate ids (at least {} in both /etc/subuid and /etc/subgid): \
                 sandboxes get a single id, so every file not yours shows as nobody inside and \
                 your supplementary groups stay with the sandbox",
                stockade_isolate::rootless::MIN_SUBIDS
            ),
            fix: format!(
                "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {who} \
                 (pick a range no other user's /etc/subuid entry overlaps)"
            ),
        });
    } else if !has_helpers(root) {
        out.push(Finding {
            fatal: true,
            problem: "newuidmap/newgidmap are missing: your subordinate ids cannot be mapped"
                .into(),
            fix: "sudo apt-get install uidmap (Fedora: shadow-utils)".into(),
        });
    }
    if !caller.cgroup_root {
        out.push(Finding {
            fatal: false,
            problem: "no delegated cgroup: memory is polled (the sandbox is killed after a sample \
                      over the limit), processes are capped by RLIMIT_NPROC, cpu is not limited"
                .into(),
            fix: "on cgroup v2 with systemd, run stockade inside your user manager, whose \
                  delegated subtree it then finds: systemd-run --user --scope stockade run … \
                  (or name a subtree: STOCKADE_CGROUP_ROOT=DIR; cgroup v1 hosts cannot \
                  delegate: boot with systemd.unified_cgroup_hierarchy=1)"
                .into(),
        });
    }
    if !device_usable(root, "dev/fuse", caller.uid) {
        out.push(Finding {
            fatal: false,
            problem: "/dev/fuse is missing or not open to you: --overlay-root cannot work \
                      (it is served by fuse-overlayfs as an ordinary user)"
                .into(),
            fix: "sudo chmod 0666 /dev/fuse (Debian's default mode with udev; sudo modprobe fuse \
                  if it is missing); in a container, start it with --device /dev/fuse"
                .into(),
        });
    }
    if !["usr/bin", "bin", "usr/local/bin"].iter().any(|d| {
        root.join(d)
            .join(stockade_isolate::fuseov::PROGRAM)
            .exists()
    }) {
        out.push(Finding {
            fatal: false,
            problem: "fuse-overlayfs is missing: --overlay-root cannot work (as an ordinary user \
                      the copy-on-write root is served by it)"
                .into(),
            fix: "sudo apt-get install fuse-overlayfs (Fedora: dnf install fuse-overlayfs)".into(),
        });
    }
    if !device_usable(root, "dev/net/tun", caller.uid) {
        out.push(Finding {
            fatal: false,
            problem: "/dev/net/tun is missing or not open to you: --net allowlist and --net open \
                      cannot work (--net none does)"
                .into(),
            fix: "sudo chmod 0666 /dev/net/tun (Debian's default mode; opening it grants \
                  nothing outside your own network namespaces); in a container, start it with \
                  --device /dev/net/tun"
                .into(),
        });
    }
    out
}

fn has_helpers(root: &Path) -> bool {
    let dirs = ["usr/bin", "bin", "usr/sbin", "sbin"];
    ["newuidmap", "newgidmap"]
        .iter()
        .all(|h| dirs.iter().any(|d| root.join(d).join(h).exists()))
}

/// Whether `uid` may open the device `dev` (`dev/net/tun`, `dev/fuse`)
/// for reading and writing, judged from its mode and owner (opening it as
/// a test would need a device).
fn device_usable(root: &Path, dev: &str, uid: u32) -> bool {
    let Ok(m) = std::fs::metadata(root.join(dev)) else {
        return false;
    };
    let mode = m.mode();
    mode & 0o006 == 0o006 || (m.uid() == uid && mode & 0o600 == 0o600)
}

/// The caller of this process.
pub fn caller() -> Caller {
    let uid = nix::unistd::getuid();
    Caller {
        name: nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name),
        uid: uid.as_raw(),
        cgroup_root: stockade_cgroup::root_configured(),
    }
}

/// The host's root, for [`findings`].
pub fn host_root() -> PathBuf {
    PathBuf::from("/")
}

/// Controllers a delegated subtree must offer for the kernel to enforce
/// a rootless sandbox's limits.
const DELEGATED_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The cgroup v2 subtree delegated to `uid` that this process runs in —
/// what systemd's `user@UID.service` (or `systemd-run --user --scope`)
/// gives — found without `STOCKADE_CGROUP_ROOT`: starting at the process's
/// own cgroup (`self_cgroup`, the `0::` line of `/proc/self/cgroup`,
/// below `mount`), the topmost ancestor whose directory and `cgroup.procs`
/// are `uid`'s, if it offers memory, pids and cpu. The supervisor runs
/// below it, so the kernel lets it move sandboxes' processes within it.
pub fn delegated_cgroup(mount: &Path, self_cgroup: &str, uid: u32) -> Option<PathBuf> {
    let rel = self_cgroup.trim().trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
        return None;
    }
    let owned = |d: &Path| {
        let dir = std::fs::symlink_metadata(d).ok()?;
        let procs = std::fs::symlink_metadata(d.join("cgroup.procs")).ok()?;
        Some(dir.is_dir() && dir.uid() == uid && procs.uid() == uid)
    };
    let mut best = None;
    let mut dir = mount.join(rel);
    while dir.starts_with(mount) && dir != mount {
        if owned(&dir) != Some(true) {
            break;
        }
        best = Some(dir.clone());
        if !dir.pop() {
            break;
        }
    }
    let best = best?;
    let offered = std::fs::read_to_string(best.join("cgroup.controllers")).ok()?;
    let offered: Vec<&str> = offered.split_whitespace().collect();
    DELEGATED_CONTROLLERS
        .iter()
        .all(|c| offered.contains(c))
        .then_some(best)
}

/// [`delegated_cgroup`] on this host: `/sys/fs/cgroup` when it is
/// cgroup2, this process's cgroup, the real uid.
pub fn host_delegated_cgroup() -> Option<PathBuf> {
    let mount = Path::new("/sys/fs/cgroup");
    let fs = nix::sys::statfs::statfs(mount).ok()?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    delegated_cgroup(mount, rel, nix::unistd::getuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A cgroup directory with a `cgroup.procs` file, both owned by `uid`.
    fn cg(dir: &Path, uid: u32, controllers: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        std::os::unix::fs::chown(dir, Some(uid), None).unwrap();
        std::os::unix::fs::chown(dir.join("cgroup.procs"), Some(uid), None).unwrap();
    }

    #[test]
    fn the_delegated_subtree_is_the_topmost_ancestor_the_user_owns() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to give files to another uid");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        let slice = m.join("user.slice/user-1500.slice");
        cg(&m.join("user.slice"), 0, "cpu memory pids");
        cg(&slice, 0, "cpu memory pids");
        let service = slice.join("user@1500.service");
        cg(&service, 1500, "cpu io memory pids");
        cg(&service.join("app.slice"), 1500, "cpu memory pids");
        cg(&service.join("app.slice/run-1.scope"), 1500, "");
        let own = "/user.slice/user-1500.slice/user@1500.service/app.slice/run-1.scope\n";
        assert_eq!(delegated_cgroup(m, own, 1500), Some(service.clone()));
        // Another user, or a session scope root owns, gets none.
        assert_eq!(delegated_cgroup(m, own, 1501), None);
        cg(&slice.join("session-3.scope"), 0, "");
        assert_eq!(
            delegated_cgroup(m, "/user.slice/user-1500.slice/session-3.scope", 1500),
            None
        );
        // A subtree that does not offer every controller is not used.
        std::fs::write(service.join("cgroup.controllers"), "cpu pids").unwrap();
        assert_eq!(delegated_cgroup(m, own, 1500), None);
        // Nothing outside the mount, whatever the line says.
        assert_eq!(delegated_cgroup(m, "/../../etc", 1500), None);
        assert_eq!(delegated_cgroup(m, "/", 1500), None);
    }

    fn fake(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let path = t.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        t
    }

    fn me() -> Caller {
        Caller {
            name: Some("rl".into()),
            uid: 1500,
            cgroup_root: false,
        }
    }

    fn problems(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.problem.as_str()).collect()
    }

    #[test]
    fn each_sysctl_refusal_is_named_with_its_fix() {
        let host = fake(&[
            (
                "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
                "1\n",
            ),
            ("proc/sys/kernel/unprivileged_userns_clone", "0\n"),
            ("proc/sys/user/max_user_namespaces", "0\n"),
        ]);
        let f = findings(host.path(), &me());
        let fixes: Vec<&str> = f
            .iter()
            .filter(|f| f.fatal)
            .map(|f| f.fix.as_str())
            .collect();
        assert_eq!(fixes.len(), 3, "{f:?}");
        assert!(fixes[0].contains("kernel.apparmor_restrict_unprivileged_userns=0"));
        assert!(fixes[1].contains("kernel.unprivileged_userns_clone=1"));
        assert!(fixes[2].contains("user.max_user_namespaces=15000"));
        // Permissive values are no finding.
        let ok = fake(&[
            (
                "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
                "0\n",
            ),
            ("proc/sys/kernel/unprivileged_userns_clone", "1\n"),
            ("proc/sys/user/max_user_namespaces", "63000\n"),
        ]);
        assert!(findings(ok.path(), &me()).iter().all(|f| !f.fatal));
    }

    #[test]
    fn subordinate_ids_helpers_cgroup_and_tun_are_checked() {
        let host = fake(&[("etc/subuid", "other:100000:65536\n")]);
        let f = findings(host.path(), &me());
        let p = problems(&f);
        assert!(p.iter().any(|p| p.contains("no subordinate ids")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("no delegated cgroup")));
        assert!(p.iter().any(|p| p.contains("/dev/net/tun")));
        assert!(p.iter().any(|p| p.contains("/dev/fuse")));
        assert!(p.iter().any(|p| p.contains("fuse-overlayfs is missing")));
        assert!(f
            .iter()
            .any(|f| f.fix.contains("chmod 0666 /dev/fuse") && !f.fix.contains("tun")));
        assert!(f.iter().any(
            |f| f.fix.contains("usermod --add-subuids 100000-165535") && f.fix.contains(" rl ")
        ));

        // Ranges but no helpers: fatal, with the package to install.
        let host = fake(&[
            ("etc/subuid", "rl:100000:65536\n"),
            ("etc/subgid", "rl:100000:65536\n"),
            ("dev/net/tun", ""),
            ("dev/fuse", ""),
            ("usr/bin/fuse-overlayfs", ""),
        ]);
        for dev in ["dev/net/tun", "dev/fuse"] {
            std::fs::set_permissions(
                host.path().join(dev),
                std::fs::Permissions::from_mode(0o666),
            )
            .unwrap();
        }
        let f = findings(
            host.path(),
            &Caller {
                cgroup_root: true,
                ..me()
            },
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].fatal && f[0].fix.contains("apt-get install uidmap"));
        // With the helpers nothing is left.
        std::fs::create_dir_all(host.path().join("usr/bin")).unwrap();
        std::fs::write(host.path().join("usr/bin/newuidmap"), "").unwrap();
        std::fs::write(host.path().join("usr/bin/newgidmap"), "").unwrap();
        let f = findings(
            host.path(),
            &Caller {
                cgroup_root: true,
                ..me()
            },
        );
        assert!(f.is_empty(), "{f:?}");
        // A tun device only root may open is a finding.
        std::fs::set_permissions(
            host.path().join("dev/net/tun"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(problems(&findings(
            host.path(),
            &Caller {
                cgroup_root: true,
                ..me()
            }
        ))
        .iter()
        .any(|p| p.contains("/dev/net/tun")));
    }

    #[test]
    fn the_summary_never_claims_cpu_without_a_cgroup() {
        let polled = limits_summary(Version::Polled);
        assert!(polled.none.contains(&"cpu"));
        assert!(!polled.kernel.iter().any(|k| k.starts_with("memory")));
        let line = polled.line();
        assert!(line.contains("not enforced: cpu"), "{line}");
        assert!(limits_summary(Version::V2).none.is_empty());
    }
}
