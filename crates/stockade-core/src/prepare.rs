//! Turning a policy and a command into a [`SandboxSpec`]: choosing host
//! directories, id maps, environment and argv.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stockade_isolate::idmap::{disk_group_map_as, disk_map, disk_map_as, AGENT_ID};
use stockade_isolate::proto::SpawnRequest;
use stockade_isolate::slots::Slot;
use stockade_isolate::spec::{MountIdmap, SandboxSpec};
use stockade_isolate::tun::TunConfig;
use stockade_policy::Policy;

use crate::image::SandboxImage;
use crate::scratch::{ScratchFs, Subvol};
use crate::state::{private_dir, SandboxDir, StateDir};
use crate::RunError;

/// Where a sandbox's scratch directories (workspace, home, overlay) go.
#[derive(Debug, Clone)]
pub enum ScratchPlace {
    /// A capped subvolume of its own on the scratch filesystem.
    Own(ScratchFs),
    /// A directory of its own inside an existing capped subvolume (a
    /// task's, shared by the task's sandboxes and its workspace).
    Within(Subvol),
    /// The sandbox's state directory; the disk limit is then measured by
    /// polling.
    StateDir,
}

impl ScratchPlace {
    /// The scratch filesystem if the host has it, else the state
    /// directory.
    pub fn for_host() -> ScratchPlace {
        if !nix::unistd::geteuid().is_root() {
            // Its subvolumes and quotas are root's to make, even when
            // root has it mounted: an ordinary user's disk use is polled.
            return ScratchPlace::StateDir;
        }
        match ScratchFs::get() {
            Ok(fs) => ScratchPlace::Own(fs),
            Err(_) => ScratchPlace::StateDir,
        }
    }
}

/// A sandbox's capped scratch space.
#[derive(Debug)]
pub struct Scratch {
    pub subvol: Subvol,
    /// The directory holding the sandbox's scratch directories.
    pub dir: PathBuf,
    /// Set when the subvolume is the sandbox's own, deleted with it;
    /// otherwise `dir` is removed.
    pub fs: Option<ScratchFs>,
}

impl Scratch {
    /// Removes the sandbox's scratch space (its subvolume, or its
    /// directory in a shared one).
    pub fn remove(&self) {
        match &self.fs {
            Some(fs) => {
                let _ = fs.delete(&self.subvol.name);
            }
            None => {
                let _ = crate::state::remove_tree(&self.dir);
            }
        }
    }
}

/// A prepared sandbox: the spec plus the host directories whose disk use
/// counts against the limit.
#[derive(Debug)]
pub struct Prepared {
    pub spec: SandboxSpec,
    /// Directories measured by polling when there is no capped scratch.
    pub metered: Vec<PathBuf>,
    /// The capped scratch space, when the disk limit is the kernel's.
    pub scratch: Option<Scratch>,
    /// The environment every process in the sandbox starts with.
    pub env: Vec<(String, String)>,
    /// Default working directory.
    pub cwd: String,
    /// An image's `Entrypoint` and `Cmd` (empty without an image): a
    /// one-shot run's command is built with them ([`Prepared::command`]).
    pub entrypoint: Vec<String>,
    pub default_cmd: Vec<String>,
    /// The sandbox's hold on its image in the store, kept until the
    /// sandbox is gone (dropping it releases it).
    pub image_lease: Option<stockade_image::Lease>,
    /// Host uid and gid of the sandbox's user (for files written in).
    pub owner: (u32, u32),
    /// The host id range the sandbox runs in; held until its teardown.
    pub slot: Slot,
    /// A ready user + network namespace pair claimed for this sandbox
    /// (`stockade run` claims one after preparing; see
    /// `stockade_isolate::nspool`).
    pub pool_pair: Option<stockade_isolate::nspool::Pooled>,
}

impl Prepared {
    /// The command a one-shot run starts for `command`: with an image, its
    /// `Entrypoint` followed by `command` or, when that is empty, by its
    /// `Cmd` (as `docker run`).
    pub fn command(&self, command: &[String]) -> Vec<String> {
        crate::image::command_with(&self.entrypoint, &self.default_cmd, command)
    }

    /// The request that starts `command` with the sandbox's environment
    /// plus `extra_env`, in `cwd` (the policy's when `None`), on a terminal
    /// with `TERM` set to `term` when that is given.
    pub fn request(
        &self,
        tag: u64,
        command: &[String],
        extra_env: &std::collections::BTreeMap<String, String>,
        cwd: Option<&str>,
        term: Option<&str>,
    ) -> Result<SpawnRequest, RunError> {
        if command.is_empty() {
            return Err(RunError::Invalid(
                "no command given; put it after `--` (or use an image with an entrypoint or \
                 command)"
                    .into(),
            ));
        }
        let mut env = self.env.clone();
        if let Some(term) = term {
            env.push(("TERM".into(), term.to_string()));
        }
        for (k, v) in extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let cwd = cwd.unwrap_or(&self.cwd);
        if !cwd.starts_with('/') {
            return Err(RunError::Invalid(format!(
                "working directory must be an absolute path inside the sandbox, got {cwd:?}"
            )));
        }
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for part in command.iter().chain(&env).chain([&cwd.to_string()]) {
            cstring("argument", part)?;
        }
        Ok(SpawnRequest {
            tag,
            argv: command.to_vec(),
            env,
            cwd: cwd.to_string(),
            tty: term.is_some(),
            as_root: None,
            tty_size: None,
        })
    }
}

/// A fresh, random sandbox id: 12 lowercase hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most b.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to time and pid; uniqueness is still checked by
        // creating the sandbox directory exclusively.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b.copy_from_slice(&(t ^ u64::from(std::process::id())).to_le_bytes()[..6]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cstring(what: &str, s: &str) -> Result<CString, RunError> {
    CString::new(s).map_err(|_| RunError::Invalid(format!("{what} contains a NUL byte: {s:?}")))
}

/// The agent writes to a workspace or writable bind as its owner (an
/// idmapped mount): an owner that is host root would let untrusted code
/// create files (setuid ones included) as root on the host, so it is
/// refused. A directory in group root is fine: its group is mapped to an
/// id no sandbox process holds (`idmap::disk_group_map`), so the agent's
/// files get group `HOST_ID_BASE + AGENT_ID`, never root.
fn check_writable_owner(
    what: &str,
    path: &std::path::Path,
    meta: &std::fs::Metadata,
) -> Result<(), RunError> {
    if meta.uid() == 0 {
        return Err(RunError::Invalid(format!(
            "{what} {p} is owned by root, and a sandbox never writes as host root; give it to \
             an unprivileged user (e.g. `chown -R 1000:1000 {p}`) or copy it",
            p = path.display()
        )));
    }
    Ok(())
}

/// The sandbox's TUN device as stockade-net's egress stack serves it:
/// both ends must agree on these addresses and the MTU.
pub fn egress_tun() -> TunConfig {
    TunConfig {
        address: stockade_net::SANDBOX_ADDR,
        prefix_len: stockade_net::PREFIX_LEN,
        gateway: stockade_net::GATEWAY_ADDR,
        dns: stockade_net::DNS_ADDR,
        mtu: stockade_net::MTU,
    }
}

/// The idmapped mount of a host directory owned by `owner` (uid, gid)
/// for a sandbox in `slot` whose workloads run as `writer` (uid, gid)
/// inside — the agent, an image's user, root: what they write belongs to
/// the owner, unless that is host root (see `idmap::disk_map`).
fn mount_idmap(slot: &Slot, owner: (u32, u32), writer: (u32, u32)) -> MountIdmap {
    let (uid, gid) = owner;
    MountIdmap {
        uids: disk_map_as(slot.base(), Some(uid), writer.0),
        gids: disk_group_map_as(slot.base(), gid, writer.1),
    }
}

/// Builds the spec of a sandbox for `policy` in `dir`, running in `slot`,
/// its scratch directories at `place`; its root `image` when the policy
/// names one (found by [`crate::image::resolve`]).
pub fn prepare(
    policy: &Policy,
    state: &StateDir,
    dir: &SandboxDir,
    slot: Slot,
    place: &ScratchPlace,
    image: Option<&SandboxImage>,
) -> Result<Prepared, RunError> {
    let fs_policy = &policy.filesystem;
    let p = &policy.process;
    let mut metered = Vec::new();
    let id = dir
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The image's layers, its user and its hold in the store, before
    // anything is made: a missing layer or an unknown user is the
    // caller's to fix.
    let image_parts = match image {
        Some(img) => {
            let layers = img.layer_dirs()?;
            let user = crate::image::image_user(policy, img, &layers)?;
            let lease = img
                .store
                .lease(&img.image, &id)
                .map_err(|e| RunError::Image {
                    name: img.name.clone(),
                    source: Box::new(e),
                })?;
            Some((img, layers, user, lease))
        }
        None => None,
    };

    let (workspace, agent_owner) = match &fs_policy.workspace {
        Some(ws) => {
            let meta = std::fs::metadata(ws).map_err(|e| {
                RunError::Invalid(format!(
                    "workspace {} cannot be used: {e}; pass an existing directory to --workspace",
                    ws.display()
                ))
            })?;
            if !meta.is_dir() {
                return Err(RunError::Invalid(format!(
                    "workspace {} is not a directory",
                    ws.display()
                )));
            }
            check_writable_owner("workspace", ws, &meta)?;
            let canonical = ws.canonicalize().map_err(|e| RunError::Io {
                what: format!("resolve workspace {}", ws.display()),
                source: e,
            })?;
            (canonical, Some((meta.uid(), meta.gid())))
        }
        None => (PathBuf::new(), None),
    };
    let rootless = slot.rootless_ids();
    if rootless.is_some() {
        refuse_rootless(policy, image.is_some())?;
    }
    // The workloads' ids inside: the image's user (or the policy's), root
    // with `--root`, else the agent.
    let user = match (&image_parts, &p.user) {
        (Some((_, _, user, _)), _) => Some(user.clone()),
        (None, Some(spec)) => Some(host_user(spec)?),
        (None, None) => None,
    };
    let (inside_uid, inside_gid) = match &user {
        Some(u) => (u.uid, u.gid),
        None if p.root => (0, 0),
        None => (AGENT_ID, AGENT_ID),
    };
    let as_root = inside_uid == 0;
    // A rootless image sandbox has one fixed map whoever the workloads
    // run as (inside 0 is the caller, 1.. subordinate ids): the map the
    // user's image store unpacked its layers with, so the layers' owners
    // read right without an idmapped mount.
    let map_writer = if rootless.is_some() && image_parts.is_some() {
        if (inside_uid, inside_gid) != (0, 0) {
            // Its home and scratch workspace would have to belong to a
            // subordinate id, which the caller cannot give a file.
            return Err(RunError::Invalid(format!(
                "as an ordinary user an image sandbox runs its workloads as root inside \
                 (which is you on the host), not as {inside_uid}:{inside_gid}; pass \
                 --user 0 (or --user root)"
            )));
        }
        (0, 0)
    } else {
        (inside_uid, inside_gid)
    };
    let (uid_map, gid_map) = slot.maps_for(map_writer);
    // A bound workspace (a task's included) is written as its owner by
    // whoever the workloads run as.
    let writer = (inside_uid, inside_gid);
    // Only host root may idmap a mount: rootless, the workload is the
    // caller, so a bound directory is bound as it is.
    let workspace_idmap = agent_owner
        .filter(|_| rootless.is_none())
        .map(|o| mount_idmap(&slot, o, writer));
    let owner = uid_map.to_host(inside_uid).zip(gid_map.to_host(inside_gid));
    let io = |what: &str| {
        let what = what.to_string();
        move |e| RunError::Io { what, source: e }
    };

    // The scratch directories' parent: a capped subvolume, or the
    // sandbox's own directory.
    let scratch = match place {
        ScratchPlace::Own(fs) => {
            let subvol = fs
                .create(&format!("s{}", slot.index()), policy.limits.disk.bytes())
                .map_err(|e| RunError::Invalid(stockade_isolate::error_chain(&e)))?;
            Some(Scratch {
                dir: subvol.path.clone(),
                subvol,
                fs: Some(fs.clone()),
            })
        }
        ScratchPlace::Within(subvol) => {
            let d = subvol.path.join(format!("sandbox-{}", slot.index()));
            let _ = crate::state::remove_tree(&d);
            std::fs::create_dir(&d).map_err(io("create the sandbox's scratch directory"))?;
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .map_err(io("create the sandbox's scratch directory"))?;
            Some(Scratch {
                subvol: subvol.clone(),
                dir: d,
                fs: None,
            })
        }
        ScratchPlace::StateDir => None,
    };
    let base = scratch
        .as_ref()
        .map_or(dir.path.as_path(), |s| s.dir.as_path());
    let made = (|| {
        let workspace = if fs_policy.workspace.is_some() {
            workspace
        } else {
            let w = private_dir(&base.join("workspace"), owner)
                .map_err(io("create the scratch workspace"))?;
            metered.push(w.clone());
            w
        };
        let home =
            private_dir(&base.join("home"), owner).map_err(io("create the home directory"))?;
        metered.push(home.clone());
        let overlay = if fs_policy.overlay_root || image.is_some() {
            // Root's overlay directory is written by root inside (the
            // kernel's overlayfs); an ordinary user's by fuse-overlayfs,
            // running as the caller (or, for an image, by root inside,
            // who is the caller).
            let root_owner = if rootless.is_some() {
                None
            } else {
                uid_map.to_host(0).zip(gid_map.to_host(0))
            };
            let o = private_dir(&base.join("overlay"), root_owner)
                .map_err(io("create the overlay directory"))?;
            metered.push(o.clone());
            Some(o)
        } else {
            None
        };
        Ok::<_, RunError>((workspace, home, overlay))
    })();
    let (workspace, home, overlay) = match made {
        Ok(m) => m,
        Err(e) => {
            if let Some(s) = &scratch {
                s.remove();
            }
            return Err(e);
        }
    };
    // Sources are resolved here (symlinks, `..`); the launch opens them
    // refusing any symlink, so what was checked is what gets bound.
    let resolve = |b: &stockade_policy::BindMount| {
        let src = b.src.canonicalize().map_err(|e| {
            RunError::Invalid(format!(
                "bind source {} cannot be used: {e}; give an existing path on the host",
                b.src.display()
            ))
        })?;
        Ok::<_, RunError>(stockade_policy::BindMount {
            src,
            dst: b.dst.clone(),
        })
    };
    let ro_binds = fs_policy
        .ro_bind
        .iter()
        .map(resolve)
        .collect::<Result<Vec<_>, _>>()?;
    let binds = fs_policy
        .bind
        .iter()
        .map(resolve)
        .collect::<Result<Vec<_>, _>>()?;
    // Writable binds follow the workspace's rule: the agent writes as the
    // source's owner (never as host root).
    let bind_idmaps = binds
        .iter()
        .map(|b| {
            let meta = std::fs::metadata(&b.src).map_err(|e| {
                RunError::Invalid(format!(
                    "bind source {} cannot be used: {e}",
                    b.src.display()
                ))
            })?;
            check_writable_owner("writable bind source", &b.src, &meta)?;
            Ok(mount_idmap(&slot, (meta.uid(), meta.gid()), writer))
        })
        .filter(|_| rootless.is_none())
        .collect::<Result<Vec<_>, RunError>>()?;
    let net = (policy.network.mode != stockade_policy::NetMode::None).then(egress_tun);
    // The generated /etc lives on the scratch filesystem when there is
    // one: the sandbox's mountinfo then names a path on that filesystem,
    // not one of the host's.
    // (A subvolume's parent is the scratch filesystem's root.)
    let etc_base = scratch
        .as_ref()
        .and_then(|s| s.subvol.path.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| state.root.clone());
    let etc_dir = stockade_isolate::etc::prepare(&etc_base, &p.hostname, net.map(|t| t.dns))
        .map_err(io("prepare the sandbox's /etc"))?;
    let seccomp = stockade_isolate::seccomp::build().map_err(|e| {
        RunError::Invalid(format!(
            "cannot build the seccomp filter: {}",
            stockade_isolate::error_chain(&e)
        ))
    })?;

    // Home: the bound one (/root for root, else /home/agent), unless an
    // image's passwd names the user's own.
    let bound_home = if as_root { "/root" } else { "/home/agent" };
    let home_path = match (&image_parts, &user) {
        (Some(_), Some(u)) => u.home.clone().unwrap_or_else(|| bound_home.into()),
        _ => bound_home.into(),
    };
    let user_name = match &user {
        Some(u) => u.name.clone().unwrap_or_else(|| u.uid.to_string()),
        None if as_root => "root".into(),
        None => "agent".into(),
    };
    let shell = match (&image_parts, &user) {
        (Some(_), Some(u)) => u.shell.clone().unwrap_or_else(|| "/bin/sh".into()),
        _ => "/bin/bash".into(),
    };
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), home_path),
        ("USER".into(), user_name.clone()),
        ("LOGNAME".into(), user_name),
        ("SHELL".into(), shell),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOSTNAME".into(), p.hostname.clone()),
        ("STOCKADE".into(), "1".into()),
        // Whichever git the host has (/usr or /usr/local), it reads the
        // sandbox's /etc/gitconfig, which trusts repositories owned by
        // other users (a bound workspace shows up as `nobody`'s).
        ("GIT_CONFIG_SYSTEM".into(), "/etc/gitconfig".into()),
    ];
    if fs_policy.overlay_root {
        // The overlay root is thrown away: pip installing into the
        // system's Python (PEP 668 refuses it by default) harms nothing.
        env.push(("PIP_BREAK_SYSTEM_PACKAGES".into(), "1".into()));
    }
    // Docker's order: the image's Env over the defaults (its PATH
    // included), the policy's and flags' over both.
    let image_env = image_parts
        .as_ref()
        .map(|(img, ..)| crate::image::image_env(&img.image))
        .unwrap_or_default();
    let policy_env = p.env.iter().map(|(k, v)| (k.clone(), v.clone()));
    for (k, v) in image_env.into_iter().chain(policy_env) {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    let owner = owner.unwrap_or((0, 0));
    let (entrypoint, default_cmd, working_dir) = match &image_parts {
        Some((img, ..)) => {
            let c = &img.image.config;
            (
                c.entrypoint.clone().unwrap_or_default(),
                c.cmd.clone().unwrap_or_default(),
                c.working_dir.clone(),
            )
        }
        None => (Vec::new(), Vec::new(), None),
    };
    let cwd = p.cwd_or(working_dir.as_deref()).to_string();
    let (image_root, image_lease) = match image_parts {
        Some((_, layers, _, lease)) => (
            Some(stockade_isolate::spec::ImageRoot {
                layers,
                idmap: MountIdmap {
                    uids: disk_map(slot.base(), None),
                    gids: disk_map(slot.base(), None),
                },
            }),
            Some(lease),
        ),
        None => (None, None),
    };

    let spec = SandboxSpec {
        id,
        staging: state.staging(),
        etc_dir,
        workspace,
        home,
        overlay,
        image: image_root,
        tmp_size: fs_policy.tmp_size.bytes(),
        ro_binds,
        binds,
        hostname: p.hostname.clone(),
        as_root,
        user: user.as_ref().map(|u| (u.uid, u.gid)),
        net,
        uid_map,
        gid_map,
        userns_owner: rootless.is_none().then(|| slot.base()),
        workspace_idmap,
        bind_idmaps,
        seccomp,
        rootless,
        // Without a cgroup to count them (a rootless sandbox without a
        // delegated one), the process limit is the kernel's per-uid
        // count inside the sandbox's user namespace.
        nproc_limit: (rootless.is_some() && !stockade_cgroup::root_configured())
            .then_some(policy.limits.pids),
    };
    Ok(Prepared {
        spec,
        metered,
        scratch,
        env,
        cwd,
        entrypoint,
        default_cmd,
        image_lease,
        owner,
        slot,
        pool_pair: None,
    })
}

/// What a sandbox started by an ordinary user cannot have yet, refused
/// with what to do instead.
pub(crate) fn refuse_rootless(policy: &Policy, image: bool) -> Result<(), RunError> {
    if image
        && stockade_isolate::rootless::detect() == stockade_isolate::rootless::RootlessIds::Single
    {
        return Err(RunError::Invalid(crate::image::NO_SUBIDS.into()));
    }
    // An ordinary user's copy-on-write root is served by fuse-overlayfs
    // (an image's root is an overlay of its layers anyway).
    if policy.filesystem.overlay_root && !image {
        if let Err(e) = stockade_isolate::fuseov::check() {
            return Err(RunError::Invalid(format!(
                "--overlay-root as an ordinary user: {}",
                stockade_isolate::error_chain(&e)
            )));
        }
    }
    Ok(())
}

/// `--user` without an image: a uid (and gid), or `root` or `agent`, the
/// accounts the generated `/etc` has.
fn host_user(spec: &str) -> Result<crate::image::User, RunError> {
    let passwd = format!("root:x:0:0:root:/root:/bin/bash\nagent:x:{AGENT_ID}:{AGENT_ID}:agent:/home/agent:/bin/bash\n");
    let group = format!("root:x:0:\nagent:x:{AGENT_ID}:\n");
    crate::image::resolve_user(spec, Some(&passwd), Some(&group), "the sandbox's ")
}
