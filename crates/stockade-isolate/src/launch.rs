//! The supervisor's side of starting a sandbox: one `clone` into new
//! user, mount, pid, ipc, uts and network namespaces; id maps and cgroup
//! membership written from outside; then the go-ahead.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::idmap;
use crate::proto;
use crate::spec::SandboxSpec;
use crate::sys;

/// Starting a sandbox failed before its init could report anything.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create the control socket: {0}")]
    Socket(#[source] nix::Error),
    #[error("cannot create the sandbox's namespaces: {0} (check `stockade doctor`: user namespaces may be disabled)")]
    Clone(#[source] nix::Error),
    #[error("cannot write the sandbox's id maps: {0}")]
    IdMap(#[source] std::io::Error),
    #[error("cannot place the sandbox in its cgroup: {0}")]
    Cgroup(String),
    #[error("the sandbox's init exited before it started")]
    InitGone,
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
}

/// For a copy-on-write root: clones each lower layer, idmaps it through
/// the sandbox's user namespace and passes it to init. Host root's files
/// then appear owned by root inside, so the workload (as root inside) can
/// modify them through the overlay — `apt-get install` works. Only the
/// host's root may create idmapped mounts; where that fails, init falls
/// back to the plain host paths (files then appear owned by `nobody`).
fn send_idmapped_lowers(spec: &SandboxSpec, pid: i32, ctl: &OwnedFd) {
    let lowers = crate::rootfs::overlay_lowers(spec);
    if lowers.is_empty() {
        return;
    }
    let Ok(userns) = nix::fcntl::open(
        format!("/proc/{pid}/ns/user").as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return;
    };
    for (name, host) in lowers {
        let Ok(path) = std::ffi::CString::new(host.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        let Ok(tree) = sys::open_tree_clone(&path) else {
            continue;
        };
        if sys::idmap_tree(&tree, &userns).is_err() {
            continue;
        }
        let msg = proto::ToInit::Lower { name };
        let _ = proto::send_msg(ctl.as_fd(), &msg, &[std::os::fd::AsRawFd::as_raw_fd(&tree)]);
    }
}

/// Opens the sources of the workspace and of the user's binds here, as
/// the supervisor, and hands them to init as detached mount trees: the
/// sandbox's root (an unprivileged id on the host) could not walk to a
/// path under a directory only host root may enter, such as a 0700
/// temporary directory. Whatever cannot be opened here, init tries itself
/// and reports.
fn send_bind_sources(spec: &SandboxSpec, ctl: &OwnedFd) {
    let sources = std::iter::once((crate::rootfs::WORKSPACE_TREE.to_string(), &spec.workspace))
        .chain(
            spec.ro_binds
                .iter()
                .chain(&spec.binds)
                .enumerate()
                .map(|(i, b)| (crate::rootfs::bind_tree_name(i), &b.src)),
        );
    for (name, src) in sources {
        let Ok(path) = std::ffi::CString::new(src.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        if let Ok(tree) = sys::open_tree_clone(&path) {
            let msg = proto::ToInit::Lower { name };
            let _ = proto::send_msg(ctl.as_fd(), &msg, &[std::os::fd::AsRawFd::as_raw_fd(&tree)]);
        }
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
    unsafe { launch_joining(spec, into_cgroup, &[], join_cgroup) }
}

/// [`launch`], where on cgroup v1 init joins its cgroup itself: right
/// after the clone it writes `0` to each of `self_join` (the group's
/// `tasks` files, opened by the caller). A thread moving itself spares
/// the kernel its global threadgroup lock, whose write side waits for an
/// RCU grace period on a quiet host (10–15 ms, most of a sandbox's start
/// on cgroup v1). With `self_join` empty, `join_cgroup` moves init as in
/// [`launch`].
///
/// # Safety
/// As [`launch`].
pub unsafe fn launch_joining(
    spec: &SandboxSpec,
    into_cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    self_join: &[OwnedFd],
    join_cgroup: impl FnOnce(i32) -> Result<(), String>,
) -> Result<Launched, LaunchError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(LaunchError::Socket)?;
    // SAFETY: forwarded from the caller's guarantee of a single thread.
    // On cgroup v2 the child is born in its cgroup; elsewhere (v1, or a
    // kernel without clone3) it is moved there right after.
    let mut joined = false;
    let cloned = match into_cgroup {
        // SAFETY: forwarded from the caller's guarantee of a single thread.
        Some(cg) => match unsafe { sys::clone_into_cgroup(NAMESPACES, cg) } {
            Ok(r) => {
                joined = true;
                Ok(r)
            }
            Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::E2BIG) => {
                // SAFETY: as above.
                unsafe { sys::clone_fork(NAMESPACES) }
            }
            Err(e) => Err(e),
        },
        None => {
            joined = !self_join.is_empty();
            // SAFETY: forwarded from the caller's guarantee of a single thread.
            unsafe { sys::clone_fork(NAMESPACES) }
        }
    };
    match cloned.map_err(LaunchError::Clone)? {
        None => {
            drop(ours);
            if let Err(message) = join_self(self_join) {
                crate::init::fail_early(&theirs, message);
            }
            crate::init::main(spec, theirs)
        }
        Some((pid, pidfd)) => {
            drop(theirs);
            let launched = Launched {
                pid,
                pidfd,
                ctl: ours,
            };
            let abort = |l: &Launched| {
                let _ = sys::pidfd_send_signal(&l.pidfd, libc::SIGKILL);
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(l.pid), None);
            };
            if let Err(e) = idmap::write_maps(pid, &spec.uid_map, &spec.gid_map, false) {
                abort(&launched);
                return Err(LaunchError::IdMap(e));
            }
            if let Err(e) = if joined { Ok(()) } else { join_cgroup(pid) } {
                abort(&launched);
                return Err(LaunchError::Cgroup(e));
            }
            send_idmapped_lowers(spec, pid, &launched.ctl);
            send_bind_sources(spec, &launched.ctl);
            if proto::send_msg(launched.ctl.as_fd(), &proto::ToInit::Go, &[]).is_err() {
                abort(&launched);
                return Err(LaunchError::InitGone);
            }
            Ok(launched)
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
