//! Image names and sources.
//!
//! `Reference::parse("python:3.11")` → registry `docker.io`, repository
//! `library/python`, tag `3.11`; `localhost:5000/a/b@sha256:…` keeps its
//! registry; no tag → `latest` (unless a digest is given). `canonical()`
//! prints `docker.io/library/python:3.11` (or `…@sha256:…`).
//! `Source::parse` adds `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
//! `docker-archive:FILE[:NAME]` (the path ends at the first `:`); anything
//! else is a registry reference (an optional `docker://` prefix is
//! accepted).
//!
//! The grammar is Docker's: the first `/`-separated component is a
//! registry when it holds a `.` or a `:`, is `localhost`, or has an
//! upper-case letter; repository components are lower-case
//! `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`; a tag is
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

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

fn invalid(input: &str, reason: impl Into<String>) -> RefError {
    RefError::Invalid {
        input: input.to_string(),
        reason: reason.into(),
    }
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RefError> {
        if s.is_empty() {
            return Err(invalid(s, "it is empty"));
        }
        if s.len() > 4096 {
            return Err(invalid(&s[..64], "it is longer than 4096 bytes"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let digest = d.parse::<Digest>().map_err(|e| invalid(s, e.to_string()))?;
                (n, Some(digest))
            }
            None => (s, None),
        };
        // The tag follows the last ':' after the last '/' (a ':' before it
        // is a registry's port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid(
                    s,
                    format!("tag {tag:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"),
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if is_registry(first) => (first, rest),
            _ => (DOCKER_HUB, name),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        if !valid_registry(registry) {
            return Err(invalid(
                s,
                format!(
                    "registry {registry:?} is not a host name or address with an optional port"
                ),
            ));
        }
        if path.is_empty() {
            return Err(invalid(s, "the repository name is empty"));
        }
        for component in path.split('/') {
            if component.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(invalid(s, "repository names must be lower case"));
            }
            if !valid_component(component) {
                return Err(invalid(
                    s,
                    format!("repository component {component:?} must be lower-case letters and digits, separated by '.', '_', '__' or '-'"),
                ));
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > 255 {
            return Err(invalid(s, "the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository:tag` or `registry/repository@digest` (both
    /// when both were given; the digest is what a pull fetches).
    pub fn canonical(&self) -> String {
        let mut s = self.repository_name();
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }

    /// `registry/repository`, for `stockade images`' REPOSITORY column.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What `/v2/<repo>/manifests/<ref>` is asked for: the digest when
    /// there is one, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

fn is_registry(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        // [v6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("x", Some(p)),
                None => return false,
            },
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
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

/// Transports of other tools that look like a registry name but are not.
const FOREIGN_TRANSPORTS: &[&str] = &[
    "containers-storage:",
    "docker-daemon:",
    "dir:",
    "ostree:",
    "sif:",
];

impl Source {
    pub fn parse(s: &str) -> Result<Source, RefError> {
        fn path_and_rest(s: &str, whole: &str) -> Result<(PathBuf, Option<String>), RefError> {
            let (path, rest) = match s.split_once(':') {
                Some((p, r)) => (p, Some(r)),
                None => (s, None),
            };
            if path.is_empty() {
                return Err(invalid(whole, "the path is empty"));
            }
            if rest == Some("") {
                return Err(invalid(
                    whole,
                    "nothing follows the ':' after the path (drop it, or give a tag)",
                ));
            }
            Ok((PathBuf::from(path), rest.map(str::to_string)))
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = path_and_rest(rest, s)?;
            return Ok(Source::OciDir { path, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = path_and_rest(rest, s)?;
            return Ok(Source::OciArchive { path, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, name) = path_and_rest(rest, s)?;
            if let Some(n) = &name {
                Reference::parse(n)?;
            }
            return Ok(Source::DockerArchive { path, name });
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(Source::Registry(Reference::parse(rest)?));
        }
        if let Some(t) = FOREIGN_TRANSPORTS.iter().find(|t| s.starts_with(*t)) {
            return Err(invalid(
                s,
                format!(
                    "the {:?} transport is not supported (use a registry name, oci:, oci-archive: or docker-archive:)",
                    t.trim_end_matches(':')
                ),
            ));
        }
        Ok(Source::Registry(Reference::parse(s)?))
    }

    /// The name a pull of this source records in the store (`None`: by
    /// digest only). Local sources are named `localhost/<file stem>:<tag>`
    /// (tag `latest` when none is given) unless they carry a name of their
    /// own: an OCI tag that is a whole reference (`example.com/a:1`), or the
    /// NAME of `docker-archive:FILE:NAME`.
    pub fn store_name(&self) -> Option<String> {
        match self {
            Source::Registry(r) if r.digest.is_some() => None,
            Source::Registry(r) => Some(r.canonical()),
            Source::OciDir { path, tag } | Source::OciArchive { path, tag } => {
                let tag = tag.as_deref().unwrap_or("latest");
                if tag.contains('/') {
                    if let Ok(r) = Reference::parse(tag) {
                        return Some(r.canonical());
                    }
                }
                let tag = if valid_tag(tag) { tag } else { "latest" };
                Some(format!("localhost/{}:{tag}", stem(path)))
            }
            Source::DockerArchive { path, name } => match name {
                Some(n) => Reference::parse(n).ok().map(|r| r.canonical()),
                None => Some(format!("localhost/{}:latest", stem(path))),
            },
        }
    }
}

/// A file's or directory's name as a repository component: lower case,
/// anything outside `[a-z0-9]` between words becomes `-`.
fn stem(path: &Path) -> String {
    let raw = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let raw = raw
        .strip_suffix(".tar")
        .or_else(|| raw.strip_suffix(".tar.gz"))
        .unwrap_or(&raw)
        .to_string();
    let mut out = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "image".to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references_get_dockers_defaults() {
        let cases: &[(&str, &str)] = &[
            ("python", "docker.io/library/python:latest"),
            ("python:3.11", "docker.io/library/python:3.11"),
            ("library/python:3.11", "docker.io/library/python:3.11"),
            ("docker.io/python", "docker.io/library/python:latest"),
            ("index.docker.io/python:3", "docker.io/library/python:3"),
            ("index.docker.io/a/b", "docker.io/a/b:latest"),
            ("user/app", "docker.io/user/app:latest"),
            ("ghcr.io/o/r/deep:v1.2-rc_3", "ghcr.io/o/r/deep:v1.2-rc_3"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t"),
            ("[::1]:5000/a:t", "[::1]:5000/a:t"),
            ("ab__c/x-y--z.w_v", "docker.io/ab__c/x-y--z.w_v:latest"),
        ];
        for (input, want) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.canonical(), *want, "{input}");
        }
        let r = Reference::parse(&format!("localhost:5000/x@{D}")).unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "x");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert_eq!(r.canonical(), format!("localhost:5000/x@{D}"));
        assert_eq!(r.manifest_ref(), D);
        let r = Reference::parse(&format!("python:3@{D}")).unwrap();
        assert_eq!(r.canonical(), format!("docker.io/library/python:3@{D}"));
        assert_eq!(r.manifest_ref(), D);
        let r = Reference::parse("python:3.11").unwrap();
        assert_eq!(r.repository_name(), "docker.io/library/python");
        assert_eq!(r.manifest_ref(), "3.11");
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("Python", "lower case"),
            ("docker.io/Library/x", "lower case"),
            ("x:", "tag"),
            ("x:-a", "tag"),
            ("x:.a", "tag"),
            ("x:a/b", "registry"),
            ("x@sha256:abc", "digest"),
            ("x@md5:00", "algorithm"),
            ("a//b", "component"),
            ("a/b/", "component"),
            ("-a", "component"),
            ("a-", "component"),
            ("a___b", "component"),
            ("a..b", "component"),
            ("host:port/x", "registry"),
            ("host:123456/x", "registry"),
            ("[::1/x", "registry"),
            ("localhost:5000/", "empty"),
            ("x y", "component"),
        ];
        for (input, want) in cases {
            let e = Reference::parse(input).expect_err(input).to_string();
            assert!(e.contains(want), "{input}: {e}");
        }
        let long_tag = format!("x:{}", "a".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        assert!(Reference::parse(&format!("x:{}", "a".repeat(128))).is_ok());
        let long_name = format!("{}/x", "a".repeat(260));
        assert!(Reference::parse(&long_name).is_err());
    }

    #[test]
    fn sources_parse_and_name_themselves() {
        assert_eq!(
            Source::parse("oci:/tmp/lay:v1").unwrap(),
            Source::OciDir {
                path: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("oci:rel/Dir").unwrap().store_name().unwrap(),
            "localhost/dir:latest"
        );
        assert_eq!(
            Source::parse("oci-archive:/x/My Image.tar:2")
                .unwrap()
                .store_name()
                .unwrap(),
            "localhost/my-image:2"
        );
        assert_eq!(
            Source::parse("oci:/x/l:example.com/a/b:1")
                .unwrap()
                .store_name()
                .unwrap(),
            "example.com/a/b:1"
        );
        assert_eq!(
            Source::parse("docker-archive:/x/b.tar:busybox:1.36").unwrap(),
            Source::DockerArchive {
                path: "/x/b.tar".into(),
                name: Some("busybox:1.36".into())
            }
        );
        assert_eq!(
            Source::parse("docker-archive:/x/b.tar:busybox:1.36")
                .unwrap()
                .store_name()
                .unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            Source::parse("docker-archive:/x/b.tar")
                .unwrap()
                .store_name()
                .unwrap(),
            "localhost/b:latest"
        );
        assert_eq!(
            Source::parse("docker://localhost:5000/a:b").unwrap(),
            Source::Registry(Reference::parse("localhost:5000/a:b").unwrap())
        );
        assert_eq!(
            Source::parse("python").unwrap().store_name().unwrap(),
            "docker.io/library/python:latest"
        );
        assert_eq!(
            Source::parse(&format!("python@{D}")).unwrap().store_name(),
            None
        );
        for bad in [
            "oci:",
            "oci::tag",
            "oci:/x:",
            "docker-archive:/x:Bad",
            "containers-storage:x",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }
}
