//! Extra bind mounts, written `SRC:DST` in flags and policy files.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::RESERVED_MOUNT_POINTS;

/// The host's system directories, bound read-only into every sandbox (or
/// its overlay's lower layers): a bind over or under one would replace the
/// programs and libraries the sandbox runs with.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// A host path made visible at a path inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub src: PathBuf,
    pub dst: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("expected \"SRC:DST\" with two absolute paths, got {0:?}")]
    Form(String),
    #[error("{0:?} must be an absolute path without \"..\"")]
    NotClean(PathBuf),
    #[error(
        "cannot mount over {dst:?}: {reserved} belongs to the sandbox; pick another destination"
    )]
    Reserved {
        dst: PathBuf,
        reserved: &'static str,
    },
    #[error(
        "cannot mount over {dst:?}: {system} holds the sandbox's system programs and libraries \
         (the host's, read-only); mount somewhere else, such as /mnt/NAME or /opt/NAME"
    )]
    System { dst: PathBuf, system: &'static str },
    #[error(
        "cannot mount over /workspace: it is the sandbox's workspace; to use a host directory \
         there, give it as the workspace (--workspace DIR, or `workspace` in the policy file)"
    )]
    Workspace,
}

impl BindMount {
    pub fn validate(&self) -> Result<(), MountError> {
        for p in [&self.src, &self.dst] {
            if !is_clean_absolute(p) {
                return Err(MountError::NotClean(p.clone()));
            }
        }
        if self.dst == Path::new("/") {
            return Err(MountError::Reserved {
                dst: self.dst.clone(),
                reserved: "/",
            });
        }
        for r in RESERVED_MOUNT_POINTS {
            if self.dst.starts_with(r) {
                return Err(MountError::Reserved {
                    dst: self.dst.clone(),
                    reserved: r,
                });
            }
        }
        for s in SYSTEM_DIRS {
            if self.dst.starts_with(s) {
                return Err(MountError::System {
                    dst: self.dst.clone(),
                    system: s,
                });
            }
        }
        if self.dst == Path::new("/workspace") {
            return Err(MountError::Workspace);
        }
        Ok(())
    }
}

/// Absolute and free of `..`, so a destination cannot climb out of the
/// sandbox's root while it is being assembled.
fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !p.as_os_str().as_encoded_bytes().contains(&0)
}

impl FromStr for BindMount {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (src, dst) = s
            .split_once(':')
            .ok_or_else(|| MountError::Form(s.to_string()))?;
        if src.is_empty() || dst.is_empty() {
            return Err(MountError::Form(s.to_string()));
        }
        let m = BindMount {
            src: PathBuf::from(src),
            dst: PathBuf::from(dst),
        };
        m.validate()?;
        Ok(m)
    }
}

impl fmt::Display for BindMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.src.display(), self.dst.display())
    }
}

impl Serialize for BindMount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BindMount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
