//! Landlock in every container (init, `exec`'d processes and the hooks
//! that run inside): stockade's second wall under the mount table.
//!
//! Everything the container sees may be read and executed. Writes:
//! - with a writable root, everywhere beneath it. A Landlock rule reaches
//!   every mount beneath its directory, so `/proc` and `/sys` cannot be
//!   carved out of a rule on `/`; the alternative — rules on each
//!   top-level entry but those — would make the top level itself
//!   unwritable (`mkdir /app` in an entrypoint or a `podman build` step),
//!   which runc allows. There the mount flags (sysfs always read-only,
//!   the engine's `readonlyPaths`) and DAC in the user namespace do that
//!   work;
//! - with a read-only root (`root.readonly`), only beneath the config's
//!   mounts that are not read-only and not `proc`, `sysfs` or `cgroup`
//!   (volumes, tmpfs such as `/dev`, `/dev/shm`, `/tmp`, devpts, mqueue)
//!   and the device nodes stockade binds in (`/dev/null`, …). Nothing
//!   under `/proc` or `/sys` is writable then, even where the container's
//!   root owns the file (the sysctls of its own network namespace) and
//!   the mount is writable.
//!
//! Signals are not scoped: the container's pid namespace already keeps
//! them in, and `exec`'d processes are Landlock domains of their own that
//! must still signal init's (`exec … kill 1`). Abstract unix sockets are
//! scoped only in the host's network namespace (no `network` entry in the
//! config), where they would otherwise reach the host's (a shim's
//! abstract socket); in a network namespace of its own the container's
//! abstract sockets are already its own.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{NamespaceKind, Spec};

/// What the container's ruleset is built from (kept in `state.json` for
/// `exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Whether the root is writable (not `root.readonly`): then
    /// everything beneath it is.
    pub root_writable: bool,
    /// Writable mounts and device nodes, as the container sees them.
    pub writable: Vec<PathBuf>,
    /// Scope abstract unix sockets (the host's network namespace).
    pub scope_abstract: bool,
}

/// Where a read-only root's writable mounts are never writable.
const NEVER: &[&str] = &["/proc", "/sys"];

/// Device nodes every container gets (`mounts::default_devices`).
pub const DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

fn read_only(options: &[String]) -> bool {
    options.iter().any(|o| o == "ro")
}

/// The plan for a config.
pub fn plan(spec: &Spec) -> Plan {
    let mut writable: Vec<PathBuf> = Vec::new();
    for m in &spec.mounts {
        let kind = m.kind.as_deref().unwrap_or("bind");
        if matches!(kind, "proc" | "sysfs" | "cgroup" | "cgroup2") || read_only(&m.options) {
            continue;
        }
        writable.push(m.destination.clone().into());
    }
    writable.extend(DEFAULT_DEVICES.iter().map(PathBuf::from));
    writable.extend(spec.linux().devices.iter().map(|d| PathBuf::from(&d.path)));
    Plan {
        root_writable: !spec.root.as_ref().is_some_and(|r| r.readonly),
        writable,
        scope_abstract: spec.namespace(NamespaceKind::Network).is_none(),
    }
}

impl Plan {
    /// The paths with write rights (as the container sees them).
    pub fn paths(&self) -> Vec<PathBuf> {
        if self.root_writable {
            return vec!["/".into()];
        }
        let mut out = self.writable.clone();
        out.retain(|p| !NEVER.iter().any(|n| p.starts_with(n)));
        out
    }

    /// Builds the ruleset (not enforced yet), or `None` on a kernel
    /// without Landlock. Paths are resolved in the caller's root.
    pub fn build(
        &self,
    ) -> Result<Option<OwnedFd>, stockade_isolate::landlock_rules::LandlockError> {
        stockade_isolate::landlock_rules::build_scoped(&self.paths(), self.scope_abstract, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn writable_mounts_and_devices_only() {
        let s = spec(
            r#"{"root": {"path": "rootfs", "readonly": true},
                "mounts": [
                  {"destination": "/proc", "type": "proc", "source": "proc"},
                  {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                  {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
                  {"destination": "/data", "type": "bind", "source": "/x", "options": ["rbind", "ro"]},
                  {"destination": "/work", "type": "bind", "source": "/y", "options": ["rbind", "rw"]},
                  {"destination": "/proc/sys/x", "type": "tmpfs"}
                ],
                "linux": {"namespaces": [{"type": "network"}]}}"#,
        );
        let p = plan(&s);
        assert!(!p.root_writable);
        assert!(!p.scope_abstract);
        let paths = p.paths();
        assert!(paths.contains(&"/dev".into()));
        assert!(paths.contains(&"/work".into()));
        assert!(paths.contains(&"/dev/null".into()));
        assert!(!paths
            .iter()
            .any(|p| p.starts_with("/proc") || p.starts_with("/sys") || p.starts_with("/data")));
    }

    #[test]
    fn the_hosts_network_namespace_scopes_abstract_sockets() {
        let s = spec(r#"{"linux": {"namespaces": [{"type": "pid"}]}}"#);
        let p = plan(&s);
        assert!(p.scope_abstract);
        assert!(p.root_writable);
        assert_eq!(p.paths(), vec![PathBuf::from("/")]);
    }
}
