//! Which host paths an API client may put into a sandbox.
//!
//! A policy can bind host directories in (`workspace`, `bind`, `ro_bind`)
//! and a task can name a local repository. Through the API that would let
//! any client expose the daemon's host (`/etc`, `/root`) to a sandbox, so
//! the daemon allows only what its administrator configured
//! (`stockade serve --allow-bind-root DIR`, nothing by default). Paths are
//! resolved first (symlinks and `..`), so no path leads out of an allowed
//! root; the resolved path is what the sandbox is given, and the launch
//! refuses it if a symlink appears on the way later.

use std::path::{Path, PathBuf};

use stockade_policy::Policy;

use crate::error::ApiError;

/// The allowed roots, resolved once at start.
#[derive(Debug, Clone, Default)]
pub struct BindRoots(Vec<PathBuf>);

impl BindRoots {
    /// Resolves each configured root; one that does not exist is an error
    /// the administrator must fix.
    pub fn new(roots: &[PathBuf]) -> Result<BindRoots, String> {
        roots
            .iter()
            .map(|r| {
                r.canonicalize().map_err(|e| {
                    format!(
                        "--allow-bind-root {}: {e}; give an existing directory",
                        r.display()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(BindRoots)
    }

    /// `path` resolved, if it lies under an allowed root.
    pub fn check(&self, what: &str, path: &Path) -> Result<PathBuf, ApiError> {
        let refused = |why: String| {
            ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "host_path_not_allowed",
                why,
            )
        };
        if self.0.is_empty() {
            return Err(refused(format!(
                "{what} {} is a host path, and this daemon allows none in sandboxes; its \
                 administrator can allow a directory with `stockade serve --allow-bind-root DIR`",
                path.display()
            )));
        }
        let resolved = path.canonicalize().map_err(|e| {
            ApiError::invalid(format!(
                "{what} {} cannot be used: {e}; give an existing path",
                path.display()
            ))
        })?;
        if self.0.iter().any(|root| resolved.starts_with(root)) {
            Ok(resolved)
        } else {
            let allowed: Vec<String> = self.0.iter().map(|r| r.display().to_string()).collect();
            Err(refused(format!(
                "{what} {} (resolved to {}) is not under a directory this daemon allows ({}); \
                 use a path under one of them",
                path.display(),
                resolved.display(),
                allowed.join(", ")
            )))
        }
    }

    /// The policy with every host path checked and resolved.
    pub fn check_policy(&self, mut policy: Policy) -> Result<Policy, ApiError> {
        let fs = &mut policy.filesystem;
        if let Some(ws) = &fs.workspace {
            fs.workspace = Some(self.check("workspace", ws)?);
        }
        for b in fs.bind.iter_mut() {
            b.src = self.check("bind source", &b.src)?;
        }
        for b in fs.ro_bind.iter_mut() {
            b.src = self.check("ro_bind source", &b.src)?;
        }
        Ok(policy)
    }

    /// A task's repository: URLs pass, a local path is checked.
    pub fn check_repo(&self, repo: &str) -> Result<String, ApiError> {
        if repo.contains("://") {
            return Ok(repo.to_string());
        }
        Ok(self
            .check("repository", Path::new(repo))?
            .display()
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockade_policy::BindMount;

    #[test]
    fn nothing_is_allowed_by_default() {
        let r = BindRoots::default();
        let e = r.check("workspace", Path::new("/tmp")).unwrap_err();
        assert_eq!(e.status.as_u16(), 403);
        assert!(e.message.contains("--allow-bind-root"), "{}", e.message);
        assert!(r.check_repo("/etc").is_err());
        assert_eq!(
            r.check_repo("https://example.test/r.git").unwrap(),
            "https://example.test/r.git"
        );
    }

    #[test]
    fn paths_are_resolved_before_they_are_checked() {
        let allowed = tempfile::tempdir().unwrap();
        let r = BindRoots::new(&[allowed.path().to_path_buf()]).unwrap();
        std::fs::create_dir(allowed.path().join("ok")).unwrap();
        let ok = r.check("bind source", &allowed.path().join("ok")).unwrap();
        assert_eq!(ok, allowed.path().canonicalize().unwrap().join("ok"));
        // A symlink or `..` out of the allowed root is refused.
        std::os::unix::fs::symlink("/etc", allowed.path().join("out")).unwrap();
        assert!(r.check("bind source", &allowed.path().join("out")).is_err());
        assert!(r
            .check("bind source", &allowed.path().join("ok/../../"))
            .is_err());
        let mut p = Policy::default();
        p.filesystem.ro_bind.push(BindMount {
            src: "/etc".into(),
            dst: "/mnt/hostetc".into(),
        });
        let e = r.check_policy(p).unwrap_err();
        assert!(e.message.contains("/etc"), "{}", e.message);
        assert!(BindRoots::new(&["/nonexistent/x".into()]).is_err());
    }
}
