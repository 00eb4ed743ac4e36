//! Assembling the sandbox's root filesystem inside its mount namespace.
//!
//! Runs in the sandbox's init before it pivots. The new root is a small
//! tmpfs (or, with a copy-on-write root, a per-sandbox host directory) on
//! which the host's system directories are bound read-only and the
//! generated `/etc` is bound — or, with an image, an overlay of the
//! image's layers under a per-sandbox upper, with stockade's `hosts`,
//! `hostname` and `resolv.conf` bound over the image's. Then the
//! workspace and home are bound, and fresh `/tmp`, `/proc`, `/dev` and
//! `/sys` are mounted. After `pivot_root` the old root is
//! detached, so nothing of the host is reachable by path any more.

use std::ffi::{CStr, CString};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::spec::{image_layer_name, ImageRoot, SandboxSpec, MAX_IMAGE_LAYERS};
use crate::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

/// Host system directories shared read-only with every sandbox.
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Package-manager state overlaid (not shared) when the root is
/// copy-on-write, so `apt-get install` works and is thrown away.
const OVERLAY_VAR_DIRS: &[&str] = &[
    "var/lib/dpkg",
    "var/lib/apt",
    "var/cache/apt",
    "var/cache/debconf",
];
/// Host files under the overlaid directories that may hold secrets and
/// that root in a copy-on-write root could otherwise read (host root's
/// files are root's inside, and root there keeps `DAC_OVERRIDE`): each is
/// shadowed by an empty file in its overlay's upper layer, so the sandbox
/// sees (and may rewrite) an empty one. debconf keeps the answers to
/// password questions in `passwords.dat`.
const OVERLAY_SHADOWED: &[(&str, &str)] = &[("var/cache/debconf", "passwords.dat")];
/// The files of [`OVERLAY_SHADOWED`] in the overlaid directory whose flat
/// name (`/` as `_`, as [`overlay_lowers`] names them) is `flat`.
pub(crate) fn shadowed_files(flat: &str) -> impl Iterator<Item = &'static str> + '_ {
    OVERLAY_SHADOWED
        .iter()
        .filter(move |(dir, _)| dir.replace('/', "_") == flat)
        .map(|(_, file)| *file)
}

/// Device nodes bound from the host: harmless, and needed by nearly
/// every program.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The lower layers of a copy-on-write root: (name, host directory).
/// The supervisor idmaps each one (so host root's files appear owned by
/// root inside and can be copied up) and hands it to init under `name`.
pub fn overlay_lowers(spec: &SandboxSpec) -> Vec<(String, PathBuf)> {
    overlay_lowers_with(&mut Kernel, spec)
}

/// [`overlay_lowers`], asking `k` what the host's paths are. Only real
/// directories: a symlink (`/lib` -> `usr/lib`) is not followed, the
/// builder recreates it as a symlink instead.
pub(crate) fn overlay_lowers_with(
    k: &mut impl MountOps,
    spec: &SandboxSpec,
) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    if spec.overlay.is_none() || spec.image.is_some() {
        return v;
    }
    for name in SYSTEM_DIRS.iter().chain(OVERLAY_VAR_DIRS) {
        let host = Path::new("/").join(name);
        if k.is_real_dir(&host) {
            v.push((name.replace('/', "_"), host));
        }
    }
    v.push(("etc".into(), spec.etc_dir.clone()));
    v
}

/// Mount trees received from the supervisor, by name: idmapped lower
/// layers, the workspace ([`WORKSPACE_TREE`]) and user bind sources
/// ([`bind_tree_name`]).
pub type Lowers = Vec<(String, OwnedFd)>;

/// Name of the workspace's mount tree.
pub const WORKSPACE_TREE: &str = "workspace-source";

/// Name of the `i`-th user bind's source tree (read-only binds first).
pub fn bind_tree_name(i: usize) -> String {
    format!("bind-source-{i}")
}

fn take_tree(trees: &mut Lowers, name: &str) -> Option<OwnedFd> {
    let pos = trees.iter().position(|(n, _)| n == name)?;
    Some(trees.swap_remove(pos).1)
}

/// Where idmapped lower layers are attached while the overlays are built;
/// detached again before the workload starts (overlayfs keeps private
/// clones of its layers).
const LOWER_DIR: &str = ".stockade-lower";
/// Where the sandbox's overlay directory is seen while its overlays are
/// mounted.
const OV_DIR: &str = ".stockade-ov";
/// In an image root's staging tmpfs: the view of the sandbox's overlay
/// directory, and the overlay that becomes the root.
const IMAGE_OV: &str = "ov";
const IMAGE_ROOT: &str = "root";

/// What a host path is, as the builder needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    Dir,
    Symlink(PathBuf),
    Other,
}

/// The kernel operations the root filesystem is built with: the seam
/// between the builder's decisions (what is mounted where, with which
/// flags, in which order) and the system calls. [`Kernel`] makes the
/// calls; tests give a recording fake, so the decisions are checked
/// without root or namespaces.
pub trait MountOps {
    /// `mkdir -p` with `mode` for what it creates.
    fn mkdir_all(&mut self, path: &Path, mode: u32) -> std::io::Result<()>;
    /// An empty regular file to mount a file onto; one that exists is fine.
    fn make_file(&mut self, path: &Path) -> nix::Result<()>;
    fn symlink(&mut self, target: &Path, link: &Path) -> std::io::Result<()>;
    fn remove_dir(&mut self, path: &Path);
    /// Removes a file or symlink (without following it).
    fn remove_file(&mut self, path: &Path) -> std::io::Result<()>;
    /// What `path` is, without following a final symlink; `None` if it
    /// does not exist.
    fn host_kind(&mut self, path: &Path) -> Option<HostKind>;
    /// Whether `path` is a directory, not a symlink to one.
    fn is_real_dir(&mut self, path: &Path) -> bool {
        self.host_kind(path) == Some(HostKind::Dir)
    }
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount_detach(&mut self, path: &Path) -> nix::Result<()>;
    fn mount_setattr(&mut self, path: &CStr, attrs: u64, recursive: bool) -> nix::Result<()>;
    /// Attaches a detached mount tree at `target`.
    fn move_mount(&mut self, tree: &OwnedFd, target: &CStr) -> nix::Result<()>;
    /// A detached clone of the mount tree at `source`.
    fn open_tree_clone(&mut self, source: &CStr) -> nix::Result<OwnedFd>;
    /// Whether a mount tree's root is a directory.
    fn tree_is_dir(&mut self, tree: &OwnedFd) -> bool;
    fn chdir(&mut self, path: &Path) -> nix::Result<()>;
    /// `pivot_root(new_root, put_old)`; the builder detaches the old root
    /// itself (see [`pivot`]).
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
}

/// [`MountOps`] done by the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl MountOps for Kernel {
    fn mkdir_all(&mut self, path: &Path, mode: u32) -> std::io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn make_file(&mut self, path: &Path) -> nix::Result<()> {
        // One `mknod`, where opening with `O_CREAT` would take an open
        // and a close.
        use nix::sys::stat::{mknod, Mode, SFlag};
        match mknod(path, SFlag::S_IFREG, Mode::from_bits_truncate(0o644), 0) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> std::io::Result<()> {
        symlink(target, link)
    }

    fn remove_dir(&mut self, path: &Path) {
        let _ = fs::remove_dir(path);
    }

    fn remove_file(&mut self, path: &Path) -> std::io::Result<()> {
        fs::remove_file(path)
    }

    fn host_kind(&mut self, path: &Path) -> Option<HostKind> {
        let meta = fs::symlink_metadata(path).ok()?;
        Some(if meta.file_type().is_symlink() {
            HostKind::Symlink(fs::read_link(path).ok()?)
        } else if meta.is_dir() {
            HostKind::Dir
        } else {
            HostKind::Other
        })
    }

    fn is_real_dir(&mut self, path: &Path) -> bool {
        // One lstat; no readlink for the symlinks among the names.
        fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }

    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        mount(source, target, fstype, flags, data)
    }

    fn umount_detach(&mut self, path: &Path) -> nix::Result<()> {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
    }

    fn mount_setattr(&mut self, path: &CStr, attrs: u64, recursive: bool) -> nix::Result<()> {
        sys::mount_setattr(path, attrs, recursive)
    }

    fn move_mount(&mut self, tree: &OwnedFd, target: &CStr) -> nix::Result<()> {
        sys::move_mount_to(tree, target)
    }

    fn open_tree_clone(&mut self, source: &CStr) -> nix::Result<OwnedFd> {
        sys::open_tree_clone(source)
    }

    fn tree_is_dir(&mut self, tree: &OwnedFd) -> bool {
        nix::sys::stat::fstat(tree).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }
}

/// A failed step, with the path it was working on.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}")]
pub struct RootfsError {
    pub what: &'static str,
    pub path: String,
    #[source]
    pub source: nix::Error,
}

type Result<T> = std::result::Result<T, RootfsError>;

fn ctx<T>(r: nix::Result<T>, what: &'static str, path: &Path) -> Result<T> {
    r.map_err(|source| RootfsError {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn io_ctx<T>(r: std::io::Result<T>, what: &'static str, path: &Path) -> Result<T> {
    r.map_err(|e| RootfsError {
        what,
        path: path.display().to_string(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn mkdir(k: &mut impl MountOps, p: &Path, mode: u32) -> Result<()> {
    io_ctx(k.mkdir_all(p, mode), "cannot create directory", p)
}

/// An empty regular file to bind a file onto. One that exists is fine.
fn touch(k: &mut impl MountOps, p: &Path) -> Result<()> {
    ctx(k.make_file(p), "cannot create mount point", p)
}

fn bind(k: &mut impl MountOps, src: &Path, dst: &Path, attrs: u64) -> Result<()> {
    ctx(
        k.mount(
            Some(src),
            dst,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
        "cannot bind-mount onto",
        dst,
    )?;
    if attrs != 0 {
        ctx(
            k.mount_setattr(&cstr(dst), attrs, true),
            "cannot set mount attributes on",
            dst,
        )?;
    }
    Ok(())
}

/// Attaches a detached mount tree (from `open_tree`) at `dst` and sets
/// its attributes, as [`bind`] does for a path.
fn attach(k: &mut impl MountOps, tree: &OwnedFd, dst: &Path, attrs: u64) -> Result<()> {
    ctx(
        k.move_mount(tree, &cstr(dst)),
        "cannot bind-mount onto",
        dst,
    )?;
    ctx(
        k.mount_setattr(&cstr(dst), attrs, true),
        "cannot set mount attributes on",
        dst,
    )
}

fn mount_fs(
    k: &mut impl MountOps,
    fstype: &str,
    dst: &Path,
    flags: MsFlags,
    data: &str,
) -> Result<()> {
    ctx(
        k.mount(
            Some(Path::new(fstype)),
            dst,
            Some(fstype),
            flags,
            Some(data),
        ),
        "cannot mount filesystem on",
        dst,
    )
}

fn unmount(k: &mut impl MountOps, p: &Path) -> Result<()> {
    ctx(k.umount_detach(p), "cannot unmount", p)
}

const RO: u64 = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
const RW: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

/// Builds the new root at `spec.staging`, pivots into it and detaches the
/// host's root. On return the process sees only the sandbox's filesystem.
pub fn build(spec: &SandboxSpec, lowers: Lowers) -> Result<()> {
    build_with(&mut Kernel, spec, lowers)
}

/// [`build`] through the operations `k`.
pub fn build_with(k: &mut impl MountOps, spec: &SandboxSpec, mut lowers: Lowers) -> Result<()> {
    let workspace_tree = take_tree(&mut lowers, WORKSPACE_TREE);
    let mut bind_trees: Vec<Option<OwnedFd>> = (0..spec.ro_binds.len() + spec.binds.len())
        .map(|i| take_tree(&mut lowers, &bind_tree_name(i)))
        .collect();
    let staging = spec.staging.as_path();
    // Nothing we mount may propagate back to the host, and nothing the host
    // mounts later may appear here.
    ctx(
        k.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
        "cannot make mounts private at",
        Path::new("/"),
    )?;
    let new_root;
    let r = match &spec.image {
        Some(img) => {
            new_root = image_root(k, spec, img, &mut lowers)?;
            refuse_image_symlinks(k, spec, &new_root)?;
            new_root.as_path()
        }
        None => {
            host_root(k, spec, lowers)?;
            staging
        }
    };
    let ws = r.join("workspace");
    mkdir(k, &ws, 0o755)?;
    match workspace_tree {
        Some(tree) => attach(k, &tree, &ws, RW)?,
        None => bind(k, &spec.workspace, &ws, RW)?,
    }
    let home = r.join("home/agent");
    mkdir(k, &home, 0o755)?;
    bind(k, &spec.home, &home, RW)?;
    let root_home = r.join("root");
    mkdir(k, &root_home, 0o700)?;
    if spec.as_root {
        bind(k, &spec.home, &root_home, RW)?;
    }

    let tmp = r.join("tmp");
    mkdir(k, &tmp, 0o1777)?;
    mount_fs(
        k,
        "tmpfs",
        &tmp,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("mode=1777,size={}", spec.tmp_size),
    )?;
    if spec.image.is_none() {
        // An image brings its own /var.
        let var = r.join("var");
        mkdir(k, &var, 0o755)?;
        if spec.overlay.is_some() {
            // Package managers log here; the copy-on-write root can hold it.
            mkdir(k, &var.join("log/apt"), 0o755)?;
            mkdir(k, &var.join("cache"), 0o755)?;
        }
        let var_tmp = var.join("tmp");
        if k.host_kind(&var_tmp).is_none() {
            io_ctx(
                k.symlink(Path::new("/tmp"), &var_tmp),
                "cannot create",
                &var_tmp,
            )?;
        }
    }

    let proc_dir = r.join("proc");
    mkdir(k, &proc_dir, 0o555)?;
    mount_fs(
        k,
        "proc",
        &proc_dir,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    )?;
    dev(k, spec, r)?;
    let sys_dir = r.join("sys");
    mkdir(k, &sys_dir, 0o555)?;
    // A read-only sysfs for tools that read CPU topology. The kernel only
    // allows it when the host's sysfs is fully visible to us; without it
    // the directory stays empty, which programs cope with.
    let _ = k.mount(
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    );

    if spec.image.is_some() {
        image_etc(k, spec, r)?;
    }

    // User binds are cloned now and attached after the pivot, so that a
    // destination path is resolved inside the sandbox: a symlink on the way
    // cannot send the mount to a host path.
    let mut user: Vec<(OwnedFd, PathBuf, u64, bool)> = Vec::new();
    let wanted = spec
        .ro_binds
        .iter()
        .map(|b| (b, RO))
        .chain(spec.binds.iter().map(|b| (b, RW)));
    for ((b, attrs), tree) in wanted.zip(bind_trees.iter_mut()) {
        let fd = match tree.take() {
            Some(fd) => fd,
            None => ctx(
                k.open_tree_clone(&cstr(&b.src)),
                "cannot open bind source",
                &b.src,
            )?,
        };
        // Asked of the tree itself: the path may not be reachable from here.
        let is_dir = k.tree_is_dir(&fd);
        user.push((fd, b.dst.clone(), attrs, is_dir));
    }

    pivot(k, r)?;

    for (fd, dst, attrs, is_dir) in user {
        if is_dir {
            mkdir(k, &dst, 0o755)?;
        } else {
            if let Some(parent) = dst.parent() {
                mkdir(k, parent, 0o755)?;
            }
            touch(k, &dst)?;
        }
        attach(k, &fd, &dst, attrs)?;
    }
    if spec.overlay.is_none() {
        ctx(
            k.mount_setattr(c"/", MOUNT_ATTR_RDONLY, false),
            "cannot make read-only",
            Path::new("/"),
        )?;
    }
    Ok(())
}

/// The root of a sandbox without an image, at `spec.staging`: a tmpfs
/// (or the copy-on-write root's directory) with the host's system
/// directories, read-only or overlaid, and the generated `/etc`.
fn host_root(k: &mut impl MountOps, spec: &SandboxSpec, lowers: Lowers) -> Result<()> {
    let r = spec.staging.as_path();
    match &spec.overlay {
        None => mount_fs(
            k,
            "tmpfs",
            r,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=0755,size=16m",
        )?,
        Some(ov) => {
            let top = ov.join("root");
            mkdir(k, &top, 0o755)?;
            bind(k, &top, r, RW)?;
        }
    }
    let lower_root = r.join(LOWER_DIR);
    let attached = attach_lowers(k, &lower_root, lowers)?;
    // The overlays' upper layers, reachable from the root under a short
    // name while they are mounted (see `overlay`).
    let ov_view = r.join(OV_DIR);
    if let Some(ov) = &spec.overlay {
        mkdir(k, &ov_view, 0o700)?;
        bind(k, ov, &ov_view, RW)?;
        ctx(k.chdir(r), "cannot enter", r)?;
    }
    system_dirs(k, spec, r, &attached)?;
    etc(k, spec, r, &attached)?;
    if spec.overlay.is_some() {
        unmount(k, &ov_view)?;
        k.remove_dir(&ov_view);
    }
    if !attached.is_empty() {
        unmount(k, &lower_root)?;
        k.remove_dir(&lower_root);
    }
    Ok(())
}

/// Mounts an image's root: a small private tmpfs at `spec.staging` holds
/// the layers init received (idmapped by the supervisor, named
/// [`image_layer_name`]), a view of the sandbox's overlay directory, and
/// the overlay of them all, whose path is returned. The overlay's options
/// name the layers relative to the tmpfs (the working directory
/// meanwhile), so they hold no host path and stay short: one page of
/// options fits [`MAX_IMAGE_LAYERS`] layers. The tmpfs and what it holds
/// go with the old root at the pivot (overlayfs keeps its own clones of
/// its layers).
fn image_root(
    k: &mut impl MountOps,
    spec: &SandboxSpec,
    img: &ImageRoot,
    lowers: &mut Lowers,
) -> Result<PathBuf> {
    let staging = spec.staging.as_path();
    let invalid = |what: &'static str, path: &Path| RootfsError {
        what,
        path: path.display().to_string(),
        source: nix::errno::Errno::EINVAL,
    };
    let Some(ov) = &spec.overlay else {
        return Err(invalid(
            "an image root needs an upper directory; none was given for",
            staging,
        ));
    };
    let n = img.layers.len();
    if n == 0 {
        return Err(invalid(
            "an image without layers cannot be mounted at",
            staging,
        ));
    }
    if n > MAX_IMAGE_LAYERS {
        return Err(invalid(
            "an image of more than 120 layers cannot be mounted at",
            staging,
        ));
    }
    mount_fs(
        k,
        "tmpfs",
        staging,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0700,size=64k",
    )?;
    for i in 0..n {
        let name = image_layer_name(i);
        let dst = staging.join(&name);
        let tree = take_tree(lowers, &name);
        if tree.is_none() && spec.rootless.is_none() {
            return Err(RootfsError {
                what: "no mount of its image layer was received for",
                path: dst.display().to_string(),
                source: nix::errno::Errno::ENOENT,
            });
        }
        mkdir(k, &dst, 0o700)?;
        // Rootless, no tree is sent: the user's store unpacked the layers
        // with the sandbox's own map, so they are bound as they are.
        let Some(tree) = tree else {
            bind(k, &img.layers[i], &dst, RO)?;
            continue;
        };
        ctx(
            k.move_mount(&tree, &cstr(&dst)),
            "cannot attach image layer at",
            &dst,
        )?;
    }
    let view = staging.join(IMAGE_OV);
    mkdir(k, &view, 0o700)?;
    bind(k, ov, &view, RW)?;
    let upper = Path::new(IMAGE_OV).join("upper");
    let work = Path::new(IMAGE_OV).join("work");
    mkdir(k, &staging.join(&upper), 0o755)?;
    mkdir(k, &staging.join(&work), 0o700)?;
    let root = staging.join(IMAGE_ROOT);
    mkdir(k, &root, 0o755)?;
    ctx(k.chdir(staging), "cannot enter", staging)?;
    // Top layer first, as overlayfs wants them.
    let lowerdir: Vec<String> = (0..n).rev().map(image_layer_name).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount_fs(
        k,
        "overlay",
        &root,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &data,
    )?;
    Ok(root)
}

/// Paths in an image root that stockade mounts on or creates files in
/// before the pivot, relative to the root.
fn image_mount_points(spec: &SandboxSpec) -> Vec<&'static str> {
    let mut v = vec![
        "workspace",
        "home",
        "home/agent",
        "tmp",
        "proc",
        "dev",
        "sys",
        "etc",
    ];
    if spec.as_root {
        v.push("root");
    }
    v
}

/// Refuses an image whose paths that stockade mounts on are symlinks:
/// before the pivot a symlink would be followed on the host (`/home ->
/// /tmp` would create directories in the host's `/tmp`). Nothing else
/// writes to the new root meanwhile, so what is checked here stays true.
fn refuse_image_symlinks(k: &mut impl MountOps, spec: &SandboxSpec, r: &Path) -> Result<()> {
    for rel in image_mount_points(spec) {
        if let Some(HostKind::Symlink(_)) = k.host_kind(&r.join(rel)) {
            return Err(RootfsError {
                what: "cannot mount where the image has a symlink, at",
                path: Path::new("/").join(rel).display().to_string(),
                source: nix::errno::Errno::ELOOP,
            });
        }
    }
    Ok(())
}

/// Files of the generated `/etc` bound over an image's own.
const IMAGE_ETC_FILES: &[&str] = &["hosts", "hostname", "resolv.conf"];

/// An image keeps its own `/etc`, except for the files that describe the
/// sandbox's host and network: stockade's are bound over them read-only
/// (created in the upper layer where the image has none; a symlink in
/// their place is replaced, not followed).
fn image_etc(k: &mut impl MountOps, spec: &SandboxSpec, r: &Path) -> Result<()> {
    let dir = r.join("etc");
    mkdir(k, &dir, 0o755)?;
    for name in IMAGE_ETC_FILES {
        let dst = dir.join(name);
        match k.host_kind(&dst) {
            Some(HostKind::Symlink(_)) => io_ctx(
                k.remove_file(&dst),
                "cannot replace the image's symlink",
                &dst,
            )?,
            Some(HostKind::Dir) => {
                return Err(RootfsError {
                    what: "cannot bind a file where the image has a directory, at",
                    path: dst.display().to_string(),
                    source: nix::errno::Errno::EISDIR,
                })
            }
            Some(HostKind::Other) | None => {}
        }
        touch(k, &dst)?;
        bind(k, &spec.etc_dir.join(name), &dst, RO)?;
    }
    Ok(())
}

/// Makes `r` the root: `pivot_root(".", ".")` from inside it stacks the
/// old root on top of the new one, and detaching `.` then removes the old
/// root in one step (no directory is needed to hold it). Afterwards no
/// path leads to the host's filesystem.
fn pivot(k: &mut impl MountOps, r: &Path) -> Result<()> {
    const WHAT: &str = "cannot pivot_root into";
    let here = Path::new(".");
    ctx(k.chdir(r), WHAT, r)?;
    ctx(k.pivot_root(here, here), WHAT, r)?;
    ctx(k.umount_detach(here), WHAT, r)?;
    ctx(k.chdir(Path::new("/")), WHAT, r)
}

/// Attaches the idmapped lower layers under a private tmpfs; returns the
/// names attached and their paths.
fn attach_lowers(
    k: &mut impl MountOps,
    at: &Path,
    lowers: Lowers,
) -> Result<Vec<(String, PathBuf)>> {
    if lowers.is_empty() {
        return Ok(Vec::new());
    }
    mkdir(k, at, 0o700)?;
    mount_fs(
        k,
        "tmpfs",
        at,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0700,size=64k",
    )?;
    let mut out = Vec::new();
    for (name, fd) in lowers {
        let dst = at.join(&name);
        mkdir(k, &dst, 0o755)?;
        ctx(
            k.move_mount(&fd, &cstr(&dst)),
            "cannot attach lower layer at",
            &dst,
        )?;
        out.push((name, dst));
    }
    Ok(out)
}

/// The lower layer for `host`: its idmapped copy when the supervisor sent
/// one, else the host path itself.
fn lower_for<'a>(attached: &'a [(String, PathBuf)], name: &str, host: &'a Path) -> &'a Path {
    attached
        .iter()
        .find(|(n, _)| n == name)
        .map_or(host, |(_, p)| p.as_path())
}

fn system_dirs(
    k: &mut impl MountOps,
    spec: &SandboxSpec,
    r: &Path,
    attached: &[(String, PathBuf)],
) -> Result<()> {
    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let dst = r.join(name);
        match k.host_kind(&host) {
            Some(HostKind::Symlink(target)) => {
                if k.host_kind(&dst).is_none() {
                    io_ctx(k.symlink(&target, &dst), "cannot create", &dst)?;
                }
            }
            Some(HostKind::Dir) => {
                mkdir(k, &dst, 0o755)?;
                match &spec.overlay {
                    None => bind(k, &host, &dst, RO)?,
                    Some(_) => cow(k, r, attached, &host, &dst, name)?,
                }
            }
            Some(HostKind::Other) | None => {}
        }
    }
    if spec.overlay.is_some() {
        for name in OVERLAY_VAR_DIRS {
            let host = Path::new("/").join(name);
            if k.is_real_dir(&host) {
                let dst = r.join(name);
                mkdir(k, &dst, 0o755)?;
                cow(k, r, attached, &host, &dst, name)?;
            }
        }
    }
    Ok(())
}

fn etc(
    k: &mut impl MountOps,
    spec: &SandboxSpec,
    r: &Path,
    attached: &[(String, PathBuf)],
) -> Result<()> {
    let dst = r.join("etc");
    mkdir(k, &dst, 0o755)?;
    match &spec.overlay {
        None => bind(k, &spec.etc_dir, &dst, RO),
        Some(_) => cow(k, r, attached, &spec.etc_dir, &dst, "etc"),
    }
}

/// The copy-on-write view of the host directory `host` at `dst`: the
/// FUSE overlay the supervisor sent for it (an ordinary user's sandbox,
/// see [`crate::fuseov`]), bound; else a kernel overlay of its idmapped
/// copy (or of `host` itself).
fn cow(
    k: &mut impl MountOps,
    r: &Path,
    attached: &[(String, PathBuf)],
    host: &Path,
    dst: &Path,
    name: &str,
) -> Result<()> {
    let flat = name.replace('/', "_");
    let fuse = attached
        .iter()
        .find(|(n, _)| crate::fuseov::is_tree(n) == Some(flat.as_str()));
    match fuse {
        Some((_, tree)) => bind(k, tree, dst, RW),
        None => overlay(k, r, lower_for(attached, &flat, host), dst, name),
    }
}

/// Mounts a copy-on-write view of `lower` at `dst`: an overlay whose upper
/// and work directories are in the sandbox's overlay directory (seen at
/// `r/OV_DIR`), so changes vanish with the sandbox. The layers are named
/// relative to `r`, the working directory meanwhile: the mount options,
/// which `/proc/self/mountinfo` shows, hold no host path.
fn overlay(k: &mut impl MountOps, r: &Path, lower: &Path, dst: &Path, name: &str) -> Result<()> {
    let flat = name.replace('/', "_");
    let upper = Path::new(OV_DIR).join("upper").join(&flat);
    let work = Path::new(OV_DIR).join("work").join(&flat);
    mkdir(k, &r.join(&upper), 0o755)?;
    mkdir(k, &r.join(&work), 0o755)?;
    for (dir, file) in OVERLAY_SHADOWED {
        if *dir == name {
            // An upper file hides the lower one; one the sandbox already
            // wrote (a restarted overlay) is kept.
            touch(k, &r.join(&upper).join(file))?;
        }
    }
    let lower = lower.strip_prefix(r).unwrap_or(lower);
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount_fs(
        k,
        "overlay",
        dst,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &data,
    )
}

fn dev(k: &mut impl MountOps, spec: &SandboxSpec, r: &Path) -> Result<()> {
    let d = r.join("dev");
    mkdir(k, &d, 0o755)?;
    mount_fs(
        k,
        "tmpfs",
        &d,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        let dst = d.join(name);
        touch(k, &dst)?;
        bind(k, &host, &dst, 0)?;
    }
    // One call for all the nodes (and the tmpfs, which has these already):
    // devpts and shm, mounted next with flags of their own, are not there
    // yet.
    ctx(
        k.mount_setattr(&cstr(&d), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, true),
        "cannot set mount attributes on",
        &d,
    )?;
    let pts = d.join("pts");
    mkdir(k, &pts, 0o755)?;
    // Terminals belong to group tty (5), unless the sandbox has no such
    // id (a rootless sandbox with a single id): the kernel refuses an
    // unmapped gid, and the terminal keeps its opener's group.
    let pts_opts = if spec.gid_map.to_host(5).is_some() {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    } else {
        "newinstance,ptmxmode=0666,mode=0620"
    };
    mount_fs(
        k,
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        pts_opts,
    )?;
    let shm = d.join("shm");
    mkdir(k, &shm, 0o1777)?;
    mount_fs(
        k,
        "tmpfs",
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("mode=1777,size={}", spec.tmp_size),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let at = d.join(link);
        io_ctx(k.symlink(Path::new(target), &at), "cannot create", &at)?;
    }
    // The tmpfs itself becomes read-only: the workload can use the devices
    // but cannot plant files in /dev.
    ctx(
        k.mount_setattr(&cstr(&d), MOUNT_ATTR_RDONLY, false),
        "cannot make read-only",
        &d,
    )
}

#[cfg(test)]
#[path = "rootfs_tests.rs"]
mod tests;
