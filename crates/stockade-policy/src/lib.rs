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
            tmp_size: ByteSize::gib(1),
            ro_bind: Vec::new(),
            bind: Vec::new(),
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
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Extra environment; the host environment is never passed through.
    pub env: BTreeMap<String, String>,
    /// Host name inside the sandbox.
    pub hostname: String,
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            root: false,
            cwd: "/workspace".into(),
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
        let p = &self.process;
        if !p.cwd.starts_with('/') || p.cwd.contains('\0') {
            return Err(ValidationError::Cwd(p.cwd.clone()));
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

#[cfg(test)]
mod tests;
