//! `flock(2)` on files of the store.
//!
//! A lock belongs to the open file description: two opens of one file in
//! one process are two lockers, and the kernel drops a lock when the last
//! descriptor of its description closes (so a dead holder's locks vanish).
//! Linux grants a shared lock whenever only shared locks are held, even
//! with an exclusive locker waiting, so a process that holds the shared
//! store lock may take it again without deadlock.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Shared,
    Exclusive,
}

/// Locks `file`, waiting for it.
pub(crate) fn lock(file: &File, kind: Kind) -> io::Result<()> {
    let op = match kind {
        Kind::Shared => libc::LOCK_SH,
        Kind::Exclusive => libc::LOCK_EX,
    };
    loop {
        // SAFETY: flock on a descriptor `file` owns; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Tries to lock `file` without waiting: `Ok(false)` when someone else
/// holds a conflicting lock.
pub(crate) fn try_lock(file: &File, kind: Kind) -> io::Result<bool> {
    let op = match kind {
        Kind::Shared => libc::LOCK_SH,
        Kind::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    loop {
        // SAFETY: flock on a descriptor `file` owns; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Opens (creating, 0600) and locks the lock file `path`. The lock lasts
/// as long as the returned file.
pub(crate) fn open_locked(path: &Path, kind: Kind) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    lock(&f, kind)?;
    Ok(f)
}
