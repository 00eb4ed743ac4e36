//! Removing a directory tree that a hostile workload made.
//!
//! A workload can leave a tree of any depth (30,000 levels and more, paths
//! far beyond PATH_MAX) or millions of entries in one directory. A
//! recursive remover overflows its stack on the first and a path-based one
//! fails on the second. This one works level by level through directory
//! descriptors: it holds the current directory and the names on the way
//! down (memory grows with the depth by the names' length, the stack not
//! at all), climbs back through `..`, never follows a symlink and never
//! descends into another filesystem (a mount point is left, and its
//! removal fails). Entries are unlinked while the directory is read, so
//! each pass over a directory makes progress.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

fn open_dir(at: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(at, name, flags, Mode::empty()) {
        // A directory the workload made unreadable: open it up (only its
        // owner or root can; a caller who cannot fails here).
        Err(Errno::EACCES) => {
            nix::sys::stat::fchmodat(
                at,
                name,
                Mode::from_bits_truncate(0o700),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )?;
            nix::fcntl::openat(at, name, flags, Mode::empty())
        }
        r => r,
    }
}

fn unlink(at: BorrowedFd<'_>, name: &CStr, flags: UnlinkatFlags) -> Result<(), Errno> {
    match nix::unistd::unlinkat(at, name, flags) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        // A directory without write permission: its entries cannot go.
        Err(Errno::EACCES) => Err(Errno::EACCES),
        Err(e) => Err(e),
    }
}

/// Removes `name` in directory `parent`: a file or symlink, or a directory
/// and everything below it. A missing `name` is not an error.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    match nix::unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let top = open_dir(parent, name)?;
    let dev = nix::sys::stat::fstat(&top)?.st_dev;
    let _ = nix::sys::stat::fchmod(&top, Mode::from_bits_truncate(0o700));
    // Names from `parent` down to the directory `cur` is.
    let mut names: Vec<CString> = vec![name.to_owned()];
    let mut cur = top;
    loop {
        let mut sub: Option<CString> = None;
        {
            let copy = cur
                .try_clone()
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            let mut d = nix::dir::Dir::from_fd(copy)?;
            for ent in d.iter() {
                let ent = ent?;
                let n = ent.file_name();
                if n.to_bytes() == b"." || n.to_bytes() == b".." {
                    continue;
                }
                match nix::unistd::unlinkat(&cur, n, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(Errno::EISDIR) => {
                        sub = Some(n.to_owned());
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(n) = sub {
            let next = open_dir(cur.as_fd(), &n)?;
            if nix::sys::stat::fstat(&next)?.st_dev != dev {
                // Another filesystem mounted here: not ours to empty.
                return Err(Errno::EBUSY);
            }
            let _ = nix::sys::stat::fchmod(&next, Mode::from_bits_truncate(0o700));
            cur = next;
            names.push(n);
            continue;
        }
        // `cur` is empty: remove it from the level above, and go there.
        let n = names.pop().expect("the names hold the current directory");
        if names.is_empty() {
            return unlink(parent, &n, UnlinkatFlags::RemoveDir);
        }
        let up = open_dir(cur.as_fd(), c"..")?;
        unlink(up.as_fd(), &n, UnlinkatFlags::RemoveDir)?;
        cur = up;
    }
}

/// [`remove_tree_at`] for a path; a missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        ),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let dir = match nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    remove_tree_at(dir.as_fd(), &name).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory on tmpfs where there is one: the remover's work is the
    /// same, without a disk journal that a busy machine makes slow.
    fn scratch() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(d) = tempfile::tempdir_in(shm) {
                return d;
            }
        }
        tempfile::tempdir().unwrap()
    }

    /// A chain of `depth` directories under `top`, made through
    /// descriptors (the paths are far beyond PATH_MAX).
    fn deep(top: &Path, depth: usize) {
        std::fs::create_dir(top).unwrap();
        let mut cur: OwnedFd = std::fs::File::open(top).unwrap().into();
        for _ in 0..depth {
            nix::sys::stat::mkdirat(&cur, "level-xxxxxxxx", Mode::from_bits_truncate(0o755))
                .unwrap();
            cur = open_dir(cur.as_fd(), c"level-xxxxxxxx").unwrap();
        }
        nix::fcntl::openat(
            &cur,
            "f",
            OFlag::O_CREAT | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
    }

    #[test]
    fn removes_a_tree_of_100000_levels_without_recursion() {
        let d = scratch();
        let top = d.path().join("deep");
        deep(&top, 100_000);
        // On a thread with a small stack: a recursive remover (a frame of a
        // hundred bytes or more per level) would overflow.
        let t = top.clone();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || remove_tree(&t).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(!top.exists());
    }

    #[test]
    fn removes_a_million_files_in_one_directory() {
        let d = scratch();
        let top = d.path().join("wide");
        std::fs::create_dir(&top).unwrap();
        let dir: OwnedFd = std::fs::File::open(&top).unwrap().into();
        for i in 0..1_000_000u32 {
            let name = CString::new(format!("f{i}")).unwrap();
            nix::sys::stat::mknodat(
                &dir,
                name.as_c_str(),
                nix::sys::stat::SFlag::S_IFREG,
                Mode::from_bits_truncate(0o600),
                0,
            )
            .unwrap();
        }
        drop(dir);
        remove_tree(&top).unwrap();
        assert!(!top.exists());
    }

    #[test]
    fn unreadable_directories_symlinks_and_missing_paths() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("t");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::write(top.join("a/b/f"), b"x").unwrap();
        // A symlink to something outside: removed, never followed.
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("a/link")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(top.join("a/b"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(top.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&top).unwrap();
        remove_tree(&d.path().join("never/was")).unwrap();
    }
}
