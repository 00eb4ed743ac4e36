//! The scratch filesystem: where sandboxes write, with a disk cap the
//! kernel enforces.
//!
//! A sandbox's scratch workspace, home and copy-on-write upper layers live
//! in a btrfs *subvolume* of their own, whose qgroup limit is the
//! sandbox's `--disk`: a write past it fails with `EDQUOT` inside the
//! sandbox, whatever the workload does (large files, `fallocate`, millions
//! of small files, paths deeper than `PATH_MAX`). Deleting the subvolume at
//! the end is one call however deep or large the tree the workload left.
//!
//! The filesystem is one per host, shared by every state directory: a
//! sparse image (`/var/lib/stockade/scratch.img`) loop-mounted at
//! `/run/stockade-scratch`, made on first use (again after a reboot; what
//! it held then belonged to sandboxes that no longer exist). The image's
//! apparent size is the host filesystem's free space when it is made, so
//! btrfs runs out of room (a clean `ENOSPC`) before the host does, and
//! it is mounted with `discard`, so what sandboxes delete frees host space.
//!
//! Subvolumes are named after the host id slot of the sandbox that owns
//! them (`s<slot>`, see `stockade_isolate::slots`): garbage collection
//! deletes every one whose slot nobody holds. A task's workspace, which
//! outlives its sandboxes, is `t<task id>`, held by an `flock` on
//! `t<task id>.lock` while its task runs (and kept, with a `.keep`
//! marker, for `stockade task --keep`).
//!
//! Where the filesystem cannot be had (no btrfs in the kernel, no
//! `mkfs.btrfs`, not root, or `STOCKADE_SCRATCH=off`), sandboxes write
//! into their state directory and the disk limit is measured by polling
//! (`disk.rs`) instead; reports say which (`usage.disk_enforced`).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the scratch filesystem is mounted.
pub const MOUNT: &str = "/run/stockade-scratch";
/// Its backing image.
pub const IMAGE: &str = "/var/lib/stockade/scratch.img";
/// Smallest image made, whatever the host's free space.
const MIN_IMAGE: u64 = 1 << 30;
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

/// Why the scratch filesystem or a subvolume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// Not available on this host: the reason says why and what to do.
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ScratchError {
    let what = what.into();
    move |source| ScratchError::Io { what, source }
}

// The btrfs ioctls used here: _IOW/_IOR/_IOWR(0x94, nr, size).
const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (0x94 << 8) | nr
}
const IOW: u64 = 1;
const IOR: u64 = 2;
const BTRFS_IOC_SUBVOL_CREATE: u64 = ioc(IOW, 14, 4096);
const BTRFS_IOC_SNAP_DESTROY: u64 = ioc(IOW, 15, 4096);
const BTRFS_IOC_INO_LOOKUP: u64 = ioc(IOW | IOR, 18, 4096);
const BTRFS_IOC_FS_INFO: u64 = ioc(IOR, 31, 1024);
const BTRFS_IOC_QUOTA_CTL: u64 = ioc(IOW | IOR, 40, 16);
const BTRFS_IOC_QGROUP_CREATE: u64 = ioc(IOW, 42, 16);
const BTRFS_IOC_QGROUP_LIMIT: u64 = ioc(IOR, 43, 48);
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
/// Simple quotas (Linux 6.7+): usage is charged to the subvolume that
/// allocates an extent, with no back-reference walks, so deleting a large
/// subvolume never leaves the accounting inconsistent (and the limits
/// unenforced).
const BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA: u64 = 4;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

impl VolArgs {
    fn named(name: &str) -> io::Result<VolArgs> {
        let mut a = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        let b = name.as_bytes();
        if b.is_empty() || b.len() >= a.name.len() || b.contains(&0) || b.contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        a.name[..b.len()].copy_from_slice(b);
        Ok(a)
    }
}

/// Issues a btrfs ioctl whose argument is `arg`.
fn ioctl<T>(fd: &File, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to a struct laid
    // out as `T` (repr(C), sized as the request's size field says), which
    // lives across the call; the kernel reads and writes only within it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_dir(p: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(p)
}

use std::os::unix::fs::OpenOptionsExt;

/// The subvolume id of the subvolume `dir` is the root of.
fn subvol_id(dir: &File) -> io::Result<u64> {
    #[repr(C)]
    struct InoLookup {
        treeid: u64,
        objectid: u64,
        name: [u8; 4080],
    }
    let mut a = InoLookup {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    ioctl(dir, BTRFS_IOC_INO_LOOKUP, &mut a)?;
    Ok(a.treeid)
}

/// The mounted scratch filesystem.
#[derive(Debug, Clone)]
pub struct ScratchFs {
    root: PathBuf,
    /// The filesystem's uuid, naming it under `/sys/fs/btrfs`.
    fsid: String,
}

static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Turns the scratch filesystem off for this process (the CLI does so for
/// `STOCKADE_SCRATCH=off`): sandboxes then keep their workspace and home
/// in the state directory, with disk use metered by polling. Set once, by
/// the program's entry point; the first call wins.
pub fn set_disabled(off: bool) {
    let _ = DISABLED.set(off);
}

/// Whether the scratch filesystem is turned off ([`set_disabled`]).
pub fn disabled() -> bool {
    DISABLED.get().copied().unwrap_or(false)
}

impl ScratchFs {
    /// The scratch filesystem, made and mounted if it is not yet.
    /// `Unavailable` says why it cannot be (the caller then falls back to
    /// polling).
    pub fn get() -> Result<ScratchFs, ScratchError> {
        if disabled() {
            return Err(ScratchError::Unavailable(
                "the scratch filesystem is turned off (STOCKADE_SCRATCH=off)".into(),
            ));
        }
        let root = PathBuf::from(MOUNT);
        if let Some(fs) = Self::mounted(&root) {
            return fs.usable();
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(ScratchError::Unavailable(
                "only root can set up the scratch filesystem".into(),
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&root)
            .map_err(io_err(format!("create {MOUNT}")))?;
        // One set-up at a time; whoever waited finds it made.
        let lock = File::create("/run/stockade-scratch.lock")
            .map_err(io_err("create /run/stockade-scratch.lock"))?;
        crate::state::flock(&lock, libc::LOCK_EX).map_err(io_err("lock the scratch set-up"))?;
        if let Some(fs) = Self::mounted(&root) {
            return fs.usable();
        }
        make_and_mount(&root)?;
        Self::mounted(&root).ok_or_else(|| {
            ScratchError::Unavailable(format!(
                "{MOUNT} was set up but is not a btrfs mount with quotas; see `stockade doctor`"
            ))
        })
    }

    fn usable(self) -> Result<ScratchFs, ScratchError> {
        if self.consistent() {
            Ok(self)
        } else {
            Err(ScratchError::Unavailable(format!(
                "the quota accounting of the scratch filesystem {MOUNT} is inconsistent, so it \
                 would not enforce disk limits; run `stockade gc --reset-scratch` once no sandbox \
                 runs"
            )))
        }
    }

    /// The scratch filesystem if it is mounted already (nothing is made).
    pub fn existing() -> Option<ScratchFs> {
        Self::mounted(Path::new(MOUNT))
    }

    /// The filesystem at `root` if it is a btrfs mount with quotas on.
    fn mounted(root: &Path) -> Option<ScratchFs> {
        let st = nix::sys::statfs::statfs(root).ok()?;
        if st.filesystem_type().0 as i64 != BTRFS_SUPER_MAGIC {
            return None;
        }
        let dir = open_dir(root).ok()?;
        let mut info = [0u8; 1024];
        ioctl(&dir, BTRFS_IOC_FS_INFO, &mut info).ok()?;
        let u = &info[16..32];
        let fsid = format!(
            "{}-{}-{}-{}-{}",
            hex(&u[0..4]),
            hex(&u[4..6]),
            hex(&u[6..8]),
            hex(&u[8..10]),
            hex(&u[10..16])
        );
        let fs = ScratchFs {
            root: root.to_path_buf(),
            fsid,
        };
        let q = fs.qgroups_dir();
        if !q.is_dir() {
            return None;
        }
        // Full qgroups (kernels without simple quotas): account the drop
        // of every deleted subvolume, however deep its tree, rather than
        // mark the accounting inconsistent, which would leave the limits
        // unenforced until a rescan.
        if fs::read_to_string(q.join("mode")).is_ok_and(|m| m.trim() == "qgroup") {
            let _ = fs::write(q.join("drop_subtree_threshold"), "8");
        }
        Some(fs)
    }

    /// Whether the kernel's accounting holds (an inconsistent one does not
    /// enforce limits, until a rescan).
    fn consistent(&self) -> bool {
        fs::read_to_string(self.qgroups_dir().join("inconsistent"))
            .map_or(true, |v| v.trim() == "0")
    }

    /// Unmounts the scratch filesystem and removes its image, if no
    /// sandbox or task uses it (gc of the dead ones first); it is made
    /// afresh on the next use. For a filesystem whose accounting broke.
    pub fn reset(&self, slot_dir: &Path) -> Result<(), ScratchError> {
        self.collect(slot_dir, false);
        let left: Vec<String> = fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".lock") && !n.ends_with(".keep"))
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            return Err(ScratchError::Unavailable(format!(
                "the scratch filesystem still holds {} (live sandboxes or kept task workspaces); \
                 remove them first",
                left.join(", ")
            )));
        }
        nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| io_err(format!("unmount {MOUNT}"))(e.into()))?;
        let _ = fs::remove_file(IMAGE);
        Ok(())
    }

    fn qgroups_dir(&self) -> PathBuf {
        Path::new("/sys/fs/btrfs").join(&self.fsid).join("qgroups")
    }

    /// Where subvolumes live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new subvolume `name` capped at `limit` bytes (an old one of that
    /// name, left by a dead owner, is deleted first).
    pub fn create(&self, name: &str, limit: u64) -> Result<Subvol, ScratchError> {
        let path = self.root.join(name);
        if path.exists() {
            self.delete(name)?;
        }
        let parent = open_dir(&self.root).map_err(io_err(format!("open {MOUNT}")))?;
        let mut args = VolArgs::named(name).map_err(io_err(format!("name a subvolume {name}")))?;
        ioctl(&parent, BTRFS_IOC_SUBVOL_CREATE, &mut args)
            .map_err(io_err(format!("create the subvolume {}", path.display())))?;
        let made = (|| {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o711))
                .map_err(io_err(format!("set the mode of {}", path.display())))?;
            let dir = open_dir(&path).map_err(io_err(format!("open {}", path.display())))?;
            let id = subvol_id(&dir).map_err(io_err(format!("look up {}", path.display())))?;
            #[repr(C)]
            struct Limit {
                qgroupid: u64,
                flags: u64,
                max_rfer: u64,
                max_excl: u64,
                rsv_rfer: u64,
                rsv_excl: u64,
            }
            let mut lim = Limit {
                qgroupid: id,
                flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
                max_rfer: limit,
                max_excl: 0,
                rsv_rfer: 0,
                rsv_excl: 0,
            };
            ioctl(&dir, BTRFS_IOC_QGROUP_LIMIT, &mut lim)
                .map_err(io_err(format!("cap {} at {limit} bytes", path.display())))?;
            Ok(Subvol {
                path: path.clone(),
                name: name.to_string(),
                id,
                usage_dir: self.qgroups_dir().join(format!("0_{id}")),
                limit,
            })
        })();
        if made.is_err() {
            let _ = self.delete(name);
        }
        made
    }

    /// Deletes subvolume `name` and everything in it (one call however
    /// large the tree: the kernel frees it in the background), and its
    /// qgroup once that is possible.
    pub fn delete(&self, name: &str) -> Result<(), ScratchError> {
        let path = self.root.join(name);
        let id = open_dir(&path).ok().and_then(|d| subvol_id(&d).ok());
        let parent = open_dir(&self.root).map_err(io_err(format!("open {MOUNT}")))?;
        let mut args = VolArgs::named(name).map_err(io_err(format!("name a subvolume {name}")))?;
        match ioctl(&parent, BTRFS_IOC_SNAP_DESTROY, &mut args) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // Not a subvolume (a plain directory someone made): remove it
            // as one.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && path.is_dir() => {
                crate::state::remove_tree(&path)
                    .map_err(io_err(format!("remove {}", path.display())))?;
            }
            Err(e) => {
                return Err(io_err(format!("delete the subvolume {}", path.display()))(
                    e,
                ))
            }
        }
        if let Some(id) = id {
            self.drop_qgroup(&parent, id);
        }
        Ok(())
    }

    /// Removes the qgroup of a deleted subvolume (it stays, unused, until
    /// the kernel has dropped the subvolume; `collect` retries).
    fn drop_qgroup(&self, parent: &File, id: u64) {
        #[repr(C)]
        struct Create {
            create: u64,
            qgroupid: u64,
        }
        let mut a = Create {
            create: 0,
            qgroupid: id,
        };
        let _ = ioctl(parent, BTRFS_IOC_QGROUP_CREATE, &mut a);
    }

    /// Deletes what owners that are gone left: `s<slot>` subvolumes whose
    /// slot nobody holds, `t<task>` ones whose task lock is free (unless
    /// kept), and qgroups of deleted subvolumes. Returns the names deleted.
    pub fn collect(&self, slot_dir: &Path, drop_kept: bool) -> Vec<String> {
        let mut gone = Vec::new();
        let mut live_ids = Vec::new();
        let Ok(rd) = fs::read_dir(&self.root) else {
            return gone;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = if let Some(k) = name.strip_prefix('s').and_then(|k| k.parse::<u32>().ok())
            {
                !stockade_isolate::slots::in_use(slot_dir, k)
            } else if let Some(t) = name.strip_prefix('t').filter(|t| !t.contains('.')) {
                let kept = self.root.join(format!("t{t}.keep")).exists();
                !task_locked(&self.root, t) && (!kept || drop_kept)
            } else {
                false
            };
            if stale && self.delete(&name).is_ok() {
                if name.starts_with('t') {
                    let _ = fs::remove_file(self.root.join(format!("{name}.keep")));
                    let _ = fs::remove_file(self.root.join(format!("{name}.lock")));
                }
                gone.push(name);
            } else if let Some(id) = open_dir(&e.path()).ok().and_then(|d| subvol_id(&d).ok()) {
                live_ids.push(id);
            }
        }
        // Qgroups whose subvolume is gone.
        if let (Ok(rd), Ok(parent)) = (fs::read_dir(self.qgroups_dir()), open_dir(&self.root)) {
            for e in rd.flatten() {
                let id = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("0_"))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(id) = id.filter(|&id| id >= BTRFS_FIRST_FREE_OBJECTID) {
                    if !live_ids.contains(&id) {
                        self.drop_qgroup(&parent, id);
                    }
                }
            }
        }
        gone
    }

    /// Whether no sandbox or task has a subvolume here (then nothing sees
    /// the generated `/etc` copies kept on this filesystem).
    pub fn idle(&self) -> bool {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return false;
        };
        !rd.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix('s')
                .is_some_and(|k| k.parse::<u32>().is_ok())
                || name.strip_prefix('t').is_some_and(|t| !t.contains('.'))
        })
    }

    /// The scratch subvolume of a task (see the module's documentation),
    /// with its lock held while the returned value lives.
    pub fn create_task(&self, task_id: &str, limit: u64) -> Result<TaskScratch, ScratchError> {
        let lock_path = self.root.join(format!("t{task_id}.lock"));
        let lock =
            File::create(&lock_path).map_err(io_err(format!("create {}", lock_path.display())))?;
        crate::state::flock(&lock, libc::LOCK_EX | libc::LOCK_NB)
            .map_err(io_err(format!("lock {}", lock_path.display())))?;
        let subvol = self.create(&format!("t{task_id}"), limit)?;
        Ok(TaskScratch {
            subvol,
            _lock: lock,
        })
    }

    /// Marks a task's subvolume to be kept after its task (`--keep`).
    pub fn keep_task(&self, task_id: &str) {
        let _ = File::create(self.root.join(format!("t{task_id}.keep")));
    }
}

fn task_locked(root: &Path, t: &str) -> bool {
    match File::open(root.join(format!("t{t}.lock"))) {
        Ok(f) => crate::state::flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_err(),
        Err(_) => false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A task's scratch subvolume and its lock.
#[derive(Debug)]
pub struct TaskScratch {
    pub subvol: Subvol,
    _lock: File,
}

/// A capped subvolume.
#[derive(Debug, Clone)]
pub struct Subvol {
    pub path: PathBuf,
    pub name: String,
    id: u64,
    usage_dir: PathBuf,
    pub limit: u64,
}

/// How close to its cap a subvolume counts as having reached it: a write
/// refused at the cap leaves the usage just under it (by less than the
/// refused piece).
pub const REACHED_MARGIN: u64 = 1 << 20;

impl Subvol {
    /// Bytes the subvolume holds, written or reserved for writes in
    /// flight (the qgroup's figures: counted as the kernel enforces them).
    pub fn usage(&self) -> Option<u64> {
        let read = |f: &str| -> Option<u64> {
            fs::read_to_string(self.usage_dir.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(read("referenced")? + read("rsv_data").unwrap_or(0))
    }

    /// Whether the usage has come up to the cap.
    pub fn reached(&self, usage: u64) -> bool {
        usage.saturating_add(REACHED_MARGIN) >= self.limit
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Makes the sparse image, formats and mounts it at `root`, and turns
/// quotas on.
fn make_and_mount(root: &Path) -> Result<(), ScratchError> {
    let unavailable = |why: String| ScratchError::Unavailable(why);
    let has_btrfs = fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.trim_end().ends_with("btrfs")))
        .unwrap_or(false);
    let mkfs = [
        "/usr/sbin/mkfs.btrfs",
        "/sbin/mkfs.btrfs",
        "/usr/bin/mkfs.btrfs",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists());
    if !has_btrfs {
        // The module may just not be loaded yet; mounting would load it.
        let _ = std::process::Command::new("modprobe")
            .arg("btrfs")
            .stderr(std::process::Stdio::null())
            .status();
    }
    let Some(mkfs) = mkfs else {
        return Err(unavailable(
            "mkfs.btrfs is not installed, so the disk limit cannot be enforced by the kernel; \
             install btrfs-progs (apt-get install btrfs-progs)"
                .into(),
        ));
    };
    let image = Path::new(IMAGE);
    let dir = image.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(io_err(format!("create {}", dir.display())))?;
    let _ = fs::remove_file(image);
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    let size = free.max(MIN_IMAGE);
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .map_err(io_err(format!("create {IMAGE}")))?;
    f.set_len(size).map_err(io_err(format!("size {IMAGE}")))?;
    drop(f);
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<(), ScratchError> {
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io_err(format!("run {what}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(unavailable(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    run(
        std::process::Command::new(mkfs)
            .args(["-q", "-f", "-m", "single", "-d", "single", "--nodiscard"])
            .arg(image),
        "mkfs.btrfs",
    )?;
    run(
        std::process::Command::new("mount")
            .args([
                "-t",
                "btrfs",
                "-o",
                // Not noexec: workloads run what they build in their
                // workspace (sandbox mounts keep this mount's flags).
                "loop,discard=async,nosuid,nodev",
            ])
            .arg(image)
            .arg(root),
        &format!("mount {IMAGE} on {}", root.display()),
    )?;
    let dir = open_dir(root).map_err(io_err(format!("open {}", root.display())))?;
    let mut simple = [BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA, 0u64];
    let mut full = [BTRFS_QUOTA_CTL_ENABLE, 0u64];
    let enabled = ioctl(&dir, BTRFS_IOC_QUOTA_CTL, &mut simple)
        .or_else(|_| ioctl(&dir, BTRFS_IOC_QUOTA_CTL, &mut full));
    if let Err(e) = enabled {
        let _ = nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH);
        return Err(unavailable(format!(
            "cannot turn on btrfs quotas on the scratch filesystem: {e}"
        )));
    }
    // The mount point's own directory: walkable by the sandboxes' ids
    // (their scratch directories are below), listable by nobody.
    let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o711));
    Ok(())
}

/// For `stockade doctor`: whether disk limits are enforced by the kernel.
pub fn status() -> Result<String, String> {
    match ScratchFs::get() {
        Ok(fs) => Ok(format!(
            "disk limits enforced by the kernel (btrfs quotas on {})",
            fs.root.display()
        )),
        Err(e) => Err(format!(
            "disk limits measured by polling, not enforced: {}",
            stockade_isolate::error_chain(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernels() {
        // Values from linux/btrfs.h as compiled on x86_64/aarch64.
        assert_eq!(BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(BTRFS_IOC_SNAP_DESTROY, 0x5000_940f);
        assert_eq!(BTRFS_IOC_INO_LOOKUP, 0xd000_9412);
        assert_eq!(BTRFS_IOC_FS_INFO, 0x8400_941f);
        assert_eq!(BTRFS_IOC_QUOTA_CTL, 0xc010_9428);
        assert_eq!(BTRFS_IOC_QGROUP_CREATE, 0x4010_942a);
        assert_eq!(BTRFS_IOC_QGROUP_LIMIT, 0x8030_942b);
    }

    #[test]
    fn subvolume_names_are_single_components() {
        assert!(VolArgs::named("s12").is_ok());
        for bad in ["", "a/b", "x\0y"] {
            assert!(VolArgs::named(bad).is_err(), "{bad:?}");
        }
        assert!(VolArgs::named(&"x".repeat(5000)).is_err());
    }

    #[test]
    fn a_cap_counts_as_reached_within_the_margin() {
        let s = Subvol {
            path: PathBuf::new(),
            name: "s1".into(),
            id: 256,
            usage_dir: PathBuf::new(),
            limit: 100 << 20,
        };
        assert!(!s.reached(50 << 20));
        assert!(s.reached((100 << 20) - (16 << 10)));
        assert!(s.reached(100 << 20));
    }
}
