//! File access inside a sandbox, resolved as the sandbox sees its files.
//!
//! Every path is resolved with `openat2(2)` relative to a descriptor of the
//! sandbox's root (`/proc/<init_pid>/root`) with `RESOLVE_IN_ROOT`: `..`
//! stops at that root and absolute symlinks are resolved inside it, so no
//! path or symlink the workload planted leads to a host file.
//! `RESOLVE_NO_MAGICLINKS` refuses `/proc/*/root`-style links, which would
//! jump to whatever they point at. New files and directories are handed to
//! the sandbox's owner with `fchown`.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use serde::Serialize;
use stockade_core::backend::SandboxStatus;

use crate::error::ApiError;
use axum::http::StatusCode;

const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// Opens `/proc/<init_pid>/root` as the directory paths are resolved in.
pub fn proc_root(status: &SandboxStatus) -> io::Result<OwnedFd> {
    let path = format!("/proc/{}/root", status.init_pid);
    let fd = nix::fcntl::open(
        path.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(fd)
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dir, path, flags, mode)` confined to `dir` (see module doc).
fn openat2(dir: BorrowedFd<'_>, path: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
    let c = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let how = OpenHow {
        flags: (flags | OFlag::O_CLOEXEC).bits() as u64,
        mode: if flags.contains(OFlag::O_CREAT) {
            u64::from(mode)
        } else {
            0
        },
        resolve: RESOLVE,
    };
    // SAFETY: `c` is a NUL-terminated string and `how` a fully initialised
    // `open_how` that both outlive the call; the size passed is the size of
    // that struct. The kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a non-negative return of openat2 is a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// The error a request gets for `errno` while working on `path`.
pub fn errno_error(path: &str, e: Errno) -> ApiError {
    let (status, code, msg) = match e {
        Errno::ENOENT => (StatusCode::NOT_FOUND, "not_found", format!("{path} does not exist in the sandbox; check the path (list a directory with list=true)")),
        Errno::ENOTDIR => (StatusCode::BAD_REQUEST, "invalid_path", format!("a component of {path} is not a directory; check the path")),
        Errno::EISDIR => (StatusCode::BAD_REQUEST, "is_a_directory", format!("{path} is a directory; add list=true to list it")),
        Errno::ELOOP => (StatusCode::BAD_REQUEST, "invalid_path", format!("{path} goes through a symlink loop, too many symlinks or a /proc magic link; use a path without them")),
        Errno::EXDEV => (StatusCode::BAD_REQUEST, "invalid_path", format!("{path} leads outside the sandbox; use a path inside it")),
        Errno::EROFS => (StatusCode::FORBIDDEN, "read_only", format!("{path} is on a read-only part of the sandbox; write under /workspace, /home/agent or /tmp")),
        Errno::EACCES | Errno::EPERM => (StatusCode::FORBIDDEN, "forbidden", format!("access to {path} is not permitted; check its permissions inside the sandbox")),
        Errno::ENOTEMPTY => (StatusCode::CONFLICT, "conflict", format!("directory {path} is not empty; delete what is in it first")),
        Errno::EEXIST => (StatusCode::CONFLICT, "conflict", format!("{path} exists and is not a directory; remove it or choose another path")),
        Errno::ENAMETOOLONG => (StatusCode::BAD_REQUEST, "invalid_path", format!("{path} is too long; use a shorter path")),
        Errno::ENOSPC | Errno::EDQUOT => (StatusCode::INSUFFICIENT_STORAGE, "no_space", format!("no space left to write {path}; free space in the sandbox or raise its disk limit")),
        Errno::ENOSYS | Errno::E2BIG => (StatusCode::NOT_IMPLEMENTED, "unsupported", "file access needs openat2 (Linux 5.6 or newer) on the host".to_string()),
        e => (StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot access {path}: {}", e.desc())),
    };
    ApiError::new(status, code, msg)
}

/// Checks a request's path: absolute, no NUL, not absurdly long.
pub fn check_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return Err(ApiError::invalid(format!(
            "path must be an absolute path inside the sandbox such as /workspace/a.txt, got {path:?}"
        )));
    }
    Ok(())
}

/// Splits `path` into (parent, last name); the name is never `.`/`..`.
fn split(path: &str) -> Result<(String, String), ApiError> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        return Err(ApiError::invalid(format!(
            "{path:?} does not name a file; give a path ending in a file name"
        )));
    }
    Ok((format!("{parent}/"), name.to_string()))
}

fn stat_kind(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "file",
        SFlag::S_IFDIR => "dir",
        SFlag::S_IFLNK => "symlink",
        _ => "other",
    }
}

/// Opens a regular file for reading; returns it and its size.
pub fn open_read(root: &OwnedFd, path: &str) -> Result<(std::fs::File, u64), ApiError> {
    let e = |err| errno_error(path, err);
    // O_NONBLOCK: opening a FIFO must not hang the request.
    let fd = openat2(
        root.as_fd(),
        path,
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        0,
    )
    .map_err(e)?;
    let st = nix::sys::stat::fstat(&fd).map_err(e)?;
    match stat_kind(&st) {
        "file" => {}
        "dir" => return Err(e(Errno::EISDIR)),
        _ => {
            return Err(ApiError::invalid(format!(
                "{path} is not a regular file (a device, socket or FIFO); only regular files can be read"
            )))
        }
    }
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(e)?;
    Ok((std::fs::File::from(fd), st.st_size.max(0) as u64))
}

/// One directory entry.
#[derive(Debug, Serialize)]
pub struct DirEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    /// Permission bits in octal, e.g. `"0644"`.
    pub mode: String,
    /// Modification time, unix seconds.
    pub mtime: i64,
}

/// Lists a directory, sorted by name; symlinks are not followed.
pub fn list(root: &OwnedFd, path: &str) -> Result<Vec<DirEntry>, ApiError> {
    let e = |err| errno_error(path, err);
    let dir = openat2(root.as_fd(), path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0).map_err(e)?;
    let copy = dir
        .try_clone()
        .map_err(|err| ApiError::internal(format!("cannot list {path}: {err}")))?;
    let mut d = nix::dir::Dir::from_fd(copy).map_err(e)?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(e)?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // The entry may vanish between readdir and stat: skip it then.
        let Ok(st) = nix::sys::stat::fstatat(&dir, ent.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            continue;
        };
        out.push(DirEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            kind: stat_kind(&st),
            size: st.st_size.max(0) as u64,
            mode: format!("{:04o}", st.st_mode & 0o7777),
            mtime: st.st_mtime,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Creates the missing directories of `dir` (a path ending in `/`),
/// owned by `owner`.
fn make_parents(root: &OwnedFd, dir: &str, owner: (u32, u32)) -> Result<(), ApiError> {
    let mut done = String::from("/");
    for comp in dir.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let next = format!("{done}{comp}/");
        if comp != ".." {
            match openat2(root.as_fd(), &next, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
                Ok(_) => {}
                Err(Errno::ENOENT) => {
                    let parent =
                        openat2(root.as_fd(), &done, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
                            .map_err(|err| errno_error(&done, err))?;
                    match nix::sys::stat::mkdirat(&parent, comp, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => {
                            let (u, g) = owner;
                            nix::unistd::fchownat(
                                &parent,
                                comp,
                                Some(u.into()),
                                Some(g.into()),
                                AtFlags::AT_SYMLINK_NOFOLLOW,
                            )
                            .map_err(|err| errno_error(&next, err))?;
                        }
                        Err(Errno::EEXIST) => {}
                        Err(err) => return Err(errno_error(&next, err)),
                    }
                }
                Err(err) => return Err(errno_error(&next, err)),
            }
        }
        done = next;
    }
    Ok(())
}

/// Writes `data` to `path`, creating it (and its parents) if needed.
/// Returns whether the file was created.
pub fn write(root: &OwnedFd, path: &str, data: &[u8], owner: (u32, u32)) -> Result<bool, ApiError> {
    let e = |err| errno_error(path, err);
    let (parent, name) = split(path)?;
    make_parents(root, &parent, owner)?;
    let pfd = openat2(root.as_fd(), &parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
        .map_err(|err| errno_error(&parent, err))?;
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let (fd, created) =
        match nix::fcntl::openat(&pfd, name.as_str(), flags, Mode::from_bits_truncate(0o644)) {
            Ok(fd) => (fd, true),
            Err(Errno::EEXIST) => {
                // Exists, maybe as a symlink: followed, inside the root.
                let w = OFlag::O_WRONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
                match openat2(root.as_fd(), path, w, 0) {
                    Ok(fd) => (fd, false),
                    // A dangling symlink: create its target (inside the root).
                    Err(Errno::ENOENT) => (
                        openat2(root.as_fd(), path, w | OFlag::O_CREAT, 0o644).map_err(e)?,
                        true,
                    ),
                    Err(err) => return Err(e(err)),
                }
            }
            Err(err) => return Err(e(err)),
        };
    let st = nix::sys::stat::fstat(&fd).map_err(e)?;
    if stat_kind(&st) != "file" {
        return Err(ApiError::invalid(format!(
            "{path} is not a regular file; only regular files can be written"
        )));
    }
    if created {
        let (u, g) = owner;
        nix::unistd::fchown(&fd, Some(u.into()), Some(g.into())).map_err(e)?;
    }
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(e)?;
    nix::unistd::ftruncate(&fd, 0).map_err(e)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data)
        .map_err(|err| e(Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))))?;
    Ok(created)
}

/// Removes a file, a symlink (not its target) or an empty directory.
pub fn remove(root: &OwnedFd, path: &str) -> Result<(), ApiError> {
    let e = |err| errno_error(path, err);
    let (parent, name) = split(path)?;
    let pfd = openat2(root.as_fd(), &parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
        .map_err(|err| errno_error(&parent, err))?;
    match nix::unistd::unlinkat(&pfd, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(()),
        Err(Errno::EISDIR) => {
            nix::unistd::unlinkat(&pfd, name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)
                .map_err(e)
        }
        Err(err) => Err(e(err)),
    }
}
