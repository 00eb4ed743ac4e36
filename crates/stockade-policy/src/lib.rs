//! The sandbox spec: what a stockade sandbox is allowed to see and use.
//!
//! A [`Policy`] is plain data. It is read from TOML (or JSON, through serde)
//! with unknown keys rejected, overridden field by field by command-line
//! flags, and then checked by [`Policy::validate`], which names the offending
//! key and the expected form. Nothing here makes a system call; the crates
//! that enforce a policy depend on this one.

mod mounts;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mounts::{BindMount, MountError};
pub use units::{ByteSize, Cpus, Span, UnitError};

/// Directories the sandbox owns; a user mount may not be placed on or
/// under them, because stockade mounts its own filesystems there.
pub const RESERVED_MOUNT_POINTS: &[&str] = &["/proc", "/dev", "/sys", "/etc", "/tmp"];

/// The whole policy of one sandbox. Every field has the default a user gets
/// when the policy file and the flags say nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub filesystem: FilesystemPolicy,
    pub limits: Limits,
    pub process: ProcessPolicy,
    pub network: NetworkPolicy,
}

/// What the sandbox sees of files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemPolicy {
    /// Host directory bound read-write at `/workspace`; an empty scratch
    /// directory when absent.
    pub workspace: Option<PathBuf>,
    /// Give the sandbox a writable copy-on-write root that is thrown away.
    pub overlay_root: bool,
    /// An OCI image (`python:3.11`, `localhost:5000/x@sha256:…`,
    /// `oci:DIR[:TAG]`) whose layers are the sandbox's root instead of the
    /// host's `/usr`. Its root is always copy-on-write (`overlay_root` is
    /// then implied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When to pull `image` from its registry.
    pub pull: Pull,
    /// Size cap of the `/tmp` tmpfs.
    pub tmp_size: ByteSize,
    /// Extra read-only bind mounts, `"SRC:DST"`.
    pub ro_bind: Vec<BindMount>,
    /// Extra read-write bind mounts, `"SRC:DST"`.
    pub bind: Vec<BindMount>,
}

impl Default for FilesystemPolicy {
    fn default() -> Self {
        FilesystemPolicy {
            workspace: None,
            overlay_root: false,
            image: None,
            pull: Pull::Missing,
            tmp_size: ByteSize::gib(1),
            ro_bind: Vec::new(),
            bind: Vec::new(),
        }
    }
}

/// When an image is pulled (`--pull`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Only when the store does not have it.
    #[default]
    Missing,
    /// Every time (the tag may have moved).
    Always,
    /// Never: the image must be in the store.
    Never,
}

impl std::str::FromStr for Pull {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing" => Ok(Pull::Missing),
            "always" => Ok(Pull::Always),
            "never" => Ok(Pull::Never),
            _ => Err(format!(
                "{s:?} is not a pull policy: use missing, always or never"
            )),
        }
    }
}

/// Resource caps. Defaults are generous enough for a coding agent's builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub cpus: Cpus,
    pub memory: ByteSize,
    pub pids: u64,
    /// Bytes the sandbox may write across its scratch workspace, home and
    /// overlay (and growth of a bound workspace).
    pub disk: ByteSize,
    pub timeout: Span,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpus: Cpus(4.0),
            memory: ByteSize::gib(16),
            pids: 4096,
            disk: ByteSize::gib(50),
            timeout: Span::secs(4 * 3600),
        }
    }
}

/// How the workload is started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessPolicy {
    /// Run as root inside the sandbox (still unprivileged on the host).
    pub root: bool,
    /// Run as this user inside: `NAME`, `UID`, `NAME:GROUP` or `UID:GID`,
    /// names looked up in the sandbox's `/etc/passwd` and `/etc/group`
    /// (the image's, with an image). Default: `agent` (uid 1000), or the
    /// image's user (root when it names none), as Docker does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory inside the sandbox. Default: the image's
    /// `WorkingDir` when it has one, else `/workspace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment; the host environment is never passed through.
    pub env: BTreeMap<String, String>,
    /// Host name inside the sandbox.
    pub hostname: String,
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            root: false,
            user: None,
            cwd: None,
            env: BTreeMap::new(),
            hostname: "sandbox".into(),
        }
    }
}

mod network;
pub use network::*;

/// Reading a policy file failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `message` is the TOML parser's own, several lines long: where, the
    /// line itself with a caret under the fault, and what is wrong. It is
    /// kept whole so the caret stays aligned.
    #[error("policy file {path} is not valid:\n{message}")]
    Parse { path: PathBuf, message: String },
    // A ValidationError is a sentence naming the key, so it is part of this
    // message rather than a separate cause.
    #[error("policy file {path}: {error}")]
    Invalid {
        path: PathBuf,
        error: ValidationError,
    },
}

/// A policy that parsed but asks for something impossible or unsafe. The
/// message names the key (as in the policy file) and the expected form.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("limits.cpus must be a number of CPUs between 0.01 and 1024, got {0}")]
    Cpus(f64),
    #[error("limits.memory must be at least 4M, got {0}")]
    Memory(ByteSize),
    #[error("limits.pids must be at least 2 (the sandbox's init and one process), got {0}")]
    Pids(u64),
    #[error("limits.disk must be at least 1M, got {0}")]
    Disk(ByteSize),
    #[error("limits.timeout must be between 1ms and 365d, got {0}")]
    Timeout(Span),
    #[error("filesystem.tmp_size must be at least 1M, got {0}")]
    TmpSize(ByteSize),
    #[error("filesystem.workspace must be an absolute host path, got {0:?}")]
    Workspace(PathBuf),
    // The mount's own problem is the rest of this sentence, not a separate
    // cause: callers put `to_string()` of a ValidationError in front of users.
    #[error("filesystem.{key}: {error}")]
    Mount {
        key: &'static str,
        error: MountError,
    },
    #[error("process.cwd must be an absolute path inside the sandbox, got {0:?}")]
    Cwd(String),
    #[error("process.user must be NAME, UID, NAME:GROUP or UID:GID, got {0:?}")]
    User(String),
    #[error(
        "process.root and process.user ({0:?}) both choose the user; give one (root is user \"0\")"
    )]
    RootAndUser(String),
    #[error("filesystem.image must name an image (e.g. \"python:3.11\"), got {0:?}")]
    Image(String),
    #[error("process.env: variable name {0:?} is not valid (letters, digits and '_', not starting with a digit)")]
    EnvName(String),
    #[error("process.env: the value of {0} contains a NUL byte")]
    EnvValue(String),
    #[error("process.hostname must be 1-63 letters, digits or '-', got {0:?}")]
    Hostname(String),
    #[error(transparent)]
    Network(#[from] NetworkValidationError),
}

impl Policy {
    /// Parses TOML text. Unknown keys and values of the wrong form are
    /// errors that name the key.
    pub fn from_toml_str(text: &str) -> Result<Policy, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let policy = Policy::from_toml_str(&text).map_err(|e| LoadError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        policy.validate().map_err(|error| LoadError::Invalid {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(policy)
    }

    /// The policy as TOML, as `stockade` would read it back.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a policy always serialises")
    }

    /// Checks every value against its allowed range. Called after flags
    /// have been applied, so it sees the policy that will run.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let l = &self.limits;
        if !(0.01..=1024.0).contains(&l.cpus.0) {
            return Err(ValidationError::Cpus(l.cpus.0));
        }
        if l.memory.0 < 4 * ByteSize::MIB {
            return Err(ValidationError::Memory(l.memory));
        }
        if l.pids < 2 {
            return Err(ValidationError::Pids(l.pids));
        }
        if l.disk.0 < ByteSize::MIB {
            return Err(ValidationError::Disk(l.disk));
        }
        let t = l.timeout.0;
        if t.as_millis() < 1 || t.as_secs() > 365 * 86400 {
            return Err(ValidationError::Timeout(l.timeout));
        }
        let fs = &self.filesystem;
        if fs.tmp_size.0 < ByteSize::MIB {
            return Err(ValidationError::TmpSize(fs.tmp_size));
        }
        if let Some(ws) = &fs.workspace {
            if !ws.is_absolute() {
                return Err(ValidationError::Workspace(ws.clone()));
            }
        }
        for (key, list) in [("ro_bind", &fs.ro_bind), ("bind", &fs.bind)] {
            for m in list {
                m.validate()
                    .map_err(|error| ValidationError::Mount { key, error })?;
            }
        }
        if let Some(image) = &fs.image {
            let bad = image.is_empty()
                || image.len() > 4096
                || image.chars().any(|c| c.is_whitespace() || c.is_control());
            if bad {
                return Err(ValidationError::Image(image.clone()));
            }
        }
        let p = &self.process;
        if let Some(cwd) = &p.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(ValidationError::Cwd(cwd.clone()));
            }
        }
        if let Some(user) = &p.user {
            if !valid_user(user) {
                return Err(ValidationError::User(user.clone()));
            }
            if p.root {
                return Err(ValidationError::RootAndUser(user.clone()));
            }
        }
        for (k, v) in &p.env {
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ValidationError::EnvName(k.clone()));
            }
            if v.contains('\0') {
                return Err(ValidationError::EnvValue(k.clone()));
            }
        }
        let h = &p.hostname;
        let host_ok = !h.is_empty()
            && h.len() <= 63
            && !h.starts_with('-')
            && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !host_ok {
            return Err(ValidationError::Hostname(h.clone()));
        }
        self.network.validate()?;
        Ok(())
    }
}

impl ProcessPolicy {
    /// The working directory: the policy's, else `image_default` (an
    /// image's `WorkingDir`), else `/workspace`.
    pub fn cwd_or<'a>(&'a self, image_default: Option<&'a str>) -> &'a str {
        self.cwd
            .as_deref()
            .or(image_default.filter(|d| !d.is_empty()))
            .unwrap_or(DEFAULT_CWD)
    }
}

/// The working directory when neither the policy nor an image names one.
pub const DEFAULT_CWD: &str = "/workspace";

/// `NAME`, `UID`, `NAME:GROUP` or `UID:GID`: each part a number or a
/// name of the characters account names use.
fn valid_user(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
    };
    match s.split_once(':') {
        Some((u, g)) => part(u) && part(g),
        None => part(s),
    }
}

#[cfg(test)]
mod tests;
