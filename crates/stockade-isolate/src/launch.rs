//! The supervisor's side of starting a sandbox: one `clone` into new
//! user, mount, pid, ipc, uts and network namespaces; id maps and cgroup
//! membership written from outside; then the go-ahead.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::idmap;
use crate::nspool::Pooled;
use crate::proto;
use crate::spec::SandboxSpec;
use crate::sys;
use crate::tun::TunConfig;

/// Starting a sandbox failed before its init could report anything.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create the control socket")]
    Socket(#[source] nix::Error),
    #[error("cannot create the sandbox's namespaces (check `stockade doctor`: user namespaces may be disabled)")]
    Clone(#[source] nix::Error),
    #[error("cannot write the sandbox's id maps")]
    IdMap(#[source] std::io::Error),
    #[error("cannot place the sandbox in its cgroup: {0}")]
    Cgroup(String),
    #[error("the sandbox's init exited before it started")]
    InitGone,
    #[error("cannot create the sandbox's network device: {0}")]
    Tun(String),
    #[error(
        "cannot open {path} to bind it into the sandbox (a symlink on the way is refused: \
         give the resolved path)"
    )]
    Source {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "cannot mount {path} into the sandbox with its owner's ids (an idmapped mount; its \
         filesystem may not support them: ext4, xfs, btrfs and, from Linux 6.3, tmpfs do, so \
         copy it to one that does)"
    )]
    Idmap {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "the image has {0} layers, more than the 120 a sandbox's root can stack; \
         flatten it (e.g. rebuild it with fewer layers)"
    )]
    TooManyLayers(usize),
    #[error("cannot set up the sandbox's copy-on-write root")]
    Fuse(#[source] crate::fuseov::FuseError),
}

/// A running sandbox, seen from the supervisor.
#[derive(Debug)]
pub struct Launched {
    /// Host pid of the sandbox's init.
    pub pid: i32,
    /// A pidfd for init: pollable for its exit, and safe to signal.
    pub pidfd: OwnedFd,
    /// The control socket to init (see [`crate::proto`]).
    pub ctl: OwnedFd,
    /// The sandbox's TUN device, when it has network egress: made in its
    /// network namespace by the supervisor, before init may go on.
    pub tun: Option<OwnedFd>,
}

/// What the supervisor does to a freshly cloned init, as operations: the
/// seam between the launch's decisions (order, what is sent, what a
/// failure undoes) and the system calls. [`Kernel`] makes the calls;
/// tests give a recording fake.
pub(crate) trait LaunchOps {
    /// Writes init's uid and gid maps.
    fn write_maps(&mut self, pid: i32, spec: &SandboxSpec) -> std::io::Result<()>;
    /// Creates the TUN device in init's network namespace, set up as `cfg`
    /// says.
    /// `rootless`: we are an ordinary user, who must enter the sandbox's
    /// user namespace (ours, so we hold every capability there) first.
    fn make_tun(
        &mut self,
        pid: i32,
        cfg: &TunConfig,
        rootless: bool,
    ) -> Result<OwnedFd, LaunchError>;
    /// A detached clone of the mount tree at `path`, following no symlink.
    fn open_tree_resolved(&mut self, path: &std::ffi::CStr) -> nix::Result<OwnedFd>;
    /// A detached clone of the mount tree at `path`.
    fn open_tree_clone(&mut self, path: &std::ffi::CStr) -> nix::Result<OwnedFd>;
    /// A user namespace with these maps, for idmapping trees through.
    fn new_userns(&mut self, map: &crate::spec::MountIdmap) -> std::io::Result<OwnedFd>;
    /// init's user namespace.
    fn init_userns(&mut self, pid: i32) -> Option<OwnedFd>;
    /// Idmaps `tree` through the user namespace `userns`.
    fn idmap_tree(&mut self, tree: &OwnedFd, userns: &OwnedFd) -> nix::Result<()>;
    /// Sends init a message with descriptors.
    fn send(&mut self, ctl: &OwnedFd, msg: &proto::ToInit, fds: &[RawFd]) -> Result<(), ()>;
    /// Kills init and reaps it: a launch that fails leaves nothing.
    fn abort(&mut self, launched: &Launched);
    /// [`crate::fuseov::mount_lowers`]: an ordinary user's copy-on-write
    /// root, sent to init.
    fn fuse_lowers(
        &mut self,
        spec: &SandboxSpec,
        pid: i32,
        ctl: &OwnedFd,
    ) -> Result<(), crate::fuseov::FuseError>;
    /// [`sys::clone_into_cgroup`].
    ///
    /// # Safety
    /// The caller must be single-threaded.
    unsafe fn clone_into_cgroup(
        &mut self,
        flags: libc::c_int,
        cgroup: std::os::fd::BorrowedFd<'_>,
    ) -> nix::Result<Option<(i32, OwnedFd)>>;
    /// [`sys::clone_fork`].
    ///
    /// # Safety
    /// The caller must be single-threaded.
    unsafe fn clone_fork(&mut self, flags: libc::c_int) -> nix::Result<Option<(i32, OwnedFd)>>;
}

/// [`LaunchOps`] done by the kernel.
#[derive(Debug, Default, Clone, Copy)]
struct Kernel;

impl LaunchOps for Kernel {
    fn write_maps(&mut self, pid: i32, spec: &SandboxSpec) -> std::io::Result<()> {
        match spec.rootless {
            // An ordinary user's maps go through the setuid helpers (or
            // are a single id); the error's chain becomes the message.
            Some(ids) => crate::rootless::write_maps(ids, pid, &spec.uid_map, &spec.gid_map)
                .map_err(|e| std::io::Error::other(crate::error_chain(&e))),
            None => idmap::write_maps(pid, &spec.uid_map, &spec.gid_map, false),
        }
    }

    fn make_tun(
        &mut self,
        pid: i32,
        cfg: &TunConfig,
        rootless: bool,
    ) -> Result<OwnedFd, LaunchError> {
        // SAFETY: `launch_joining`'s caller guarantees a single thread,
        // and launches run only through it.
        unsafe { make_tun(pid, cfg, rootless) }
    }

    fn open_tree_resolved(&mut self, path: &std::ffi::CStr) -> nix::Result<OwnedFd> {
        sys::open_tree_resolved(path)
    }

    fn open_tree_clone(&mut self, path: &std::ffi::CStr) -> nix::Result<OwnedFd> {
        sys::open_tree_clone(path)
    }

    fn new_userns(&mut self, map: &crate::spec::MountIdmap) -> std::io::Result<OwnedFd> {
        idmap::new_userns(&map.uids, &map.gids)
    }

    fn init_userns(&mut self, pid: i32) -> Option<OwnedFd> {
        nix::fcntl::open(
            format!("/proc/{pid}/ns/user").as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    }

    fn idmap_tree(&mut self, tree: &OwnedFd, userns: &OwnedFd) -> nix::Result<()> {
        sys::idmap_tree(tree, userns)
    }

    fn send(&mut self, ctl: &OwnedFd, msg: &proto::ToInit, fds: &[RawFd]) -> Result<(), ()> {
        proto::send_msg(ctl.as_fd(), msg, fds).map_err(|_| ())
    }

    fn abort(&mut self, l: &Launched) {
        let _ = sys::pidfd_send_signal(&l.pidfd, libc::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(l.pid), None);
    }

    fn fuse_lowers(
        &mut self,
        spec: &SandboxSpec,
        pid: i32,
        ctl: &OwnedFd,
    ) -> Result<(), crate::fuseov::FuseError> {
        // SAFETY: `launch_joining`'s caller guarantees a single thread,
        // and launches run only through it.
        unsafe { crate::fuseov::mount_lowers(spec, pid, ctl) }
    }

    unsafe fn clone_into_cgroup(
        &mut self,
        flags: libc::c_int,
        cgroup: std::os::fd::BorrowedFd<'_>,
    ) -> nix::Result<Option<(i32, OwnedFd)>> {
        // SAFETY: forwarded from the caller's guarantee of a single thread.
        unsafe { sys::clone_into_cgroup(flags, cgroup) }
    }

    unsafe fn clone_fork(&mut self, flags: libc::c_int) -> nix::Result<Option<(i32, OwnedFd)>> {
        // SAFETY: forwarded from the caller's guarantee of a single thread.
        unsafe { sys::clone_fork(flags) }
    }
}

/// For a copy-on-write root: clones each lower layer, idmaps it through
/// the sandbox's user namespace and passes it to init. Host root's files
/// then appear owned by root inside, so the workload (as root inside) can
/// modify them through the overlay — `apt-get install` works. Only the
/// host's root may create idmapped mounts; where that fails, init falls
/// back to the plain host paths (files then appear owned by `nobody`).
fn send_idmapped_lowers(k: &mut impl LaunchOps, spec: &SandboxSpec, pid: i32, ctl: &OwnedFd) {
    let lowers = crate::rootfs::overlay_lowers(spec);
    if lowers.is_empty() {
        return;
    }
    let Some(userns) = k.init_userns(pid) else {
        return;
    };
    for (name, host) in lowers {
        let Ok(path) = std::ffi::CString::new(host.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        let Ok(tree) = k.open_tree_clone(&path) else {
            continue;
        };
        if k.idmap_tree(&tree, &userns).is_err() {
            continue;
        }
        let msg = proto::ToInit::Lower { name };
        let _ = k.send(ctl, &msg, &[tree.as_raw_fd()]);
    }
}

/// For an image root: clones each layer directory, idmaps it through one
/// user namespace made with the image's map (the layers' owners on disk,
/// the disk block, become the image's own ids inside; see
/// [`crate::idmap::disk_map`]) and passes it to init as
/// [`crate::spec::image_layer_name`]. There is no fallback: a layer that
/// cannot be idmapped would show unmapped owners, so it fails the launch.
fn send_image_layers(
    k: &mut impl LaunchOps,
    spec: &SandboxSpec,
    ctl: &OwnedFd,
) -> Result<(), LaunchError> {
    let Some(img) = &spec.image else {
        return Ok(());
    };
    if img.layers.len() > crate::spec::MAX_IMAGE_LAYERS {
        return Err(LaunchError::TooManyLayers(img.layers.len()));
    }
    let mut userns = None;
    for (i, dir) in img.layers.iter().enumerate() {
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
            LaunchError::Source {
                path: dir.display().to_string(),
                source: nix::Error::EINVAL,
            }
        })?;
        let tree = k
            .open_tree_clone(&path)
            .map_err(|source| LaunchError::Source {
                path: dir.display().to_string(),
                source,
            })?;
        let idmap_err = |source| LaunchError::Idmap {
            path: dir.display().to_string(),
            source,
        };
        let ns = match &userns {
            Some(ns) => ns,
            None => userns.insert(k.new_userns(&img.idmap).map_err(|e| {
                idmap_err(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })?),
        };
        k.idmap_tree(&tree, ns).map_err(idmap_err)?;
        let msg = proto::ToInit::Lower {
            name: crate::spec::image_layer_name(i),
        };
        let _ = k.send(ctl, &msg, &[tree.as_raw_fd()]);
    }
    Ok(())
}

/// Opens the sources of the workspace and of the user's binds here, as
/// the supervisor, and hands them to init as detached mount trees: the
/// sandbox's root (an unprivileged id on the host) could not walk to a
/// path under a directory only host root may enter, such as a 0700
/// temporary directory. The workspace and writable binds are idmapped
/// ([`crate::idmap::disk_map`]): what the agent writes there belongs to
/// the directory's owner. Each source must be a resolved path (no
/// symlink in it); one that cannot be opened so fails the launch.
fn send_bind_sources(
    k: &mut impl LaunchOps,
    spec: &SandboxSpec,
    ctl: &OwnedFd,
) -> Result<(), LaunchError> {
    let ro = spec.ro_binds.len();
    let sources = std::iter::once((
        crate::rootfs::WORKSPACE_TREE.to_string(),
        &spec.workspace,
        spec.workspace_idmap.as_ref(),
    ))
    .chain(
        spec.ro_binds
            .iter()
            .chain(&spec.binds)
            .enumerate()
            .map(|(i, b)| {
                let idmap = i.checked_sub(ro).and_then(|w| spec.bind_idmaps.get(w));
                (crate::rootfs::bind_tree_name(i), &b.src, idmap)
            }),
    );
    // Namespaces made for the maps so far: binds of one owner share one.
    let mut made: Vec<(&crate::spec::MountIdmap, OwnedFd)> = Vec::new();
    for (name, src, idmap) in sources {
        if src.as_os_str().is_empty() {
            continue;
        }
        let path = std::ffi::CString::new(src.as_os_str().as_encoded_bytes()).map_err(|_| {
            LaunchError::Source {
                path: src.display().to_string(),
                source: nix::Error::EINVAL,
            }
        })?;
        // The caller resolved every source (no symlink left in it): one
        // that has a symlink now was swapped after the check, and is
        // refused rather than followed.
        let tree = k
            .open_tree_resolved(&path)
            .map_err(|source| LaunchError::Source {
                path: src.display().to_string(),
                source,
            })?;
        if let Some(map) = idmap {
            let idmap_err = |source| LaunchError::Idmap {
                path: src.display().to_string(),
                source,
            };
            let pos = match made.iter().position(|(m, _)| *m == map) {
                Some(p) => p,
                None => {
                    let ns = k.new_userns(map).map_err(|e| {
                        idmap_err(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                    })?;
                    made.push((map, ns));
                    made.len() - 1
                }
            };
            k.idmap_tree(&tree, &made[pos].1).map_err(idmap_err)?;
        }
        let msg = proto::ToInit::Lower { name };
        let _ = k.send(ctl, &msg, &[tree.as_raw_fd()]);
    }
    Ok(())
}

/// Creates the sandbox's TUN device inside its network namespace, with
/// host root's credentials (`/dev/net/tun` is usually 0600 root, and host
/// root is not mapped into the sandbox), without the supervisor leaving
/// its own namespace: a short-lived child enters it (see
/// [`sys::in_namespace`]).
///
/// An ordinary user (`rootless`) has no say over a network namespace
/// owned by the sandbox's user namespace until it enters that user
/// namespace, which it created and so holds every capability in; the
/// child enters both (`/dev/net/tun` must then be open to the user).
///
/// # Safety
/// The caller must be single-threaded.
unsafe fn make_tun(pid: i32, cfg: &TunConfig, rootless: bool) -> Result<OwnedFd, LaunchError> {
    let open_ns = |kind: &str| {
        nix::fcntl::open(
            format!("/proc/{pid}/ns/{kind}").as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    };
    let net = open_ns("net")
        .map_err(|e| LaunchError::Tun(format!("cannot open its network namespace: {e}")))?;
    let user = if rootless {
        Some(
            open_ns("user")
                .map_err(|e| LaunchError::Tun(format!("cannot open its user namespace: {e}")))?,
        )
    } else {
        None
    };
    let configure = || {
        crate::tun::configure_tun_inside(crate::init::TUN_NAME, cfg)
            .map_err(|e| crate::error_chain(&e))
    };
    // SAFETY: forwarded from the caller's guarantee of a single thread;
    // the closures return their errors as values and do not unwind.
    let made = unsafe {
        match &user {
            Some(user) => sys::in_namespace(user.as_fd(), libc::CLONE_NEWUSER, || {
                nix::sched::setns(&net, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("cannot enter its network namespace: {e}"))
                    .and_then(|()| configure())
            }),
            None => sys::in_namespace(net.as_fd(), libc::CLONE_NEWNET, configure),
        }
    };
    match made {
        Ok(Ok(tun)) => Ok(tun),
        Ok(Err(e)) => Err(LaunchError::Tun(e)),
        Err(e) => Err(LaunchError::Tun(format!(
            "cannot enter its network namespace: {e}"
        ))),
    }
}

/// Namespaces every sandbox gets at clone time. The cgroup namespace is
/// entered by init once it is inside its cgroup.
pub const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;

/// The namespaces made at clone time when the user and network
/// namespaces come from the pool ([`crate::nspool`]).
const NAMESPACES_POOLED: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// Stack of the short-lived process that enters a pooled pair and clones
/// init from there; init goes on running on (its copy of) it. As large as
/// a main thread's: only the pages touched cost memory.
const POOLED_STACK: usize = 8 << 20;

/// Clones the sandbox's init and lets it build the sandbox.
/// With `into_cgroup` (a cgroup v2 directory) init is cloned straight into
/// it; otherwise `join_cgroup` is called with init's host pid before init
/// may proceed.
///
/// # Safety
/// The calling process must be single-threaded: the child is a fork-style
/// copy of the calling thread only.
pub unsafe fn launch(
    spec: &SandboxSpec,
    into_cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    join_cgroup: impl FnOnce(i32) -> Result<(), String>,
) -> Result<Launched, LaunchError> {
    // SAFETY: forwarded from the caller's guarantee of a single thread.
    unsafe { launch_joining(spec, into_cgroup, &[], None, join_cgroup) }
}

/// [`launch`], where on cgroup v1 init joins its cgroup itself: right
/// after the clone it writes `0` to each of `self_join` (the group's
/// `tasks` files, opened by the caller). A thread moving itself spares
/// the kernel its global threadgroup lock, whose write side waits for an
/// RCU grace period on a quiet host (10–15 ms, most of a sandbox's start
/// on cgroup v1). With `self_join` empty, `join_cgroup` moves init as in
/// [`launch`].
///
/// With `pooled`, init's user and network namespaces are that ready pair
/// instead of new ones: its id maps are written and its loopback is up
/// already. Where the pair cannot be entered, new namespaces are made as
/// without it.
///
/// # Safety
/// As [`launch`].
pub unsafe fn launch_joining(
    spec: &SandboxSpec,
    into_cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    self_join: &[OwnedFd],
    pooled: Option<&Pooled>,
    join_cgroup: impl FnOnce(i32) -> Result<(), String>,
) -> Result<Launched, LaunchError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(LaunchError::Socket)?;
    // An ordinary user with subordinate ids: the sandbox's user namespace
    // is made under the user's base namespace, whose maps are written
    // once (see `basens`); where it cannot be had, the helpers map a new
    // namespace as before.
    let base = match pooled {
        Some(_) => None,
        None => crate::basens::for_sandbox(spec.rootless, &spec.uid_map, &spec.gid_map)
            .and_then(Result::ok),
    };
    let entering = match (pooled, &base) {
        (Some(pair), _) => Some(Enter {
            user: &pair.user,
            net: Some(&pair.net),
            maps: None,
        }),
        (None, Some(b)) => Some(Enter {
            user: &b.user,
            net: None,
            maps: Some((b.uid_map.as_str(), b.gid_map.as_str())),
        }),
        (None, None) => None,
    };
    let entered = match entering {
        // SAFETY: forwarded from the caller's guarantee of a single thread.
        Some(enter) => unsafe {
            clone_entering(enter, spec, into_cgroup, self_join, &ours, &theirs)
        },
        None => None,
    };
    let (pid, pidfd, joined, maps) = match entered {
        Some(r) => {
            let (pid, pidfd, joined, map_error) = r.map_err(LaunchError::Clone)?;
            let maps = match map_error {
                Some(e) => Maps::Failed(e),
                None => Maps::Written,
            };
            (pid, pidfd, joined, maps)
        }
        // SAFETY: forwarded from the caller's guarantee of a single thread.
        None => match unsafe { clone_owned(spec.userns_owner, into_cgroup, self_join) }
            .map_err(LaunchError::Clone)?
        {
            Cloned::Init => init_child(spec, ours, theirs, self_join, false),
            Cloned::Parent { pid, pidfd, joined } => (pid, pidfd, joined, Maps::Write),
        },
    };
    drop(theirs);
    let launched = Launched {
        pid,
        pidfd,
        ctl: ours,
        tun: None,
    };
    finish(&mut Kernel, spec, launched, maps, joined, join_cgroup)
}

/// Init's id maps after the clone.
#[derive(Debug)]
enum Maps {
    /// Still to be written (by us, or the helpers).
    Write,
    /// Written already: a pooled pair has them, or the process that
    /// cloned init under the base namespace wrote them.
    Written,
    /// That process could not write them.
    Failed(std::io::Error),
}

/// What follows the clone: id maps (unless they are written already), the cgroup (unless init joined it itself), the TUN
/// device, the mount trees init needs, then the go-ahead. A failure at
/// any step kills and reaps init before it is returned.
fn finish(
    k: &mut impl LaunchOps,
    spec: &SandboxSpec,
    mut launched: Launched,
    maps: Maps,
    joined: bool,
    join_cgroup: impl FnOnce(i32) -> Result<(), String>,
) -> Result<Launched, LaunchError> {
    let pid = launched.pid;
    let mapped = match maps {
        Maps::Write => k.write_maps(pid, spec),
        Maps::Written => Ok(()),
        Maps::Failed(e) => Err(e),
    };
    if let Err(e) = mapped {
        k.abort(&launched);
        return Err(LaunchError::IdMap(e));
    }
    if let Err(e) = if joined { Ok(()) } else { join_cgroup(pid) } {
        k.abort(&launched);
        return Err(LaunchError::Cgroup(e));
    }
    if let Some(tun) = &spec.net {
        match k.make_tun(pid, tun, spec.rootless.is_some()) {
            Ok(tun) => launched.tun = Some(tun),
            Err(e) => {
                k.abort(&launched);
                return Err(e);
            }
        }
    }
    // An ordinary user may neither clone mount trees of the host's mount
    // namespace nor idmap them: init, root of its own, binds the sources
    // by path (they are the caller's, whom init can reach as the caller's
    // ids are mapped inside). A copy-on-write root is served by
    // fuse-overlayfs instead of idmapped lowers.
    let sent = if spec.rootless.is_some() {
        if crate::fuseov::wanted(spec) {
            k.fuse_lowers(spec, pid, &launched.ctl)
                .map_err(LaunchError::Fuse)
        } else {
            Ok(())
        }
    } else {
        send_idmapped_lowers(k, spec, pid, &launched.ctl);
        send_image_layers(k, spec, &launched.ctl)
            .and_then(|()| send_bind_sources(k, spec, &launched.ctl))
    };
    if let Err(e) = sent {
        k.abort(&launched);
        return Err(e);
    }
    if k.send(&launched.ctl, &proto::ToInit::Go, &[]).is_err() {
        k.abort(&launched);
        return Err(LaunchError::InitGone);
    }
    Ok(launched)
}

/// [`clone_init`] with new namespaces of every kind, the user namespace
/// owned by host uid `owner` where given (and we are root): the clone is
/// made with that effective uid ([`sys::EuidSwitch`]).
///
/// # Safety
/// The caller must be single-threaded.
unsafe fn clone_owned(
    owner: Option<u32>,
    into_cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    self_join: &[OwnedFd],
) -> nix::Result<Cloned> {
    match owner {
        Some(uid) if nix::unistd::geteuid().is_root() && uid != 0 => {
            let switch = sys::EuidSwitch::enter(uid)?;
            // SAFETY: forwarded from the caller's guarantee of a single
            // thread.
            let r = unsafe { clone_init(&mut Kernel, NAMESPACES, into_cgroup, self_join) };
            match r {
                // The child: its ids belong to the new namespace now, and
                // init resets the secure bits it inherited.
                Ok(Cloned::Init) => {
                    switch.abandon();
                    Ok(Cloned::Init)
                }
                r => {
                    switch.leave();
                    r
                }
            }
        }
        // SAFETY: as above.
        _ => unsafe { clone_init(&mut Kernel, NAMESPACES, into_cgroup, self_join) },
    }
}

/// Which side of [`clone_init`] this is.
enum Cloned {
    Init,
    Parent {
        pid: i32,
        pidfd: OwnedFd,
        /// Born in its cgroup, or about to join it itself.
        joined: bool,
    },
}

/// Clones init with `flags`: into the cgroup v2 directory `into_cgroup`
/// where given and the kernel can (clone3), otherwise fork-style. Init is
/// `joined` when it was born in its cgroup or will join it itself (it has
/// `self_join` files); otherwise the caller must move it there.
///
/// # Safety
/// The caller must be single-threaded.
unsafe fn clone_init(
    k: &mut impl LaunchOps,
    flags: libc::c_int,
    into_cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    self_join: &[OwnedFd],
) -> nix::Result<Cloned> {
    let r = match into_cgroup {
        // SAFETY: forwarded from the caller's guarantee of a single thread.
        // On cgroup v2 the child is born in its cgroup; elsewhere (v1, or
        // a kernel without clone3) it is moved there right after.
        Some(cg) => match unsafe { k.clone_into_cgroup(flags, cg) } {
            Ok(r) => r.map(|(pid, pidfd)| (pid, pidfd, true)),
            Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::E2BIG) => {
                // SAFETY: as above.
                unsafe { k.clone_fork(flags) }?
                    .map(|(pid, pidfd)| (pid, pidfd, !self_join.is_empty()))
            }
            Err(e) => return Err(e),
        },
        None => {
            // SAFETY: forwarded from the caller's guarantee of a single
            // thread.
            let r = unsafe { k.clone_fork(flags) }?;
            r.map(|(pid, pidfd)| (pid, pidfd, !self_join.is_empty()))
        }
    };
    Ok(match r {
        None => Cloned::Init,
        Some((pid, pidfd, joined)) => Cloned::Parent { pid, pidfd, joined },
    })
}

/// Init's side of the clone: joins its cgroup where it does so itself,
/// then runs [`crate::init::main`].
fn init_child(
    spec: &SandboxSpec,
    ours: OwnedFd,
    theirs: OwnedFd,
    self_join: &[OwnedFd],
    net_ready: bool,
) -> ! {
    drop(ours);
    // A clone made under a `sys::EuidSwitch` inherited its secure bit; uid
    // changes must drop capabilities again from here on.
    if sys::securebits_set() {
        if let Err(e) = sys::reset_securebits() {
            crate::init::fail_early(&theirs, format!("cannot reset the secure bits: {e}"));
        }
    }
    if let Err(message) = join_self(self_join) {
        crate::init::fail_early(&theirs, message);
    }
    crate::init::main(spec, theirs, net_ready)
}

/// Ready namespaces to clone init in: a pooled user + network pair, or an
/// ordinary user's base user namespace (init then gets a user namespace
/// of its own below it, whose `maps` (uid, gid, in the base namespace's
/// ids) the entering process writes).
struct Enter<'a> {
    user: &'a OwnedFd,
    net: Option<&'a OwnedFd>,
    maps: Option<(&'a str, &'a str)>,
}

/// What the supervisor and the process entering ready namespaces share
/// (through `CLONE_VM`).
struct Entering<'a> {
    enter: Enter<'a>,
    spec: &'a SandboxSpec,
    into_cgroup: Option<std::os::fd::BorrowedFd<'a>>,
    self_join: &'a [OwnedFd],
    ours: RawFd,
    theirs: RawFd,
    /// Set by the entering process: `None` if it could not enter the
    /// namespaces, else what cloning init gave.
    result: Option<nix::Result<(i32, RawFd, bool)>>,
    /// Set by the entering process if it could not write init's maps.
    map_error: Option<std::io::Error>,
}

/// What [`clone_entering`] gives: init's pid, pidfd, whether it joins its
/// cgroup itself, and a failure to write its maps.
type EnteredClone = (i32, OwnedFd, bool, Option<std::io::Error>);

/// Clones init into ready namespaces: a process sharing our memory and
/// descriptor table (`CLONE_VM|CLONE_FILES|CLONE_VFORK`: we sleep until it
/// is gone) enters them with `setns` and clones init from there with
/// `CLONE_PARENT`, so init is still our child. The user namespace cannot
/// be entered by us (it would be for good) nor by init after its clone
/// (its other namespaces must belong to the user namespace, so they are
/// made after entering it).
///
/// Returns `None` where the namespaces could not be entered (nothing was
/// cloned: the caller makes new namespaces), else the clone's outcome.
///
/// # Safety
/// The caller must be single-threaded.
unsafe fn clone_entering(
    enter: Enter<'_>,
    spec: &SandboxSpec,
    into_cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    self_join: &[OwnedFd],
    ours: &OwnedFd,
    theirs: &OwnedFd,
) -> Option<nix::Result<EnteredClone>> {
    let Ok(stack) = sys::Stack::new(POOLED_STACK) else {
        return None;
    };
    let mut shared = Entering {
        enter,
        spec,
        into_cgroup,
        self_join,
        ours: ours.as_raw_fd(),
        theirs: theirs.as_raw_fd(),
        result: None,
        map_error: None,
    };
    // SAFETY: `enter_and_clone` runs on `stack` in our memory while we
    // sleep (CLONE_VFORK), so `shared` outlives every use it makes of it;
    // it frees nothing of ours and closes none of our descriptors. SIGCHLD
    // is its exit signal, which init (cloned with CLONE_PARENT) inherits.
    let pid = unsafe {
        libc::clone(
            enter_and_clone,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
            (&mut shared as *mut Entering<'_>).cast(),
        )
    };
    if pid > 0 {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::__WALL),
        );
    }
    // The process that ran on the stack is gone; init has a copy of its
    // own.
    drop(stack);
    if pid <= 0 {
        return None;
    }
    let r = shared.result.take()?;
    let map_error = shared.map_error.take();
    Some(r.map(|(pid, pidfd, joined)| {
        // SAFETY: the pidfd was created by the clone in the process that
        // shared our descriptor table: it is ours and nothing owns it yet.
        (
            pid,
            unsafe { OwnedFd::from_raw_fd(pidfd) },
            joined,
            map_error,
        )
    }))
}

/// The process entering ready namespaces (see [`clone_entering`]), and
/// then init's first steps.
extern "C" fn enter_and_clone(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the `Entering` on the sleeping supervisor's
    // stack (CLONE_VFORK keeps it there until we exit).
    let e = unsafe { &mut *arg.cast::<Entering<'_>>() };
    let entered = nix::sched::setns(e.enter.user, nix::sched::CloneFlags::CLONE_NEWUSER).and_then(
        |_| match e.enter.net {
            Some(net) => nix::sched::setns(net, nix::sched::CloneFlags::CLONE_NEWNET),
            None => Ok(()),
        },
    );
    if entered.is_err() {
        return 1;
    }
    let flags = match e.enter.net {
        Some(_) => NAMESPACES_POOLED,
        None => NAMESPACES,
    };
    // SAFETY: this process has a single thread (no CLONE_THREAD).
    let cloned = unsafe {
        clone_init(
            &mut Kernel,
            flags | libc::CLONE_PARENT,
            e.into_cgroup,
            e.self_join,
        )
    };
    match cloned {
        Ok(Cloned::Init) => {
            // SAFETY: init's own copies of the two socket ends (its
            // descriptor table was copied from the shared one); nothing
            // else in init owns them.
            let (ours, theirs) =
                unsafe { (OwnedFd::from_raw_fd(e.ours), OwnedFd::from_raw_fd(e.theirs)) };
            init_child(e.spec, ours, theirs, e.self_join, e.enter.net.is_some())
        }
        Ok(Cloned::Parent { pid, pidfd, joined }) => {
            if let Some((uids, gids)) = e.enter.maps {
                // Init waits for its go-ahead before using any id. We are
                // in its parent user namespace with every capability
                // there, so the kernel takes any map of that namespace's
                // ids, and `setgroups` stays allowed. (Allocating here is
                // sound: the supervisor sleeps, single-threaded.)
                let write =
                    |file: &str, text: &str| std::fs::write(format!("/proc/{pid}/{file}"), text);
                if let Err(err) = write("uid_map", uids).and_then(|()| write("gid_map", gids)) {
                    e.map_error = Some(err);
                }
            }
            // The descriptor stays open for the supervisor (shared table).
            e.result = Some(Ok((pid, pidfd.into_raw_fd(), joined)));
            0
        }
        Err(err) => {
            e.result = Some(Err(err));
            1
        }
    }
}

/// Init's first step with [`launch_joining`]: moves itself (its only
/// thread) into the group through each descriptor, then closes them.
fn join_self(files: &[OwnedFd]) -> Result<(), String> {
    for f in files {
        let r = nix::unistd::write(f, b"0");
        if let Err(e) = r {
            return Err(format!("init cannot join its cgroup: {e}"));
        }
    }
    for f in files {
        // SAFETY: the child's copies of the descriptors, which nothing else
        // in the child uses; the borrowed OwnedFd values belong to the
        // parent's copy of the memory and are never dropped here (init
        // leaves with _exit).
        unsafe {
            libc::close(f.as_raw_fd());
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "launch_tests.rs"]
mod tests;
