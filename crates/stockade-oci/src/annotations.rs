//! stockade's own policy through config.json annotations (podman's
//! `--annotation`, Kubernetes pod annotations through the CRI plugin):
//!
//! - `org.stockade.policy`: a policy TOML on the host, only from the
//!   allowed directory (`--policy-dir`, default [`DEFAULT_POLICY_DIR`]);
//!   the CLI reads it (this crate reads no policy files) and hands what
//!   applies to a container over as [`ContainerPolicy`];
//! - `org.stockade.net.allow-hosts`: comma-separated host names (the
//!   syntax of `--allow-host`); the container's network then goes through
//!   the egress filter in allowlist mode;
//! - `org.stockade.timeout`: a duration such as `30m`;
//! - `org.stockade.disk`: a size such as `2g`.
//!
//! Any other `org.stockade.*` key is refused: a key this runtime does not
//! act on would look like protection that is not there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stockade_policy::{ByteSize, HostPattern, NetMode, NetworkPolicy, Span};

pub const POLICY: &str = "org.stockade.policy";
pub const ALLOW_HOSTS: &str = "org.stockade.net.allow-hosts";
pub const TIMEOUT: &str = "org.stockade.timeout";
pub const DISK: &str = "org.stockade.disk";
/// Every key this runtime acts on.
pub const KNOWN: [&str; 4] = [POLICY, ALLOW_HOSTS, TIMEOUT, DISK];

/// Where `org.stockade.policy` files must live unless `--policy-dir` (or
/// `STOCKADE_OCI_POLICY_DIR`) says otherwise.
pub const DEFAULT_POLICY_DIR: &str = "/etc/stockade/oci-policies";

#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error(
        "annotation {key:?} is not one stockade-runc knows (it acts on {known}); \
         remove it rather than rely on it"
    )]
    Unknown { key: String, known: String },
    #[error("annotation {key}: {why}")]
    Value { key: &'static str, why: String },
    #[error(
        "annotation {POLICY}: {path} is not inside the allowed policy directory {dir} \
         (symlinks resolved); put the policy there or start stockade-runc with \
         --policy-dir"
    )]
    OutsideDir { path: PathBuf, dir: PathBuf },
    #[error("annotation {POLICY}: cannot resolve {path}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `org.stockade.*` annotations of a config, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    /// `org.stockade.policy` as given (not yet checked against the
    /// allowed directory: [`policy_path`] does that).
    pub policy: Option<PathBuf>,
    pub allow_hosts: Vec<HostPattern>,
    pub timeout: Option<Duration>,
    pub disk: Option<u64>,
}

/// Parses and checks the `org.stockade.*` annotations.
pub fn parse(map: &BTreeMap<String, String>) -> Result<Annotations, AnnotationError> {
    let mut a = Annotations::default();
    for (key, value) in map {
        if !key.starts_with("org.stockade.") {
            continue;
        }
        match key.as_str() {
            POLICY => {
                let p = PathBuf::from(value);
                if !p.is_absolute() {
                    return Err(AnnotationError::Value {
                        key: POLICY,
                        why: format!("expected an absolute path on the host, got {value:?}"),
                    });
                }
                a.policy = Some(p);
            }
            ALLOW_HOSTS => {
                for h in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    let p = h
                        .parse::<HostPattern>()
                        .map_err(|e| AnnotationError::Value {
                            key: ALLOW_HOSTS,
                            why: e.to_string(),
                        })?;
                    a.allow_hosts.push(p);
                }
                if a.allow_hosts.is_empty() {
                    return Err(AnnotationError::Value {
                        key: ALLOW_HOSTS,
                        why: "no host given: expected names like \"pypi.org,*.github.com\"".into(),
                    });
                }
            }
            TIMEOUT => {
                let s = value.parse::<Span>().map_err(|e| AnnotationError::Value {
                    key: TIMEOUT,
                    why: e.to_string(),
                })?;
                a.timeout = Some(s.duration());
            }
            DISK => {
                let s = value
                    .parse::<ByteSize>()
                    .map_err(|e| AnnotationError::Value {
                        key: DISK,
                        why: e.to_string(),
                    })?;
                a.disk = Some(s.0);
            }
            _ => {
                return Err(AnnotationError::Unknown {
                    key: key.clone(),
                    known: KNOWN.join(", "),
                })
            }
        }
    }
    Ok(a)
}

/// Resolves `path` (symlinks included) and checks that it lies inside
/// `dir` (also resolved): a policy elsewhere on the host is refused, so
/// a container's annotations cannot pick an arbitrary host file.
pub fn policy_path(path: &Path, dir: &Path) -> Result<PathBuf, AnnotationError> {
    let real = std::fs::canonicalize(path).map_err(|source| AnnotationError::Resolve {
        path: path.to_path_buf(),
        source,
    })?;
    let dir_real = std::fs::canonicalize(dir).map_err(|_| AnnotationError::OutsideDir {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
    })?;
    if real.starts_with(&dir_real) && real != dir_real && real.is_file() {
        Ok(real)
    } else {
        Err(AnnotationError::OutsideDir {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }
}

/// What of stockade's policy applies to one container: the direct keys
/// over the policy file's values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerPolicy {
    /// `None`: the engine's network as it made it (no policy asked).
    pub network: Option<NetworkPolicy>,
    pub timeout: Option<Duration>,
    pub disk: Option<u64>,
    /// Applied only where `linux.resources` sets none.
    pub memory: Option<u64>,
    /// Applied only where `linux.resources` sets none.
    pub pids: Option<u64>,
}

impl ContainerPolicy {
    /// Combines a loaded policy file (if any) with the direct keys, which
    /// win where both speak.
    pub fn combine(
        file: Option<&stockade_policy::Policy>,
        a: &Annotations,
    ) -> Result<ContainerPolicy, AnnotationError> {
        let mut c = ContainerPolicy::default();
        if let Some(p) = file {
            c.network = Some(p.network.clone());
            c.timeout = Some(p.limits.timeout.duration());
            c.disk = Some(p.limits.disk.0);
            c.memory = Some(p.limits.memory.0);
            c.pids = Some(p.limits.pids);
        }
        if !a.allow_hosts.is_empty() {
            let mut n = c.network.take().unwrap_or_default();
            if n.mode == NetMode::Open {
                return Err(AnnotationError::Value {
                    key: ALLOW_HOSTS,
                    why: "the policy file's network mode is \"open\", which an allowlist \
                          would narrow silently: set mode = \"allowlist\" there"
                        .into(),
                });
            }
            n.mode = NetMode::Allowlist;
            for h in &a.allow_hosts {
                if !n.allow_hosts.contains(h) {
                    n.allow_hosts.push(h.clone());
                }
            }
            c.network = Some(n);
        }
        if let Some(n) = &c.network {
            n.validate().map_err(|e| AnnotationError::Value {
                key: ALLOW_HOSTS,
                why: e.to_string(),
            })?;
        }
        if a.timeout.is_some() {
            c.timeout = a.timeout;
        }
        if a.disk.is_some() {
            c.disk = a.disk;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn direct_keys_parse_and_unknown_ones_are_refused() {
        let a = parse(&map(&[
            (ALLOW_HOSTS, "good.test, *.example.com"),
            (DISK, "2g"),
            (TIMEOUT, "90s"),
            ("org.other", "x"),
        ]))
        .unwrap();
        assert_eq!(a.allow_hosts.len(), 2);
        assert_eq!(a.disk, Some(2 << 30));
        assert_eq!(a.timeout, Some(Duration::from_secs(90)));
        let e = parse(&map(&[("org.stockade.net.allow-cidrs", "10.0.0.0/8")])).unwrap_err();
        assert!(
            e.to_string().contains("org.stockade.net.allow-cidrs"),
            "{e}"
        );
        assert!(parse(&map(&[(ALLOW_HOSTS, "bad host")])).is_err());
        assert!(parse(&map(&[(ALLOW_HOSTS, " , ")])).is_err());
        assert!(parse(&map(&[(DISK, "lots")])).is_err());
        assert!(parse(&map(&[(POLICY, "relative.toml")])).is_err());
    }

    #[test]
    fn policy_paths_must_resolve_inside_the_allowed_dir() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("p.toml"), "").unwrap();
        std::fs::write(t.path().join("outside.toml"), "").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside.toml"), dir.join("link.toml")).unwrap();
        assert!(policy_path(&dir.join("p.toml"), &dir).is_ok());
        assert!(policy_path(&t.path().join("outside.toml"), &dir).is_err());
        assert!(policy_path(&dir.join("link.toml"), &dir).is_err());
        assert!(policy_path(&dir.join("../outside.toml"), &dir).is_err());
        assert!(policy_path(&dir, &dir).is_err());
    }

    #[test]
    fn direct_keys_override_the_policy_file() {
        let mut p = stockade_policy::Policy::default();
        p.limits.timeout = Span::secs(10);
        let a = parse(&map(&[(ALLOW_HOSTS, "good.test"), (TIMEOUT, "5s")])).unwrap();
        let c = ContainerPolicy::combine(Some(&p), &a).unwrap();
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
        let n = c.network.unwrap();
        assert_eq!(n.mode, NetMode::Allowlist);
        assert!(n.allows_name("good.test") && !n.allows_name("bad.test"));
        assert_eq!(
            ContainerPolicy::combine(None, &Annotations::default()).unwrap(),
            ContainerPolicy::default()
        );
    }
}
