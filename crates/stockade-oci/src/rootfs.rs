//! The container's root as a detached mount tree, shown with its on-disk
//! owners inside the container's user namespace (file owned by host 0 →
//! container root).
//!
//! A plain directory is id-mapped directly (`mount_setattr` with
//! `MOUNT_ATTR_IDMAP`). An overlay mount — what every engine hands over —
//! cannot be id-mapped itself, so `create` rebuilds it: each layer
//! directory is id-mapped on its own, and a new overlay is mounted from
//! those, by host root (so `trusted.overlay.*` attributes still work), in
//! a private mount namespace of the `create` process. Writes through it
//! land in the engine's upper directory with on-disk owners, as through
//! the engine's own mount. The engine's overlay stays mounted; both use
//! the same upper directory (`index=off`, where the kernel allows this).

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot {what} {path}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot mount an overlay of the id-mapped layers of {path} (options {options})")]
    OverlayMount {
        path: PathBuf,
        options: String,
        #[source]
        source: Errno,
    },
    #[error("the overlay at {0} has no lowerdir, or its upperdir and workdir are not siblings; stockade cannot show it id-mapped")]
    Overlay(PathBuf),
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> RootfsError + 'a {
    move |source| RootfsError::Sys {
        what,
        path: path.into(),
        source,
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// An overlay's layers, from the mount table.
#[derive(Debug, Default, PartialEq)]
pub struct Layers {
    pub lower: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// Options the new overlay repeats.
    pub extra: Vec<String>,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The layers of the overlay mounted at `mountpoint`, if one is (the last
/// mount there wins), from `/proc/self/mountinfo`'s text.
pub fn overlay_layers(mountinfo: &str, mountpoint: &Path) -> Option<Layers> {
    let mut found = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        if Path::new(&unescape(l[4])) != mountpoint {
            continue;
        }
        if r[0] != "overlay" {
            found = None;
            continue;
        }
        let mut layers = Layers::default();
        for opt in r[2].split(',') {
            if let Some(v) = opt.strip_prefix("lowerdir=") {
                layers.lower = v
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(|s| unescape(s).into())
                    .collect();
            } else if let Some(v) = opt.strip_prefix("lowerdir+=") {
                layers.lower.push(unescape(v).into());
            } else if let Some(v) = opt.strip_prefix("upperdir=") {
                layers.upper = Some(unescape(v).into());
            } else if let Some(v) = opt.strip_prefix("workdir=") {
                layers.work = Some(unescape(v).into());
            } else if opt.starts_with("metacopy=")
                || opt.starts_with("redirect_dir=")
                || opt.starts_with("xino=")
            {
                layers.extra.push(opt.to_string());
            }
        }
        found = Some(layers);
    }
    found
}

/// Runs `f` with file-system ids `owner` and every capability kept.
fn as_owner(owner: (u32, u32), f: impl FnOnce() -> nix::Result<()>) -> nix::Result<()> {
    // SAFETY: setfsgid takes an integer; it changes no capability.
    unsafe { libc::syscall(libc::SYS_setfsgid, owner.1) };
    let r = match stockade_isolate::sys::EuidSwitch::enter(owner.0) {
        Ok(sw) => {
            let r = f();
            sw.leave();
            r
        }
        Err(e) => Err(e),
    };
    // SAFETY: as above, back to host root's group.
    unsafe { libc::syscall(libc::SYS_setfsgid, 0) };
    r
}

/// A detached, id-mapped tree of `tree_src` (helper).
fn idmapped(path: &Path, userns: &OwnedFd) -> Result<OwnedFd, RootfsError> {
    let tree = sys::open_tree_single(&cpath(path)).map_err(err("open", path))?;
    sys::setattr_tree(&tree, 0, Some(userns)).map_err(err("id-map", path))?;
    Ok(tree)
}

/// The root tree for `rootfs`. `staging` is an empty directory `create`
/// owns (under the state directory); `already_mapped` skips the id map
/// (a root the engine chowned to the container's range).
pub fn root_tree(
    rootfs: &Path,
    userns: &OwnedFd,
    staging: &Path,
    work_name: &str,
    owner: (u32, u32),
    already_mapped: bool,
) -> Result<(OwnedFd, Option<PathBuf>), RootfsError> {
    let tree = stockade_isolate::sys::open_tree_clone(&cpath(rootfs))
        .map_err(err("open the root filesystem", rootfs))?;
    if already_mapped {
        return Ok((tree, None));
    }
    match sys::setattr_tree(&tree, 0, Some(userns)) {
        Ok(()) => return Ok((tree, None)),
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(err("id-map the root filesystem", rootfs)(e)),
    }
    drop(tree);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(layers) = overlay_layers(&info, rootfs) else {
        return Err(err(
            "id-map the root filesystem (its file system does not support id-mapped mounts)",
            rootfs,
        )(Errno::EINVAL));
    };
    rebuild_overlay(rootfs, &layers, userns, staging, work_name, owner)
}

fn rebuild_overlay(
    rootfs: &Path,
    layers: &Layers,
    userns: &OwnedFd,
    staging: &Path,
    work_name: &str,
    owner: (u32, u32),
) -> Result<(OwnedFd, Option<PathBuf>), RootfsError> {
    if layers.lower.is_empty() {
        return Err(RootfsError::Overlay(rootfs.into()));
    }
    // Our own copy of the mount table: nothing made here reaches the host.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(err("make a private mount namespace for", rootfs))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make the mount table private for", rootfs))?;
    std::fs::create_dir_all(staging).map_err(|e| {
        err("make", staging)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    let mut lower_names = Vec::new();
    for (i, l) in layers.lower.iter().enumerate() {
        let name = format!("{i}");
        let at = staging.join(&name);
        std::fs::create_dir(&at).map_err(|e| {
            err("make", &at)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
        let t = idmapped(l, userns)?;
        stockade_isolate::sys::move_mount_to(&t, &cpath(&at))
            .map_err(err("attach the layer", l))?;
        lower_names.push(name);
    }
    let mut data = format!("lowerdir={}", lower_names.join(":"));
    let mut own_work = None;
    if let (Some(upper), Some(_)) = (&layers.upper, &layers.work) {
        // A work directory of our own next to the upper one: the
        // engine's is in use (and one a volatile mount used is refused
        // for good).
        let (Some(parent), Some(u)) = (upper.parent(), upper.file_name()) else {
            return Err(RootfsError::Overlay(rootfs.into()));
        };
        let work = parent.join(work_name);
        match std::fs::create_dir(&work) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(err("make the work directory", &work)(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                )))
            }
        }
        own_work = Some(work);
        let w = std::ffi::OsStr::new(work_name);
        let at = staging.join("u");
        std::fs::create_dir(&at).map_err(|e| {
            err("make", &at)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
        let t = idmapped(parent, userns)?;
        stockade_isolate::sys::move_mount_to(&t, &cpath(&at))
            .map_err(err("attach the upper layer", upper))?;
        data.push_str(&format!(
            ",upperdir=u/{},workdir=u/{},index=off",
            u.to_string_lossy(),
            w.to_string_lossy()
        ));
    }
    for e in &layers.extra {
        data.push(',');
        data.push_str(e);
    }
    let merged = staging.join("m");
    std::fs::create_dir(&merged).map_err(|e| {
        err("make", &merged)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    // Relative layer paths keep the options short (one page at most).
    let cwd = std::env::current_dir().ok();
    nix::unistd::chdir(staging).map_err(err("enter", staging))?;
    // The overlay does its upper-layer work with its mounter's
    // credentials, through the id-mapped upper: they must be an id the
    // map knows (the container's root), with host root's capabilities
    // (trusted.* attributes, copy-up of anyone's files).
    let mounted = as_owner(owner, || {
        nix::mount::mount(
            Some("overlay"),
            "m",
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
    });
    if let Some(c) = cwd {
        let _ = nix::unistd::chdir(&c);
    }
    if let Err(source) = mounted {
        return Err(RootfsError::OverlayMount {
            path: rootfs.into(),
            options: data,
            source,
        });
    }
    let tree = stockade_isolate::sys::open_tree_clone(&cpath(&merged))
        .map_err(err("open the overlay of", rootfs))?;
    // The overlay holds its own references to the layers.
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    for n in lower_names.iter().map(String::as_str).chain(["u"]) {
        let _ = nix::mount::umount2(&staging.join(n), nix::mount::MntFlags::MNT_DETACH);
    }
    Ok((tree, own_work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_overlays_layers_from_mountinfo() {
        let info = "61 27 254:0 /x /x rw - ext4 /dev/vda rw\n\
68 61 0:43 / /var/lib/c/merged rw,relatime - overlay overlay rw,lowerdir=/l/A:/l/B,upperdir=/var/lib/c/diff,workdir=/var/lib/c/work,uuid=on\n";
        let l = overlay_layers(info, Path::new("/var/lib/c/merged")).unwrap();
        assert_eq!(l.lower, vec![PathBuf::from("/l/A"), PathBuf::from("/l/B")]);
        assert_eq!(l.upper.as_deref(), Some(Path::new("/var/lib/c/diff")));
        assert_eq!(l.work.as_deref(), Some(Path::new("/var/lib/c/work")));
        assert!(overlay_layers(info, Path::new("/x")).is_none());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
