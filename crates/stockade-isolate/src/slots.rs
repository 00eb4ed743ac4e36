//! Host id ranges, one per live sandbox.
//!
//! Every sandbox runs under host ids nobody else uses at the same time: a
//! *slot* `k` is the block of [`MAPPED_IDS`] host ids starting at
//! [`base_of`]`(k)`, mapped to ids 0..65536 inside. Kernel counters kept
//! per user — epoll watches, inotify instances, pending signals, message
//! queue bytes, `RLIMIT_NPROC` — then count each sandbox on its own: one
//! sandbox exhausting its share cannot make a call fail in another, or in
//! the host's own users. The slot's base id also owns the sandbox's user
//! namespace (see `launch`), because the kernel charges the counters of
//! everything inside a user namespace to the namespace's owner as well.
//!
//! A slot is held by an exclusive `flock` on `<dir>/<k>` (default
//! [`DEFAULT_DIR`], a tmpfs, so a reboot frees every slot). The lock
//! belongs to the open file: it passes to processes that inherit the
//! descriptor (init, the detached cleaner) and is released by the kernel
//! when the last of them is gone, even if they are killed — a slot is
//! never leaked and never handed out twice while anything of its sandbox
//! lives.
//!
//! The namespace pool (`crate::nspool`) prepares namespaces for slots
//! before any sandbox exists. Such a slot is *reserved* by a marker file
//! `<dir>/pool/<k>` while its namespaces wait in the pool; [`Slot::acquire`]
//! passes reserved slots over, and the start that claims the pool entry
//! takes the slot with [`Slot::take`] and drops the marker.
//!
//! Lock files stay (removing one safely would need every holder gone);
//! slots are drawn from the first [`COMMON`] first, so a host keeps a few
//! thousand small files in `/run`, not tens of thousands.
//!
//! Slot 0 ([`crate::idmap::HOST_ID_BASE`] itself) is never handed out: it
//! is the *disk identity* of files a sandbox writes into host directories
//! (see `crate::idmap::DiskMap`), which must not be the live identity of
//! any sandbox.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::idmap::{IdMap, HOST_ID_BASE, MAPPED_IDS};
use crate::rootless::RootlessIds;

/// Where slot locks live unless the caller says otherwise.
pub const DEFAULT_DIR: &str = "/run/stockade/ids";
/// Slots are numbered `1..=SLOTS`. The last block ends below 2^32 - 65536,
/// clear of `(uid_t)-1` and of the overflow ids.
pub const SLOTS: u32 = 32_768;
/// Slots tried first, at random, before the whole range.
pub const COMMON: u32 = 4096;
/// How many slots [`Slot::acquire`] tries in each of the two ranges
/// before it gives up.
const PROBES: u32 = 256;

/// The slot lock directory: [`DEFAULT_DIR`].
pub fn dir() -> PathBuf {
    PathBuf::from(DEFAULT_DIR)
}

/// First host id of slot `k`.
pub fn base_of(k: u32) -> u32 {
    HOST_ID_BASE + k * MAPPED_IDS
}

/// Why no slot could be had.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The lock directory cannot be used.
    #[error("cannot use the id slot directory {dir}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Every slot tried is taken.
    #[error(
        "no free host id range after {PROBES} tries: {SLOTS} sandboxes can run at once; \
         remove some or run `stockade gc`"
    )]
    Exhausted,
}

/// A slot held by this process (and whoever inherits its lock).
#[derive(Debug)]
pub struct Slot {
    index: u32,
    /// `None` for a rootless sandbox's ids, which lock nothing.
    lock: Option<File>,
    /// How a rootless sandbox's ids are mapped, instead of a block.
    rootless: Option<RootlessIds>,
}

impl Slot {
    /// Takes a free slot that the pool has not reserved.
    pub fn acquire(dir: &Path) -> Result<Slot, SlotError> {
        ensure_dir(dir)?;
        let probes = (0..2).flat_map(|range| {
            let size = if range == 0 { COMMON } else { SLOTS };
            let start = random_u32() % size;
            (0..PROBES).map(move |i| 1 + (start + i.wrapping_mul(7919)) % size)
        });
        for k in probes {
            if reserved(dir, k) {
                continue;
            }
            if let Some(slot) = try_lock(dir, k).map_err(|e| dir_error(dir, e))? {
                // A refill may have reserved it between the check and the
                // lock; it backs off when it cannot lock, so one of us wins.
                if reserved(dir, k) {
                    continue;
                }
                return Ok(slot);
            }
        }
        Err(SlotError::Exhausted)
    }

    /// The ids for a sandbox of the calling process: a free slot
    /// ([`Slot::acquire`]) for host root, the caller's rootless ids
    /// ([`Slot::rootless`], [`crate::rootless::detect`]) for anyone else.
    pub fn for_caller(dir: &Path) -> Result<Slot, SlotError> {
        if nix::unistd::geteuid().is_root() {
            Slot::acquire(dir)
        } else {
            Ok(Slot::rootless(crate::rootless::detect()))
        }
    }

    /// Takes slot `k` if nobody holds it (reserved or not): for the start
    /// that claimed the pool entry prepared for it, and for the pool's own
    /// reservation. `Ok(None)` if it is held.
    pub fn take(dir: &Path, k: u32) -> Result<Option<Slot>, SlotError> {
        if !(1..=SLOTS).contains(&k) {
            return Ok(None);
        }
        ensure_dir(dir)?;
        try_lock(dir, k).map_err(|e| dir_error(dir, e))
    }

    /// The ids of a sandbox started by an ordinary user: its maps come
    /// from [`crate::rootless`], not from a host id block (which only
    /// root may map). Its index, 0, is no slot's; nothing is locked.
    pub fn rootless(ids: RootlessIds) -> Slot {
        Slot {
            index: 0,
            lock: None,
            rootless: Some(ids),
        }
    }

    /// How a rootless sandbox's ids are mapped ([`Slot::rootless`]);
    /// `None` for a host id block.
    pub fn rootless_ids(&self) -> Option<RootlessIds> {
        self.rootless
    }

    /// The sandbox's uid and gid maps when its workloads run as `writer`
    /// (uid, gid) inside: the slot's block for both, or a rootless map
    /// where the writer is the caller.
    pub fn maps_for(&self, writer: (u32, u32)) -> (IdMap, IdMap) {
        match self.rootless {
            Some(ids) => crate::rootless::maps(ids, writer),
            None => (self.id_map(), self.id_map()),
        }
    }

    /// The slot's number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The host id that root inside the sandbox has.
    pub fn base(&self) -> u32 {
        base_of(self.index)
    }

    /// The sandbox's uid (and gid) map: its whole block.
    pub fn id_map(&self) -> IdMap {
        IdMap::block(self.base())
    }

    /// The descriptor that holds the lock, for a process that must keep
    /// the slot after this one is gone (`None`: a rootless sandbox's).
    pub fn lock_fd(&self) -> Option<BorrowedFd<'_>> {
        self.lock.as_ref().map(|l| l.as_fd())
    }
}

fn dir_error(dir: &Path, source: io::Error) -> SlotError {
    SlotError::Dir {
        dir: dir.to_path_buf(),
        source,
    }
}

fn ensure_dir(dir: &Path) -> Result<(), SlotError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| dir_error(dir, e))
}

fn lock_path(dir: &Path, k: u32) -> PathBuf {
    dir.join(k.to_string())
}

fn marker_path(dir: &Path, k: u32) -> PathBuf {
    dir.join("pool").join(k.to_string())
}

/// Locks slot `k`; `Ok(None)` if another holds it.
fn try_lock(dir: &Path, k: u32) -> io::Result<Option<Slot>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(lock_path(dir, k))?;
    // SAFETY: flock on a descriptor owned by `f`, which outlives the call.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(Slot {
            index: k,
            lock: Some(f),
            rootless: None,
        }));
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        e => Err(e),
    }
}

/// Whether the pool has reserved slot `k`.
pub fn reserved(dir: &Path, k: u32) -> bool {
    marker_path(dir, k).exists()
}

/// Whether some process holds slot `k`.
pub fn in_use(dir: &Path, k: u32) -> bool {
    matches!(try_lock(dir, k), Ok(None))
}

/// Reserves a free slot for the pool: the marker is made first (so that
/// [`Slot::acquire`] passes it over), then the lock taken (so that no
/// live sandbox has it). The caller prepares its namespaces, publishes
/// them, and drops the returned slot; the marker stays until
/// [`unreserve`].
pub fn reserve(dir: &Path) -> Result<Slot, SlotError> {
    ensure_dir(&dir.join("pool"))?;
    let start = random_u32() % COMMON;
    for i in 0..PROBES {
        let k = 1 + (start + i.wrapping_mul(7919)) % COMMON;
        let marker = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(marker_path(dir, k));
        match marker {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(dir_error(dir, e)),
        }
        match try_lock(dir, k) {
            Ok(Some(slot)) => return Ok(slot),
            Ok(None) => unreserve(dir, k),
            Err(e) => {
                unreserve(dir, k);
                return Err(dir_error(dir, e));
            }
        }
    }
    Err(SlotError::Exhausted)
}

/// Drops the pool's reservation of slot `k`.
pub fn unreserve(dir: &Path, k: u32) {
    let _ = std::fs::remove_file(marker_path(dir, k));
}

/// Reservations whose slot is not locked, for the pool's clean-up: the
/// pool removes those that no entry of its own refers to any more.
pub fn reservations(dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir.join("pool")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let k: u32 = e.file_name().to_str()?.parse().ok()?;
            (1..=SLOTS).contains(&k).then_some(k)
        })
        .collect()
}

/// The path of slot `k`'s reservation marker.
pub fn marker(dir: &Path, k: u32) -> PathBuf {
    marker_path(dir, k)
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == b.len() as isize {
        u32::from_ne_bytes(b)
    } else {
        std::process::id().wrapping_mul(2_654_435_761)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn most_slots_come_from_the_common_range() {
        let d = tempfile::tempdir().unwrap();
        let held: Vec<Slot> = (0..100).map(|_| Slot::acquire(d.path()).unwrap()).collect();
        assert!(held.iter().all(|s| s.index() <= COMMON));
    }

    #[test]
    fn slots_never_overlap_the_disk_block_or_each_other() {
        assert_eq!(base_of(1), HOST_ID_BASE + MAPPED_IDS);
        let last = base_of(SLOTS) as u64 + u64::from(MAPPED_IDS);
        assert!(last < u64::from(u32::MAX) - u64::from(MAPPED_IDS), "{last}");
    }

    #[test]
    fn two_holders_never_get_the_same_slot_and_a_released_slot_comes_back() {
        let d = tempfile::tempdir().unwrap();
        let mut held = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let s = Slot::acquire(d.path()).unwrap();
            assert!(seen.insert(s.index()), "slot {} given twice", s.index());
            assert!(in_use(d.path(), s.index()));
            held.push(s);
        }
        let k = held[0].index();
        drop(held.remove(0));
        assert!(!in_use(d.path(), k), "a dropped slot stays locked");
        assert!(Slot::take(d.path(), k).unwrap().is_some());
        assert!(Slot::take(d.path(), held[0].index()).unwrap().is_none());
    }

    #[test]
    fn a_reserved_slot_is_passed_over_until_unreserved() {
        let d = tempfile::tempdir().unwrap();
        let r = reserve(d.path()).unwrap();
        let k = r.index();
        drop(r);
        assert!(reserved(d.path(), k));
        assert!(!in_use(d.path(), k));
        assert_eq!(reservations(d.path()), vec![k]);
        for _ in 0..300 {
            let s = Slot::acquire(d.path()).unwrap();
            assert_ne!(s.index(), k, "a reserved slot was handed out");
        }
        // The claimer of its pool entry takes it explicitly.
        let s = Slot::take(d.path(), k).unwrap().unwrap();
        unreserve(d.path(), k);
        assert!(!reserved(d.path(), k));
        assert_eq!(s.index(), k);
    }

    #[test]
    fn out_of_range_slots_cannot_be_taken() {
        let d = tempfile::tempdir().unwrap();
        assert!(Slot::take(d.path(), 0).unwrap().is_none());
        assert!(Slot::take(d.path(), SLOTS + 1).unwrap().is_none());
    }
}
