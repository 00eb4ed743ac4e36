//! An ordinary user's pool of ready user + network namespace pairs: what
//! [`crate::nspool`] is to root, for a user with subordinate ids.
//!
//! Root's pool keeps its namespaces alive with nsfs bind mounts, which an
//! ordinary user may not make. Here each entry is a small process, the
//! *keeper* (`stockade-nspool`), sitting in the pair it made: a user
//! namespace with a sandbox's maps — under the user's base namespace (see
//! [`crate::basens`]) with subordinate ids, or with a single id mapped by
//! the keeper itself (`setgroups` denied) — and a network namespace it
//! owns whose loopback is up.
//! The cleaner of a `stockade run` makes them after its teardown, off the
//! next start's path, for the maps of the sandbox it just ran.
//!
//! ```text
//! <runtime dir>/nspool/           (the user's private runtime directory)
//!   <key>/<pid>                   an entry: its keeper's pid; one key per
//!                                 pair of maps ([`key`])
//!   claimed/<claimer>-<pid>       taken by a starting sandbox; its keeper
//!                                 is killed with the sandbox's teardown
//! ```
//!
//! **Isolation.** As with root's pool: the claim is an atomic `rename`, so
//! an entry serves one sandbox, and a keeper has done nothing in its
//! namespaces but bring loopback up. The keeper is outside the sandbox's
//! pid namespace (the workload cannot see or signal it) and is killed at
//! the teardown. What the pid in a name refers to is checked before use
//! as [`crate::basens`] checks its holder: a process named
//! `stockade-nspool`, alive after the checks (through a pidfd taken
//! first), whose user namespace the caller owns and whose maps, read from
//! the host, are exactly the sandbox's, with `setgroups` allowed, and whose
//! network namespace belongs to that user namespace. Such a pair is one the
//! caller could have made anyway.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::basens::{self, Base};
use crate::idmap::IdMap;
use crate::nspool::Pooled;
use crate::rootless::RootlessIds;
use crate::sys;

/// Entries kept ready for each pair of maps.
pub const PER_KEY: usize = 2;
/// Entries kept for all maps together.
const MAX_TOTAL: usize = 8;
/// A claim this old whose claimer is gone is released by the next refill.
const ORPHAN_AGE: Duration = Duration::from_secs(60);
/// The keepers' process name.
pub const KEEPER_NAME: &str = "stockade-nspool";

/// The pool's directory under the user's runtime directory.
pub fn pool_dir(runtime: &Path) -> PathBuf {
    runtime.join("nspool")
}

/// The directory name of the entries made for these maps: a hash of their
/// text (FNV-1a, 64 bits).
pub fn key(uids: &IdMap, gids: &IdMap) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uids
        .to_proc_format()
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(gids.to_proc_format().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether a rootless sandbox's `setgroups` is denied: with a single id
/// the kernel demands it before the caller may write its own gid map.
fn setgroups_denied(ids: RootlessIds) -> bool {
    ids == RootlessIds::Single
}

/// Takes a ready pair with exactly these maps (host ids), or `None`. The
/// pool is only used where the base namespace would be
/// ([`basens::configured`]), for a rootless sandbox.
pub fn claim(ids: Option<RootlessIds>, uids: &IdMap, gids: &IdMap) -> Option<Pooled> {
    let dir = basens::configured()?;
    let deny = setgroups_denied(ids?);
    let pool = pool_dir(dir);
    let entries = fs::read_dir(pool.join(key(uids, gids))).ok()?;
    let claimed = pool.join("claimed");
    for e in entries.flatten().take(4) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            let _ = fs::remove_file(e.path());
            continue;
        };
        let to = claimed.join(format!("{}-{pid}", std::process::id()));
        // Not found: taken by someone else a moment ago.
        if fs::rename(e.path(), &to).is_err() {
            continue;
        }
        match open_keeper(pid, Some((uids, gids, deny))) {
            Some(k) => {
                return Some(Pooled {
                    user: k.user,
                    net: k.net,
                    entry: to,
                })
            }
            None => release(&to),
        }
    }
    None
}

/// A keeper that passed the checks.
struct Keeper {
    pidfd: OwnedFd,
    user: OwnedFd,
    net: OwnedFd,
}

/// The keeper `pid`, if it is one of ours (with `maps`, of those maps).
fn open_keeper(pid: i32, maps: Option<(&IdMap, &IdMap, bool)>) -> Option<Keeper> {
    if pid <= 1 {
        return None;
    }
    let pidfd = sys::pidfd_open(pid).ok()?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let comm = fs::read_to_string(proc_dir.join("comm")).ok()?;
    if comm.trim_end() != KEEPER_NAME {
        return None;
    }
    let open = |ns: &str| {
        nix::fcntl::open(
            &proc_dir.join("ns").join(ns),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    };
    let user = open("user")?;
    let net = open("net")?;
    if !sys::is_namespace(&user, libc::CLONE_NEWUSER)
        || !sys::is_namespace(&net, libc::CLONE_NEWNET)
        || sys::ns_owner_uid(&user) != Some(nix::unistd::getuid().as_raw())
    {
        return None;
    }
    let net_owner = sys::ns_related(&net, sys::NS_GET_USERNS).ok()?;
    if !sys::same_file(&net_owner, &user) {
        return None;
    }
    if let Some((uids, gids, deny)) = maps {
        let read = |f: &str| fs::read_to_string(proc_dir.join(f)).ok();
        let setgroups = if deny { "deny" } else { "allow" };
        if basens::parse_map(&read("uid_map")?).as_ref() != Some(uids)
            || basens::parse_map(&read("gid_map")?).as_ref() != Some(gids)
            || read("setgroups")?.trim() != setgroups
        {
            return None;
        }
    }
    sys::pidfd_send_signal(&pidfd, 0).ok()?;
    Some(Keeper { pidfd, user, net })
}

/// Ends a claimed (or bad) entry: its keeper is killed if it is one of
/// ours, and the name removed. Init holds the namespaces by now.
pub fn release(entry: &Path) {
    let pid = entry
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit('-').next())
        .and_then(|p| p.parse::<i32>().ok());
    if let Some(k) = pid.and_then(|p| open_keeper(p, None)) {
        let _ = sys::pidfd_send_signal(&k.pidfd, libc::SIGKILL);
    }
    let _ = fs::remove_file(entry);
}

/// Whether a path is one of this pool's entries (a file; root's entries
/// are directories).
pub fn is_entry(entry: &Path) -> bool {
    fs::symlink_metadata(entry).is_ok_and(|m| m.is_file())
}

/// Tops up the entries for these maps (host ids) to `per_key`, within
/// [`MAX_TOTAL`] for all maps, and releases what dead claimers left.
/// Returns how many were made. Failures only cost a start its own
/// namespaces, so the caller may ignore them.
pub fn refill(
    ids: Option<RootlessIds>,
    uids: &IdMap,
    gids: &IdMap,
    per_key: usize,
) -> Result<usize, basens::BaseError> {
    let Some(dir) = basens::configured() else {
        return Ok(0);
    };
    let how = match ids {
        // Under the base namespace, which writes the maps.
        Some(RootlessIds::Subordinate { .. }) => match basens::for_sandbox(ids, uids, gids) {
            Some(base) => How::Base(base?),
            None => return Ok(0),
        },
        // The keeper writes its own single-id maps.
        Some(RootlessIds::Single) => How::Single {
            uid_map: uids.to_proc_format(),
            gid_map: gids.to_proc_format(),
        },
        None => return Ok(0),
    };
    let pool = pool_dir(dir);
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e| basens::BaseError::Io(what, e)
    };
    let kdir = pool.join(key(uids, gids));
    for d in [dir, &pool, &pool.join("claimed"), &kdir] {
        basens::private_dir(d)?;
    }
    release_orphans(&pool.join("claimed"));
    // Live entries only: a keeper may have been killed (or the machine
    // rebooted under a runtime directory on disk).
    let mut total = 0;
    let mut here = 0;
    for k in fs::read_dir(&pool).map_err(io("read", &pool))?.flatten() {
        if k.file_name() == "claimed" {
            continue;
        }
        let Ok(entries) = fs::read_dir(k.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let alive = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .and_then(|p| open_keeper(p, None))
                .is_some();
            if !alive {
                let _ = fs::remove_file(e.path());
                continue;
            }
            total += 1;
            if k.path() == kdir {
                here += 1;
            }
        }
    }
    let mut made = 0;
    while here < per_key && total < MAX_TOTAL {
        let pid = match &how {
            How::Base(base) => make_keeper(base, &kdir)?,
            How::Single { uid_map, gid_map } => make_single_keeper(uid_map, gid_map, &kdir)?,
        };
        let entry = kdir.join(pid.to_string());
        if let Err(e) = fs::File::create(&entry) {
            if let Some(k) = open_keeper(pid, None) {
                let _ = sys::pidfd_send_signal(&k.pidfd, libc::SIGKILL);
            }
            return Err(basens::BaseError::Io(
                format!("create {}", entry.display()),
                e,
            ));
        }
        here += 1;
        total += 1;
        made += 1;
    }
    Ok(made)
}

/// Empties the pool under the runtime directory `dir`: every keeper (in
/// an entry or a claim) is killed and its name removed. Init of a
/// running sandbox holds its namespaces itself, so claims go too. Returns
/// how many entries were released.
pub fn drain(dir: &Path) -> usize {
    let Ok(keys) = fs::read_dir(pool_dir(dir)) else {
        return 0;
    };
    let mut n = 0;
    for k in keys.flatten() {
        for e in fs::read_dir(k.path()).into_iter().flatten().flatten() {
            release(&e.path());
            n += 1;
        }
        if k.file_name() != "claimed" {
            let _ = fs::remove_dir(k.path());
        }
    }
    n
}

/// Releases claims whose claimer is gone and that are older than
/// [`ORPHAN_AGE`] (a supervisor killed between its claim and its
/// teardown).
fn release_orphans(claimed: &Path) {
    let Ok(entries) = fs::read_dir(claimed) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AGE);
        let claimer_alive = e
            .file_name()
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if old && !claimer_alive {
            release(&e.path());
        }
    }
}

/// How a refill makes its keepers.
enum How {
    Base(Base),
    Single { uid_map: String, gid_map: String },
}

/// Starts a keeper of single-id maps: a forked child makes the new user +
/// network namespace pair, writes its own maps (`setgroups` denied, as
/// the kernel requires of an unprivileged writer), brings loopback up and
/// forks the keeper, which sleeps there. Returns the keeper's pid.
fn make_single_keeper(uid_map: &str, gid_map: &str, kdir: &Path) -> Result<i32, basens::BaseError> {
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(basens::BaseError::Fork)?;
    // SAFETY: the child only makes system calls and formats paths on its
    // own copy of our memory (we are single-threaded: a cleaner, or a
    // test), and never returns.
    let child = match unsafe { nix::unistd::fork() }.map_err(basens::BaseError::Fork)? {
        nix::unistd::ForkResult::Child => {
            let exit = |code: i32| -> ! {
                // SAFETY: leaving the forked child without destructors.
                unsafe { libc::_exit(code) }
            };
            // SAFETY: unshare changes only this process's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
                exit(1);
            }
            let mapped = fs::write("/proc/self/uid_map", uid_map)
                .and_then(|()| fs::write("/proc/self/setgroups", "deny"))
                .and_then(|()| fs::write("/proc/self/gid_map", gid_map));
            if mapped.is_err() || sys::loopback_up().is_err() {
                exit(1);
            }
            // SAFETY: a plain fork of this single-threaded child.
            let keeper = unsafe { libc::fork() };
            if keeper == 0 {
                basens::sleep_detached(c"stockade-nspool", &ready_w, &|me| {
                    kdir.join(me.to_string()).exists()
                });
            }
            exit(i32::from(keeper < 0))
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let st = nix::sys::wait::waitpid(child, None);
    let mut pid = [0u8; 4];
    let told = fs::File::from(ready_r).read_exact(&mut pid);
    match (st, told) {
        (Ok(nix::sys::wait::WaitStatus::Exited(_, 0)), Ok(())) => Ok(i32::from_ne_bytes(pid)),
        _ => Err(basens::BaseError::HolderFailed),
    }
}

/// Starts a keeper: a forked child enters the base namespace and forks
/// the keeper, which makes a new user + network namespace pair; the child
/// (in the parent namespace, with every capability there) writes the new
/// namespace's maps, then lets it go on: it brings loopback up and sleeps
/// (see `basens::sleep_detached`). Returns the keeper's pid.
fn make_keeper(base: &Base, kdir: &Path) -> Result<i32, basens::BaseError> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let (ready_r, ready_w) = pipe().map_err(basens::BaseError::Fork)?;
    let (made_r, made_w) = pipe().map_err(basens::BaseError::Fork)?;
    let (go_r, go_w) = pipe().map_err(basens::BaseError::Fork)?;
    // Paths and texts made before the fork: the children only make system
    // calls.
    let uid_map = base.uid_map.as_bytes();
    let gid_map = base.gid_map.as_bytes();
    // SAFETY: the child only makes system calls and formats a path on its
    // own copy of our memory (we are single-threaded: a cleaner, or a
    // test), and never returns.
    let child = match unsafe { nix::unistd::fork() }.map_err(basens::BaseError::Fork)? {
        nix::unistd::ForkResult::Child => entering_child(
            &base.user,
            uid_map,
            gid_map,
            [&ready_w, &made_r, &made_w, &go_r, &go_w],
            kdir,
        ),
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop((ready_w, made_r, made_w, go_r, go_w));
    let st = nix::sys::wait::waitpid(child, None);
    let mut pid = [0u8; 4];
    let told = fs::File::from(ready_r).read_exact(&mut pid);
    match (st, told) {
        (Ok(nix::sys::wait::WaitStatus::Exited(_, 0)), Ok(())) => Ok(i32::from_ne_bytes(pid)),
        _ => Err(basens::BaseError::HolderFailed),
    }
}

/// The child of [`make_keeper`] that enters the base namespace; `fds` are
/// the pipe ends `[ready_w, made_r, made_w, go_r, go_w]`.
fn entering_child(
    user: &OwnedFd,
    uid_map: &[u8],
    gid_map: &[u8],
    fds: [&OwnedFd; 5],
    kdir: &Path,
) -> ! {
    let [ready_w, made_r, made_w, go_r, go_w] = fds;
    let exit = |code: i32| -> ! {
        // SAFETY: leaving the forked child without running destructors.
        unsafe { libc::_exit(code) }
    };
    // SAFETY: setns on a descriptor we own; changes only this process.
    if unsafe { libc::setns(user.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
        exit(1);
    }
    // SAFETY: a plain fork of this single-threaded child.
    let keeper = unsafe { libc::fork() };
    if keeper == 0 {
        keeper_main(ready_w, made_w, go_r, kdir);
    }
    if keeper < 0 {
        exit(1);
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into a live local.
    let n = unsafe { libc::read(made_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    if n != 1 || byte != b'R' {
        exit(1);
    }
    let write = |file: &str, text: &[u8]| {
        fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{keeper}/{file}"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, text))
            .is_ok()
    };
    if !(write("uid_map", uid_map) && write("gid_map", gid_map)) {
        exit(1);
    }
    // SAFETY: writes one byte from a live buffer.
    let n = unsafe { libc::write(go_w.as_raw_fd(), b"G".as_ptr().cast(), 1) };
    exit(i32::from(n != 1))
}

/// The keeper: new user + network namespaces, maps awaited, loopback up,
/// then sleep.
fn keeper_main(ready_w: &OwnedFd, made_w: &OwnedFd, go_r: &OwnedFd, kdir: &Path) -> ! {
    let exit = |code: i32| -> ! {
        // SAFETY: leaving the forked child without running destructors.
        unsafe { libc::_exit(code) }
    };
    // SAFETY: unshare changes only this process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        exit(1);
    }
    // SAFETY: writes one byte from a live buffer.
    unsafe { libc::write(made_w.as_raw_fd(), b"R".as_ptr().cast(), 1) };
    let mut byte = 0u8;
    // SAFETY: reads one byte into a live local.
    let n = unsafe { libc::read(go_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    if n != 1 || byte != b'G' || sys::loopback_up().is_err() {
        exit(1);
    }
    // Named by `<kdir>/<pid>` until claimed (then init holds the pair and
    // the teardown kills the keeper, or it ends here) or removed.
    basens::sleep_detached(c"stockade-nspool", ready_w, &|me| {
        kdir.join(me.to_string()).exists()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_either_map_and_name_a_directory() {
        let a = IdMap::single(1000, 1500);
        let b = IdMap::single(0, 1500);
        assert_ne!(key(&a, &a), key(&a, &b));
        assert_ne!(key(&a, &b), key(&b, &a));
        assert_eq!(key(&a, &b), key(&a.clone(), &b.clone()));
        assert!(key(&a, &b).chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn an_entry_naming_no_keeper_is_not_one() {
        // Our own pid: alive, ours, but not named as a keeper.
        assert!(open_keeper(std::process::id() as i32, None).is_none());
        assert!(open_keeper(1, None).is_none());
        assert!(open_keeper(0, None).is_none());
    }
}
