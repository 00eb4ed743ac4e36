//! The config's mounts, made by the container's init inside its own user
//! and mount namespaces, onto the container's root before `pivot_root`.
//! Every destination is resolved inside the root (`openat2` with
//! `RESOLVE_IN_ROOT`), so a symlink in the image can never send a mount
//! onto the host; a symlink whose `..` climbs above the root, and a
//! symlink where `/proc` or `/sys` should be, are refused outright.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::config::Mount;
use crate::sys;

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The destination goes through a symlink that leaves the root.
    #[error("mount destination {dest:?} goes through the symlink {link:?}, which points outside the container's root filesystem; stockade refuses such images")]
    Escape { dest: String, link: String },
    /// `/proc` or `/sys` replaced by a symlink.
    #[error("mount destination {dest:?} is a symlink in the container's root filesystem; a {kind} mount there is refused")]
    SymlinkTarget { dest: String, kind: String },
    /// A system call failed at a named step.
    #[error("cannot {what} {dest:?}")]
    Sys {
        what: &'static str,
        dest: String,
        #[source]
        source: Errno,
    },
    /// The mount type is not one stockade can make inside a user namespace.
    #[error("mount type {kind:?} at {dest:?} is not supported inside stockade's user namespace; use bind, tmpfs, proc, sysfs, devpts, mqueue or cgroup")]
    Unsupported { kind: String, dest: String },
}

fn sys_err<'a>(what: &'static str, dest: &'a str) -> impl FnOnce(Errno) -> MountError + 'a {
    move |source| MountError::Sys {
        what,
        dest: dest.into(),
        source,
    }
}

/// Parsed mount options.
#[derive(Debug, Clone)]
pub struct Options {
    pub flags: MsFlags,
    /// The same as `mount_setattr` attributes, for bind trees.
    pub attrs: u64,
    pub data: Vec<String>,
    pub bind: bool,
}

pub fn parse_options(opts: &[String]) -> Options {
    let mut o = Options {
        flags: MsFlags::empty(),
        attrs: 0,
        data: Vec::new(),
        bind: false,
    };
    for opt in opts {
        match opt.as_str() {
            "ro" => {
                o.flags |= MsFlags::MS_RDONLY;
                o.attrs |= sys::MOUNT_ATTR_RDONLY;
            }
            "nosuid" => {
                o.flags |= MsFlags::MS_NOSUID;
                o.attrs |= sys::MOUNT_ATTR_NOSUID;
            }
            "nodev" => {
                o.flags |= MsFlags::MS_NODEV;
                o.attrs |= sys::MOUNT_ATTR_NODEV;
            }
            "noexec" => {
                o.flags |= MsFlags::MS_NOEXEC;
                o.attrs |= sys::MOUNT_ATTR_NOEXEC;
            }
            "bind" | "rbind" => o.bind = true,
            "noatime" => o.flags |= MsFlags::MS_NOATIME,
            "nodiratime" => o.flags |= MsFlags::MS_NODIRATIME,
            "relatime" => o.flags |= MsFlags::MS_RELATIME,
            "strictatime" => o.flags |= MsFlags::MS_STRICTATIME,
            "sync" => o.flags |= MsFlags::MS_SYNCHRONOUS,
            "rw" | "suid" | "dev" | "exec" | "atime" | "diratime" | "private" | "rprivate"
            | "slave" | "rslave" | "shared" | "rshared" | "unbindable" | "runbindable"
            | "tmpcopyup" | "notmpcopyup" | "copy-symlink" | "Z" | "z" | "U" | "idmap"
            | "ridmap" => {}
            other => o.data.push(other.to_string()),
        }
    }
    o
}

/// Whether a config mount is a bind mount (source opened by `create`).
pub fn is_bind(m: &Mount) -> bool {
    m.kind.as_deref() == Some("bind") || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Checks, component by component, that no symlink on the way to `dest`
/// climbs above the root with `..` (an absolute symlink is read as
/// absolute in the container, which `RESOLVE_IN_ROOT` does anyway).
pub fn check_no_escape(root: RawFd, dest: &str) -> Result<(), MountError> {
    let mut stack: Vec<String> = Vec::new();
    let mut todo: Vec<String> = dest.split('/').rev().map(String::from).collect();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        stack.push(c);
        let here = stack.join("/");
        let target = match nix::fcntl::readlinkat(borrow(root), here.as_str()) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(_) => continue,
        };
        links += 1;
        if links > 40 {
            return Err(MountError::Sys {
                what: "resolve (too many symlinks)",
                dest: dest.into(),
                source: Errno::ELOOP,
            });
        }
        stack.pop();
        if target.starts_with('/') {
            stack.clear();
        } else {
            // Climbing above the root from where the link sits is what an
            // escaping link does on the host.
            let mut depth = stack.len() as i64;
            for p in target.split('/') {
                match p {
                    ".." => depth -= 1,
                    "" | "." => {}
                    _ => depth += 1,
                }
                if depth < 0 {
                    return Err(MountError::Escape {
                        dest: dest.into(),
                        link: format!("/{here} -> {target}"),
                    });
                }
            }
        }
        for p in target.split('/').rev() {
            todo.push(p.to_string());
        }
    }
    Ok(())
}

/// A borrowed view of a descriptor the caller keeps open.
fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: every caller passes a descriptor it owns for the whole call.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn cstr(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("no NUL left")
}

/// Opens `dest` inside the root as an `O_PATH` descriptor, making it (and
/// missing parents, as directories) if absent: a directory, or an empty
/// file when `file`.
pub fn make_target(root: RawFd, dest: &str, file: bool) -> Result<OwnedFd, MountError> {
    check_no_escape(root, dest)?;
    let path = cstr(dest.trim_start_matches('/'));
    let path = if path.as_bytes().is_empty() {
        cstr(".")
    } else {
        path
    };
    match sys::open_in_root(root, &path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys_err("resolve", dest)(e)),
    }
    let comps: Vec<&str> = dest.split('/').filter(|c| !c.is_empty()).collect();
    let mut so_far = String::new();
    for (i, c) in comps.iter().enumerate() {
        let parent = if so_far.is_empty() {
            ".".to_string()
        } else {
            so_far.clone()
        };
        let last = i + 1 == comps.len();
        if !so_far.is_empty() {
            so_far.push('/');
        }
        so_far.push_str(c);
        match sys::open_in_root(root, &cstr(&so_far), libc::O_PATH) {
            Ok(_) if !last => continue,
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(sys_err("resolve", dest)(e)),
        }
        let pfd = sys::open_in_root(root, &cstr(&parent), libc::O_PATH | libc::O_DIRECTORY)
            .map_err(sys_err("open the parent of", dest))?;
        let name = cstr(c);
        if last && file {
            // O_EXCL: never follows a dangling symlink someone left there.
            // SAFETY: `name` is NUL-terminated; the result is checked.
            let fd = unsafe {
                libc::openat(
                    pfd.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC
                        | libc::O_NOFOLLOW,
                    0o644,
                )
            };
            let fd = Errno::result(fd).map_err(sys_err("create", dest))?;
            // SAFETY: the descriptor was just opened and is ours alone.
            unsafe { libc::close(fd) };
        } else {
            match nix::sys::stat::mkdirat(
                &pfd,
                name.as_c_str(),
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(sys_err("create the directory", dest)(e)),
            }
        }
    }
    sys::open_in_root(root, &path, libc::O_PATH).map_err(sys_err("resolve", dest))
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn is_symlink(root: RawFd, dest: &str) -> bool {
    let path = cstr(dest.trim_start_matches('/'));
    match sys::open_in_root(root, &path, libc::O_PATH | libc::O_NOFOLLOW) {
        Ok(fd) => nix::sys::stat::fstat(&fd)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn mount_fs(
    src: &str,
    target: &OwnedFd,
    kind: &str,
    flags: MsFlags,
    data: &[String],
) -> Result<(), Errno> {
    let data = data.join(",");
    nix::mount::mount(
        Some(src),
        fd_path(target).as_str(),
        Some(kind),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
}

/// Makes one config mount. `tree` is the detached tree `create` opened
/// for a bind mount.
pub fn mount_one(root: RawFd, m: &Mount, tree: Option<OwnedFd>) -> Result<(), MountError> {
    let dest = m.destination.as_str();
    let o = parse_options(&m.options);
    let kind = m.kind.clone().unwrap_or_else(|| "bind".into());
    if let Some(tree) = tree {
        let is_file = nix::sys::stat::fstat(&tree)
            .map(|st| st.st_mode & libc::S_IFMT != libc::S_IFDIR)
            .unwrap_or(false);
        let target = make_target(root, dest, is_file)?;
        return sys::move_mount_onto(&tree, target.as_raw_fd())
            .map_err(sys_err("bind-mount onto", dest));
    }
    if matches!(kind.as_str(), "proc" | "sysfs") && is_symlink(root, dest) {
        return Err(MountError::SymlinkTarget {
            dest: dest.into(),
            kind,
        });
    }
    let target = make_target(root, dest, false)?;
    let flags = o.flags;
    match kind.as_str() {
        "proc" => mount_fs("proc", &target, "proc", flags, &o.data)
            .map_err(sys_err("mount proc on", dest)),
        "tmpfs" | "devpts" | "mqueue" => {
            let r = mount_fs(kind.as_str(), &target, &kind, flags, &o.data);
            match (r, kind.as_str()) {
                (Ok(()), _) => Ok(()),
                // gid=5 names a group the id map may not have.
                (Err(Errno::EINVAL), "devpts") => {
                    let data: Vec<String> = o
                        .data
                        .iter()
                        .filter(|d| !d.starts_with("gid="))
                        .cloned()
                        .collect();
                    mount_fs("devpts", &target, "devpts", flags, &data)
                        .map_err(sys_err("mount devpts on", dest))
                }
                // The engine's IPC namespace is not ours to mount mqueue for.
                (Err(Errno::EPERM), "mqueue") => Ok(()),
                (Err(e), _) => Err(sys_err("mount on", dest)(e)),
            }
        }
        // Read-only whatever the config says (`--privileged` asks for a
        // writable one): nothing in /sys is the container's to change.
        "sysfs" => match mount_fs(
            "sysfs",
            &target,
            "sysfs",
            flags | MsFlags::MS_RDONLY,
            &o.data,
        ) {
            Ok(()) => Ok(()),
            // A network namespace the engine made belongs to host root:
            // sysfs can then only be the host's, read-only.
            Err(Errno::EPERM) => {
                nix::mount::mount(
                    Some("/sys"),
                    fd_path(&target).as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(sys_err("bind the host's /sys onto", dest))?;
                let t = sys::open_in_root(root, &cstr(dest.trim_start_matches('/')), libc::O_PATH)
                    .map_err(sys_err("resolve", dest))?;
                let _ = stockade_isolate::sys::mount_setattr(
                    &cstr(&fd_path(&t)),
                    sys::MOUNT_ATTR_RDONLY
                        | sys::MOUNT_ATTR_NOSUID
                        | sys::MOUNT_ATTR_NODEV
                        | sys::MOUNT_ATTR_NOEXEC,
                    true,
                );
                Ok(())
            }
            Err(e) => Err(sys_err("mount sysfs on", dest)(e)),
        },
        "cgroup" | "cgroup2" => match mount_fs("cgroup2", &target, "cgroup2", flags, &[]) {
            Ok(()) => Ok(()),
            // No cgroup2 this namespace may mount: an empty read-only
            // directory rather than the host's hierarchy.
            Err(_) => mount_fs(
                "tmpfs",
                &target,
                "tmpfs",
                flags | MsFlags::MS_RDONLY,
                &["size=0".into()],
            )
            .map_err(sys_err("mount on", dest)),
        },
        "bind" => Err(MountError::Sys {
            what: "bind-mount (no source tree was opened for)",
            dest: dest.into(),
            source: Errno::EINVAL,
        }),
        other => Err(MountError::Unsupported {
            kind: other.into(),
            dest: dest.into(),
        }),
    }
}

/// Device nodes every container gets (bound from the host: a user
/// namespace cannot `mknod`), and the usual /dev symlinks.
pub fn default_devices(root: RawFd) -> Result<(), MountError> {
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let dest = format!("/dev/{dev}");
        let target = make_target(root, &dest, true)?;
        nix::mount::mount(
            Some(format!("/dev/{dev}").as_str()),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys_err("bind the device onto", &dest))?;
    }
    let dev = sys::open_in_root(root, c"dev", libc::O_PATH | libc::O_DIRECTORY)
        .map_err(sys_err("open", "/dev"))?;
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        match nix::unistd::symlinkat(to, &dev, name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(sys_err("make the symlink", "/dev")(e)),
        }
    }
    Ok(())
}

/// Binds the host's node for one of the config's `linux.devices` (already
/// checked by `devices::validate`) at its path.
pub fn bind_device(root: RawFd, d: &crate::devices::Device) -> Result<(), MountError> {
    let Some(host) = crate::devices::host_node(d) else {
        return Err(MountError::Sys {
            what: "make the device node (not an allowed device)",
            dest: d.path.clone(),
            source: Errno::EPERM,
        });
    };
    let target = make_target(root, &d.path, true)?;
    nix::mount::mount(
        Some(host),
        fd_path(&target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys_err("bind the device onto", &d.path))
}

/// After `pivot_root`: hides `masked` paths and makes `readonly` paths
/// read-only (paths that do not exist are skipped).
pub fn mask_and_protect(masked: &[String], readonly: &[String]) -> Result<(), MountError> {
    for p in masked {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let r = if meta.is_dir() {
            nix::mount::mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            nix::mount::mount(
                Some("/dev/null"),
                p.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(sys_err("mask", p))?;
    }
    for p in readonly {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        nix::mount::mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys_err("bind for read-only", p))?;
        stockade_isolate::sys::mount_setattr(&cstr(p), sys::MOUNT_ATTR_RDONLY, true)
            .map_err(sys_err("make read-only", p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_symlink_climbing_out_of_the_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../tmp", t.path().join("etc/out")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../etc", t.path().join("etc/up")).unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let e = check_no_escape(root.as_raw_fd(), "/etc/out/x").unwrap_err();
        assert!(matches!(e, MountError::Escape { .. }), "{e}");
        check_no_escape(root.as_raw_fd(), "/abs/x").unwrap();
        check_no_escape(root.as_raw_fd(), "/etc/up/x").unwrap();
        // Through an absolute link, then climbing: still out.
        std::os::unix::fs::symlink("/etc/out", t.path().join("via")).unwrap();
        assert!(check_no_escape(root.as_raw_fd(), "/via/y").is_err());
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "size=64k".into(),
            "rbind".into(),
        ]);
        assert!(o.flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(o.data, vec!["size=64k".to_string()]);
        assert!(o.bind);
    }
}
