//! Stockade's state directory and each sandbox's place in it.
//!
//! ```text
//! <state>/                    default /var/lib/stockade (STOCKADE_STATE_DIR)
//!   mnt/                      empty; the mount point each sandbox assembles its root on
//!   etc/<key>/                generated /etc, shared read-only
//!   sandboxes/<id>/
//!     lock                    flock'ed by the live supervisor; gc skips locked ones
//!     workspace/ home/        scratch /workspace and /home/agent
//!     overlay/                upper and work dirs of a copy-on-write root
//! ```
//! These live on disk, not in /run, because the workspace and overlay hold
//! the sandbox's writes and may be large.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the state directory. Mode 0711: others
    /// may not list the sandboxes, but a sandbox's init, which runs under
    /// an unprivileged mapped id, must be able to walk through to the
    /// directories it mounts — so a 0700 directory made by someone else
    /// (a temp dir, the daemon's registry) is opened up to 0711.
    pub fn open(root: &Path) -> io::Result<StateDir> {
        for d in [root.to_path_buf(), root.join("sandboxes"), root.join("mnt")] {
            if !d.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(&d)?;
            }
            let mode = fs::metadata(&d)?.permissions().mode();
            if mode & 0o011 != 0o011 {
                fs::set_permissions(&d, fs::Permissions::from_mode((mode | 0o711) & 0o7777))?;
            }
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join("mnt")
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// Creates the directory of a new sandbox and takes its lock.
    pub fn create_sandbox(&self, id: &str) -> io::Result<SandboxDir> {
        let path = self.sandboxes().join(id);
        // 0711: the sandbox's init, which runs under a mapped id rather
        // than host root, must be able to walk through to bind the
        // directories inside; nobody may list them.
        fs::DirBuilder::new().mode(0o711).create(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o711))?;
        // The lock appears under its name already locked: garbage
        // collection (maybe a cleaner of an earlier run, at this very
        // moment) takes a sandbox whose lock it can get for stale.
        let fresh = path.join("lock.new");
        let lock = File::create(&fresh)?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB)?;
        fs::rename(&fresh, path.join("lock"))?;
        Ok(SandboxDir { path, _lock: lock })
    }
}

/// A live sandbox's directory. The lock is held while this value lives.
#[derive(Debug)]
pub struct SandboxDir {
    pub path: PathBuf,
    _lock: File,
}

impl SandboxDir {
    /// A subdirectory, created empty with the given owner and mode 0700:
    /// private to the sandbox user who owns it.
    pub fn subdir(&self, name: &str, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
        private_dir(&self.path.join(name), owner)
    }

    /// Removes the directory and everything the sandbox wrote into it.
    pub fn remove(self) -> io::Result<()> {
        remove_tree(&self.path)
    }
}

/// Creates directory `p` empty, mode 0700, owned by `owner`: private to
/// the sandbox user who owns it.
pub fn private_dir(p: &Path, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
    fs::create_dir(p)?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
    }
    Ok(p.to_path_buf())
}

pub(crate) fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor owned by `f`, which outlives the call.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `rm -rf`, tolerant of a tree that is already gone, of any depth and
/// width a workload can make (see `stockade_isolate::fsutil`).
///
/// As an ordinary user with subordinate ids, a tree a sandbox left with
/// files the user cannot unlink (owned by subordinate ids: an image
/// sandbox's upper layer) is removed again in a user namespace with the
/// user's image map, where those ids are mapped and the remover is root.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    let first = stockade_isolate::fsutil::remove_tree(p);
    let denied =
        matches!(&first, Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)));
    if !denied || nix::unistd::geteuid().is_root() {
        return first;
    }
    let stockade_isolate::rootless::RootlessIds::Subordinate { uids, gids } =
        stockade_isolate::rootless::detect()
    else {
        return first;
    };
    let ids = stockade_image::userns::UserIds {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        sub_uid: uids.start,
        sub_gid: gids.start,
    };
    let r: Result<(), (Option<i32>, String)> = stockade_image::userns::run(&ids, || {
        stockade_isolate::fsutil::remove_tree(p).map_err(|e| (e.raw_os_error(), e.to_string()))
    })
    .map_err(io::Error::other)?;
    r.map_err(|(errno, text)| {
        errno.map_or_else(|| io::Error::other(text), io::Error::from_raw_os_error)
    })
}
