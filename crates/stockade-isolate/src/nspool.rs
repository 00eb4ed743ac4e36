//! A small pool of ready user + network namespace pairs.
//!
//! Creating a network namespace is the most expensive step of a sandbox's
//! start that has nothing to do with the sandbox itself: the kernel runs
//! every protocol's per-namespace set-up (sysctl tables, loopback, routing
//! and netfilter state) before the first instruction of init. The user
//! namespace that owns it needs its id maps written, and the loopback
//! device must be brought up. None of that depends on the sandbox, so a
//! cleaner does it *after* a run, off anyone's critical path, and leaves the
//! pair here for the next start.
//!
//! ```text
//! <pool>/                       default /run/stockade/nspool (0700)
//!   <key>/                      one per kind of id map ([`KEY`])
//!     <slot>-<n>/user  …/net    nsfs bind mounts keeping the pair alive
//!     .new-<slot>-<n>/          an entry being made (published by rename)
//!   claimed/<pid>-<slot>-<n>/   taken by a starting sandbox, released
//!                               with its teardown (or, if the claimer
//!                               died, by the next refill or `gc`)
//! ```
//!
//! Each entry is made for a host id slot (see [`crate::slots`]): its user
//! namespace maps the slot's block and is owned by the slot's base id.
//! The slot is reserved while the entry waits; the start that claims the
//! entry takes the slot's lock (refusing the entry if anyone holds it) and
//! runs in that slot.
//!
//! The pool is in `/run` (a tmpfs) so a reboot empties it, and outside any
//! state directory, so it serves every state directory on the host.
//!
//! **Isolation.** An entry is used by exactly one sandbox: the claim is
//! an atomic `rename` out of the key's directory, and the claimed files
//! are unmounted with the sandbox's teardown, never put back. What a
//! sandbox does to its network namespace therefore dies with it. A fresh entry holds
//! nothing but what a fresh namespace holds (a loopback device that is up):
//! the process that made it only wrote its id maps and brought `lo` up.
//! Claims check what they opened: both files must be namespaces of the
//! right type, the network namespace must be owned by the user namespace,
//! and the user namespace must be owned by the base id of the entry's
//! slot, which only host root could have made it with.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use crate::idmap::{self, IdMap};
use crate::slots::{self, Slot};
use crate::sys;

/// `STOCKADE_NS_POOL_DIR`, else this.
pub const DEFAULT_DIR: &str = "/run/stockade/nspool";
/// Entries kept ready for each id map, unless `STOCKADE_NS_POOL` says
/// otherwise (`0` turns the pool off).
pub const DEFAULT_PER_KEY: usize = 2;
/// Entries kept for all id maps together: a host whose sandboxes map many
/// different workspace owners keeps a bounded number of namespaces idle.
pub const MAX_TOTAL: usize = 8;
/// A half-made entry older than this belongs to a process that died, and
/// a claim this old is released whoever holds it (see [`release_orphans`]).
const ORPHAN_AGE: Duration = Duration::from_secs(60);

/// Making a pool entry failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot create the namespaces")]
    Clone(#[source] nix::Error),
    #[error("cannot write the id maps")]
    IdMap(#[source] io::Error),
    #[error("cannot bring up loopback in the new namespace")]
    Loopback,
    #[error("{0}")]
    Io(String, #[source] io::Error),
    #[error("cannot bind the namespace at {0}")]
    Mount(String, #[source] nix::Error),
}

/// The one kind of entry so far: namespaces of a slot's block, mapped
/// as every sandbox started by host root is.
pub const KEY: &str = "slot";

/// A claimed pair, open: enough for a start (see `launch`).
#[derive(Debug)]
pub struct Pooled {
    pub user: OwnedFd,
    pub net: OwnedFd,
    /// Where the pair's files are until [`release`]d.
    pub entry: PathBuf,
}

/// Where the pool lives and how many pairs it keeps ready per id map: set
/// once by the program's entry point ([`configure`]), from its flags or
/// environment; the library itself reads no environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The pool's directory ([`DEFAULT_DIR`] by default).
    pub dir: PathBuf,
    /// Pairs kept ready per id map, 0 to [`MAX_TOTAL`]; 0 turns the pool
    /// off ([`DEFAULT_PER_KEY`] by default).
    pub per_key: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            dir: PathBuf::from(DEFAULT_DIR),
            per_key: DEFAULT_PER_KEY,
        }
    }
}

static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

/// Sets the pool's settings for this process. The first call wins (the
/// program's entry point makes it before any sandbox exists); later calls
/// return the settings in force.
pub fn configure(settings: Settings) -> &'static Settings {
    SETTINGS.get_or_init(|| settings)
}

/// The settings in force: what [`configure`] set, else the defaults.
pub fn settings() -> &'static Settings {
    SETTINGS.get_or_init(Settings::default)
}

/// The pool's directory and its target per key; `None` when the pool is
/// turned off (a target of 0).
pub fn configured() -> Option<(PathBuf, usize)> {
    let s = settings();
    (s.per_key > 0).then(|| (s.dir.clone(), s.per_key))
}

/// Parses a pool target (`STOCKADE_NS_POOL` in the CLI): pairs kept ready
/// per id map, 0 to [`MAX_TOTAL`] (0 turns the pool off).
pub fn parse_per_key(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if n <= MAX_TOTAL => Ok(n),
        _ => Err(format!(
            "STOCKADE_NS_POOL must be a number of namespace pairs kept ready, \
             0 to {MAX_TOTAL} (0 turns the pool off); got {v:?}"
        )),
    }
}

/// The pool's directory in force.
pub fn dir() -> PathBuf {
    settings().dir.clone()
}

/// The slot an entry's name (`<slot>-<n>`, `.new-<slot>-<n>` or
/// `<pid>-<slot>-<n>` once claimed) says it was made for.
fn slot_of(name: &std::ffi::OsStr, claimed: bool) -> Option<u32> {
    let name = name.to_str()?;
    let name = name.strip_prefix(".new-").unwrap_or(name);
    let mut parts = name.split('-');
    if claimed {
        parts.next()?;
    }
    parts.next()?.parse().ok()
}

/// Takes one entry, or `None` when there is none that passes the checks
/// (entries that fail them are released on the way), with the slot the
/// pair was made for, now held by the claimer.
pub fn claim(pool: &Path, slot_dir: &Path) -> Option<(Pooled, Slot)> {
    let dir = pool.join(KEY);
    let entries = fs::read_dir(&dir).ok()?;
    let claimed = pool.join("claimed");
    let mut tries = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        if name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        if tries == 4 {
            break;
        }
        tries += 1;
        // Named after us, so that a claim whose claimer died is found.
        let mut owned = std::ffi::OsString::from(format!("{}-", std::process::id()));
        owned.push(&name);
        let to = claimed.join(owned);
        // Not found: taken by someone else a moment ago (`refill` makes
        // the `claimed` directory before any entry).
        if fs::rename(e.path(), &to).is_err() {
            continue;
        }
        let Some(k) = slot_of(&name, false) else {
            release(&to);
            continue;
        };
        let opened = open_checked(&to, slots::base_of(k));
        // The slot's lock decides: nobody may be running under its ids.
        match (opened, Slot::take(slot_dir, k)) {
            (Some((user, net)), Ok(Some(slot))) => {
                slots::unreserve(slot_dir, k);
                return Some((
                    Pooled {
                        user,
                        net,
                        entry: to,
                    },
                    slot,
                ));
            }
            (_, Ok(Some(slot))) => {
                release(&to);
                slots::unreserve(slot_dir, k);
                drop(slot);
            }
            _ => release(&to),
        }
    }
    None
}

/// Opens a claimed entry's namespaces and checks they are what an entry
/// must hold.
fn open_checked(entry: &Path, owner_uid: u32) -> Option<(OwnedFd, OwnedFd)> {
    let open = |name: &str| {
        nix::fcntl::open(
            &entry.join(name),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    };
    let user = open("user")?;
    let net = open("net")?;
    let is_ns = |fd: &OwnedFd, kind: libc::c_int| sys::is_namespace(fd, kind);
    if !is_ns(&user, libc::CLONE_NEWUSER) || !is_ns(&net, libc::CLONE_NEWNET) {
        return None;
    }
    if sys::ns_owner_uid(&user) != Some(owner_uid) {
        return None;
    }
    let net_owner = sys::ns_related(&net, sys::NS_GET_USERNS).ok()?;
    sys::same_file(&net_owner, &user).then_some((user, net))
}

/// Unmounts an entry's two files (lazily: a namespace in use stays alive)
/// and removes the entry. Harmless on an entry that is gone or was never
/// mounted.
pub fn release(entry: &Path) {
    // An ordinary user's entry is a file naming its keeper process.
    if crate::userpool::is_entry(entry) {
        return crate::userpool::release(entry);
    }
    for name in ["user", "net"] {
        let p = entry.join(name);
        let _ = nix::mount::umount2(
            &p,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        );
        let _ = fs::remove_file(&p);
    }
    let _ = fs::remove_dir(entry);
}

/// Number of ready entries.
pub fn ready(pool: &Path) -> usize {
    entries(&pool.join(KEY)).len()
}

/// Releases an entry that was never claimed and drops its slot's
/// reservation (unless a start holds the slot by now).
fn discard(entry: &Path, slot_dir: &Path, claimed: bool) {
    release(entry);
    if let Some(k) = entry.file_name().and_then(|n| slot_of(n, claimed)) {
        if !slots::in_use(slot_dir, k) {
            slots::unreserve(slot_dir, k);
        }
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().as_encoded_bytes().first() != Some(&b'.'))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn key_dirs(pool: &Path) -> Vec<PathBuf> {
    fs::read_dir(pool)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name() != "claimed")
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Brings the pool up to `per_key` ready entries (at most
/// [`MAX_TOTAL`]), each for a slot reserved in `slot_dir`, and releases
/// orphans (claims and half-made entries of processes that died). Returns
/// how many entries it made.
///
/// Forks a short-lived helper per entry; the helper only makes system
/// calls, so this is sound in a multi-threaded process too.
pub fn refill(pool: &Path, slot_dir: &Path, per_key: usize) -> Result<usize, PoolError> {
    let dir = pool.join(KEY);
    for d in [pool.to_path_buf(), pool.join("claimed"), dir.clone()] {
        if !d.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(|e| PoolError::Io(format!("cannot create {}", d.display()), e))?;
        }
    }
    // One refill per key at a time; whoever finds it busy leaves it.
    let lock = fs::File::create(dir.join(".lock"))
        .map_err(|e| PoolError::Io(format!("cannot lock {}", dir.display()), e))?;
    // SAFETY: flock on a descriptor owned by `lock`, which outlives the call.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(0);
    }
    let _ = release_orphans(pool, slot_dir);
    let want = per_key.min(MAX_TOTAL).saturating_sub(entries(&dir).len());
    evict_for(pool, slot_dir, &dir, want);
    let total: usize = key_dirs(pool).iter().map(|d| entries(d).len()).sum();
    let want = want.min(MAX_TOTAL.saturating_sub(total));
    for made in 0..want {
        if let Err(e) = make(&dir, slot_dir) {
            return if made == 0 { Err(e) } else { Ok(made) };
        }
    }
    Ok(want)
}

/// Makes room within [`MAX_TOTAL`] for `want` more entries in the key
/// directory `dir` by releasing the oldest entries of other keys: the id
/// maps in use now win over ones that may never come back (a workspace
/// owner gone, a key format of an older stockade). Each is taken out by
/// the same `rename` as a claim, so no start can be handed one half gone.
fn evict_for(pool: &Path, slot_dir: &Path, dir: &Path, want: usize) {
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = key_dirs(pool)
        .iter()
        .filter(|d| d.as_path() != dir)
        .flat_map(|d| entries(d))
        .map(|e| {
            let t = fs::symlink_metadata(&e).and_then(|m| m.modified());
            (t.unwrap_or(std::time::UNIX_EPOCH), e)
        })
        .collect();
    let total = others.len() + entries(dir).len();
    let excess = (total + want).saturating_sub(MAX_TOTAL);
    others.sort();
    for (_, e) in others.into_iter().take(excess) {
        let Some(name) = e.file_name() else { continue };
        let mut owned = std::ffi::OsString::from(format!("{}-", std::process::id()));
        owned.push(name);
        let to = pool.join("claimed").join(owned);
        if fs::rename(&e, &to).is_ok() {
            discard(&to, slot_dir, true);
        }
    }
}

/// Releases what processes that died left in the pool: claims (named
/// `<pid>-<entry>`) whose claimer is gone, and half-made entries. A claim
/// older than a minute is released even if its pid lives on (it may have
/// been reused): releasing only unmounts the pool's view, and a sandbox
/// keeps its namespaces through its own processes. Reservations of slots
/// that no entry of this pool names, that nobody holds and that are older
/// than a minute are dropped too. Returns how many entries it released.
pub fn release_orphans(pool: &Path, slot_dir: &Path) -> usize {
    let old = |p: &Path| {
        fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > ORPHAN_AGE)
            .unwrap_or(false)
    };
    let claimer_gone = |p: &Path| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let pid = name
            .as_deref()
            .and_then(|n| n.split('-').next()?.parse::<i32>().ok());
        match pid {
            Some(pid) if pid > 0 => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH)
            }
            _ => true,
        }
    };
    let mut n = 0;
    let mut named = std::collections::HashSet::new();
    for e in entries(&pool.join("claimed")) {
        if claimer_gone(&e) || old(&e) {
            discard(&e, slot_dir, true);
            n += 1;
        } else if let Some(k) = e.file_name().and_then(|n| slot_of(n, true)) {
            named.insert(k);
        }
    }
    for d in key_dirs(pool) {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name.as_encoded_bytes().starts_with(b".new-") && old(&e.path()) {
                    discard(&e.path(), slot_dir, false);
                    n += 1;
                } else if let Some(k) = slot_of(&name, false) {
                    named.insert(k);
                }
            }
        }
    }
    for k in slots::reservations(slot_dir) {
        let marker = slots::marker(slot_dir, k);
        if !named.contains(&k) && old(&marker) && !slots::in_use(slot_dir, k) {
            slots::unreserve(slot_dir, k);
        }
    }
    n
}

/// Empties the pool: every ready, half-made and claimed entry is released.
/// Returns how many entries there were.
pub fn drain(pool: &Path, slot_dir: &Path) -> usize {
    let mut n = 0;
    for d in key_dirs(pool)
        .into_iter()
        .chain(std::iter::once(pool.join("claimed")))
    {
        let claimed = d.ends_with("claimed");
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    discard(&e.path(), slot_dir, claimed);
                    n += 1;
                }
            }
        }
        let _ = fs::remove_file(d.join(".lock"));
        let _ = fs::remove_dir(&d);
    }
    n
}

/// Makes one entry in the key directory `dir`, for a slot it reserves.
fn make(dir: &Path, slot_dir: &Path) -> Result<(), PoolError> {
    let slot = slots::reserve(slot_dir).map_err(|e| {
        PoolError::Io(
            format!("cannot reserve an id slot: {e}"),
            io::Error::other(e),
        )
    })?;
    let made = make_for(dir, &slot);
    if made.is_err() {
        slots::unreserve(slot_dir, slot.index());
    }
    made
}

fn make_for(dir: &Path, slot: &Slot) -> Result<(), PoolError> {
    let map = slot.id_map();
    let (user, net) = new_pair(&map, &map, slot.base())?;
    let name = format!(
        "{}-{:x}{:x}",
        slot.index(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let tmp = dir.join(format!(".new-{name}"));
    let io = |what: &str, e| PoolError::Io(format!("{what} {}", tmp.display()), e);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| io("cannot create", e))?;
    let bind = |fd: &OwnedFd, file: &str| -> Result<(), PoolError> {
        let target = tmp.join(file);
        fs::File::create(&target).map_err(|e| io("cannot create a file in", e))?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        nix::mount::mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| PoolError::Mount(target.display().to_string(), e))
    };
    let published = bind(&user, "user")
        .and_then(|_| bind(&net, "net"))
        .and_then(|_| fs::rename(&tmp, dir.join(&name)).map_err(|e| io("cannot publish", e)));
    if published.is_err() {
        release(&tmp);
    }
    published
}

/// A new user namespace with `uids`/`gids` mapped and owned by host uid
/// `owner` (when we are root), owning a new network namespace whose
/// loopback is up. A helper process is cloned into both, held until the
/// maps are written and the descriptors opened, then told to bring `lo`
/// up and exit.
fn new_pair(uids: &IdMap, gids: &IdMap, owner: u32) -> Result<(OwnedFd, OwnedFd), PoolError> {
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| PoolError::Io("cannot create a pipe".into(), e.into()))?;
    // Made under the slot's base id, which then owns the user namespace
    // (the switch is this thread's alone: a raw system call).
    let switch = if nix::unistd::geteuid().is_root() {
        Some(sys::EuidSwitch::enter(owner).map_err(PoolError::Clone)?)
    } else {
        None
    };
    // SAFETY: `clone_fork` asks for a single thread because the child
    // goes on with a copy of one; this child only makes system calls
    // (close, read, socket, ioctl, _exit) in `helper`, allocates nothing
    // and never returns, so it is sound even if other threads exist here.
    let cloned = unsafe { sys::clone_fork(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) };
    if let Ok(None) = cloned {
        // The helper never returns (and must not switch back).
        if let Some(s) = switch {
            s.abandon();
        }
        let (r, w) = (go_r.as_raw_fd(), go_w.as_raw_fd());
        helper(r, w);
    }
    if let Some(switch) = switch {
        switch.leave();
    }
    let pid = match cloned.map_err(PoolError::Clone)? {
        None => unreachable!("the helper never returns"),
        // Waited for with waitpid below; the pidfd is not needed.
        Some((pid, _pidfd)) => pid,
    };
    drop(go_r);
    let reap = |code_ok: bool| -> bool {
        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        code_ok && matches!(st, Ok(nix::sys::wait::WaitStatus::Exited(_, 0)))
    };
    let opened = idmap::write_maps(pid, uids, gids, false)
        .map_err(PoolError::IdMap)
        .and_then(|_| {
            let open = |ns: &str| {
                let p = CString::new(format!("/proc/{pid}/ns/{ns}")).expect("no NUL in a path");
                nix::fcntl::open(
                    p.as_c_str(),
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| {
                    PoolError::Io(format!("cannot open {}", p.to_string_lossy()), e.into())
                })
            };
            Ok((open("user")?, open("net")?))
        });
    match opened {
        Ok(pair) => {
            let told = nix::unistd::write(&go_w, b"g").is_ok();
            drop(go_w);
            if reap(told) {
                Ok(pair)
            } else {
                Err(PoolError::Loopback)
            }
        }
        Err(e) => {
            // Closing our end makes the helper's read return 0: it exits.
            drop(go_w);
            reap(false);
            Err(e)
        }
    }
}

/// The pool helper, in its new namespaces: waits for the go-ahead, brings
/// loopback up, exits 0 (1 on any failure).
fn helper(go_r: RawFd, go_w: RawFd) -> ! {
    // SAFETY: raw system calls on descriptors of this process's own copy
    // of the table; `_exit` ends the process without running any handler.
    unsafe {
        libc::close(go_w);
        let mut b = 0u8;
        let n = libc::read(go_r, (&mut b as *mut u8).cast(), 1);
        let ok = n == 1 && sys::loopback_up().is_ok();
        libc::_exit(if ok { 0 } else { 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;

    fn mounts_under(dir: &Path) -> usize {
        let dir = dir.to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&dir))
            .count()
    }

    #[test]
    fn entry_names_carry_their_slot() {
        use std::ffi::OsStr;
        assert_eq!(slot_of(OsStr::new("17-abc"), false), Some(17));
        assert_eq!(slot_of(OsStr::new(".new-17-abc"), false), Some(17));
        assert_eq!(slot_of(OsStr::new("4242-17-abc"), true), Some(17));
        assert_eq!(slot_of(OsStr::new("stale"), false), None);
    }

    fn user_owner(fd: &OwnedFd) -> u32 {
        sys::ns_owner_uid(fd).expect("a user namespace has an owner")
    }

    #[test]
    #[ignore = "needs root: makes namespaces and mounts"]
    fn concurrent_claims_never_share_an_entry_or_a_slot() {
        let pool = tempfile::tempdir().unwrap();
        let slot_dir = tempfile::tempdir().unwrap();
        // Capped by MAX_TOTAL, made one after another.
        assert_eq!(refill(pool.path(), slot_dir.path(), 6).unwrap(), 6);
        assert_eq!(ready(pool.path()), 6);
        assert_eq!(slots::reservations(slot_dir.path()).len(), 6);
        // A full pool makes nothing more.
        assert_eq!(refill(pool.path(), slot_dir.path(), 6).unwrap(), 0);
        let claims = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    while let Some(p) = claim(pool.path(), slot_dir.path()) {
                        claims.lock().unwrap().push(p);
                    }
                });
            }
        });
        let claims = claims.into_inner().unwrap();
        assert_eq!(claims.len(), 6);
        let nets: HashSet<u64> = claims
            .iter()
            .map(|(p, _)| nix::sys::stat::fstat(&p.net).unwrap().st_ino)
            .collect();
        assert_eq!(nets.len(), 6, "an entry was claimed twice");
        let slots_held: HashSet<u32> = claims.iter().map(|(_, s)| s.index()).collect();
        assert_eq!(slots_held.len(), 6, "a slot was handed out twice");
        for (p, s) in &claims {
            // Owned by the slot's base id, not by host root.
            assert_eq!(user_owner(&p.user), s.base());
            assert!(slots::in_use(slot_dir.path(), s.index()));
        }
        assert!(slots::reservations(slot_dir.path()).is_empty());
        let host = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(!nets.contains(&host));
        for (p, _) in &claims {
            release(&p.entry);
        }
        assert_eq!(mounts_under(pool.path()), 0);
        assert_eq!(
            fs::read_dir(pool.path().join("claimed")).unwrap().count(),
            0
        );
    }

    #[test]
    #[ignore = "needs root: makes namespaces and mounts"]
    fn an_entry_whose_slot_is_taken_is_refused() {
        let pool = tempfile::tempdir().unwrap();
        let slot_dir = tempfile::tempdir().unwrap();
        assert_eq!(refill(pool.path(), slot_dir.path(), 1).unwrap(), 1);
        let k = slots::reservations(slot_dir.path())[0];
        // A sandbox runs under the slot (a stale reservation, say).
        let holder = Slot::take(slot_dir.path(), k).unwrap().unwrap();
        assert!(claim(pool.path(), slot_dir.path()).is_none());
        assert_eq!(ready(pool.path()), 0);
        assert_eq!(mounts_under(pool.path()), 0);
        drop(holder);
    }

    #[test]
    #[ignore = "needs root: makes namespaces and mounts"]
    fn draining_drops_entries_and_their_reservations() {
        let pool = tempfile::tempdir().unwrap();
        let slot_dir = tempfile::tempdir().unwrap();
        assert_eq!(
            refill(pool.path(), slot_dir.path(), MAX_TOTAL).unwrap(),
            MAX_TOTAL
        );
        assert_eq!(mounts_under(pool.path()), 2 * MAX_TOTAL);
        assert_eq!(drain(pool.path(), slot_dir.path()), MAX_TOTAL);
        assert_eq!(mounts_under(pool.path()), 0);
        assert!(slots::reservations(slot_dir.path()).is_empty());
    }
}
