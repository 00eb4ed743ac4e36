//! An image as a sandbox's root: finding (or pulling) it in the store,
//! and honouring its configuration as Docker does — `Env`, `WorkingDir`,
//! `User` (resolved in the image's own `/etc/passwd` and `/etc/group`),
//! `Entrypoint` and `Cmd`.
//!
//! The image's files are read here as host root, through directory
//! descriptors: each layer is walked one component at a time, no symlink
//! is followed (a symlinked `/etc/passwd` counts as absent), and the
//! layers are searched top-down as overlayfs stacks them (a whiteout hides
//! what is below it, an opaque directory hides the lower layers' contents).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use stockade_image::{Image, Progress, PullOptions, PullPolicy, Store, StoreLimits};
use stockade_policy::{Policy, Pull};

use crate::RunError;

/// An image found in the store for a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxImage {
    pub store: Store,
    pub image: Image,
    /// The name the policy gave.
    pub name: String,
}

fn image_err(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> RunError {
    RunError::Image {
        name: name.to_string(),
        source: Box::new(e),
    }
}

/// Why an ordinary user without subordinate ids cannot use images.
pub const NO_SUBIDS: &str = stockade_image::store::NO_SUBIDS;

/// The image store under `state_dir`: root's, or for an ordinary user
/// with subordinate ids a user's store whose layers keep the image's
/// owners as inside the user's one image map (see
/// [`stockade_image::userns`]).
pub fn open_store(
    state_dir: &Path,
    limits: StoreLimits,
) -> Result<Store, stockade_image::StoreError> {
    open_store_at(&Store::under_state_dir(state_dir), limits)
}

/// [`open_store`] with the store's own directory.
pub fn open_store_at(
    root: &Path,
    limits: StoreLimits,
) -> Result<Store, stockade_image::StoreError> {
    if nix::unistd::geteuid().is_root() {
        return Store::open(root, limits);
    }
    match stockade_isolate::rootless::detect() {
        stockade_isolate::rootless::RootlessIds::Subordinate { uids, gids } => {
            let ids = stockade_image::userns::UserIds {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                sub_uid: uids.start,
                sub_gid: gids.start,
            };
            Store::open_user(root, limits, ids)
        }
        stockade_isolate::rootless::RootlessIds::Single => {
            Err(stockade_image::StoreError::NeedsSubids)
        }
    }
}

/// Finds the policy's image in the store under `state_dir`, pulling it as
/// `filesystem.pull` says. `None` without an image.
pub fn resolve(
    policy: &Policy,
    state_dir: &Path,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Option<SandboxImage>, RunError> {
    let Some(name) = &policy.filesystem.image else {
        return Ok(None);
    };
    if !nix::unistd::geteuid().is_root() {
        // Before any pull: a rootless sandbox could not use it.
        crate::prepare::refuse_rootless(policy, true)?;
    }
    let store = open_store(state_dir, StoreLimits::default()).map_err(|e| match e {
        stockade_image::StoreError::NeedsSubids => RunError::Invalid(NO_SUBIDS.into()),
        e => image_err(name, e),
    })?;
    let image = stockade_image::pull::ensure(
        &store,
        name,
        pull_policy(policy.filesystem.pull),
        opts,
        progress,
    )
    .map_err(|e| image_err(name, e))?;
    Ok(Some(SandboxImage {
        store,
        image,
        name: name.clone(),
    }))
}

impl SandboxImage {
    /// The unpacked layer directories, bottom first, each checked to be
    /// there.
    pub fn layer_dirs(&self) -> Result<Vec<PathBuf>, RunError> {
        let dirs = self.store.layer_dirs(&self.image);
        if dirs.is_empty() {
            return Err(RunError::Invalid(format!(
                "image {} has no layers; a sandbox's root needs at least one",
                self.name
            )));
        }
        if dirs.len() > stockade_isolate::spec::MAX_IMAGE_LAYERS {
            return Err(RunError::Launch(
                stockade_isolate::launch::LaunchError::TooManyLayers(dirs.len()),
            ));
        }
        for d in &dirs {
            if !std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) {
                return Err(RunError::Invalid(format!(
                    "image {}: layer {} is missing from the store; pull the image again \
                     (`stockade pull --always`, or `--pull always`)",
                    self.name,
                    d.display()
                )));
            }
        }
        Ok(dirs)
    }
}

/// The largest account file read from an image.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// Reads `rel` (relative, e.g. `etc/passwd`) as the image's root shows
/// it: the topmost layer that has it, or `None` where a layer above
/// deleted it (whiteout, opaque directory), where it is not a regular file
/// or not there at all, or where a symlink is on its way.
pub fn read_image_file(layers: &[PathBuf], rel: &str) -> Option<Vec<u8>> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let (file, dirs) = parts.split_last()?;
    for layer in layers.iter().rev() {
        match lookup_in_layer(layer, dirs, file) {
            Found::Here(data) => return Some(data),
            Found::Hidden => return None,
            Found::Below => continue,
        }
    }
    None
}

enum Found {
    Here(Vec<u8>),
    /// This layer deletes it, or makes it something else than a file.
    Hidden,
    /// Not in this layer; look in the ones below.
    Below,
}

fn open_dir_at(dir: Option<&OwnedFd>, name: &str) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match dir {
        None => nix::fcntl::open(name, flags, Mode::empty()),
        Some(d) => nix::fcntl::openat(d, name, flags, Mode::empty()),
    }
}

fn is_whiteout(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFCHR && st.st_rdev == 0
}

fn is_opaque(dir: &OwnedFd) -> bool {
    let mut v = [0u8; 4];
    // SAFETY: a valid descriptor, a NUL-terminated name and a buffer of
    // the length we pass.
    let n = unsafe {
        libc::fgetxattr(
            dir.as_raw_fd(),
            c"user.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

fn lookup_in_layer(layer: &Path, dirs: &[&str], file: &str) -> Found {
    let Some(root) = layer.to_str() else {
        return Found::Below;
    };
    let Ok(mut dir) = open_dir_at(None, root) else {
        return Found::Below;
    };
    // Set once a directory on the way is opaque in this layer: what this
    // layer lacks below it is then absent, not in the lower layers.
    let mut opaque = false;
    let stat = |d: &OwnedFd, name: &str| {
        nix::sys::stat::fstatat(d, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
    };
    let absent = |opaque: bool| if opaque { Found::Hidden } else { Found::Below };
    for name in dirs {
        let st = match stat(&dir, name) {
            Ok(st) => st,
            Err(_) => return absent(opaque),
        };
        if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) != SFlag::S_IFDIR {
            // A whiteout, a symlink or a file where a directory should be.
            return Found::Hidden;
        }
        dir = match open_dir_at(Some(&dir), name) {
            Ok(d) => d,
            Err(_) => return Found::Hidden,
        };
        opaque |= is_opaque(&dir);
    }
    let st = match stat(&dir, file) {
        Ok(st) => st,
        Err(_) => return absent(opaque),
    };
    if is_whiteout(&st) || SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) != SFlag::S_IFREG {
        return Found::Hidden;
    }
    let Ok(fd) = nix::fcntl::openat(
        &dir,
        file,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Found::Hidden;
    };
    let mut data = Vec::new();
    use std::io::Read;
    match std::fs::File::from(fd)
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut data)
    {
        Ok(_) => Found::Here(data),
        Err(_) => Found::Hidden,
    }
}

/// The user a sandbox's workloads run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Its name, when `/etc/passwd` has it.
    pub name: Option<String>,
    /// Its home and shell from `/etc/passwd`.
    pub home: Option<String>,
    pub shell: Option<String>,
}

/// Resolves `spec` (`NAME`, `UID`, `NAME:GROUP`, `UID:GID`) against the
/// text of `/etc/passwd` and `/etc/group`, as Docker does: a name must be
/// in the file; a uid need not be (its group is then its passwd entry's,
/// or 0); `where_` says whose files they are in errors (`"image x's "`).
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
    where_: &str,
) -> Result<User, RunError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = |text: Option<&str>| -> Vec<Vec<String>> {
        text.unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .filter(|f| f.len() >= 3)
            .collect()
    };
    let users = entries(passwd);
    let groups = entries(group);
    let by_uid = |uid: u32| {
        users
            .iter()
            .find(|f| f.len() >= 4 && f[2].parse() == Ok(uid))
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => by_uid(uid).cloned().map(|f| (uid, f)),
        Err(_) => {
            let f = users.iter().find(|f| f[0] == user).ok_or_else(|| {
                RunError::Invalid(format!(
                    "user {user:?} is not in {where_}/etc/passwd; give a uid (--user UID[:GID]) \
                     or a name listed there"
                ))
            })?;
            let uid = f[2].parse::<u32>().map_err(|_| {
                RunError::Invalid(format!(
                    "user {user:?} has no valid uid in {where_}/etc/passwd"
                ))
            })?;
            Some((uid, f.clone()))
        }
    };
    let uid = match (&entry, user.parse::<u32>()) {
        (Some((uid, _)), _) => *uid,
        (None, Ok(uid)) => uid,
        (None, Err(_)) => unreachable!("a name is found or refused above"),
    };
    let gid = match grp {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| {
                    RunError::Invalid(format!(
                        "group {g:?} is not in {where_}/etc/group; give a gid (--user UID:GID)"
                    ))
                })?,
        },
        None => entry
            .as_ref()
            .and_then(|(_, f)| f.get(3))
            .and_then(|g| g.parse::<u32>().ok())
            .unwrap_or(0),
    };
    let max = stockade_isolate::idmap::MAPPED_IDS;
    if uid >= max || gid >= max {
        return Err(RunError::Invalid(format!(
            "user {spec:?} is uid {uid}, gid {gid}; a sandbox maps ids 0 to {} only",
            max - 1
        )));
    }
    let field = |i: usize| {
        entry
            .as_ref()
            .and_then(|(_, f)| f.get(i))
            .filter(|s| !s.is_empty())
            .cloned()
    };
    Ok(User {
        uid,
        gid,
        name: field(0),
        home: field(5),
        shell: field(6),
    })
}

/// The user of a sandbox on `layers`: the policy's (`--user`, `--root`),
/// else the image's `User`, else root (Docker's default).
pub fn image_user(
    policy: &Policy,
    image: &SandboxImage,
    layers: &[PathBuf],
) -> Result<User, RunError> {
    let p = &policy.process;
    let spec = match (&p.user, p.root) {
        (Some(u), _) => u.clone(),
        (None, true) => "0".into(),
        (None, false) => image
            .image
            .config
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0".into()),
    };
    let text =
        |rel: &str| read_image_file(layers, rel).map(|b| String::from_utf8_lossy(&b).into_owned());
    let passwd = text("etc/passwd");
    let group = text("etc/group");
    resolve_user(
        &spec,
        passwd.as_deref(),
        group.as_deref(),
        &format!("image {}'s ", image.name),
    )
}

/// `Env` of an image as (name, value) pairs; entries without `=` are
/// skipped.
pub fn image_env(image: &Image) -> Vec<(String, String)> {
    image
        .config
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The command a one-shot run starts, as `docker run` does: the image's
/// `Entrypoint` followed by the given command, or by the image's `Cmd`
/// when none is given.
pub fn command_with(
    entrypoint: &[String],
    default_cmd: &[String],
    command: &[String],
) -> Vec<String> {
    let tail = if command.is_empty() {
        default_cmd
    } else {
        command
    };
    entrypoint.iter().chain(tail).cloned().collect()
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;

/// The store's pull policy for the policy file's `pull`.
pub fn pull_policy(p: Pull) -> PullPolicy {
    match p {
        Pull::Missing => PullPolicy::Missing,
        Pull::Always => PullPolicy::Always,
        Pull::Never => PullPolicy::Never,
    }
}
