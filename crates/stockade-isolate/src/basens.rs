//! An ordinary user's *base* user namespace: the subordinate ids mapped
//! once, for every sandbox the user starts afterwards.
//!
//! A rootless sandbox with subordinate ids needs its maps written by the
//! setuid helpers `newuidmap` and `newgidmap` (see [`crate::rootless`]):
//! two executions of a setuid program, about 2 ms of CPU on every start.
//! Instead, the first start makes one user namespace whose maps are the
//! user's whole allowance — inside 0 the caller, inside 1.. the
//! subordinate range ([`base_map`]) — and leaves a small process in it,
//! the *holder* (`stockade-userns`, its pid in `<dir>/userns.pid`). Every
//! later start enters that namespace in a short-lived process (as the
//! namespace pool's pairs are entered, see `launch`), clones init there
//! with a new user namespace of its own, and writes init's maps itself:
//! having entered the base namespace it holds `CAP_SETUID`/`CAP_SETGID`
//! there, which is what the kernel asks of a map writer in the parent
//! namespace. The maps are the sandbox's usual ones, rewritten in base ids
//! ([`rebase`]). Rootless podman keeps a "pause process" for the same
//! reason.
//!
//! **Isolation.** Each sandbox still has a user namespace of its own, now
//! a child of the base one instead of the host's. Its processes hold no
//! capability in the base namespace (only processes *in* the host's
//! namespace with the caller's uid, or in the base namespace, do), cannot
//! enter it (init closes every descriptor it inherited before a workload
//! runs) and cannot see the holder (it is outside their pid namespace).
//! Two sandboxes of one user share nothing they did not share before:
//! both mapped the same subordinate ids already. The holder itself does
//! nothing but wait: it holds no descriptor, sits in a session of its
//! own, and can be stopped at any time (`stockade gc --drain-pool`); the
//! next start makes another.
//!
//! **Trust.** The pid file is in the user's private runtime directory, but
//! whatever it names is checked before use: the namespace must be a user
//! namespace owned by the caller, a child of the caller's own, with
//! exactly the expected maps and `setgroups` allowed, and the process must
//! still be alive afterwards (checked through a pidfd taken first, so a
//! recycled pid cannot pass). Any namespace passing those checks is one the
//! caller could have made with the helpers anyway.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::idmap::{Extent, IdMap, MAPPED_IDS};
use crate::rootless::{self, RootlessError, RootlessIds, SubRange};
use crate::sys;

/// The holder's pid, in the configured directory.
pub const PID_FILE: &str = "userns.pid";
/// Serialises the making of a holder between concurrent starts.
const LOCK_FILE: &str = "userns.lock";
/// The holder's process name (`comm`).
pub const HOLDER_NAME: &str = "stockade-userns";

static DIR: std::sync::OnceLock<(Option<PathBuf>, bool)> = std::sync::OnceLock::new();

/// Sets where the holder's pid file lives (the user's private runtime
/// directory; `None` for root, who has no base namespace), and whether
/// new sandboxes use it (else every sandbox's namespace is mapped by the
/// helpers). The first call wins; the program's entry point makes it
/// before any sandbox exists. Without a call there is no base namespace.
pub fn configure(dir: Option<PathBuf>, enabled: bool) {
    DIR.get_or_init(|| (dir, enabled));
}

/// The configured directory, if new sandboxes use the base namespace.
pub fn configured() -> Option<&'static Path> {
    match DIR.get_or_init(|| (None, false)) {
        (Some(d), true) => Some(d),
        _ => None,
    }
}

/// The configured directory, used or not (a holder made earlier can be
/// stopped with the base namespace turned off).
pub fn dir() -> Option<&'static Path> {
    DIR.get_or_init(|| (None, false)).0.as_deref()
}

/// Why the base namespace could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("cannot {0}")]
    Io(String, #[source] io::Error),
    #[error(
        "{0} is not a directory of yours that only you may write; remove it, or set \
         XDG_RUNTIME_DIR to a directory of your own"
    )]
    Dir(PathBuf),
    #[error("cannot start the base user namespace's holder")]
    Fork(#[source] nix::Error),
    #[error("the base user namespace's holder could not make its namespace")]
    HolderFailed,
    #[error("cannot map the base user namespace")]
    Maps(#[source] RootlessError),
}

/// The base namespace's map for one kind of id: inside 0 is `caller`,
/// inside 1.. the first `MAPPED_IDS - 1` ids of `sub`.
pub fn base_map(caller: u32, sub: SubRange) -> IdMap {
    IdMap {
        extents: vec![
            Extent {
                inside: 0,
                outside: caller,
                count: 1,
            },
            Extent {
                inside: 1,
                outside: sub.start,
                count: MAPPED_IDS - 1,
            },
        ],
    }
}

/// `map` (inside → host ids) rewritten as inside → base namespace ids,
/// for a writer in the base namespace; `None` if an extent uses a host id
/// the base namespace does not map.
pub fn rebase(map: &IdMap, caller: u32, sub: SubRange) -> Option<IdMap> {
    let base = base_map(caller, sub);
    let mut extents = Vec::with_capacity(map.extents.len());
    for e in &map.extents {
        let to_base = base.extents.iter().find_map(|b| {
            let end = e.outside.checked_add(e.count)?;
            (e.outside >= b.outside && end <= b.outside + b.count)
                .then(|| b.inside + (e.outside - b.outside))
        })?;
        extents.push(Extent {
            inside: e.inside,
            outside: to_base,
            count: e.count,
        });
    }
    Some(IdMap { extents })
}

/// What a start needs to clone init under the base namespace: the
/// namespace, and init's maps as the kernel wants them written there.
#[derive(Debug)]
pub struct Base {
    pub user: OwnedFd,
    pub uid_map: String,
    pub gid_map: String,
}

/// The base namespace for a sandbox with these maps (host ids), made if
/// there is none yet; `None` where it is off ([`configure`]), the sandbox
/// has no subordinate ids, or the maps do not fit the base namespace.
/// Errors only come from making a new one.
pub fn for_sandbox(
    ids: Option<RootlessIds>,
    uid_map: &IdMap,
    gid_map: &IdMap,
) -> Option<Result<Base, BaseError>> {
    let dir = configured()?;
    let Some(RootlessIds::Subordinate { uids, gids }) = ids else {
        return None;
    };
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let u = rebase(uid_map, uid, uids)?;
    let g = rebase(gid_map, gid, gids)?;
    let want = (base_map(uid, uids), base_map(gid, gids));
    Some(ensure(dir, &want).map(|user| Base {
        user,
        uid_map: u.to_proc_format(),
        gid_map: g.to_proc_format(),
    }))
}

/// Opens the base namespace whose maps are `want` (uids, gids), making it
/// (and its holder) if the pid file names none that passes the checks.
pub fn ensure(dir: &Path, want: &(IdMap, IdMap)) -> Result<OwnedFd, BaseError> {
    if let Some(ns) = open_holder(dir, Some(want)).map(|h| h.ns) {
        return Ok(ns);
    }
    private_dir(dir)?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| BaseError::Io(format!("open {}", dir.join(LOCK_FILE).display()), e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| BaseError::Io("lock the base namespace".into(), e.into()))?;
    // Another start may have made one while we waited.
    if let Some(ns) = open_holder(dir, Some(want)).map(|h| h.ns) {
        return Ok(ns);
    }
    // A holder of other maps (the subordinate ranges changed) is ours but
    // of no use: stop it.
    stop(dir);
    let pid = make_holder(want, &dir.join(PID_FILE))?;
    let tmp = dir.join(format!(".{PID_FILE}.{}", std::process::id()));
    fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| fs::rename(&tmp, dir.join(PID_FILE)))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            kill(pid);
            BaseError::Io(format!("write {}", dir.join(PID_FILE).display()), e)
        })?;
    open_holder(dir, Some(want))
        .map(|h| h.ns)
        .ok_or(BaseError::HolderFailed)
}

/// A holder that passed the checks.
struct Holder {
    pid: i32,
    pidfd: OwnedFd,
    ns: OwnedFd,
}

/// The holder the pid file names, if it passes every check of the module
/// comment (with `want`, its maps must be those).
fn open_holder(dir: &Path, want: Option<&(IdMap, IdMap)>) -> Option<Holder> {
    let text = fs::read_to_string(dir.join(PID_FILE)).ok()?;
    let pid: i32 = text.trim().parse().ok().filter(|&p| p > 1)?;
    let pidfd = sys::pidfd_open(pid).ok()?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let ns = nix::fcntl::open(
        &proc_dir.join("ns/user"),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let own = nix::fcntl::open(
        "/proc/self/ns/user",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    if !sys::is_namespace(&ns, libc::CLONE_NEWUSER)
        || sys::ns_owner_uid(&ns) != Some(nix::unistd::getuid().as_raw())
    {
        return None;
    }
    let parent = sys::ns_related(&ns, sys::NS_GET_PARENT).ok()?;
    if !sys::same_file(&parent, &own) {
        return None;
    }
    let comm = fs::read_to_string(proc_dir.join("comm")).ok()?;
    if comm.trim_end() != HOLDER_NAME {
        return None;
    }
    if let Some((uids, gids)) = want {
        let read = |f: &str| fs::read_to_string(proc_dir.join(f)).ok();
        if parse_map(&read("uid_map")?) != Some(uids.clone())
            || parse_map(&read("gid_map")?) != Some(gids.clone())
            || read("setgroups")?.trim() != "allow"
        {
            return None;
        }
    }
    // Alive now, so it was alive when its files were read: its pid cannot
    // have been given to another process meanwhile.
    sys::pidfd_send_signal(&pidfd, 0).ok()?;
    Some(Holder { pid, pidfd, ns })
}

/// Stops the holder the pid file names, if it is one of ours (whatever
/// its maps), and removes the pid file. Returns its pid.
pub fn stop(dir: &Path) -> Option<i32> {
    let holder = open_holder(dir, None);
    let _ = fs::remove_file(dir.join(PID_FILE));
    let h = holder?;
    sys::pidfd_send_signal(&h.pidfd, libc::SIGKILL).ok()?;
    Some(h.pid)
}

/// `/proc/PID/uid_map`'s text as a map.
pub(crate) fn parse_map(text: &str) -> Option<IdMap> {
    let mut extents = Vec::new();
    for line in text.lines() {
        let mut n = line.split_whitespace().map(|f| f.parse::<u32>().ok());
        let (inside, outside, count) = (n.next()??, n.next()??, n.next()??);
        extents.push(Extent {
            inside,
            outside,
            count,
        });
    }
    Some(IdMap { extents })
}

/// Makes the runtime directory (0700) if missing, and refuses one that is
/// not the caller's alone.
pub(crate) fn private_dir(dir: &Path) -> Result<(), BaseError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(BaseError::Io(format!("create {}", dir.display()), e)),
    }
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| BaseError::Io(format!("inspect {}", dir.display()), e))?;
    if !meta.is_dir()
        || meta.uid() != nix::unistd::getuid().as_raw()
        || meta.permissions().mode() & 0o022 != 0
    {
        return Err(BaseError::Dir(dir.to_path_buf()));
    }
    Ok(())
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
}

/// Starts a holder in a new user namespace with the maps `want` and
/// returns its pid. A forked child makes the namespace, the helpers map
/// it, and the child forks the holder (so the holder is nobody's child
/// here and ends in a session of its own) and leaves.
fn make_holder(want: &(IdMap, IdMap), pid_file: &Path) -> Result<i32, BaseError> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let (ready_r, ready_w) = pipe().map_err(BaseError::Fork)?;
    let (go_r, go_w) = pipe().map_err(BaseError::Fork)?;
    // SAFETY: the child only makes system calls (unshare, read, write,
    // fork, setsid, prctl, close_range, pause, _exit) and never returns, so
    // it touches no state another thread of ours could have left locked.
    let child = match unsafe { nix::unistd::fork() }.map_err(BaseError::Fork)? {
        nix::unistd::ForkResult::Child => holder_child(ready_w, go_r, pid_file),
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    drop(go_r);
    let mut ready = fs::File::from(ready_r);
    let mut go = fs::File::from(go_w);
    let reap = || {
        let _ = nix::sys::wait::waitpid(child, None);
    };
    let mut byte = [0u8; 1];
    if ready.read_exact(&mut byte).is_err() || byte[0] != b'R' {
        reap();
        return Err(BaseError::HolderFailed);
    }
    let ids = rootless::detect();
    if let Err(e) = rootless::write_maps(ids, child.as_raw(), &want.0, &want.1) {
        drop(go);
        reap();
        return Err(BaseError::Maps(e));
    }
    let mut pid = [0u8; 4];
    let told = go.write_all(b"G").and_then(|()| ready.read_exact(&mut pid));
    reap();
    match told {
        Ok(()) => Ok(i32::from_ne_bytes(pid)),
        Err(_) => Err(BaseError::HolderFailed),
    }
}

/// The forked child of [`make_holder`].
fn holder_child(ready: OwnedFd, go: OwnedFd, pid_file: &Path) -> ! {
    let write = |b: &[u8]| {
        // SAFETY: writes from a live buffer to a descriptor we own.
        unsafe { libc::write(ready.as_raw_fd(), b.as_ptr().cast(), b.len()) };
    };
    // SAFETY: unshare changes only this process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        write(b"F");
        // SAFETY: leaving the forked child without running destructors.
        unsafe { libc::_exit(1) };
    }
    write(b"R");
    let mut byte = 0u8;
    // SAFETY: reads one byte into a live local.
    let n = unsafe { libc::read(go.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    if n != 1 || byte != b'G' {
        // SAFETY: as above.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: a plain fork of this single-threaded child; the holder runs
    // only system calls from here on.
    let holder = unsafe { libc::fork() };
    if holder == 0 {
        hold(&ready, pid_file);
    }
    // SAFETY: as above.
    unsafe { libc::_exit(i32::from(holder < 0)) }
}

/// The holder: see [`sleep_detached`]; it ends once its pid file names
/// it no more (`stockade gc --drain-pool` removes it, and so does the
/// removal of the runtime directory at the user's last logout).
fn hold(ready: &OwnedFd, pid_file: &Path) -> ! {
    sleep_detached(
        c"stockade-userns",
        ready,
        &|me| match fs::read_to_string(pid_file) {
            Ok(text) => text.trim() == me.to_string(),
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        },
    )
}

/// The end of a process that only keeps namespaces alive: default signal
/// handling and none blocked (the supervisor's are not its own: a plain
/// `kill` ends it), a session of its own, `name`, its pid written to
/// `ready` (only then, so that whoever reads it finds the process as the
/// checks want it), no descriptors, and sleep, waking every
/// [`WATCH_EVERY`] seconds to end once `named(own pid)` says that nothing
/// names it any more (nobody could find it).
pub(crate) fn sleep_detached(
    name: &std::ffi::CStr,
    ready: &OwnedFd,
    named: &dyn Fn(i32) -> bool,
) -> ! {
    // SAFETY: each call changes only this process (its signal state,
    // session, working directory, name, descriptor table) or reads and
    // writes live locals; none can fail in a way that matters here, and
    // the loop only ends with _exit.
    let me = unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let me = libc::getpid();
        let pid = me.to_ne_bytes();
        libc::write(ready.as_raw_fd(), pid.as_ptr().cast(), pid.len());
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        me
    };
    loop {
        // SAFETY: sleep only waits.
        unsafe { libc::sleep(WATCH_EVERY) };
        if !named(me) {
            // SAFETY: leaving without running destructors (a fork).
            unsafe { libc::_exit(0) };
        }
    }
}

/// Seconds between a holder's or keeper's checks of what names it.
const WATCH_EVERY: libc::c_uint = 30;

/// For tests: whether `pid`'s user namespace is a child of the holder's.
pub fn is_child_of_holder(dir: &Path, pid: i32) -> Option<bool> {
    let h = open_holder(dir, None)?;
    let ns = fs::File::open(format!("/proc/{pid}/ns/user")).ok()?;
    let ns = OwnedFd::from(ns);
    let parent = sys::ns_related(&ns, sys::NS_GET_PARENT).ok()?;
    Some(sys::same_file(&parent, &h.ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: SubRange = SubRange {
        start: 100_000,
        count: 65_536,
    };

    #[test]
    fn sandbox_maps_rebase_onto_the_base_namespace() {
        // The agent (1000) is the caller (1500), every other id a
        // subordinate one: in base ids the caller is 0, subordinate id
        // 100000 + k is 1 + k.
        let m = rootless::map_for(1000, 1500, Some(SUB));
        let b = rebase(&m, 1500, SUB).unwrap();
        assert_eq!(b.to_proc_format(), "0 1 1000\n1000 0 1\n1001 1001 64535\n");
        // Every inside id lands where the host map sends it.
        let base = base_map(1500, SUB);
        for inside in [0, 999, 1000, 1001, 65535] {
            let via_base = base.to_host(b.to_host(inside).unwrap());
            assert_eq!(via_base, m.to_host(inside));
        }
        // Root inside as the caller (an image sandbox's map).
        let root = rootless::map_for(0, 1500, Some(SUB));
        assert_eq!(
            rebase(&root, 1500, SUB).unwrap().to_proc_format(),
            "0 0 1\n1 1 65535\n"
        );
    }

    #[test]
    fn an_id_the_base_namespace_lacks_is_not_rebased() {
        assert_eq!(rebase(&IdMap::single(0, 0), 1500, SUB), None);
        // Past the end of the subordinate ids the base maps.
        let past = IdMap::single(5, SUB.start + MAPPED_IDS - 1);
        assert_eq!(rebase(&past, 1500, SUB), None);
        let straddling = IdMap {
            extents: vec![Extent {
                inside: 0,
                outside: SUB.start + 10,
                count: MAPPED_IDS,
            }],
        };
        assert_eq!(rebase(&straddling, 1500, SUB), None);
    }

    #[test]
    fn proc_maps_parse_back() {
        let m = base_map(1500, SUB);
        let text = "         0       1500          1\n         1     100000      65535\n";
        assert_eq!(parse_map(text), Some(m));
        assert_eq!(parse_map("0 1 x\n"), None);
    }
}
