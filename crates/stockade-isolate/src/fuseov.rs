//! An ordinary user's copy-on-write root: one `fuse-overlayfs` daemon per
//! overlaid directory instead of the kernel's overlayfs.
//!
//! Root's overlay root idmaps its lower layers so that host root's files
//! are root's inside; an ordinary user may neither idmap a mount nor map
//! host root, so under the kernel's overlayfs `/usr` would show as
//! `nobody`'s and not even root inside could change it. fuse-overlayfs
//! (`squash_to_root`) reports every file as root's inside and does the
//! copy-up itself, as the caller.
//!
//! After the clone and the id maps the supervisor forks a helper
//! ([`mount_lowers`]), which stays in the host's pid namespace: the
//! workload never sees, signals or ptraces a daemon. The helper enters the
//! sandbox's user namespace (the caller made it, so it holds every
//! capability there) and makes a private mount namespace owned by it;
//! there, for each lower layer of [`crate::rootfs::overlay_lowers`], it
//! opens `/dev/fuse`, mounts a FUSE filesystem with that descriptor on a
//! small tmpfs, and starts `fuse-overlayfs` on the descriptor
//! (`/dev/fd/3`: libfuse then serves a mount someone else made, so the
//! daemon needs no `CAP_SYS_ADMIN` and can be confined by Landlock, which
//! forbids mounting). Once the daemon is up, the helper clones the mount
//! (`open_tree`), unmounts the original and sends the clone to init, which
//! binds it where root's overlay of that name would be. The sandbox's copy
//! is then the filesystem's only mount: when the sandbox's mount
//! namespace goes, the kernel aborts the connection and the daemon exits.
//!
//! Each daemon runs as the caller (the workload's id inside), with only
//! the capabilities copy-up needs (in the sandbox's user namespace, so
//! over nothing but the caller's and the subordinate ids' files), with
//! `no_new_privs`, and under Landlock: it may read its lower directory and
//! what its binary needs, and write its upper and work directories.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::spec::SandboxSpec;
use crate::sys;

/// The daemon's program name, looked up in `PATH` (then `/usr/bin`,
/// `/usr/local/bin`).
pub const PROGRAM: &str = "fuse-overlayfs";
/// The FUSE device.
pub const DEVICE: &str = "/dev/fuse";
/// Prefix of the names under which the FUSE trees are sent to init.
const TREE_PREFIX: &str = "fuse-";
/// In the sandbox's overlay directory: where the helper's staging tmpfs
/// is mounted (in its own mount namespace; an empty directory elsewhere).
const STAGING: &str = "fuse";

/// Capabilities a daemon keeps (in the sandbox's user namespace): copy-up
/// reads and recreates files of any owner the namespace maps, keeping
/// their modes and owners.
const DAEMON_CAPS: &[u32] = &[
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    2, // CAP_DAC_READ_SEARCH
    3, // CAP_FOWNER
    4, // CAP_FSETID
];

/// An ordinary user's copy-on-write root could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error(
        "fuse-overlayfs is not installed, and an ordinary user's --overlay-root needs it: \
         sudo apt-get install fuse-overlayfs (or run as root)"
    )]
    Missing,
    #[error(
        "/dev/fuse is missing or not open to you, and an ordinary user's --overlay-root needs \
         it: sudo chmod 0666 /dev/fuse (Debian's default mode; sudo modprobe fuse if it is \
         missing); `stockade doctor` checks it"
    )]
    Device(#[source] std::io::Error),
    #[error("cannot {what} {path} for the copy-on-write root")]
    Step {
        what: String,
        path: String,
        #[source]
        source: Errno,
    },
    #[error("fuse-overlayfs failed to serve {lower} ({status}): {stderr}")]
    Daemon {
        lower: String,
        status: String,
        stderr: String,
    },
    #[error("the process mounting the copy-on-write root ended without saying why")]
    HelperGone,
}

/// [`FuseError`] as the helper reports it over its pipe.
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Step {
        what: String,
        path: String,
        errno: i32,
    },
    Daemon {
        lower: String,
        status: String,
        stderr: String,
    },
}

impl From<Wire> for FuseError {
    fn from(w: Wire) -> FuseError {
        match w {
            Wire::Step { what, path, errno } => FuseError::Step {
                what,
                path,
                source: Errno::from_raw(errno),
            },
            Wire::Daemon {
                lower,
                status,
                stderr,
            } => FuseError::Daemon {
                lower,
                status,
                stderr,
            },
        }
    }
}

fn step(what: &str, path: &Path) -> impl FnOnce(Errno) -> Wire {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |e| Wire::Step {
        what,
        path: path.display().to_string(),
        errno: e as i32,
    }
}

/// The name init receives the FUSE tree of the lower layer `flat` under.
pub fn tree_name(flat: &str) -> String {
    format!("{TREE_PREFIX}{flat}")
}

/// Where `fuse-overlayfs` is: `PATH`'s first, else `/usr/bin` or
/// `/usr/local/bin`.
pub fn program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .filter(|d| d.is_absolute())
        .map(|d| d.join(PROGRAM))
        .find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok())
}

/// Whether an ordinary user's copy-on-write root can be had here: the
/// program found and `/dev/fuse` open to the caller for reading and
/// writing (opened and closed again, which does nothing). Returns the
/// program.
pub fn check() -> Result<PathBuf, FuseError> {
    let prog = program().ok_or(FuseError::Missing)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE)
        .map_err(FuseError::Device)?;
    Ok(prog)
}

/// Whether `spec` is a sandbox whose copy-on-write root goes through
/// fuse-overlayfs: an ordinary user's, without an image.
pub fn wanted(spec: &SandboxSpec) -> bool {
    spec.rootless.is_some() && spec.overlay.is_some() && spec.image.is_none()
}

/// Mounts the lower layers of `spec`'s copy-on-write root through
/// fuse-overlayfs in a helper process (see the module's documentation)
/// and sends them to init (host pid `pid`) over `ctl`. On failure nothing
/// is left mounted or running once init, which may hold some trees, is
/// killed.
///
/// # Safety
/// The caller must be single-threaded (the helper is a `fork`).
pub unsafe fn mount_lowers(spec: &SandboxSpec, pid: i32, ctl: &OwnedFd) -> Result<(), FuseError> {
    let Some(ov) = &spec.overlay else {
        return Ok(());
    };
    let prog = check()?;
    let lowers = crate::rootfs::overlay_lowers(spec);
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| FuseError::Step {
            what: "make a pipe to".into(),
            path: "the helper".into(),
            source,
        })?;
    // SAFETY: the caller guarantees a single thread, so the child may
    // allocate; it leaves with `_exit` and never returns into the caller.
    match unsafe { nix::unistd::fork() } {
        Err(source) => Err(FuseError::Step {
            what: "start the helper that mounts".into(),
            path: ov.display().to_string(),
            source,
        }),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                helper(&prog, ov, &lowers, pid, ctl)
            }));
            let report = match r {
                Ok(Ok(())) => b"ok".to_vec(),
                Ok(Err(w)) => serde_json::to_vec(&w).unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let mut f = std::fs::File::from(wr);
            let _ = f.write_all(&report);
            drop(f);
            // SAFETY: leaving the forked child without running the
            // parent's destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(wr);
            let mut buf = Vec::new();
            let _ = std::fs::File::from(rd).read_to_end(&mut buf);
            let _ = nix::sys::wait::waitpid(child, None);
            if buf == b"ok" {
                return Ok(());
            }
            match serde_json::from_slice::<Wire>(&buf) {
                Ok(w) => Err(w.into()),
                Err(_) => Err(FuseError::HelperGone),
            }
        }
    }
}

/// The helper's work (see [`mount_lowers`]).
fn helper(
    prog: &Path,
    ov: &Path,
    lowers: &[(String, PathBuf)],
    pid: i32,
    ctl: &OwnedFd,
) -> Result<(), Wire> {
    // With the supervisor gone the sandbox is aborted: stop too.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    let staging = ov.join(STAGING);
    mkdir(&staging, 0o700)?;
    for (flat, _) in lowers {
        for d in ["upper", "work"] {
            mkdir(&ov.join(d), 0o755)?;
            mkdir(&ov.join(d).join(flat), 0o755)?;
        }
        for file in crate::rootfs::shadowed_files(flat) {
            // An upper file hides the lower one (see rootfs).
            let p = ov.join("upper").join(flat).join(file);
            match nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFREG,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
                0,
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(step("create", &p)(e)),
            }
        }
    }
    let userns_path = PathBuf::from(format!("/proc/{pid}/ns/user"));
    let userns = nix::fcntl::open(
        &userns_path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(step("open", &userns_path))?;
    nix::sched::setns(&userns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(step("enter the user namespace", &userns_path))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(step("make a mount namespace for", &staging))?;
    let root = Path::new("/");
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make private the mounts under", root))?;
    mount(
        Some("tmpfs"),
        &staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=64k"),
    )
    .map_err(step("mount a tmpfs on", &staging))?;
    // Our ids as the sandbox's namespace sees them: the FUSE mount's
    // owner (only checked without allow_other).
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    for (flat, lower) in lowers {
        let target = staging.join(flat);
        mkdir(&target, 0o755)?;
        let dev = nix::fcntl::open(
            DEVICE,
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(step("open", Path::new(DEVICE)))?;
        let data = format!(
            "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions,allow_other",
            dev.as_raw_fd()
        );
        mount(
            Some(PROGRAM),
            &target,
            Some("fuse.fuse-overlayfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(step("mount a FUSE filesystem on", &target))?;
        let served = serve(
            prog,
            &dev,
            lower,
            &ov.join("upper").join(flat),
            &ov.join("work").join(flat),
        )
        .and_then(|()| {
            let c = cstr(&target);
            let tree = sys::open_tree_clone(&c).map_err(step("clone the mount at", &target))?;
            crate::proto::send_msg(
                ctl.as_fd(),
                &crate::proto::ToInit::Lower {
                    name: tree_name(flat),
                },
                &[tree.as_raw_fd()],
            )
            .map_err(|_| step("send to the sandbox's init the mount of", lower)(Errno::EPIPE))
        });
        // Whatever happened, the clone (if any) is now init's only; this
        // one goes.
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        served?;
    }
    Ok(())
}

fn mkdir(p: &Path, mode: u32) -> Result<(), Wire> {
    match nix::unistd::mkdir(p, nix::sys::stat::Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(step("create", p)(e)),
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

/// Starts `prog` serving the FUSE connection `dev` as the overlay of
/// `lower` under `upper`, and waits until it is up: it daemonizes (its
/// first process exits) once it serves.
fn serve(prog: &Path, dev: &OwnedFd, lower: &Path, upper: &Path, work: &Path) -> Result<(), Wire> {
    let (err_rd, err_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(step("make a pipe for", prog))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},squash_to_root",
        plain(lower)?,
        plain(upper)?,
        plain(work)?
    );
    let argv = [
        cstr(prog),
        c"-o".to_owned(),
        CString::new(opts).unwrap_or_default(),
        c"/dev/fd/3".to_owned(),
    ];
    // SAFETY: the helper is single-threaded; the child only calls
    // async-signal-safe functions and allocation-free code until exec
    // (the rules and argument vector are built beforehand where they
    // allocate) or `_exit`.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(step("start", prog)(e)),
        Ok(nix::unistd::ForkResult::Child) => {
            let e = exec_daemon(
                &argv,
                dev.as_raw_fd(),
                err_wr.as_raw_fd(),
                lower,
                upper,
                work,
            );
            let _ = nix::unistd::write(&err_wr, e.as_bytes());
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(127) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(err_wr);
            let status = nix::sys::wait::waitpid(child, None);
            // The daemon's own process pointed its stderr at /dev/null
            // before its parent exited; with the parent gone, the pipe has
            // no writer left.
            let mut text = String::new();
            let _ = std::fs::File::from(err_rd).read_to_string(&mut text);
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                s => Err(Wire::Daemon {
                    lower: lower.display().to_string(),
                    status: match s {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => format!("exit status {c}"),
                        Ok(other) => format!("{other:?}"),
                        Err(e) => e.to_string(),
                    },
                    stderr: text
                        .trim()
                        .lines()
                        .last()
                        .unwrap_or("no message")
                        .to_string(),
                }),
            }
        }
    }
}

/// A path as fuse-overlayfs's options take it: one with `,` or `:`
/// (separators there) is refused.
fn plain(p: &Path) -> Result<String, Wire> {
    let s = p.display().to_string();
    if s.contains([',', ':']) {
        return Err(step(
            "use (it has ',' or ':', which fuse-overlayfs's options cannot hold)",
            p,
        )(Errno::EINVAL));
    }
    Ok(s)
}

/// The daemon's side: descriptors, capabilities, confinement, exec.
/// Returns only on failure, with what failed.
fn exec_daemon(
    argv: &[CString],
    dev: RawFd,
    err: RawFd,
    lower: &Path,
    upper: &Path,
    work: &Path,
) -> String {
    // stdin and stdout from /dev/null, stderr to the helper, the FUSE
    // connection as 3; nothing else of the supervisor's.
    let null = match nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(f) => f,
        Err(e) => return format!("cannot open /dev/null: {e}"),
    };
    // SAFETY: dup2 onto fixed numbers; the descriptors are ours and the
    // process execs right after.
    unsafe {
        if libc::dup2(dev, 3) < 0
            || libc::dup2(null.as_raw_fd(), 0) < 0
            || libc::dup2(null.as_raw_fd(), 1) < 0
            || libc::dup2(err, 2) < 0
        {
            return format!("cannot set up descriptors: {}", Errno::last());
        }
    }
    sys::close_fds_from(4, &[]);
    if let Err(e) = confine(lower, upper, work) {
        return e;
    }
    let env: [CString; 0] = [];
    match nix::unistd::execve(&argv[0], argv, &env) {
        Err(e) => format!("cannot run {}: {e}", argv[0].to_string_lossy()),
        Ok(never) => match never {},
    }
}

/// Drops every capability but [`DAEMON_CAPS`] (kept across exec as
/// ambient ones, so they hold for a daemon that is not root inside),
/// sets `no_new_privs` and applies the Landlock rules.
fn confine(lower: &Path, upper: &Path, work: &Path) -> Result<(), String> {
    let keep: u64 = DAEMON_CAPS.iter().map(|c| 1u64 << c).sum();
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINVAL {
                break;
            }
            return Err(format!("cannot drop capability {cap}: {e}"));
        }
    }
    crate::caps::set_inheritable_ambient(keep).map_err(|e| crate::error_chain(&e))?;
    crate::caps::set_no_new_privs().map_err(|e| crate::error_chain(&e))?;
    landlock(lower, upper, work)
}

/// Files of procfs fuse-overlayfs reads at start.
const PROC_READ: [&str; 2] = [
    "/proc/sys/kernel/overflowuid",
    "/proc/sys/kernel/overflowgid",
];

/// The daemon's Landlock domain: read (and execute) the system's
/// libraries and its own lower layer; read and write its upper and work
/// directories and `/dev/null`. Best effort: a kernel without Landlock
/// runs it without.
fn landlock(lower: &Path, upper: &Path, work: &Path) -> Result<(), String> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI,
    };
    let abi = ABI::V3;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let system: Vec<&Path> = ["/usr", "/lib", "/lib64", "/etc/ld.so.cache"]
        .iter()
        .map(Path::new)
        .filter(|p| p.exists())
        .collect();
    let r = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&system, read)))
        .and_then(|r| r.add_rules(path_beneath_rules([lower], read)))
        .and_then(|r| r.add_rules(path_beneath_rules([upper, work], all)))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                [Path::new("/dev/null")],
                AccessFs::ReadFile | AccessFs::WriteFile,
            ))
        })
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                PROC_READ.map(Path::new),
                AccessFs::ReadFile,
            ))
        })
        .and_then(|r| r.restrict_self());
    r.map(drop)
        .map_err(|e| format!("cannot apply Landlock: {e}"))
}

/// The FUSE trees among the trees init received: (flat name, tree).
pub fn is_tree(name: &str) -> Option<&str> {
    name.strip_prefix(TREE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_separators_in_paths_are_refused() {
        assert!(plain(Path::new("/a,b")).is_err());
        assert!(plain(Path::new("/a:b")).is_err());
        assert_eq!(plain(Path::new("/usr")).unwrap(), "/usr");
    }

    #[test]
    fn tree_names_round_trip() {
        assert_eq!(is_tree(&tree_name("var_lib_dpkg")), Some("var_lib_dpkg"));
        assert_eq!(is_tree("workspace-source"), None);
    }

    #[test]
    fn a_reported_failure_keeps_its_errno() {
        let w: Wire = serde_json::from_slice(
            &serde_json::to_vec(&Wire::Step {
                what: "mount".into(),
                path: "/x".into(),
                errno: libc::EACCES,
            })
            .unwrap(),
        )
        .unwrap();
        let e = FuseError::from(w);
        assert!(matches!(
            e,
            FuseError::Step {
                source: Errno::EACCES,
                ..
            }
        ));
    }
}
