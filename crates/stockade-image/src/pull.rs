//! Bringing an image into the store: resolve the manifest (an index is
//! resolved to this host's platform), fetch config and layers (each
//! verified), unpack layers, record the image.
//!
//! CONTRACT (skeleton; filled by the registry work).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::Source;
use crate::store::{Image, Store, StoreError};

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
    #[error("cannot read {path}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pulls `source` into `store`. Layers already in the store are not
/// fetched again; concurrent pulls of one layer do the work once.
pub fn pull(
    store: &Store,
    source: &Source,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Image, PullError> {
    let _ = (store, source, opts, progress);
    unimplemented!("pull")
}

/// `--pull` for a sandbox: finds `name` in the store, pulling it as
/// `policy` says. Local sources (`oci:…`) are always read again unless
/// already recorded under their store name.
pub fn ensure(
    store: &Store,
    name: &str,
    policy: PullPolicy,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Image, PullError> {
    let _ = (store, name, policy, opts, progress);
    unimplemented!("pull")
}
