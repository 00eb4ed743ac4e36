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
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;
use crate::digest::Digest;

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
}

impl Store {
    /// Opens (creating if needed, 0700 root) the store at `root`.
    pub fn open(root: &Path, limits: StoreLimits) -> Result<Store, StoreError> {
        let _ = (root, limits);
        unimplemented!("store")
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

    /// Takes the shared store lock for a pull (blocks while rmi/prune run).
    pub fn begin_pull(&self) -> Result<PullGuard, StoreError> {
        unimplemented!("store")
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        let _ = digest;
        unimplemented!("store")
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
        let _ = (digest, size, reader, progress);
        unimplemented!("store")
    }

    /// A small blob (manifest, config) read whole and re-verified.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let _ = digest;
        unimplemented!("store")
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
        let _ = (blob, media_type, diff_id);
        unimplemented!("store")
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
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
        let _ = (name, manifest_digest, config_digest, layers);
        unimplemented!("store")
    }

    /// Finds an image by canonical name (`docker.io/library/python:3.11`),
    /// by `name@sha256:…`, or by a digest or unique digest prefix (hex,
    /// 12+ digits). `None` when not in the store.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Option<Image>, StoreError> {
        let _ = name_or_digest;
        unimplemented!("store")
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
        unimplemented!("store")
    }

    /// The configuration blob of `image`, as stored (for `image inspect`).
    pub fn config_json(&self, image: &Image) -> Result<serde_json::Value, StoreError> {
        let _ = image;
        unimplemented!("store")
    }

    /// Takes a lease on `image` for `holder` (a sandbox id). Fails with
    /// NotFound when a concurrent rmi removed it first.
    pub fn lease(&self, image: &Image, holder: &str) -> Result<Lease, StoreError> {
        let _ = (image, holder);
        unimplemented!("store")
    }

    /// `stockade rmi`: removes `name` (a name, or a digest to remove the
    /// image with all its names); the image goes when no name is left, and
    /// then its layers and blobs that no other image or live lease uses.
    /// An image a live sandbox uses is refused (`InUse`) unless `force`
    /// (then only the name goes; the layers stay until prune).
    pub fn remove(&self, name: &str, force: bool) -> Result<Removed, StoreError> {
        let _ = (name, force);
        unimplemented!("store")
    }

    /// `stockade image prune`: layers, blobs and untagged images that no
    /// tagged image and no live lease uses; and leftovers in `tmp/`.
    pub fn prune(&self) -> Result<Removed, StoreError> {
        unimplemented!("store")
    }

    /// Bytes the store holds (blobs + layers).
    pub fn usage(&self) -> Result<u64, StoreError> {
        unimplemented!("store")
    }
}

impl Lease {
    pub fn path(&self) -> &Path {
        &self.path
    }
}
