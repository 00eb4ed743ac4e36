//! The resolved description of one sandbox, as the isolation layer needs
//! it: host paths already chosen, id maps and seccomp program built.
//! What runs inside is asked for separately ([`crate::proto::SpawnRequest`]).

use std::path::PathBuf;

use stockade_policy::BindMount;

use crate::idmap::IdMap;
use crate::seccomp::SeccompFilters;
use crate::tun::TunConfig;

/// Everything [`crate::launch`] needs to build and start a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Short unique id, `[a-z0-9-]+`.
    pub id: String,
    /// Host directory where the new root is assembled (an empty directory
    /// used only as a mount point inside the sandbox's mount namespace).
    pub staging: PathBuf,
    /// Host directory holding the generated `/etc` (see [`crate::etc`]).
    pub etc_dir: PathBuf,
    /// Host directory bound read-write at `/workspace`.
    pub workspace: PathBuf,
    /// Host directory bound read-write at `/home/agent`.
    pub home: PathBuf,
    /// With a copy-on-write root: host directory for the overlay's upper
    /// and work directories (its contents are thrown away with the sandbox).
    /// An image's root needs it too.
    pub overlay: Option<PathBuf>,
    /// The root is an image's layers (with `overlay` as its writable
    /// upper) instead of the host's system directories.
    pub image: Option<ImageRoot>,
    pub tmp_size: u64,
    pub ro_binds: Vec<BindMount>,
    pub binds: Vec<BindMount>,
    pub hostname: String,
    /// Run workloads as root inside the sandbox instead of `agent`.
    pub as_root: bool,
    /// The workloads' uid and gid inside when they are neither root nor
    /// `agent` (an image's user). `as_root` must agree (uid 0).
    pub user: Option<(u32, u32)>,
    /// Give the sandbox network egress: the supervisor creates the TUN
    /// device [`crate::init::TUN_NAME`] in the sandbox's network namespace
    /// at launch, configured as this says (`Launched::tun`), and serves its
    /// other end (stockade-net's `Egress`). `None`: loopback only.
    pub net: Option<TunConfig>,
    /// The sandbox's own id maps (its slot's block, see [`crate::slots`]).
    pub uid_map: IdMap,
    pub gid_map: IdMap,
    /// Host uid that creates, and so owns, the sandbox's user namespace
    /// (the slot's base id): the kernel charges per-user counters of
    /// everything inside to the owner too. `None`: the caller's own.
    pub userns_owner: Option<u32>,
    /// Id maps of the workspace's idmapped mount, when it is a host
    /// directory ([`crate::idmap::disk_map`]).
    pub workspace_idmap: Option<MountIdmap>,
    /// Id maps of each writable bind's mount, in the order of `binds`.
    pub bind_idmaps: Vec<MountIdmap>,
    pub seccomp: SeccompFilters,
    /// Started by an ordinary user: how `uid_map`/`gid_map` are written
    /// ([`crate::rootless`]). `None`: by host root.
    pub rootless: Option<crate::rootless::RootlessIds>,
    /// `RLIMIT_NPROC` set by init for every process of the sandbox: the
    /// process limit where no cgroup enforces it (a rootless sandbox
    /// without a delegated cgroup). It counts per uid inside the sandbox's
    /// user namespace.
    pub nproc_limit: Option<u64>,
}

/// An image as the sandbox's root: its unpacked layers, mounted read-only
/// (idmapped with `idmap`, so their owners on disk — the disk block —
/// appear as the image's own ids inside) under the sandbox's writable
/// upper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRoot {
    /// Host directories of the layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// The layers' idmapped mount ([`crate::idmap::disk_map`] of the
    /// sandbox's slot, no owner).
    pub idmap: MountIdmap,
}

/// Most layers an image root may have: overlayfs's own limit is 500, but
/// the lower directories must fit in one page of mount options.
pub const MAX_IMAGE_LAYERS: usize = 120;

/// Name under which the supervisor hands init the `i`-th layer (bottom
/// first) of an image root; short, since every name is in the overlay's
/// mount options.
pub fn image_layer_name(i: usize) -> String {
    format!("img{i}")
}

/// The uid and gid maps of an idmapped mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountIdmap {
    pub uids: IdMap,
    pub gids: IdMap,
}

impl SandboxSpec {
    /// The uid and gid workloads run as inside.
    pub fn workload_ids(&self) -> (u32, u32) {
        match self.user {
            Some(ids) => ids,
            None if self.as_root => (0, 0),
            None => (crate::idmap::AGENT_ID, crate::idmap::AGENT_ID),
        }
    }

    /// The capabilities a workload running as root keeps: none, unless the
    /// root filesystem is copy-on-write (`--overlay-root`, an image), where
    /// root must be able to install packages: [`crate::caps::ROOT_CAPS`],
    /// effective only over what the sandbox's user namespace maps.
    pub fn root_caps(&self) -> u64 {
        if self.overlay.is_some() {
            crate::caps::ROOT_CAPS
        } else {
            0
        }
    }

    /// Paths inside the sandbox where the workload may write; everything
    /// else is read-only to it (Landlock enforces this on top of mounts).
    pub fn writable_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = ["/workspace", "/tmp", "/dev"]
            .iter()
            .map(PathBuf::from)
            .collect();
        v.push(PathBuf::from(if self.as_root {
            "/root"
        } else {
            "/home/agent"
        }));
        v.extend(self.binds.iter().map(|b| b.dst.clone()));
        if self.overlay.is_some() {
            v.push(PathBuf::from("/"));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use crate::caps::ROOT_CAPS;

    #[test]
    fn root_keeps_capabilities_only_in_a_copy_on_write_root() {
        let mut spec = crate::test_spec::spec("/tmp/staging");
        spec.as_root = true;
        assert_eq!(spec.root_caps(), 0, "a read-only root: root keeps nothing");
        spec.overlay = Some("/scratch/s1/overlay".into());
        assert_eq!(spec.root_caps(), ROOT_CAPS);
        // Nothing that reaches past the sandbox's own ids or its mounts.
        // (numbers from linux/capability.h)
        for (cap, name) in [
            (21, "SYS_ADMIN"),
            (12, "NET_ADMIN"),
            (2, "DAC_READ_SEARCH"),
            (27, "MKNOD"),
            (31, "SETFCAP"),
            (8, "SETPCAP"),
            (19, "SYS_PTRACE"),
            (13, "NET_RAW"),
        ] {
            assert_eq!(ROOT_CAPS & (1 << cap), 0, "CAP_{name}");
        }
    }
}
