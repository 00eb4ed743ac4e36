//! Bringing an image into the store: resolve the manifest (an index is
//! resolved to this host's platform), fetch config and layers (each
//! verified), unpack layers, record the image.
//!
//! The whole pull holds the store's shared lock (`Store::begin_pull`), so
//! no `rmi`/`prune` runs under it. The config blob comes first (its
//! `rootfs.diff_ids` key the unpacked layers); a layer whose unpacked
//! directory exists is neither downloaded nor unpacked again, one whose
//! blob is present is only unpacked. Layers are fetched one after another.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::ConfigBlob;
use crate::digest::Digest;
use crate::manifest::{self, ImageManifest, Manifest};
use crate::platform::{self, Platform};
use crate::reference::Source;
use crate::registry::{Client, Fetched};
use crate::source::{DockerArchive, Fetch, OciLayout, RegistrySource, Top};
use crate::store::{Image, LayerRecord, Store, StoreError};

/// `--pull missing|always|never`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    #[default]
    Missing,
    Always,
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!(
                "{s:?} is not a pull policy: use missing, always or never"
            )),
        }
    }
}

/// How to reach registries. Everything comes from the caller (the CLI
/// reads files and flags; this crate reads no environment).
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `--creds USER:PASSWORD`, for every registry of this pull.
    pub creds: Option<(String, String)>,
    /// Auth files to read `auths` from, first match wins
    /// (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `~/.docker/config.json`).
    pub auth_files: Vec<PathBuf>,
    /// Extra CA certificates (PEM files) trusted besides the system's.
    pub extra_ca: Vec<PathBuf>,
    /// Registries (`host[:port]`) reached over plain HTTP (and HTTPS
    /// without verification). Loopback registries are always allowed
    /// plain HTTP.
    pub insecure: Vec<String>,
    /// Mirrors per registry (`docker.io` → [`mirror.local:5000`]), tried in
    /// order before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// `os/arch[/variant]`; default: this host's (`linux/amd64`, …).
    pub platform: Option<String>,
}

/// Progress of a pull, for bars and SSE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Resolved the manifest: its digest and the layers to fetch
    /// (digest, compressed size, already present).
    Resolved {
        digest: Digest,
        layers: Vec<(Digest, u64, bool)>,
    },
    /// Bytes of a layer blob downloaded so far.
    Downloading {
        layer: Digest,
        done: u64,
        total: u64,
    },
    /// A layer is being unpacked.
    Unpacking { layer: Digest },
    /// A layer is complete (downloaded, verified, unpacked).
    LayerDone { layer: Digest },
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] crate::reference::RefError),
    #[error("image {0} not found in its registry (no such repository or tag)")]
    NotFound(String),
    #[error("{registry} refused the credentials{hint}")]
    Unauthorized { registry: String, hint: String },
    #[error("{registry} asks for credentials for {repository} (or it has no such repository): give --creds USER:PASSWORD, or log in to {login} (docker/podman login writes the auth file)")]
    NeedsCredentials {
        registry: String,
        repository: String,
        login: String,
    },
    #[error("cannot reach registry {registry}")]
    Unreachable {
        registry: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("registry {registry} answered {status} for {url}")]
    Status {
        registry: String,
        status: u16,
        url: String,
    },
    #[error("image {image} has no manifest for platform {platform} (it has: {available})")]
    NoPlatform {
        image: String,
        platform: String,
        available: String,
    },
    #[error("media type {0:?} is not supported")]
    MediaType(String),
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{registry} would be reached over plain HTTP; list it with --insecure-registry if that is intended")]
    Insecure { registry: String },
    #[error("the TLS certificate of {registry} is not trusted; give its CA with --registry-ca, or list it with --insecure-registry")]
    Untrusted {
        registry: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what} does not match its digest {expected}: its content hashes to {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{source_name} has no image {tag:?} (it has: {available})")]
    NoTag {
        source_name: String,
        tag: String,
        available: String,
    },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot read {path}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Bytes between two `Progress::Downloading` reports.
const PROGRESS_STEP: u64 = 256 << 10;
/// Indexes of indexes deeper than this are refused.
const MAX_DEPTH: usize = 4;

/// Follows `src`'s top manifest through indexes (choosing `want`) to an
/// image manifest.
pub(crate) fn resolve(
    src: &mut dyn Fetch,
    want: &Platform,
) -> Result<(Fetched, ImageManifest), PullError> {
    let image = src.describe();
    let mut node = src.top()?;
    for _ in 0..MAX_DEPTH {
        node = match node {
            Top::Index(idx) => {
                let d = platform::choose(&idx, want, &image)?;
                Top::Manifest(src.manifest(d)?)
            }
            Top::Manifest(f) => {
                let what = format!("manifest {} of {image}", f.digest);
                match manifest::parse(&f.bytes, f.media_type.as_deref(), &what)? {
                    Manifest::Image(m) => return Ok((f, m)),
                    Manifest::Index(idx) => Top::Index(idx),
                }
            }
        };
    }
    Err(PullError::Malformed {
        what: format!("image {image}"),
        reason: format!("its indexes nest deeper than {MAX_DEPTH}"),
    })
}

fn open_source(source: &Source, opts: &PullOptions) -> Result<Box<dyn Fetch>, PullError> {
    Ok(match source {
        Source::Registry(r) => Box::new(RegistrySource {
            reference: r.clone(),
            client: Client::new(opts)?,
        }),
        Source::OciDir { path, tag } => Box::new(OciLayout::dir(path, tag.clone())?),
        Source::OciArchive { path, tag } => Box::new(OciLayout::archive(path, tag.clone())?),
        Source::DockerArchive { path, name } => Box::new(DockerArchive::open(path, name.clone())?),
    })
}

/// Copies blob `digest` (of `size` bytes) from `src` into the store,
/// reporting progress every [`PROGRESS_STEP`] bytes (and at the end).
fn fetch_blob(
    store: &Store,
    src: &mut dyn Fetch,
    digest: &Digest,
    size: u64,
    report: &mut dyn FnMut(u64),
) -> Result<(), PullError> {
    let mut blob = src.blob(digest)?;
    let mut last = 0u64;
    store.put_blob(digest, Some(size), &mut blob.reader, &mut |done| {
        if done >= last + PROGRESS_STEP || done == size {
            last = done;
            report(done);
        }
    })?;
    Ok(())
}

/// Pulls `source` into `store`. Layers already in the store are not
/// fetched again; concurrent pulls of one layer do the work once.
pub fn pull(
    store: &Store,
    source: &Source,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Image, PullError> {
    let want = match &opts.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let mut src = open_source(source, opts)?;
    let _guard = store.begin_pull()?;
    let (top, m) = resolve(&mut *src, &want)?;
    let image = src.describe();

    if !store.has_blob(&m.config.digest) {
        fetch_blob(
            store,
            &mut *src,
            &m.config.digest,
            m.config.size,
            &mut |_| {},
        )?;
    }
    let config_bytes = store.read_blob(&m.config.digest)?;
    let config: ConfigBlob =
        serde_json::from_slice(&config_bytes).map_err(|e| PullError::Malformed {
            what: format!("config {} of {image}", m.config.digest),
            reason: e.to_string(),
        })?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != m.layers.len() {
        return Err(PullError::Malformed {
            what: format!("image {image}"),
            reason: format!(
                "its manifest lists {} layers but its config {} (rootfs.diff_ids)",
                m.layers.len(),
                diff_ids.len()
            ),
        });
    }
    if let (Some(os), Some(arch)) = (&config.os, &config.architecture) {
        if !os.is_empty() && !arch.is_empty() {
            let have = Platform::of(os, arch, None);
            // The config rarely names a variant: compare os and arch.
            if have.os != want.os || have.arch != want.arch {
                return Err(PullError::NoPlatform {
                    image,
                    platform: want.to_string(),
                    available: have.to_string(),
                });
            }
        }
    }

    let present: Vec<bool> = diff_ids
        .iter()
        .map(|d| store.layer_dir(d).is_dir())
        .collect();
    progress(&Progress::Resolved {
        digest: top.digest.clone(),
        layers: m
            .layers
            .iter()
            .zip(&present)
            .map(|(l, p)| (l.digest.clone(), l.size, *p))
            .collect(),
    });
    if !store.has_blob(&top.digest) {
        store.put_blob(
            &top.digest,
            Some(top.bytes.len() as u64),
            &mut &top.bytes[..],
            &mut |_| {},
        )?;
    }

    let mut records = Vec::with_capacity(m.layers.len());
    for ((layer, diff_id), present) in m.layers.iter().zip(diff_ids).zip(present) {
        if !present {
            if !store.has_blob(&layer.digest) {
                let size = layer.size;
                fetch_blob(store, &mut *src, &layer.digest, size, &mut |done| {
                    progress(&Progress::Downloading {
                        layer: layer.digest.clone(),
                        done,
                        total: size,
                    })
                })?;
            }
            progress(&Progress::Unpacking {
                layer: layer.digest.clone(),
            });
            store.unpack_layer(&layer.digest, &layer.media_type, diff_id)?;
        }
        progress(&Progress::LayerDone {
            layer: layer.digest.clone(),
        });
        records.push(LayerRecord {
            blob: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            diff_id: diff_id.clone(),
            size: layer.size,
        });
    }
    let name = source.store_name();
    Ok(store.record_image(name.as_deref(), &top.digest, &m.config.digest, records)?)
}

/// Whether `name` reads as an image id: `sha256:<hex>` or 12 to 64 hex
/// digits.
fn looks_like_id(name: &str) -> bool {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    (12..=64).contains(&hex.len()) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `--pull` for a sandbox: finds `name` in the store, pulling it as
/// `policy` says. `name` may also be the digest or id (12+ hex digits) of
/// an image in the store. Local sources (`oci:…`) are read again unless
/// already recorded under their store name.
pub fn ensure(
    store: &Store,
    name: &str,
    policy: PullPolicy,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Image, PullError> {
    if looks_like_id(name) {
        if let Some(img) = store.resolve(name)? {
            return Ok(img);
        }
        if name.starts_with("sha256:") {
            return Err(StoreError::NotFound(name.to_string()).into());
        }
    }
    let source = Source::parse(name)?;
    let key = match &source {
        Source::Registry(r) => Some(r.canonical()),
        other => other.store_name(),
    };
    let stored = match &key {
        Some(k) => store.resolve(k)?,
        None => None,
    };
    match (policy, stored) {
        (PullPolicy::Missing | PullPolicy::Never, Some(img)) => Ok(img),
        (PullPolicy::Never, None) => {
            Err(StoreError::NotFound(key.unwrap_or_else(|| name.to_string())).into())
        }
        _ => pull(store, &source, opts, progress),
    }
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
