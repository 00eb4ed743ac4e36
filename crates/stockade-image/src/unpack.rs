//! One layer's tar stream → a directory in overlayfs's format.
//!
//! The `tar` crate only parses; every filesystem write is done here,
//! relative to directory descriptors, and every parent directory is opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`: nothing an entry names is ever followed out of
//! the layer directory, whatever symlinks earlier entries made.
//!
//! What an entry becomes:
//! - paths lose a leading `/` and `./`; a `..` component, an empty or
//!   NUL-carrying name, a path through a symlink or through a file, and a
//!   hard link to anything but a regular file already unpacked in this
//!   layer refuse the whole layer ([`UnpackError::Hostile`]);
//! - `.wh.<name>` becomes overlayfs's whiteout (a 0/0 character device),
//!   `.wh..wh..opq` sets `user.overlay.opaque=y` on its directory (the
//!   sandbox mounts its overlay with `userxattr`, inside its user
//!   namespace, where overlayfs reads the `user.overlay.*` names); other
//!   `.wh..wh.*` entries (aufs bookkeeping) are ignored;
//! - character and block devices are skipped and counted (a sandbox gets
//!   its `/dev` from stockade); a 0/0 character device is a whiteout and is
//!   kept as one; fifos are made;
//! - owners are shifted: id `i` is written as `DISK_ID_BASE + i` (ids past
//!   `MAPPED_IDS` become `OVERFLOW_ID` first), so nothing is owned by host
//!   root; modes (setuid, setgid, sticky included), mtimes and the xattrs
//!   listed in [`apply_xattrs`] are kept.
//!
//! Bytes of file data are bounded (`max_bytes`, and the room left in the
//! store), entries are bounded (`max_entries`), and the headers between two
//! entries (PAX records, GNU long names, which the `tar` crate reads into
//! memory) are bounded by [`HEADER_BUDGET`].

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::{DISK_ID_BASE, MAPPED_IDS, OVERFLOW_ID};

/// Bytes the headers of one entry (its PAX records, GNU long names and
/// the padding before it) may take. Real layers stay far below; a hostile
/// one would otherwise make the `tar` crate buffer gigabytes.
pub const HEADER_BUDGET: u64 = 1 << 20;

/// Longest path an entry may have (Linux's `PATH_MAX`): it also bounds the
/// depth of the tree, so removing it never needs a deep recursion.
const MAX_PATH: usize = 4095;

/// The xattr overlayfs reads (with `userxattr`) to make a directory opaque.
pub const OPAQUE_XATTR: &str = "user.overlay.opaque";

const COPY_BUFFER: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// File data bytes one layer may write.
    pub max_bytes: u64,
    /// Entries one layer may hold.
    pub max_entries: u64,
    /// Bytes left in the store (file data past it is `StoreFull`).
    pub store_room: u64,
}

/// What an unpack made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnpackStats {
    /// Bytes of file data written.
    pub bytes: u64,
    /// Entries read from the stream (all kinds, whiteouts included).
    pub entries: u64,
    /// Character and block devices left out.
    pub skipped_devices: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Hostile(String),
    #[error("the layer writes more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the layer does not fit in the store")]
    StoreFull,
    #[error("the layer holds more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("the layer's stream is not a valid tar archive")]
    Stream(#[source] io::Error),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn hostile(s: impl Into<String>) -> UnpackError {
    UnpackError::Hostile(s.into())
}

/// A reader that fails once its budget is spent (the budget is reset by
/// the unpacker around each phase).
struct Budgeted<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

#[derive(Debug)]
struct BudgetSpent;
impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("header budget spent")
    }
}
impl std::error::Error for BudgetSpent {}

fn is_budget_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<BudgetSpent>())
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(BudgetSpent));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

/// An entry's path, split into validated components (empty: the layer's
/// root).
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, UnpackError> {
    let shown = String::from_utf8_lossy(raw);
    if raw.is_empty() {
        return Err(hostile("an entry has an empty name"));
    }
    if raw.contains(&0) {
        return Err(hostile(format!(
            "entry {shown:?} has a NUL byte in its name"
        )));
    }
    if raw.len() > MAX_PATH {
        return Err(hostile(format!(
            "entry {:?}… has a path longer than {MAX_PATH} bytes",
            String::from_utf8_lossy(&raw[..64])
        )));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(hostile(format!(
                    "entry {shown:?} climbs out of the layer with '..'"
                )))
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn show(comps: &[Vec<u8>]) -> String {
    if comps.is_empty() {
        return ".".to_string();
    }
    let joined: Vec<u8> = comps.join(&b'/');
    String::from_utf8_lossy(&joined).into_owned()
}

fn cstr(b: &[u8]) -> CString {
    // Components were checked for NUL bytes by `components`.
    CString::new(b).unwrap_or_default()
}

/// The on-disk id of an image id in root's store.
pub fn shift_id(id: u64) -> u32 {
    shift_id_from(DISK_ID_BASE, id)
}

/// The id an image id is written as, `base + i`: [`DISK_ID_BASE`] in
/// root's store, 0 in a user's store (whose unpacker runs in a user
/// namespace with the image's map, where id `i` lands on the host as the
/// caller or a subordinate id).
pub fn shift_id_from(base: u32, id: u64) -> u32 {
    let i = if id >= u64::from(MAPPED_IDS) {
        OVERFLOW_ID
    } else {
        id as u32
    };
    base + i
}

/// An entry's metadata, shifted and filtered.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// Parses a PAX `mtime` (`secs[.frac]`).
fn pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c.to_digit(10)? as i64;
        nanos += d * 10i64.pow(8 - i as u32);
    }
    if secs < 0 {
        return None;
    }
    Some(TimeSpec::new(secs, nanos))
}

/// Rewrites a `security.capability` value (v1, v2 or v3) as a v3 value
/// whose root id is the image's root shifted like every owner
/// (`DISK_ID_BASE + rootid`). The kernel honours a v3 capability only in a
/// user namespace whose uid 0 is that root id: inside a sandbox (whose
/// mount maps `DISK_ID_BASE + i` back to `i`) the capability works as in
/// the image, while on the host, where uid 0 is not `DISK_ID_BASE`, it
/// grants nothing. A malformed value is dropped (`None`).
fn rewrite_capability(v: &[u8], base: u32) -> Option<Vec<u8>> {
    const V1: u32 = 0x0100_0000;
    const V2: u32 = 0x0200_0000;
    const V3: u32 = 0x0300_0000;
    let word = |i: usize| -> Option<u32> {
        let b = v.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = word(0)?;
    let flags = magic & 0x00ff_ffff & 1; // VFS_CAP_FLAGS_EFFECTIVE
    let (data, rootid): (Vec<u32>, u64) = match (magic & 0xff00_0000, v.len()) {
        (V1, 12) => (vec![word(1)?, word(2)?, 0, 0], 0),
        (V2, 20) => (vec![word(1)?, word(2)?, word(3)?, word(4)?], 0),
        (V3, 24) => (
            vec![word(1)?, word(2)?, word(3)?, word(4)?],
            u64::from(word(5)?),
        ),
        _ => return None,
    };
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&(V3 | flags).to_le_bytes());
    for d in data {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&shift_id_from(base, rootid).to_le_bytes());
    Some(out)
}

/// Which PAX `SCHILY.xattr.*` records are kept:
/// - `user.*` as they are, except `user.overlay.*`, which would forge
///   overlayfs's own metadata (opaque dirs, redirects) and refuses the
///   layer;
/// - `security.capability` rewritten by [`rewrite_capability`];
/// - `trusted.*` dropped: only host root reads them and a sandbox never
///   sees them (nothing in an image can depend on them), and
///   `trusted.overlay.*` would be overlay metadata for mounts made outside
///   a user namespace;
/// - other `security.*` (SELinux labels, IMA) dropped: they belong to the
///   host's policy, not to the image;
/// - `system.posix_acl_*` dropped: ACL entries name ids that would need
///   shifting like owners, and images rarely carry them.
fn filter_xattr(
    name: &[u8],
    value: &[u8],
    base: u32,
) -> Result<Option<(CString, Vec<u8>)>, UnpackError> {
    if name.contains(&0) || name.is_empty() {
        return Err(hostile("an xattr has an empty or NUL-carrying name"));
    }
    let c = || cstr(name);
    if name.starts_with(b"user.overlay.") {
        return Err(hostile(format!(
            "it sets overlayfs's own xattr {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if name.starts_with(b"user.") {
        return Ok(Some((c(), value.to_vec())));
    }
    if name == b"security.capability" {
        return Ok(rewrite_capability(value, base).map(|v| (c(), v)));
    }
    Ok(None)
}

fn io_err(what: &'static str, comps: &[Vec<u8>]) -> impl FnOnce(Errno) -> UnpackError {
    let path = show(comps);
    move |e| UnpackError::Io {
        what,
        path,
        source: io::Error::from(e),
    }
}

fn io_err_std(what: &'static str, comps: &[Vec<u8>]) -> impl FnOnce(io::Error) -> UnpackError {
    let path = show(comps);
    move |source| UnpackError::Io { what, path, source }
}

/// Sets `name` on the file `fd` is open on.
fn fsetxattr(fd: BorrowedFd<'_>, name: &CString, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: `name` is a NUL-terminated string and `value` a live slice
    // whose length is passed with it; the call only reads them.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

fn apply_xattrs(fd: BorrowedFd<'_>, meta: &Meta, comps: &[Vec<u8>]) -> Result<(), UnpackError> {
    for (name, value) in &meta.xattrs {
        match fsetxattr(fd, name, value) {
            // A filesystem without user xattrs: the store's own choice of
            // filesystem, not the layer's fault; the xattr is left out.
            Ok(()) | Err(Errno::ENOTSUP) => {}
            Err(e) => return Err(io_err("set an xattr on", comps)(e)),
        }
    }
    Ok(())
}

/// Owner, mode (after chown, which clears setuid/setgid), xattrs (after
/// chown, which clears `security.capability`) of an open file or dir.
fn apply_meta(fd: BorrowedFd<'_>, meta: &Meta, comps: &[Vec<u8>]) -> Result<(), UnpackError> {
    nix::unistd::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(io_err("change the owner of", comps))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777))
        .map_err(io_err("change the mode of", comps))?;
    apply_xattrs(fd, meta, comps)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Opens `path` (relative, validated) beneath `root` without following
/// any symlink.
fn open_beneath(root: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
    // No O_NOFOLLOW: with O_DIRECTORY it would report a final symlink as
    // ENOTDIR; RESOLVE_NO_SYMLINKS refuses it (ELOOP) anyway.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let how = OpenHow::new().flags(flags).resolve(beneath());
    loop {
        // openat2 asks for a retry when a rename raced the lookup.
        match nix::fcntl::openat2(root, path, how) {
            Err(Errno::EAGAIN) => continue,
            r => return r,
        }
    }
}

struct Unpacker<'a> {
    root: OwnedFd,
    /// What image id 0 is written as (see [`shift_id_from`]).
    base: u32,
    dest: &'a Path,
    limits: UnpackLimits,
    stats: UnpackStats,
    /// Bytes counted against the limits (file data, and whatever else the
    /// stream carries outside headers).
    counted: u64,
    /// Directories' mtimes, set once everything below them is written.
    dir_times: HashMap<Vec<Vec<u8>>, TimeSpec>,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    /// The directory `comps` (created, owned by the image's root, when
    /// missing), never through a symlink or a file.
    fn dir(&self, comps: &[Vec<u8>]) -> Result<OwnedFd, UnpackError> {
        if comps.is_empty() {
            return self
                .root
                .try_clone()
                .map_err(io_err_std("open the layer directory", comps));
        }
        match open_beneath(self.root.as_fd(), &comps.join(&b'/')) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.parent_error(e, comps)),
        }
        // Some parents are missing: walk down making them.
        let mut cur = self.root.try_clone().map_err(io_err_std("open", &[]))?;
        for (i, c) in comps.iter().enumerate() {
            let here = &comps[..=i];
            let next = match open_beneath(cur.as_fd(), c) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(
                        &cur,
                        c.as_slice(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io_err("create directory", here)(e)),
                    }
                    let fd =
                        open_beneath(cur.as_fd(), c).map_err(|e| self.parent_error(e, here))?;
                    nix::unistd::fchown(
                        &fd,
                        Some(Uid::from_raw(self.base)),
                        Some(Gid::from_raw(self.base)),
                    )
                    .map_err(io_err("change the owner of", here))?;
                    fd
                }
                Err(e) => return Err(self.parent_error(e, here)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn parent_error(&self, e: Errno, comps: &[Vec<u8>]) -> UnpackError {
        match e {
            Errno::ELOOP | Errno::EXDEV => hostile(format!(
                "an entry under {:?} goes through a symlink",
                show(comps)
            )),
            Errno::ENOTDIR => hostile(format!(
                "an entry under {:?} goes through something that is not a directory",
                show(comps)
            )),
            e => io_err("open directory", comps)(e),
        }
    }

    /// Makes room for a new entry `name` in `parent`: an earlier entry of
    /// this layer is removed, unless both are directories (`Ok(true)`: the
    /// directory stays with its contents).
    fn replace(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        comps: &[Vec<u8>],
        new_is_dir: bool,
    ) -> Result<bool, UnpackError> {
        let st =
            match nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(false),
                Err(e) => return Err(io_err("inspect", comps)(e)),
            };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir && new_is_dir {
            return Ok(true);
        }
        if is_dir {
            // The path was just resolved beneath the layer without
            // symlinks, and nothing else writes the temporary tree.
            let mut p = self.dest.to_path_buf();
            for c in comps {
                p.push(std::ffi::OsStr::from_bytes(c));
            }
            remove_tree(&p).map_err(io_err_std("remove the earlier entry", comps))?;
        } else {
            nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(io_err("remove the earlier entry", comps))?;
        }
        Ok(false)
    }

    /// Counts `n` bytes read from the stream against the limits; `data`:
    /// they are file content (the layer's size).
    fn count_bytes(&mut self, n: u64, data: bool) -> Result<(), UnpackError> {
        if data {
            self.stats.bytes += n;
        }
        self.counted += n;
        if self.counted > self.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        if self.counted > self.limits.store_room {
            return Err(UnpackError::StoreFull);
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let comps = components(&entry.path_bytes())?;
        let kind = entry.header().entry_type();
        let h = entry.header();
        let bad = |what: &str, e: io::Error| {
            hostile(format!("entry {:?} has a bad {what}: {e}", show(&comps)))
        };
        let mode = h.mode().map_err(|e| bad("mode", e))?;
        let uid = h.uid().map_err(|e| bad("uid", e))?;
        let gid = h.gid().map_err(|e| bad("gid", e))?;
        let mut mtime = TimeSpec::new(
            h.mtime().map_err(|e| bad("mtime", e))?.min(i64::MAX as u64) as i64,
            0,
        );
        let dev = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Stream)? {
            for ext in pax {
                let ext = ext.map_err(UnpackError::Stream)?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if let Some(x) = filter_xattr(name, ext.value_bytes(), self.base)? {
                        xattrs.push(x);
                    }
                } else if key == b"mtime" {
                    if let Some(t) = pax_time(ext.value_bytes()) {
                        mtime = t;
                    }
                }
            }
        }
        let meta = Meta {
            uid: shift_id_from(self.base, uid),
            gid: shift_id_from(self.base, gid),
            mode,
            mtime,
            xattrs,
        };

        // Whiteouts.
        if let Some(last) = comps.last() {
            if last == b".wh..wh..opq" {
                let dir = self.dir(&comps[..comps.len() - 1])?;
                fsetxattr(dir.as_fd(), &cstr(OPAQUE_XATTR.as_bytes()), b"y")
                    .map_err(io_err("mark opaque", &comps))?;
                return self.drain(entry);
            }
            if last.starts_with(b".wh..wh.") {
                return self.drain(entry);
            }
            if let Some(name) = last.strip_prefix(b".wh.") {
                if name.is_empty() || name == b"." || name == b".." {
                    return Err(hostile(format!(
                        "whiteout {:?} names nothing",
                        show(&comps)
                    )));
                }
                let mut target = comps.clone();
                if let Some(l) = target.last_mut() {
                    *l = name.to_vec();
                }
                self.whiteout(&target, &meta)?;
                return self.drain(entry);
            }
        }

        match kind {
            T::Directory => self.directory(&comps, &meta)?,
            _ if comps.is_empty() => {
                return Err(hostile(
                    "an entry that is not a directory names the layer's root",
                ))
            }
            T::Regular | T::Continuous | T::GNUSparse => return self.file(&comps, &meta, entry),
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| hostile(format!("symlink {:?} has no target", show(&comps))))?;
                if target.contains(&0) {
                    return Err(hostile(format!(
                        "symlink {:?} has a NUL in its target",
                        show(&comps)
                    )));
                }
                let target = target.into_owned();
                self.symlink(&comps, &target, &meta)?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile(format!("hard link {:?} has no target", show(&comps))))?
                    .into_owned();
                self.hardlink(&comps, &target)?;
            }
            T::Char if dev == (0, 0) => self.whiteout(&comps, &meta)?,
            T::Char | T::Block => self.stats.skipped_devices += 1,
            T::Fifo => self.fifo(&comps, &meta)?,
            T::XGlobalHeader => {}
            other => {
                return Err(hostile(format!(
                    "entry {:?} has an unsupported type {:?}",
                    show(&comps),
                    other.as_byte() as char
                )))
            }
        }
        self.drain(entry)
    }

    /// Reads what an entry carries besides file data (a device's or
    /// directory's declared size): it counts against the byte limit.
    fn drain<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        loop {
            let n = entry.read(&mut self.buf).map_err(UnpackError::Stream)?;
            if n == 0 {
                return Ok(());
            }
            self.count_bytes(n as u64, false)?;
        }
    }

    fn split(comps: &[Vec<u8>]) -> (&[Vec<u8>], &[u8]) {
        let (last, parent) = comps.split_last().expect("non-empty path");
        (parent, last)
    }

    fn file<R: Read>(
        &mut self,
        comps: &[Vec<u8>],
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let (pc, name) = Self::split(comps);
        let parent = self.dir(pc)?;
        self.replace(parent.as_fd(), name, comps, false)?;
        let fd = nix::fcntl::openat(
            &parent,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err("create", comps))?;
        let mut f = std::fs::File::from(fd);
        let mut buf = std::mem::take(&mut self.buf);
        let r = (|| {
            loop {
                let n = entry.read(&mut buf).map_err(UnpackError::Stream)?;
                if n == 0 {
                    return Ok(());
                }
                // Counted before writing: nothing past a limit reaches disk.
                self.count_bytes(n as u64, true)?;
                f.write_all(&buf[..n]).map_err(io_err_std("write", comps))?;
            }
        })();
        self.buf = buf;
        r?;
        apply_meta(f.as_fd(), meta, comps)?;
        nix::sys::stat::futimens(&f, &meta.mtime, &meta.mtime)
            .map_err(io_err("set the times of", comps))
    }

    fn directory(&mut self, comps: &[Vec<u8>], meta: &Meta) -> Result<(), UnpackError> {
        let fd = if comps.is_empty() {
            self.dir(comps)?
        } else {
            let (pc, name) = Self::split(comps);
            let parent = self.dir(pc)?;
            if !self.replace(parent.as_fd(), name, comps, true)? {
                nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(io_err("create directory", comps))?;
            }
            nix::fcntl::openat(&parent, name, dir_flags(), Mode::empty())
                .map_err(io_err("open directory", comps))?
        };
        apply_meta(fd.as_fd(), meta, comps)?;
        self.dir_times.insert(comps.to_vec(), meta.mtime);
        Ok(())
    }

    /// Owner and times of a node that cannot be opened (symlink, device,
    /// fifo), by name in its parent.
    fn own_node(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        comps: &[Vec<u8>],
    ) -> Result<(), UnpackError> {
        nix::unistd::fchownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err("change the owner of", comps))?;
        nix::sys::stat::utimensat(
            parent,
            name,
            &meta.mtime,
            &meta.mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err("set the times of", comps))
    }

    fn symlink(
        &mut self,
        comps: &[Vec<u8>],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (pc, name) = Self::split(comps);
        let parent = self.dir(pc)?;
        self.replace(parent.as_fd(), name, comps, false)?;
        // The target is stored, never followed (by us).
        nix::unistd::symlinkat(target, &parent, name).map_err(io_err("create symlink", comps))?;
        // No xattrs: the kernel refuses user.* on symlinks, and a
        // capability on a symlink means nothing.
        self.own_node(parent.as_fd(), name, meta, comps)
    }

    fn hardlink(&mut self, comps: &[Vec<u8>], target: &[u8]) -> Result<(), UnpackError> {
        let tcomps = components(target)?;
        let refuse = || {
            hostile(format!(
                "hard link {:?} points at {:?}, which is not a regular file of this layer",
                show(comps),
                String::from_utf8_lossy(target)
            ))
        };
        if tcomps.is_empty() {
            return Err(refuse());
        }
        if tcomps == comps {
            return Ok(());
        }
        let (tpc, tname) = Self::split(&tcomps);
        let tparent = match tpc {
            [] => self.dir(tpc)?,
            _ => match open_beneath(self.root.as_fd(), &tpc.join(&b'/')) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR) => {
                    return Err(refuse())
                }
                Err(e) => return Err(io_err("open directory", tpc)(e)),
            },
        };
        match nix::sys::stat::fstatat(&tparent, tname, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
            Ok(_) | Err(Errno::ENOENT) => return Err(refuse()),
            Err(e) => return Err(io_err("inspect", &tcomps)(e)),
        }
        let (pc, name) = Self::split(comps);
        let parent = self.dir(pc)?;
        self.replace(parent.as_fd(), name, comps, false)?;
        nix::unistd::linkat(&tparent, tname, &parent, name, nix::fcntl::AtFlags::empty())
            .map_err(io_err("create hard link", comps))
    }

    fn whiteout(&mut self, comps: &[Vec<u8>], meta: &Meta) -> Result<(), UnpackError> {
        if comps.is_empty() {
            return Err(hostile("a whiteout names the layer's root"));
        }
        let (pc, name) = Self::split(comps);
        let parent = self.dir(pc)?;
        self.replace(parent.as_fd(), name, comps, false)?;
        nix::sys::stat::mknodat(
            &parent,
            name,
            SFlag::S_IFCHR,
            Mode::empty(),
            libc::makedev(0, 0),
        )
        .map_err(io_err("create whiteout", comps))?;
        self.own_node(parent.as_fd(), name, meta, comps)
    }

    fn fifo(&mut self, comps: &[Vec<u8>], meta: &Meta) -> Result<(), UnpackError> {
        let (pc, name) = Self::split(comps);
        let parent = self.dir(pc)?;
        self.replace(parent.as_fd(), name, comps, false)?;
        nix::sys::stat::mknodat(
            &parent,
            name,
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .map_err(io_err("create fifo", comps))?;
        self.own_node(parent.as_fd(), name, meta, comps)?;
        // After chown; the name is the fifo just made (nothing else
        // writes the temporary tree), so following it is safe.
        nix::sys::stat::fchmodat(
            &parent,
            name,
            Mode::from_bits_truncate(meta.mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(io_err("change the mode of", comps))
    }

    fn finish_dir_times(&mut self) -> Result<(), UnpackError> {
        for (comps, t) in std::mem::take(&mut self.dir_times) {
            let fd = if comps.is_empty() {
                self.dir(&comps)?
            } else {
                match open_beneath(self.root.as_fd(), &comps.join(&b'/')) {
                    Ok(fd) => fd,
                    // Replaced by a later entry that is not a directory.
                    Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                    Err(e) => return Err(io_err("open directory", &comps)(e)),
                }
            };
            nix::sys::stat::futimens(&fd, &t, &t).map_err(io_err("set the times of", &comps))?;
        }
        Ok(())
    }
}

/// Unpacks the tar stream `reader` into the empty directory `dest`
/// (which this makes the layer's root: owned by the image's root, 0755
/// unless the stream says otherwise), then reads the stream to its end
/// (the caller hashes all of it). On error `dest` is left for the caller
/// to remove.
pub fn unpack(
    reader: &mut dyn Read,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    unpack_from(reader, dest, limits, DISK_ID_BASE)
}

/// [`unpack`] with image id `i` written as `base + i`.
pub fn unpack_from(
    reader: &mut dyn Read,
    dest: &Path,
    limits: UnpackLimits,
    base: u32,
) -> Result<UnpackStats, UnpackError> {
    let root = nix::fcntl::open(dest, dir_flags(), Mode::empty()).map_err(|e| UnpackError::Io {
        what: "open",
        path: dest.display().to_string(),
        source: e.into(),
    })?;
    let root_meta = Meta {
        uid: base,
        gid: base,
        mode: 0o755,
        mtime: TimeSpec::new(0, 0),
        xattrs: Vec::new(),
    };
    apply_meta(root.as_fd(), &root_meta, &[])?;
    let mut u = Unpacker {
        root,
        base,
        dest,
        limits,
        stats: UnpackStats::default(),
        counted: 0,
        dir_times: HashMap::new(),
        buf: vec![0; COPY_BUFFER],
    };
    let budget = Rc::new(Cell::new(HEADER_BUDGET));
    let mut archive = tar::Archive::new(Budgeted {
        inner: reader,
        left: budget.clone(),
    });
    {
        let mut entries = archive.entries().map_err(UnpackError::Stream)?;
        loop {
            budget.set(HEADER_BUDGET);
            let next = entries.next();
            budget.set(u64::MAX);
            let mut entry = match next {
                None => break,
                Some(Ok(e)) => e,
                Some(Err(e)) if is_budget_error(&e) => {
                    return Err(hostile(format!(
                        "an entry's headers take more than {HEADER_BUDGET} bytes"
                    )))
                }
                Some(Err(e)) => return Err(UnpackError::Stream(e)),
            };
            u.entry(&mut entry)?;
        }
    }
    u.finish_dir_times()?;
    // The rest of the stream (end-of-archive blocks, and whatever a
    // hostile stream hides after them) is hashed too: it counts against
    // the byte limit.
    let mut rest = archive.into_inner();
    let mut buf = std::mem::take(&mut u.buf);
    loop {
        let n = rest.read(&mut buf).map_err(UnpackError::Stream)?;
        if n == 0 {
            break;
        }
        u.count_bytes(n as u64, false)?;
    }
    Ok(u.stats)
}

/// Removes a tree the store made (a layer, a failed unpack): directories a
/// layer made read-only are opened up first. Symlinks are never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return std::fs::remove_file(path),
        Ok(_) => {}
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
        Err(_) => {}
    }
    open_up(path)?;
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Gives the owner rwx on every directory under `path` (iteratively).
fn open_up(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d)?;
        if !md.is_dir() {
            continue;
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}
