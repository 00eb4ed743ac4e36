//! Image names and sources.
//!
//! CONTRACT (skeleton; filled by the registry work):
//! `Reference::parse("python:3.11")` → registry `docker.io`, repository
//! `library/python`, tag `3.11`; `localhost:5000/a/b@sha256:…` keeps its
//! registry; no tag → `latest` (unless a digest is given). `canonical()`
//! prints `docker.io/library/python:3.11` (or `…@sha256:…`).
//! `Source::parse` adds `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
//! `docker-archive:FILE[:NAME]`; anything else is a registry reference
//! (an optional `docker://` prefix is accepted).

use std::path::PathBuf;

use crate::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `ghcr.io`.
    pub registry: String,
    /// `library/python`.
    pub repository: String,
    /// `None` only when `digest` is given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("{input:?} is not an image reference: {reason}")]
    Invalid { input: String, reason: String },
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RefError> {
        let _ = s;
        unimplemented!("reference")
    }

    /// `registry/repository:tag` or `registry/repository@digest`.
    pub fn canonical(&self) -> String {
        unimplemented!("reference")
    }

    /// `registry/repository`, for `stockade images`' REPOSITORY column.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Registry(Reference),
    /// An OCI image layout directory, and the `org.opencontainers.image.ref.name` to pick.
    OciDir {
        path: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    /// What `docker save` writes; `name` picks one of its `RepoTags`.
    DockerArchive {
        path: PathBuf,
        name: Option<String>,
    },
}

impl Source {
    pub fn parse(s: &str) -> Result<Source, RefError> {
        let _ = s;
        unimplemented!("source")
    }

    /// The name a pull of this source records in the store (`None`: by
    /// digest only). Local sources are named `localhost/<file stem>:<tag>`
    /// unless they carry a name of their own.
    pub fn store_name(&self) -> Option<String> {
        unimplemented!("source")
    }
}
