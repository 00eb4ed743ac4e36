//! The content-addressed image store (`<state>/images`).
//!
//! CONTRACT (skeleton; the implementation fills the bodies and may add
//! private helpers, but keeps these signatures so that pull.rs, core and
//! the fronts build against them):
//!
//! ```text
//! <root>/store.lock            flock: shared by pulls and lease-taking, exclusive by rmi/prune
//! <root>/blobs/sha256/<hex>    verified blobs (manifests, configs, compressed layers), 0644 root
//! <root>/layers/<hex>/         unpacked layer (hex of its diff_id = uncompressed digest), read-only
//! <root>/layers/<hex>.json     its size in bytes and entry count
//! <root>/images/<hex>.json     an image record (hex of the manifest digest): names, config, layers
//! <root>/leases/<holder>       a live sandbox's use of an image: flock held by its supervisor
//! <root>/tmp/                  everything half-written (renamed into place when complete)
//! <root>/names.json            the name → manifest digest index (replaced atomically)
//! <root>/index.lock            flock: exclusive while records or names.json change
//! <root>/format                `root`, or `user UID SUBUID SUBGID` (a user's store, see crate::userns)
//! <root>/locks/{blob,layer}-<hex>  flock: one writer per blob, one unpacker per layer
//! ```
//!
//! A layer is complete when its `<hex>.json` exists (it is renamed in
//! after the directory); a directory without one is a crash's leftover,
//! redone by the next unpack and removed by prune. Every writer of blobs
//! and layers holds the shared store lock, so prune (exclusive) never sees
//! a half-done write nor a held item lock. Names live only in
//! `names.json`: an image record's `names` are filled from it on read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigBlob, ImageConfig};
use crate::digest::{Digest, Verifier};
use crate::unpack::{self, UnpackError, UnpackLimits};
use crate::userns::UserIds;

// Private modules kept next to this file (lib.rs is shared with the
// other parts of the crate).
#[path = "lock.rs"]
mod lock;
use lock::Kind;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

/// Bounds that make a hostile image an error rather than a full disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Bytes the whole store (blobs + unpacked layers) may hold.
    pub max_store_bytes: u64,
    /// Bytes one layer may unpack to (a decompression bomb stops here).
    pub max_layer_bytes: u64,
    /// Entries one layer may hold.
    pub max_layer_entries: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_store_bytes: 100 << 30,
            max_layer_bytes: 20 << 30,
            max_layer_entries: 2_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} is truncated: got {got} of {want} bytes")]
    Truncated { digest: Digest, got: u64, want: u64 },
    #[error("layer {layer} is refused: {reason}")]
    HostileLayer { layer: Digest, reason: String },
    #[error("layer {layer} unpacks past the limit of {limit} bytes (decompression bomb?)")]
    LayerTooLarge { layer: Digest, limit: u64 },
    #[error("layer {layer} holds more than {limit} entries")]
    TooManyEntries { layer: Digest, limit: u64 },
    #[error("the image store would grow past its limit of {limit} bytes; remove images (`stockade rmi`, `stockade image prune`)")]
    StoreFull { limit: u64 },
    #[error("layer media type {0:?} is not supported (gzip, zstd and uncompressed tar are)")]
    MediaType(String),
    #[error("image {0:?} is not in the store; pull it first (`stockade pull {0}`)")]
    NotFound(String),
    #[error("image {name} is in use by sandbox {holder}")]
    InUse { name: String, holder: String },
    #[error("image record {path} is unreadable")]
    BadRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("layer {layer} unpacks to content {actual}, not to {expected} as its image's configuration says")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer} is not a readable tar stream (corrupt or truncated blob?)")]
    CorruptLayer {
        layer: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("digest prefix {0:?} matches several images; give more digits")]
    Ambiguous(String),
    #[error("lease holder {0:?} is not valid: use letters, digits, '_', '.' and '-'")]
    BadHolder(String),
    #[error("{0} already holds a lease on an image; drop it first")]
    LeaseTaken(String),
    #[error("layer {0} is not unpacked in the store; pull its image again")]
    MissingLayer(Digest),
    #[error(
        "the image store {path} holds layers made {found}, not {wanted} as this one needs; \
         remove it (`rm -rf {path}`, as whoever made it) and pull again"
    )]
    WrongFormat {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("{NO_SUBIDS}")]
    NeedsSubids,
    #[error("cannot work on the user's image store in a user namespace")]
    Userns(#[source] crate::userns::UsernsError),
}

fn format_text(user: Option<&UserIds>) -> String {
    match user {
        None => "root".into(),
        Some(u) => format!("user {} {} {}", u.uid, u.sub_uid, u.sub_gid),
    }
}

fn format_describe(text: &str) -> String {
    let mut w = text.split_whitespace();
    match (w.next(), w.next(), w.next(), w.next()) {
        (Some("root"), ..) => "by root (owners in the disk block)".into(),
        (Some("user"), Some(u), Some(su), Some(sg)) => {
            format!("for user {u} with subordinate uids from {su} and gids from {sg}")
        }
        _ => format!("in an unknown format {text:?}"),
    }
}

/// What a forked unpacker sends back.
#[derive(Debug, Serialize, Deserialize)]
enum ChildUnpack {
    Done {
        stats: unpack::UnpackStats,
        actual: Digest,
    },
    Hostile(String),
    TooLarge(u64),
    StoreFull,
    TooManyEntries(u64),
    Stream(String),
    Io {
        what: String,
        path: String,
        errno: Option<i32>,
        text: String,
    },
}

/// What the store knows of an unpacked layer (`layers/<hex>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub diff_id: Digest,
    /// Bytes of file data.
    pub size: u64,
    /// Entries of its tar stream.
    pub entries: u64,
    /// Character and block devices left out.
    #[serde(default)]
    pub skipped_devices: u64,
}

/// One layer of an image, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The compressed blob's digest (as in the manifest).
    pub blob: Digest,
    pub media_type: String,
    /// The uncompressed digest (the config's `rootfs.diff_ids`): the key of
    /// the unpacked directory.
    pub diff_id: Digest,
    /// Compressed size (from the manifest).
    pub size: u64,
}

/// An image in the store, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The manifest's digest (the image's identity).
    pub digest: Digest,
    /// Canonical names that point at it (`docker.io/library/python:3.11`).
    pub names: Vec<String>,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// `created` from the config, as written there (RFC 3339), if any.
    pub created: Option<String>,
    pub config: ImageConfig,
    /// Bottom first.
    pub layers: Vec<LayerRecord>,
    /// Unpacked size of all layers, bytes.
    pub size: u64,
}

/// A line of `stockade images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
    pub size: u64,
    pub created: Option<String>,
}

/// What `rmi`/`prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub untagged: Vec<String>,
    pub images: Vec<Digest>,
    pub layers: Vec<Digest>,
    pub blobs: Vec<Digest>,
    pub bytes: u64,
}

/// A live sandbox's hold on an image: while it exists (its flock is held),
/// neither `rmi` nor `prune` removes the image's layers. Dropping it (or the
/// holder's death) releases it.
#[derive(Debug)]
pub struct Lease {
    pub(crate) file: Option<std::fs::File>,
    pub(crate) path: PathBuf,
}

/// Held by a pull for its whole duration (shared store lock).
#[derive(Debug)]
pub struct PullGuard {
    pub(crate) _lock: std::fs::File,
}

/// The store. Cheap to open; every method is safe to call from several
/// processes at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    limits: StoreLimits,
    /// A user's store (owners as inside the user's image map, work on
    /// layers done in a user namespace; see [`crate::userns`]), or root's
    /// (owners shifted into the disk block).
    user: Option<UserIds>,
}

/// Why an ordinary user without subordinate ids cannot use images.
pub const NO_SUBIDS: &str = "images need subordinate ids when run as an ordinary user: an \
     image's files have several owners and one id cannot hold them; ask for an /etc/subuid \
     and /etc/subgid entry of 65536 ids (and Debian's `uidmap` package), or run without --image";

/// The file naming a store's format: `root`, or `user UID SUBUID SUBGID`.
const FORMAT_FILE: &str = "format";

const COPY_BUFFER: usize = 128 * 1024;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Layer compression, by media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression(media_type: &str) -> Result<Compression, StoreError> {
    Ok(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        other => return Err(StoreError::MediaType(other.to_string())),
    })
}

/// `[A-Za-z0-9_.-]+`, not `.` or `..`, at most 255 bytes.
fn valid_holder(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h != "."
        && h != ".."
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `docker.io/library/python:3.11` → (`docker.io/library/python`, `3.11`);
/// `name@sha256:…` → (`name`, `<none>`).
fn split_name(n: &str) -> (String, String) {
    if let Some((repo, _)) = n.split_once('@') {
        return (repo.to_string(), "<none>".to_string());
    }
    let last = n.rfind('/').map_or(0, |i| i + 1);
    match n[last..].rfind(':') {
        Some(i) => (n[..last + i].to_string(), n[last + i + 1..].to_string()),
        None => (n.to_string(), "<none>".to_string()),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NameIndex {
    names: BTreeMap<String, Digest>,
}

/// Blobs and layers an image uses.
#[derive(Debug, Default)]
struct Refs {
    blobs: BTreeSet<Digest>,
    layers: BTreeSet<Digest>,
}

impl Refs {
    fn add(&mut self, image: &Image) {
        self.blobs.insert(image.digest.clone());
        self.blobs.insert(image.config_digest.clone());
        for l in &image.layers {
            self.blobs.insert(l.blob.clone());
            self.layers.insert(l.diff_id.clone());
        }
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed, 0700 root) the store at `root`.
    pub fn open(root: &Path, limits: StoreLimits) -> Result<Store, StoreError> {
        Self::open_as(root, limits, None)
    }

    /// Opens (creating if needed, 0700) an ordinary user's store at
    /// `root`, whose layers keep the image's owners as inside `ids`' map.
    pub fn open_user(root: &Path, limits: StoreLimits, ids: UserIds) -> Result<Store, StoreError> {
        Self::open_as(root, limits, Some(ids))
    }

    /// The user's ids, for a user's store.
    pub fn user_ids(&self) -> Option<UserIds> {
        self.user
    }

    fn open_as(
        root: &Path,
        limits: StoreLimits,
        user: Option<UserIds>,
    ) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
            limits,
            user,
        };
        std::fs::create_dir_all(root).map_err(io_err("create the image store", root))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("set the mode of", root))?;
        for d in [
            "blobs",
            "blobs/sha256",
            "layers",
            "images",
            "leases",
            "tmp",
            "locks",
        ] {
            let p = root.join(d);
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &p)(e)),
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("set the mode of", &p))?;
        }
        store.check_format()?;
        Ok(store)
    }

    /// Marks a new store with its format and refuses to use one of the
    /// other format (a root store's layers are owned by the disk block, a
    /// user's by its own map: neither reads right through the other's).
    /// A store without the mark predates it: root's if it has layers.
    fn check_format(&self) -> Result<(), StoreError> {
        let wanted = format_text(self.user.as_ref());
        let path = self.root.join(FORMAT_FILE);
        let found = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_string(),
            Err(e) if not_found(&e) => {
                let layers = self.root.join("layers");
                let empty = std::fs::read_dir(&layers)
                    .map_err(io_err("read", &layers))?
                    .next()
                    .is_none();
                if empty {
                    return self.write_atomic(&path, format!("{wanted}\n").as_bytes(), 0o600);
                }
                "root".to_string()
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        if found != wanted {
            return Err(StoreError::WrongFormat {
                path: self.root.clone(),
                found: format_describe(&found),
                wanted: format_describe(&wanted),
            });
        }
        Ok(())
    }

    /// Removes a tree of the store: in the user's namespace for a user's
    /// store (its owners are subordinate ids the user cannot unlink as).
    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        let Some(ids) = &self.user else {
            return unpack::remove_tree(path);
        };
        let r: Result<(), (Option<i32>, String)> = crate::userns::run(ids, || {
            unpack::remove_tree(path).map_err(|e| (e.raw_os_error(), e.to_string()))
        })
        .map_err(io::Error::other)?;
        r.map_err(|(errno, text)| match errno {
            Some(n) => io::Error::from_raw_os_error(n),
            None => io::Error::other(text),
        })
    }

    /// The store under a state directory: `<state>/images`.
    pub fn under_state_dir(state: &Path) -> PathBuf {
        state.join("images")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    fn store_lock(&self, kind: Kind) -> Result<File, StoreError> {
        let p = self.root.join("store.lock");
        lock::open_locked(&p, kind).map_err(io_err("lock", &p))
    }

    fn index_lock(&self) -> Result<File, StoreError> {
        let p = self.root.join("index.lock");
        lock::open_locked(&p, Kind::Exclusive).map_err(io_err("lock", &p))
    }

    fn item_lock(&self, kind: &str, hex: &str) -> Result<File, StoreError> {
        let p = self.root.join("locks").join(format!("{kind}-{hex}"));
        lock::open_locked(&p, Kind::Exclusive).map_err(io_err("lock", &p))
    }

    /// A fresh name under `tmp/`.
    fn tmp_path(&self, prefix: &str) -> PathBuf {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root
            .join("tmp")
            .join(format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id()))
    }

    /// A new file under `tmp/` (O_EXCL: never someone else's).
    fn tmp_file(&self, prefix: &str) -> Result<(PathBuf, File), StoreError> {
        loop {
            let p = self.tmp_path(prefix);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
            {
                Ok(f) => return Ok((p, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &p)(e)),
            }
        }
    }

    fn sync_dir(dir: &Path) -> Result<(), StoreError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", dir))
    }

    /// Writes `dest` whole or not at all (temporary file, fsync, rename).
    fn write_atomic(&self, dest: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
        let (tmp, mut f) = self.tmp_file("write")?;
        let r = f
            .write_all(bytes)
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &tmp))
            .and_then(|()| std::fs::rename(&tmp, dest).map_err(io_err("rename into", dest)));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        if let Some(parent) = dest.parent() {
            Self::sync_dir(parent)?;
        }
        Ok(())
    }

    /// Takes the shared store lock for a pull (blocks while rmi/prune run).
    pub fn begin_pull(&self) -> Result<PullGuard, StoreError> {
        Ok(PullGuard {
            _lock: self.store_lock(Kind::Shared)?,
        })
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        std::fs::symlink_metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file())
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Streams a blob into the store: written under `tmp/`, hashed as it
    /// goes, renamed into place only when its digest (and `size`, when
    /// given) match. `progress` gets the bytes written so far. Two
    /// processes writing the same blob do the work once (per-blob flock;
    /// the second finds it present).
    pub fn put_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let _store = self.store_lock(Kind::Shared)?;
        if self.has_blob(digest) {
            return Ok(());
        }
        let _item = self.item_lock("blob", digest.hex())?;
        if self.has_blob(digest) {
            return Ok(());
        }
        let room = self
            .limits
            .max_store_bytes
            .saturating_sub(self.usage_unlocked()?);
        let full = StoreError::StoreFull {
            limit: self.limits.max_store_bytes,
        };
        if size.is_some_and(|s| s > room) {
            return Err(full);
        }
        let (tmp, mut file) = self.tmp_file("blob")?;
        let r = (|| {
            // One byte past the declared size is enough to know it lies.
            let cap = size.map_or(u64::MAX, |s| s.saturating_add(1));
            let mut v = Verifier::new(reader.take(cap));
            let mut buf = vec![0u8; COPY_BUFFER];
            let mut done = 0u64;
            loop {
                let n = match v.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(io_err(
                            "read the content of blob",
                            Path::new(&digest.to_string()),
                        )(e))
                    }
                };
                done += n as u64;
                if done > room {
                    return Err(full);
                }
                file.write_all(&buf[..n]).map_err(io_err("write", &tmp))?;
                progress(done);
            }
            if let Some(want) = size {
                if done < want {
                    return Err(StoreError::Truncated {
                        digest: digest.clone(),
                        got: done,
                        want,
                    });
                }
            }
            let actual = v.finish();
            if actual != *digest || size.is_some_and(|want| done > want) {
                return Err(StoreError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            file.set_permissions(std::fs::Permissions::from_mode(0o644))
                .and_then(|()| file.sync_all())
                .map_err(io_err("write", &tmp))?;
            let dest = self.blob_path(digest);
            std::fs::rename(&tmp, &dest).map_err(io_err("rename into", &dest))?;
            Self::sync_dir(&self.root.join("blobs/sha256"))
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    /// A small blob (manifest, config) read whole and re-verified.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(digest);
        let bytes = std::fs::read(&p).map_err(io_err("read blob", &p))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn layer_json(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{}.json", diff_id.hex()))
    }

    /// The unpacked layer `diff_id`, if complete in the store.
    pub fn layer_info(&self, diff_id: &Digest) -> Result<Option<LayerInfo>, StoreError> {
        let p = self.layer_json(diff_id);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::BadRecord { path: p, source }),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Whether the layer `diff_id` is unpacked (complete) in the store.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_json(diff_id).is_file()
    }

    /// Unpacks the layer blob `blob` (of `media_type`: OCI/Docker gzip,
    /// zstd or plain tar) into `layers/<diff_id hex>/` unless already there,
    /// checking the uncompressed stream against `diff_id`. Done once across
    /// processes (per-layer flock); unpacked into `tmp/` and renamed.
    pub fn unpack_layer(
        &self,
        blob: &Digest,
        media_type: &str,
        diff_id: &Digest,
    ) -> Result<PathBuf, StoreError> {
        let comp = compression(media_type)?;
        let dir = self.layer_dir(diff_id);
        let _store = self.store_lock(Kind::Shared)?;
        if self.has_layer(diff_id) {
            return Ok(dir);
        }
        let _item = self.item_lock("layer", diff_id.hex())?;
        if self.has_layer(diff_id) {
            return Ok(dir);
        }
        // A directory without its json: an unpack that died before the end.
        self.remove_tree(&dir)
            .map_err(io_err("remove the incomplete layer", &dir))?;

        let bp = self.blob_path(blob);
        let file = File::open(&bp).map_err(io_err("open layer blob", &bp))?;
        let file = io::BufReader::with_capacity(COPY_BUFFER, file);
        let stream: Box<dyn Read> = match comp {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(file)
                    .map_err(io_err("start decompressing", &bp))?,
            ),
        };
        let mut verifier = Verifier::new(stream);
        let limits = UnpackLimits {
            max_bytes: self.limits.max_layer_bytes,
            max_entries: self.limits.max_layer_entries,
            store_room: self
                .limits
                .max_store_bytes
                .saturating_sub(self.usage_unlocked()?),
        };
        let tmp = self.tmp_path("layer");
        std::fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        let r = self.unpack_into(&mut verifier, &tmp, limits, blob, diff_id, &dir);
        if r.is_err() {
            let _ = self.remove_tree(&tmp);
        }
        r?;
        Ok(dir)
    }

    fn unpack_into(
        &self,
        verifier: &mut Verifier<Box<dyn Read>>,
        tmp: &Path,
        limits: UnpackLimits,
        blob: &Digest,
        diff_id: &Digest,
        dir: &Path,
    ) -> Result<(), StoreError> {
        #[cfg(test)]
        tests::UNPACKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.root.clone());
        let (stats, actual) = match &self.user {
            None => {
                let stats = unpack::unpack(verifier, tmp, limits)
                    .map_err(|e| self.unpack_err(e, blob, tmp))?;
                // `Verifier::finish` takes it by value: swap an empty one in.
                let v = std::mem::replace(verifier, Verifier::new(Box::new(io::empty())));
                (stats, v.finish())
            }
            Some(ids) => self.unpack_as_user(ids, verifier, tmp, limits, blob)?,
        };
        if actual != *diff_id {
            return Err(StoreError::DiffIdMismatch {
                layer: blob.clone(),
                expected: diff_id.clone(),
                actual,
            });
        }
        self.finish_unpack(tmp, stats, diff_id, dir)
    }

    /// Unpacks in a child that is root of the user's image map (see
    /// [`crate::userns`]): owners land as the caller or subordinate ids.
    fn unpack_as_user(
        &self,
        ids: &UserIds,
        verifier: &mut Verifier<Box<dyn Read>>,
        tmp: &Path,
        limits: UnpackLimits,
        blob: &Digest,
    ) -> Result<(unpack::UnpackStats, Digest), StoreError> {
        let child = crate::userns::run(ids, || {
            match unpack::unpack_from(verifier, tmp, limits, 0) {
                Ok(stats) => {
                    let v = std::mem::replace(verifier, Verifier::new(Box::new(io::empty())));
                    ChildUnpack::Done {
                        stats,
                        actual: v.finish(),
                    }
                }
                Err(UnpackError::Hostile(r)) => ChildUnpack::Hostile(r),
                Err(UnpackError::TooLarge { limit }) => ChildUnpack::TooLarge(limit),
                Err(UnpackError::StoreFull) => ChildUnpack::StoreFull,
                Err(UnpackError::TooManyEntries { limit }) => ChildUnpack::TooManyEntries(limit),
                Err(UnpackError::Stream(e)) => ChildUnpack::Stream(e.to_string()),
                Err(UnpackError::Io { what, path, source }) => ChildUnpack::Io {
                    what: what.to_string(),
                    path,
                    errno: source.raw_os_error(),
                    text: source.to_string(),
                },
            }
        })
        .map_err(StoreError::Userns)?;
        let e = match child {
            ChildUnpack::Done { stats, actual } => return Ok((stats, actual)),
            ChildUnpack::Hostile(r) => UnpackError::Hostile(r),
            ChildUnpack::TooLarge(limit) => UnpackError::TooLarge { limit },
            ChildUnpack::StoreFull => UnpackError::StoreFull,
            ChildUnpack::TooManyEntries(limit) => UnpackError::TooManyEntries { limit },
            ChildUnpack::Stream(t) => UnpackError::Stream(io::Error::other(t)),
            ChildUnpack::Io {
                what,
                path,
                errno,
                text,
            } => UnpackError::Io {
                what: "unpack (in the user namespace)",
                path: format!("{path} ({what})"),
                source: errno.map_or_else(|| io::Error::other(text), io::Error::from_raw_os_error),
            },
        };
        Err(self.unpack_err(e, blob, tmp))
    }

    fn unpack_err(&self, e: UnpackError, blob: &Digest, tmp: &Path) -> StoreError {
        match e {
            UnpackError::Hostile(reason) => StoreError::HostileLayer {
                layer: blob.clone(),
                reason,
            },
            UnpackError::TooLarge { limit } => StoreError::LayerTooLarge {
                layer: blob.clone(),
                limit,
            },
            UnpackError::StoreFull => StoreError::StoreFull {
                limit: self.limits.max_store_bytes,
            },
            UnpackError::TooManyEntries { limit } => StoreError::TooManyEntries {
                layer: blob.clone(),
                limit,
            },
            UnpackError::Stream(source) => StoreError::CorruptLayer {
                layer: blob.clone(),
                source,
            },
            UnpackError::Io { what, path, source } => StoreError::Io {
                what,
                path: tmp.join(path),
                source,
            },
        }
    }

    fn finish_unpack(
        &self,
        tmp: &Path,
        stats: unpack::UnpackStats,
        diff_id: &Digest,
        dir: &Path,
    ) -> Result<(), StoreError> {
        // One syncfs for the whole tree rather than an fsync per file.
        let d = File::open(tmp).map_err(io_err("open", tmp))?;
        // SAFETY: syncfs on a descriptor `d` owns; no memory is passed.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
            return Err(io_err("sync", tmp)(io::Error::last_os_error()));
        }
        let info = LayerInfo {
            diff_id: diff_id.clone(),
            size: stats.bytes,
            entries: stats.entries,
            skipped_devices: stats.skipped_devices,
        };
        let json = serde_json::to_vec_pretty(&info).expect("layer info serialises");
        std::fs::rename(tmp, dir).map_err(io_err("rename into", dir))?;
        self.write_atomic(&self.layer_json(diff_id), &json, 0o600)
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn record_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", digest.hex()))
    }

    fn read_names(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        let p = self.root.join("names.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice::<NameIndex>(&b)
                .map(|i| i.names)
                .map_err(|source| StoreError::BadRecord { path: p, source }),
            Err(e) if not_found(&e) => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    fn write_names(&self, names: BTreeMap<String, Digest>) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(&NameIndex { names }).expect("names serialise");
        self.write_atomic(&self.root.join("names.json"), &json, 0o600)
    }

    fn names_of(names: &BTreeMap<String, Digest>, digest: &Digest) -> Vec<String> {
        names
            .iter()
            .filter(|(_, d)| *d == digest)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The record of `digest` (names from `names`), `None` if absent.
    fn read_record(
        &self,
        digest: &Digest,
        names: &BTreeMap<String, Digest>,
    ) -> Result<Option<Image>, StoreError> {
        let p = self.record_path(digest);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        let mut image: Image = serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::BadRecord { path: p, source })?;
        image.names = Self::names_of(names, digest);
        Ok(Some(image))
    }

    fn all_records(&self, names: &BTreeMap<String, Digest>) -> Result<Vec<Image>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(d) = format!("sha256:{hex}").parse::<Digest>() else {
                continue;
            };
            if let Some(img) = self.read_record(&d, names)? {
                out.push(img);
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Records an image whose blobs and layers are all present, and points
    /// `name` (canonical, may be `None` for a digest-only pull) at it,
    /// moving the name off any image it named before.
    pub fn record_image(
        &self,
        name: Option<&str>,
        manifest_digest: &Digest,
        config_digest: &Digest,
        layers: Vec<LayerRecord>,
    ) -> Result<Image, StoreError> {
        let _store = self.store_lock(Kind::Shared)?;
        let config = self.read_blob(config_digest)?;
        let blob: ConfigBlob =
            serde_json::from_slice(&config).map_err(|source| StoreError::BadRecord {
                path: self.blob_path(config_digest),
                source,
            })?;
        let mut size = 0u64;
        for l in &layers {
            let info = self
                .layer_info(&l.diff_id)?
                .ok_or_else(|| StoreError::MissingLayer(l.diff_id.clone()))?;
            size += info.size;
        }
        let _index = self.index_lock()?;
        let mut names = self.read_names()?;
        if let Some(n) = name {
            names.insert(n.to_string(), manifest_digest.clone());
        }
        let image = Image {
            digest: manifest_digest.clone(),
            names: Self::names_of(&names, manifest_digest),
            config_digest: config_digest.clone(),
            created: blob.created,
            config: blob.config.unwrap_or_default(),
            layers,
            size,
        };
        let json = serde_json::to_vec_pretty(&image).expect("image serialises");
        // The record first: a name never points at a missing record.
        self.write_atomic(&self.record_path(manifest_digest), &json, 0o600)?;
        if name.is_some() {
            self.write_names(names)?;
        }
        Ok(image)
    }

    /// Finds an image by canonical name (`docker.io/library/python:3.11`),
    /// by `name@sha256:…`, or by a digest or unique digest prefix (hex,
    /// 12+ digits). `None` when not in the store.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Option<Image>, StoreError> {
        let s = name_or_digest;
        let names = self.read_names()?;
        if let Some(d) = names.get(s) {
            return self.read_record(d, &names);
        }
        if let Some((_, d)) = s.rsplit_once('@') {
            return match d.parse::<Digest>() {
                Ok(d) => self.read_record(&d, &names),
                Err(_) => Ok(None),
            };
        }
        if let Ok(d) = s.parse::<Digest>() {
            return self.read_record(&d, &names);
        }
        let prefix = s.strip_prefix("sha256:").unwrap_or(s);
        if prefix.len() < 12
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Ok(None);
        }
        let dir = self.root.join("images");
        let mut found: Vec<Digest> = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if hex.starts_with(prefix) {
                if let Ok(d) = format!("sha256:{hex}").parse() {
                    found.push(d);
                }
            }
        }
        match found.as_slice() {
            [] => Ok(None),
            [d] => self.read_record(d, &names),
            _ => Err(StoreError::Ambiguous(s.to_string())),
        }
    }

    /// The unpacked layer directories of `image`, bottom first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.diff_id))
            .collect()
    }

    /// Every image, one line per name (untagged images once, tag `<none>`).
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let names = self.read_names()?;
        let mut out = Vec::new();
        for img in self.all_records(&names)? {
            let line = |repository: String, tag: String| ImageSummary {
                repository,
                tag,
                digest: img.digest.clone(),
                size: img.size,
                created: img.created.clone(),
            };
            if img.names.is_empty() {
                out.push(line("<none>".into(), "<none>".into()));
            }
            for n in &img.names {
                let (repo, tag) = split_name(n);
                out.push(line(repo, tag));
            }
        }
        out.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
        Ok(out)
    }

    /// The configuration blob of `image`, as stored (for `image inspect`).
    pub fn config_json(&self, image: &Image) -> Result<serde_json::Value, StoreError> {
        let bytes = self.read_blob(&image.config_digest)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadRecord {
            path: self.blob_path(&image.config_digest),
            source,
        })
    }

    /// Takes a lease on `image` for `holder` (a sandbox id). Fails with
    /// NotFound when a concurrent rmi removed it first.
    pub fn lease(&self, image: &Image, holder: &str) -> Result<Lease, StoreError> {
        if !valid_holder(holder) {
            return Err(StoreError::BadHolder(holder.to_string()));
        }
        // Shared: rmi/prune (exclusive) cannot run between the check that
        // the image exists and the lease being visible.
        let _store = self.store_lock(Kind::Shared)?;
        if !self.record_path(&image.digest).is_file() {
            return Err(StoreError::NotFound(image.digest.to_string()));
        }
        let path = self.root.join("leases").join(holder);
        loop {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_err("create lease", &path))?;
            if !lock::try_lock(&f, Kind::Exclusive).map_err(io_err("lock", &path))? {
                return Err(StoreError::LeaseTaken(holder.to_string()));
            }
            // A lease of the same holder being dropped may have unlinked
            // the file between our open and our lock: start again.
            let ours = f.metadata().map_err(io_err("inspect", &path))?;
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
                Ok(_) => continue,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(io_err("inspect", &path)(e)),
            }
            f.set_len(0)
                .and_then(|()| f.write_all(format!("{}\n", image.digest).as_bytes()))
                .map_err(io_err("write", &path))?;
            return Ok(Lease {
                file: Some(f),
                path,
            });
        }
    }

    /// Live leases (holder, image), oldest name first. Stale lease files
    /// (nobody holds their lock: the holder died) are removed. Called
    /// with the exclusive store lock held.
    fn live_leases(&self) -> Result<Vec<(String, Digest)>, StoreError> {
        let dir = self.root.join("leases");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let path = e.path();
            let f = match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(io_err("open lease", &path)(e)),
            };
            if lock::try_lock(&f, Kind::Shared).map_err(io_err("lock", &path))? {
                // Nobody holds it: stale.
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(io_err("remove stale lease", &path)(e)),
                }
                continue;
            }
            let mut s = String::new();
            let _ = (&f).read_to_string(&mut s);
            // A live holder mid-write: its image is unknown for an
            // instant; the store lock it took keeps rmi/prune out then, so
            // an unreadable live lease is only a corrupt one.
            if let Ok(d) = s.trim().parse::<Digest>() {
                out.push((e.file_name().to_string_lossy().into_owned(), d));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a layer (json first: the directory is then an incomplete
    /// layer, never a complete one missing files). Returns its size.
    fn remove_layer(&self, diff_id: &Digest) -> Result<u64, StoreError> {
        let size = self
            .layer_info(diff_id)
            .ok()
            .flatten()
            .map_or(0, |i| i.size);
        let json = self.layer_json(diff_id);
        match std::fs::remove_file(&json) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(io_err("remove", &json)(e)),
        }
        let dir = self.layer_dir(diff_id);
        self.remove_tree(&dir).map_err(io_err("remove", &dir))?;
        Ok(size)
    }

    fn remove_blob(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let p = self.blob_path(digest);
        let len = match std::fs::symlink_metadata(&p) {
            Ok(m) => m.len(),
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("inspect", &p)(e)),
        };
        std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
        Ok(Some(len))
    }

    fn remove_record(&self, digest: &Digest) -> Result<(), StoreError> {
        let p = self.record_path(digest);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(io_err("remove", &p)(e)),
        }
    }

    /// `stockade rmi`: removes `name` (a name, or a digest to remove the
    /// image with all its names); the image goes when no name is left, and
    /// then its layers and blobs that no other image or live lease uses.
    /// An image a live sandbox uses is refused (`InUse`) unless `force`
    /// (then only the name goes; the layers stay until prune).
    pub fn remove(&self, name: &str, force: bool) -> Result<Removed, StoreError> {
        let _store = self.store_lock(Kind::Exclusive)?;
        let _index = self.index_lock()?;
        let mut names = self.read_names()?;
        let (image, untag) = if let Some(d) = names.get(name).cloned() {
            let img = self
                .read_record(&d, &names)?
                .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
            (img, vec![name.to_string()])
        } else {
            let img = self
                .resolve(name)?
                .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
            let all = img.names.clone();
            (img, all)
        };
        let leases = self.live_leases()?;
        let holder = leases
            .iter()
            .find(|(_, d)| *d == image.digest)
            .map(|(h, _)| h.clone());
        let left = image.names.iter().filter(|n| !untag.contains(n)).count();
        if left == 0 && !force {
            if let Some(holder) = &holder {
                return Err(StoreError::InUse {
                    name: name.to_string(),
                    holder: holder.clone(),
                });
            }
        }
        let mut removed = Removed::default();
        for n in &untag {
            names.remove(n);
            removed.untagged.push(n.clone());
        }
        if !untag.is_empty() {
            self.write_names(names.clone())?;
        }
        if left > 0 || holder.is_some() {
            return Ok(removed);
        }
        self.remove_record(&image.digest)?;
        removed.images.push(image.digest.clone());
        let mut refs = Refs::default();
        for img in self.all_records(&names)? {
            refs.add(&img);
        }
        let mut mine = Refs::default();
        mine.add(&image);
        for l in &mine.layers {
            if !refs.layers.contains(l) && self.layer_dir(l).exists() {
                removed.bytes += self.remove_layer(l)?;
                removed.layers.push(l.clone());
            }
        }
        for b in &mine.blobs {
            if !refs.blobs.contains(b) {
                if let Some(len) = self.remove_blob(b)? {
                    removed.bytes += len;
                    removed.blobs.push(b.clone());
                }
            }
        }
        Ok(removed)
    }

    /// `stockade image prune`: layers, blobs and untagged images that no
    /// tagged image and no live lease uses; and leftovers in `tmp/`.
    pub fn prune(&self) -> Result<Removed, StoreError> {
        let _store = self.store_lock(Kind::Exclusive)?;
        let _index = self.index_lock()?;
        let names = self.read_names()?;
        let leased: BTreeSet<Digest> = self.live_leases()?.into_iter().map(|(_, d)| d).collect();
        let mut removed = Removed::default();
        let mut refs = Refs::default();
        for img in self.all_records(&names)? {
            if img.names.is_empty() && !leased.contains(&img.digest) {
                self.remove_record(&img.digest)?;
                removed.images.push(img.digest);
            } else {
                refs.add(&img);
            }
        }
        // Layers: complete ones (json) and leftovers (a directory alone).
        let ldir = self.root.join("layers");
        let mut layers = BTreeSet::new();
        for e in std::fs::read_dir(&ldir).map_err(io_err("read", &ldir))? {
            let e = e.map_err(io_err("read", &ldir))?;
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            let hex = n.strip_suffix(".json").unwrap_or(n);
            if let Ok(d) = format!("sha256:{hex}").parse::<Digest>() {
                layers.insert(d);
            }
        }
        for l in layers {
            if !refs.layers.contains(&l) {
                let complete = self.has_layer(&l);
                removed.bytes += self.remove_layer(&l)?;
                if complete {
                    removed.layers.push(l);
                }
            }
        }
        let bdir = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&bdir).map_err(io_err("read", &bdir))? {
            let e = e.map_err(io_err("read", &bdir))?;
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
            else {
                continue;
            };
            if !refs.blobs.contains(&d) {
                if let Some(len) = self.remove_blob(&d)? {
                    removed.bytes += len;
                    removed.blobs.push(d);
                }
            }
        }
        // Every writer holds the shared store lock: nothing in tmp/ or
        // locks/ is in use now.
        for sub in ["tmp", "locks"] {
            let dir = self.root.join(sub);
            for e in std::fs::read_dir(&dir).map_err(io_err("read", &dir))? {
                let e = e.map_err(io_err("read", &dir))?;
                let p = e.path();
                self.remove_tree(&p).map_err(io_err("remove", &p))?;
            }
        }
        Ok(removed)
    }

    /// Bytes the store holds (blobs + layers).
    pub fn usage(&self) -> Result<u64, StoreError> {
        self.usage_unlocked()
    }

    fn usage_unlocked(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let bdir = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&bdir).map_err(io_err("read", &bdir))? {
            let e = e.map_err(io_err("read", &bdir))?;
            match e.metadata() {
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
        let ldir = self.root.join("layers");
        for e in std::fs::read_dir(&ldir).map_err(io_err("read", &ldir))? {
            let e = e.map_err(io_err("read", &ldir))?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(d) = format!("sha256:{hex}").parse::<Digest>() {
                if let Some(info) = self.layer_info(&d)? {
                    total += info.size;
                }
            }
        }
        Ok(total)
    }
}

impl Lease {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            // Only our own file: a holder that re-leased under the same
            // name after a crash owns the new one.
            let ours = f.metadata().ok();
            let there = std::fs::symlink_metadata(&self.path).ok();
            if let (Some(a), Some(b)) = (ours, there) {
                if a.ino() == b.ino() && a.dev() == b.dev() {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
            // Closing the file releases the lock.
            drop(f);
        }
    }
}
