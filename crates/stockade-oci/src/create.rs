//! `create`: the container's init is cloned into its namespaces, its root
//! is mounted and pivoted, and it waits on `exec.fifo` for `start`.
//!
//! Process model. The caller (containerd's shim, conmon) is a subreaper
//! that learns the container's exit only by reaping the pid written to
//! `--pid-file`, so that pid is init itself, in the container's
//! namespaces: `create` clones it and exits, and init is reparented to
//! the caller's subreaper, as with runc. `create` also forks a *keeper*
//! that holds what must live as long as init and no longer (the lock on
//! the container's host id slot) and waits on init's pidfd.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use stockade_isolate::idmap::{Extent, IdMap};

use crate::config::{NamespaceKind, Spec};
use crate::state::{self, Dir, Saved};
use crate::{cgroups, hooks, mounts, process, sys};

/// The lowest host id a config's `linux.uidMappings` may map onto.
pub const MIN_MAPPED_HOST_ID: u32 = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("cannot get a host id range for the container")]
    Slot(#[source] stockade_isolate::slots::SlotError),
    #[error("root.path {0} is not a directory: unpack the image into the bundle first")]
    NoRootfs(PathBuf),
    #[error(
        "process.terminal is true but no --console-socket was given: the engine must pass one"
    )]
    NoConsoleSocket,
    #[error("cannot connect to the console socket {path}")]
    ConsoleSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot join the {kind} namespace at {path}: check linux.namespaces")]
    JoinNamespace {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: Errno,
    },
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// init failed while setting the container up; the message says where.
    #[error("container init failed: {0}")]
    Init(String),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Supervise(#[from] crate::supervise::SuperviseError),
    #[error(transparent)]
    Annotation(#[from] crate::annotations::AnnotationError),
    #[error(
        "stockade's network policy is asked for, but the config shares the host's network \
         namespace: give the container a network namespace of its own (or drop the policy)"
    )]
    HostNetwork,
    #[error(
        "annotation org.stockade.policy needs stockade-runc's command line, which reads \
         policy files; this caller of the library gave none"
    )]
    PolicyUnread,
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> CreateError {
    let what = what.into();
    move |source| CreateError::Sys { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CreateError {
    let what = what.into();
    move |source| CreateError::Io { what, source }
}

/// What `create` is given on its command line.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
    pub systemd_cgroup: bool,
    /// stockade's policy for this container (`annotations.rs`): the CLI
    /// combines the policy file and the direct keys. Left at its default,
    /// `create` applies the direct keys itself (a policy file then needs
    /// the CLI, which reads it).
    pub policy: crate::annotations::ContainerPolicy,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ToInit {
    /// Maps written, cgroup joined; descriptors: the root tree, the fifo,
    /// then one tree per bind mount in config order. `state` is the state
    /// JSON the hooks inside the container are given.
    Go { state: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
enum FromInit {
    /// The terminal's master rides along.
    Pty,
    Ready,
    Error {
        msg: String,
    },
}

/// Undoes what a failed `create` made.
struct Undo<'a> {
    dir: &'a Dir,
    group: Option<cgroups::Group>,
    child: Option<i32>,
    work: Option<PathBuf>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.child {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(g) = &self.group {
            g.remove();
        }
        if let Some(w) = &self.work {
            let _ = std::fs::remove_dir_all(w);
        }
        let _ = self.dir.remove();
    }
}

fn id_map(entries: &[crate::config::IdMapping]) -> IdMap {
    IdMap {
        extents: entries
            .iter()
            .map(|e| Extent {
                inside: e.container_id,
                outside: e.host_id,
                count: e.size,
            })
            .collect(),
    }
}

/// Creates the container; returns init's host pid. init waits for
/// `start`.
pub fn create(o: &CreateOptions) -> Result<i32, CreateError> {
    create_with(o, None)
}

/// [`create`] with the egress filter that serves a container whose policy
/// routes its network through stockade (`supervise.rs`).
pub fn create_with(
    o: &CreateOptions,
    filter: Option<Box<dyn crate::supervise::NetFilter>>,
) -> Result<i32, CreateError> {
    let dir = Dir::of(&o.root, &o.id)?;
    if !o.bundle.is_dir() {
        return Err(crate::config::ConfigError::Read {
            path: o.bundle.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into());
    }
    let bundle = std::fs::canonicalize(&o.bundle)
        .map_err(io_err(format!("resolve the bundle {}", o.bundle.display())))?;
    let mut spec = Spec::load(&bundle)?;
    spec.validate()?;
    crate::floor::check(&spec)?;
    let annotations = spec.stockade_annotations()?;
    let policy = if o.policy == crate::annotations::ContainerPolicy::default() {
        if annotations.policy.is_some() {
            return Err(CreateError::PolicyUnread);
        }
        crate::annotations::ContainerPolicy::combine(None, &annotations)?
    } else {
        o.policy.clone()
    };
    let tun_cfg = match &policy.network {
        None => None,
        Some(n) => {
            if spec.namespace(NamespaceKind::Network).is_none() {
                return Err(CreateError::HostNetwork);
            }
            let caps = spec.process()?.capabilities.as_ref();
            if caps.is_some_and(|c| {
                [
                    &c.bounding,
                    &c.effective,
                    &c.permitted,
                    &c.inheritable,
                    &c.ambient,
                ]
                .iter()
                .any(|set| set.iter().any(|x| x == "CAP_NET_ADMIN"))
            }) {
                return Err(crate::supervise::SuperviseError::NetAdmin.into());
            }
            match (&filter, n.mode) {
                (_, stockade_policy::NetMode::None) => None,
                (None, _) => return Err(crate::supervise::SuperviseError::NoFilter.into()),
                (Some(f), _) => Some(f.tun_config()),
            }
        }
    };
    let process = spec.process()?.clone();
    let rootfs = spec.rootfs(&bundle)?;
    let rootfs = match std::fs::canonicalize(&rootfs) {
        Ok(p) if p.is_dir() => p,
        _ => return Err(CreateError::NoRootfs(rootfs)),
    };
    if process.terminal && o.console_socket.is_none() {
        return Err(CreateError::NoConsoleSocket);
    }
    let mut linux = spec.linux().clone();
    // The policy's memory and pids limits where the config sets none.
    if policy.memory.is_some() || policy.pids.is_some() {
        let r = linux.resources.get_or_insert_with(Default::default);
        if let (Some(m), true) = (
            policy.memory,
            r.memory.as_ref().and_then(|m| m.limit).is_none(),
        ) {
            r.memory.get_or_insert_with(Default::default).limit =
                Some(i64::try_from(m).unwrap_or(i64::MAX));
        }
        if let (Some(p), true) = (policy.pids, r.pids.is_none()) {
            r.pids = Some(crate::config::Pids {
                limit: i64::try_from(p).unwrap_or(i64::MAX),
            });
        }
    }
    let rel = cgroups::relative_path(linux.cgroups_path.as_deref(), &o.id, o.systemd_cgroup)?;

    dir.make()?;
    let mut undo = Undo {
        dir: &dir,
        group: None,
        child: None,
        work: None,
        armed: true,
    };
    let group = cgroups::create(&rel, linux.resources.as_ref())?;
    undo.group = Some(group.clone());
    let created = (std::time::Instant::now(), crate::supervise::now_unix());
    let pids_hits_at_create = crate::supervise::pids_max_hits(&group);
    let _ = std::fs::remove_file(crate::supervise::report_path(&o.root, &o.id));
    // The filter answers DNS at its gateway only: the engine's
    // resolv.conf (a bind mount) is replaced by one that names it.
    if let Some(cfg) = &tun_cfg {
        let resolv = dir.path.join("resolv.conf");
        std::fs::write(&resolv, crate::supervise::resolv_conf(cfg))
            .map_err(io_err("write the container's resolv.conf"))?;
        for m in spec
            .mounts
            .iter_mut()
            .filter(|m| m.destination == "/etc/resolv.conf" && mounts::is_bind(m))
        {
            m.source = Some(resolv.to_string_lossy().into_owned());
        }
    }

    let (slot, uids, gids) = if linux.uid_mappings.is_empty() {
        let slot = stockade_isolate::slots::Slot::acquire(&stockade_isolate::slots::dir())
            .map_err(CreateError::Slot)?;
        let m = slot.id_map();
        (Some(slot), m.clone(), m)
    } else {
        let g = if linux.gid_mappings.is_empty() {
            &linux.uid_mappings
        } else {
            &linux.gid_mappings
        };
        (None, id_map(&linux.uid_mappings), id_map(g))
    };
    let host_root = uids.to_host(0).unwrap_or(u32::MAX - 1);
    let host_root_gid = gids.to_host(0).unwrap_or(u32::MAX - 1);

    let console = match (&o.console_socket, process.terminal) {
        (Some(p), true) => {
            Some(
                sys::connect_console(p).map_err(|source| CreateError::ConsoleSocket {
                    path: p.clone(),
                    source,
                })?,
            )
        }
        _ => None,
    };

    let fifo_path = dir.fifo();
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(sys_err("make the start fifo"))?;
    std::os::unix::fs::chown(&fifo_path, Some(host_root), Some(host_root_gid))
        .map_err(io_err("hand the start fifo to the container's root"))?;
    let fifo = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open the start fifo"))?;

    // Namespaces the engine made (CNI's network namespace, a pod's IPC
    // and UTS) are joined here, as host root, before the clone: init is
    // born in them, and its own user namespace owns none of them.
    let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS;
    // The keeper's egress stack connects out from the caller's network
    // namespace, not the container's: kept to come back to.
    let home_net = nix::fcntl::open(
        "/proc/thread-self/ns/net",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open create's network namespace"))?;
    for kind in [
        NamespaceKind::Network,
        NamespaceKind::Ipc,
        NamespaceKind::Uts,
        NamespaceKind::Pid,
    ] {
        match spec.namespace(kind) {
            None => {}
            Some(ns) => match &ns.path {
                None => flags |= kind.clone_flag(),
                Some(path) => {
                    let f = nix::fcntl::open(
                        path,
                        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .map_err(|source| CreateError::JoinNamespace {
                        kind: kind.proc_name(),
                        path: path.clone(),
                        source,
                    })?;
                    // SAFETY: `f` is a live namespace descriptor (or setns
                    // fails with EINVAL); setns takes integers only.
                    Errno::result(unsafe { libc::setns(f.as_raw_fd(), kind.clone_flag()) })
                        .map_err(|source| CreateError::JoinNamespace {
                            kind: kind.proc_name(),
                            path: path.clone(),
                            source,
                        })?;
                }
            },
        }
    }
    // Sysctls of namespaces the engine made are not the container root's
    // to write: written here, as host root, from inside them.
    for (k, v) in &linux.sysctl {
        if sysctl_by_runtime(&spec, k) {
            let p = format!("/proc/sys/{}", k.replace('.', "/"));
            // Group ids in the container's terms, written as host root:
            // translated to the host ids they are.
            let v = if k == PING_RANGE {
                let extents: Vec<(u32, u32)> =
                    gids.extents.iter().map(|e| (e.inside, e.count)).collect();
                let (lo, hi) = ping_range(v, &extents);
                match (gids.to_host(lo), gids.to_host(hi)) {
                    (Some(l), Some(h)) if lo <= hi => format!("{l} {h}"),
                    _ => "1 0".to_string(),
                }
            } else {
                v.clone()
            };
            std::fs::write(&p, v).map_err(io_err(format!("set sysctl {k}")))?;
        }
    }
    let new_cgroupns = spec
        .namespace(NamespaceKind::Cgroup)
        .is_some_and(|n| n.path.is_none());

    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys_err("make init's control socket"))?;

    // Init joins its cgroup itself, as its first step (see
    // `Group::self_join_files`); `Ready` below comes after it.
    let join = group.self_join_files()?;

    // SAFETY: the CLI is single-threaded here (no thread is started before
    // `create`), which is what a fork-like clone needs.
    let cloned = unsafe { stockade_isolate::sys::clone_fork(flags) }
        .map_err(sys_err("clone the container's init"))?;
    let (pid, pidfd) = match cloned {
        None => {
            drop(ours);
            init_main(theirs, &join, &spec, o.preserve_fds, new_cgroupns)
        }
        Some(x) => x,
    };
    drop(theirs);
    drop(join);
    undo.child = Some(pid);

    stockade_isolate::idmap::write_maps(pid, &uids, &gids, false)
        .map_err(io_err("write the container's id maps"))?;
    let userns = nix::fcntl::open(
        format!("/proc/{pid}/ns/user").as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open the container's user namespace"))?;

    // The root, shown with its owners inside through an id-mapped mount
    // (unless it is already owned by the container's range, as podman's
    // --userns makes it).
    let already_mapped = std::fs::metadata(&rootfs).is_ok_and(|m| m.uid() == host_root);
    let work_name = format!("stockade-work-{}", o.id);
    let (root_tree, own_work) = crate::rootfs::root_tree(
        &rootfs,
        &userns,
        &dir.path.join("rootfs"),
        &work_name,
        (host_root, host_root_gid),
        already_mapped,
    )?;
    undo.work = own_work.clone();
    let mut fds: Vec<OwnedFd> = vec![root_tree, fifo];
    for m in spec.mounts.iter().filter(|m| mounts::is_bind(m)) {
        let src = m.source.clone().unwrap_or_default();
        let src = bundle.join(src);
        let tree =
            stockade_isolate::sys::open_tree_clone(&cpath(&src)).map_err(sys_err(format!(
                "open the source {} of the bind mount at {}",
                src.display(),
                m.destination
            )))?;
        let attrs = mounts::parse_options(&m.options).attrs;
        if sys::setattr_tree(&tree, attrs, Some(&userns)).is_err() {
            // A file system without id-mapped mounts: owners show as
            // nobody inside, the attributes still hold.
            sys::setattr_tree(&tree, attrs, None).map_err(sys_err(format!(
                "set the options of the bind mount at {}",
                m.destination
            )))?;
        }
        fds.push(tree);
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let created_at = state::now_rfc3339();
    let hook_state = state::StateJson {
        oci_version: state::OCI_VERSION,
        id: o.id.clone(),
        pid,
        status: state::Status::Creating,
        bundle: bundle.clone(),
        rootfs: rootfs.clone(),
        created: created_at.clone(),
        owner: "",
        annotations: spec.annotations.clone(),
    };
    let go = ToInit::Go {
        state: serde_json::to_string(&hook_state).unwrap_or_default(),
    };
    sys::send(ours.as_raw_fd(), &go, &raw).map_err(sys_err("hand init its mounts"))?;
    drop(fds);

    loop {
        match sys::recv::<FromInit>(ours.as_raw_fd()) {
            Ok(Some((FromInit::Pty, fds))) => {
                let (Some(master), Some(console)) = (fds.first(), console.as_ref()) else {
                    return Err(CreateError::Init("sent a terminal nobody asked for".into()));
                };
                sys::send_console(console.as_raw_fd(), master.as_raw_fd())
                    .map_err(sys_err("send the terminal over the console socket"))?;
            }
            Ok(Some((FromInit::Ready, _))) => break,
            Ok(Some((FromInit::Error { msg }, _))) => return Err(CreateError::Init(msg)),
            Ok(None) | Err(_) => {
                return Err(CreateError::Init(
                    "it exited before the container was set up".into(),
                ))
            }
        }
    }

    for r in &process.rlimits {
        set_rlimit(pid, &r.kind, r.soft, r.hard)?;
    }
    if let Some(adj) = process.oom_score_adj {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
            .map_err(io_err("set process.oomScoreAdj"))?;
    }
    let (start_time, _) =
        state::proc_stat(pid).ok_or_else(|| CreateError::Init("it exited".into()))?;
    let saved = Saved {
        id: o.id.clone(),
        pid,
        start_time,
        bundle: bundle.clone(),
        rootfs: rootfs.clone(),
        created: created_at,
        annotations: spec.annotations.clone(),
        cgroup_dirs: group.dirs.clone(),
        poststop: spec
            .hooks
            .as_ref()
            .map(|h| h.poststop.clone())
            .unwrap_or_default(),
        process: process.clone(),
        overlay_work: own_work,
        seccomp: linux.seccomp.clone(),
        landlock: Some(crate::landlock::plan(&spec)),
    };
    dir.save(&saved)?;
    if let Some(h) = &spec.hooks {
        let st = saved.to_json(state::Status::Created);
        for hook in h.prestart.iter().chain(&h.create_runtime) {
            hooks::run(hook, &st)?;
        }
    }
    if let Some(p) = &o.pid_file {
        write_pid_file(p, pid)?;
    }
    // After the hooks: Docker's prestart hook wires the network
    // namespace the runtime made, which the lock-down must see.
    nix::sched::setns(&home_net, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(sys_err("return to create's network namespace"))?;
    let tun = match &policy.network {
        None => None,
        Some(_) => crate::supervise::lock_down_network(pid, tun_cfg.as_ref())?,
    };
    let disk = policy.disk.map(|limit| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = crate::rootfs::overlay_layers(&mountinfo, &rootfs)
            .and_then(|l| l.upper)
            .unwrap_or_else(|| rootfs.clone());
        (limit, dir)
    });
    let watch = crate::supervise::Watch {
        id: o.id.clone(),
        report: crate::supervise::report_path(&o.root, &o.id),
        command: process.args.clone(),
        group: group.clone(),
        timeout: policy.timeout,
        disk,
        net: match (filter, tun, &policy.network) {
            (Some(f), Some(t), Some(n)) => Some((f, t, n.clone())),
            _ => None,
        },
        pid,
        lock: crate::supervise::lock_keeper(&dir.path),
        created: created.0,
        created_unix: created.1,
        pids_hits_at_create,
    };
    keep(slot, pidfd, watch);
    undo.armed = false;
    Ok(pid)
}

const PING_RANGE: &str = "net.ipv4.ping_group_range";

/// `net.ipv4.ping_group_range` in the container's terms, clamped to the
/// group ids its user namespace has (engines ask for `0 2147483647`, which
/// the kernel refuses where most of those ids are not mapped). `lo > hi`
/// means nobody may ping.
fn ping_range(v: &str, extents: &[(u32, u32)]) -> (u32, u32) {
    let mut it = v.split_whitespace().map(|n| n.parse::<u32>().ok());
    let (Some(Some(lo)), Some(Some(hi))) = (it.next(), it.next()) else {
        return (1, 0);
    };
    // The first extent that starts at the range's low end or covers it.
    let Some(&(inside, count)) = extents.iter().find(|(i, c)| lo < i.saturating_add(*c)) else {
        return (1, 0);
    };
    let top = inside.saturating_add(count.saturating_sub(1));
    (lo.max(inside), hi.min(top))
}

/// Whether a sysctl belongs to a namespace the engine made (joined by
/// path), which `create` writes as host root rather than init.
fn sysctl_by_runtime(spec: &Spec, key: &str) -> bool {
    let joined = |k| spec.namespace(k).is_some_and(|n| n.path.is_some());
    if key.starts_with("net.") {
        joined(NamespaceKind::Network)
    } else {
        joined(NamespaceKind::Ipc)
    }
}

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Writes the pid file atomically (the engine may read it at any time).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), CreateError> {
    let tmp = path.with_extension("stockade-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(io_err(format!("write the pid file {}", path.display())))
}

fn rlimit_resource(kind: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match kind {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Sets a limit of process `pid` (0: this one) with `prlimit`, as host
/// root (a user namespace could not raise a hard limit).
pub fn set_rlimit(pid: i32, kind: &str, soft: u64, hard: u64) -> Result<(), CreateError> {
    let res = rlimit_resource(kind).ok_or_else(|| {
        CreateError::Init(format!(
            "unknown rlimit type {kind:?} in process.rlimits (names look like RLIMIT_NOFILE)"
        ))
    })?;
    let set = |soft: u64, hard: u64| {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a live rlimit; the old-value pointer is NULL.
        Errno::result(unsafe { libc::prlimit(pid, res, &lim, std::ptr::null_mut()) }).map(drop)
    };
    match set(soft, hard) {
        Ok(()) => Ok(()),
        // Raising a hard limit needs CAP_SYS_RESOURCE, which a confined
        // host root may lack: the limit is then capped at the current
        // hard limit rather than the container refused.
        Err(Errno::EPERM) => {
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads into a live rlimit; no new value.
            Errno::result(unsafe { libc::prlimit(pid, res, std::ptr::null(), &mut cur) })
                .map_err(sys_err(format!("read {kind}")))?;
            let hard = hard.min(cur.rlim_max);
            set(soft.min(hard), hard).map_err(sys_err(format!("set {kind} to {soft}/{hard}")))
        }
        Err(e) => Err(sys_err(format!("set {kind} to {soft}/{hard}"))(e)),
    }
}

/// Forks the keeper: it holds the slot lock until init's pidfd says init
/// has ended, kills the container on a timeout or disk breach, serves the
/// egress filter, and writes the report (`supervise.rs`).
fn keep(
    slot: Option<stockade_isolate::slots::Slot>,
    pidfd: OwnedFd,
    watch: crate::supervise::Watch,
) {
    // SAFETY: single-threaded (see `create`); the child starts threads
    // (the egress filter) only after the fork.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            if let Ok(null) = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            ) {
                for fd in 0..3 {
                    // SAFETY: dup2 onto our own standard descriptors.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            let mut keep = vec![pidfd.as_raw_fd()];
            keep.extend(
                slot.as_ref()
                    .and_then(|s| s.lock_fd())
                    .map(|f| f.as_raw_fd()),
            );
            keep.extend(watch.net.as_ref().map(|(_, t, _)| t.as_raw_fd()));
            keep.extend(watch.lock.as_ref().map(|l| l.as_raw_fd()));
            stockade_isolate::sys::close_fds_from(3, &keep);
            crate::supervise::keep(&pidfd, watch);
            // SAFETY: leaves at once, running no destructors of the copy
            // of the parent's state.
            unsafe { libc::_exit(0) }
        }
        _ => drop(slot),
    }
}

// ---- the child: the container's init ---------------------------------

fn init_main(
    sock: OwnedFd,
    join: &[std::fs::File],
    spec: &Spec,
    preserve_fds: u32,
    new_cgroupns: bool,
) -> ! {
    let fd = sock.as_raw_fd();
    let joined = join.iter().try_for_each(|mut f| {
        use std::io::Write;
        f.write_all(b"0")
    });
    let msg = match joined {
        Err(e) => format!("cannot join the container's cgroup: {e}"),
        Ok(()) => match init_setup(fd, spec, preserve_fds, new_cgroupns) {
            Ok(never) => match never {},
            Err(e) => stockade_isolate::error_chain(&*e),
        },
    };
    let _ = sys::send(fd, &FromInit::Error { msg }, &[]);
    // SAFETY: leaves without running the parent's destructors.
    unsafe { libc::_exit(1) }
}

type BoxError = Box<dyn std::error::Error>;

#[cfg(test)]
mod tests {
    #[test]
    fn ping_ranges_are_clamped_to_the_mapped_groups() {
        let map = [(0, 65536)];
        assert_eq!(super::ping_range("0 2147483647", &map), (0, 65535));
        assert_eq!(super::ping_range("0 0", &map), (0, 0));
        assert_eq!(super::ping_range("70000 80000", &map), (1, 0));
        assert_eq!(super::ping_range("junk", &map), (1, 0));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {0}")]
struct Step(&'static str, #[source] Errno);

fn step(what: &'static str) -> impl FnOnce(Errno) -> BoxError {
    move |e| Box::new(Step(what, e))
}

fn init_setup(
    sock: RawFd,
    spec: &Spec,
    preserve_fds: u32,
    new_cgroupns: bool,
) -> Result<std::convert::Infallible, BoxError> {
    // Nothing of the caller's but stdio, preserved fds and this socket.
    let keep_to = 3 + preserve_fds as i32;
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for f in fds {
            if f >= keep_to && f != sock {
                // SAFETY: closing our own copy of an inherited descriptor.
                unsafe { libc::close(f) };
            }
        }
    }
    let Some((ToInit::Go { state: hook_state }, mut fds)) =
        sys::recv::<ToInit>(sock).map_err(step("hear from create"))?
    else {
        return Err("create went away".into());
    };
    let landlock = crate::landlock::plan(spec);
    let hooks = spec.hooks.clone().unwrap_or_default();
    if fds.len() < 2 {
        return Err("create sent too few descriptors".into());
    }
    let mut binds: std::collections::VecDeque<OwnedFd> = fds.split_off(2).into();
    let fifo = fds.pop().expect("two fds");
    let root_tree = fds.pop().expect("one fd");

    // Root of the user namespace now that the maps exist.
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::setresgid(0, 0, 0) })
        .map_err(step("become root in the user namespace"))?;
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::setresuid(0, 0, 0) })
        .map_err(step("become root in the user namespace"))?;
    // SAFETY: an empty list.
    Errno::result(unsafe { libc::setgroups(0, std::ptr::null()) })
        .map_err(step("drop the host's groups"))?;
    if new_cgroupns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(step("make the cgroup namespace"))?;
    }
    use nix::mount::MsFlags;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make the mount tree private"))?;
    // The root is attached over /tmp of this private copy of the host's
    // mounts (a directory every id can reach), then pivoted into.
    stockade_isolate::sys::move_mount_to(&root_tree, c"/tmp")
        .map_err(step("attach the root filesystem"))?;
    let root = nix::fcntl::open(
        "/tmp",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(step("open the root filesystem"))?;
    for m in &spec.mounts {
        let tree = if mounts::is_bind(m) {
            binds.pop_front()
        } else {
            None
        };
        mounts::mount_one(root.as_raw_fd(), m, tree)?;
    }
    mounts::default_devices(root.as_raw_fd())?;
    for d in &spec.linux().devices {
        mounts::bind_device(root.as_raw_fd(), d)?;
    }
    // createContainer: in the container's namespaces, after its mounts,
    // before the pivot (the hook's path is the host's); it may write only
    // into the container's root (attached at /tmp here).
    for hook in &hooks.create_container {
        let ruleset = stockade_isolate::landlock_rules::build_scoped(
            &[PathBuf::from("/tmp")],
            landlock.scope_abstract,
            false,
        )?;
        let confine = hooks::Confine {
            filters: stockade_isolate::seccomp::build()?,
            landlock: ruleset.as_ref().map(|r| r.as_raw_fd()),
        };
        hooks::run_confined(hook, hook_state.as_bytes(), confine)?;
    }
    nix::unistd::fchdir(&root).map_err(step("enter the root filesystem"))?;
    sys::pivot_here().map_err(step("pivot into the root filesystem"))?;
    drop(root);

    let linux = spec.linux();
    for (k, v) in linux
        .sysctl
        .iter()
        .filter(|(k, _)| !sysctl_by_runtime(spec, k))
    {
        let p = format!("/proc/sys/{}", k.replace('.', "/"));
        let v = if k == PING_RANGE {
            let map = std::fs::read_to_string("/proc/self/gid_map").unwrap_or_default();
            let extents: Vec<(u32, u32)> = map
                .lines()
                .filter_map(|l| {
                    let f: Vec<u32> = l
                        .split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    (f.len() == 3).then(|| (f[0], f[2]))
                })
                .collect();
            let (lo, hi) = ping_range(v, &extents);
            if lo <= hi {
                format!("{lo} {hi}")
            } else {
                "1 0".into()
            }
        } else {
            v.clone()
        };
        std::fs::write(&p, &v).map_err(|e| format!("cannot set sysctl {k} to {v:?}: {e}"))?;
    }
    let own_uts = spec
        .namespace(NamespaceKind::Uts)
        .is_some_and(|n| n.path.is_none());
    if let (Some(h), true) = (&spec.hostname, own_uts) {
        nix::unistd::sethostname(h).map_err(step("set the host name"))?;
    }
    mounts::mask_and_protect(&linux.masked_paths, &linux.readonly_paths)?;
    if spec.root.as_ref().is_some_and(|r| r.readonly) {
        stockade_isolate::sys::mount_setattr(c"/", sys::MOUNT_ATTR_RDONLY, false)
            .map_err(step("make the root read-only"))?;
    }

    let process = spec.process().map_err(|e| e.to_string())?;
    nix::unistd::setsid().map_err(step("start a session"))?;
    if process.terminal {
        let (master, slave) =
            stockade_isolate::workload::open_pty().map_err(step("open a terminal"))?;
        if let Some(sz) = process.console_size {
            let ws = libc::winsize {
                ws_row: sz.height,
                ws_col: sz.width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one live winsize.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
        let s = nix::fcntl::open(
            slave.as_str(),
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(step("open the terminal"))?;
        // SAFETY: makes the terminal ours (we lead a new session).
        Errno::result(unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCSCTTY, 0) })
            .map_err(step("take the terminal"))?;
        for fd in 0..3 {
            // SAFETY: dup2 onto our own standard descriptors.
            Errno::result(unsafe { libc::dup2(s.as_raw_fd(), fd) })
                .map_err(step("make the terminal stdio"))?;
        }
        sys::send(sock, &FromInit::Pty, &[master.as_raw_fd()])
            .map_err(step("send the terminal"))?;
    }
    let prepared = process::prepare(process, linux.seccomp.as_ref(), Some(&landlock))?;
    sys::send(sock, &FromInit::Ready, &[]).map_err(step("report ready"))?;

    // Wait for `start`: opening the fifo for writing blocks until `start`
    // opens it for reading.
    let w = nix::fcntl::open(
        format!("/proc/self/fd/{}", fifo.as_raw_fd()).as_str(),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(step("open the start fifo (the config needs a /proc mount)"))?;
    nix::unistd::write(&w, b"0").map_err(step("answer start"))?;
    drop(w);
    drop(fifo);
    // startContainer: inside the container, before its program (the
    // hook's path is the container's), under the container's Landlock
    // rules and stockade's seccomp filters. Nobody hears init any more:
    // a failure goes to the container's stderr and ends it.
    let hook_state = hook_state.replace("\"status\":\"creating\"", "\"status\":\"running\"");
    for hook in &hooks.start_container {
        let confine = hooks::Confine {
            filters: prepared.filters().clone(),
            landlock: prepared.landlock(),
        };
        if let Err(e) = hooks::run_confined(hook, hook_state.as_bytes(), confine) {
            eprintln!(
                "stockade-runc: startContainer hook: {}",
                stockade_isolate::error_chain(&e)
            );
            // SAFETY: leaves without running destructors.
            unsafe { libc::_exit(127) }
        }
    }
    sys::cloexec_from(keep_to as u32);
    let e = process::exec(&prepared);
    // Nobody reads the socket any more; say it where the engine looks.
    eprintln!(
        "stockade-runc: container init: {}",
        stockade_isolate::error_chain(&e)
    );
    // SAFETY: leaves without running destructors.
    unsafe { libc::_exit(127) }
}
