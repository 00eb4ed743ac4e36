//! Where stockade keeps its state and its daemon's socket: root's system
//! paths, or an ordinary user's own (XDG) directories.
//!
//! - state: `/var/lib/stockade` for root; `$XDG_DATA_HOME/stockade`
//!   (default `~/.local/share/stockade`) for anyone else.
//! - runtime (the daemon's socket): `/run/stockade` for root;
//!   `$XDG_RUNTIME_DIR/stockade`, else `/tmp/stockade-<uid>` (made 0700
//!   and refused unless it is the user's own, so nobody can plant a
//!   socket there first).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default state directory of the calling user.
pub fn state_dir() -> PathBuf {
    state_dir_for(
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

/// [`state_dir`] from its inputs.
pub fn state_dir_for(root: bool, xdg_data: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    if root {
        return PathBuf::from("/var/lib/stockade");
    }
    match (xdg_data.filter(|p| p.is_absolute()), home) {
        (Some(d), _) => d.join("stockade"),
        (None, Some(h)) => h.join(".local/share/stockade"),
        // No home at all: a per-user directory that still is not shared.
        (None, None) => runtime_dir().join("state"),
    }
}

/// The default daemon socket of the calling user.
pub fn socket() -> PathBuf {
    runtime_dir().join("stockade.sock")
}

/// The calling user's runtime directory for stockade (see the module
/// comment).
pub fn runtime_dir() -> PathBuf {
    runtime_dir_for(
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        nix::unistd::geteuid().as_raw(),
    )
}

/// [`runtime_dir`] from its inputs.
pub fn runtime_dir_for(root: bool, xdg_runtime: Option<PathBuf>, uid: u32) -> PathBuf {
    if root {
        return PathBuf::from("/run/stockade");
    }
    match xdg_runtime.filter(|p| p.is_absolute()) {
        Some(d) => d.join("stockade"),
        None => PathBuf::from(format!("/tmp/stockade-{uid}")),
    }
}

/// Makes the runtime directory `dir` (0700) if it is missing and checks
/// that it belongs to `uid` and nobody else may write in it.
pub fn ensure_private_dir(dir: &Path, uid: u32) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot create {}; set XDG_RUNTIME_DIR to a directory of your own",
                dir.display()
            )))
        }
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} is not a directory of yours that only you may write (someone else may have \
             made it); remove it, or set XDG_RUNTIME_DIR to a directory of your own",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_the_system_paths_and_users_get_xdg_ones() {
        let home = Some(PathBuf::from("/home/u"));
        assert_eq!(
            state_dir_for(true, None, home.clone()),
            Path::new("/var/lib/stockade")
        );
        assert_eq!(
            state_dir_for(false, None, home.clone()),
            Path::new("/home/u/.local/share/stockade")
        );
        assert_eq!(
            state_dir_for(false, Some("/d".into()), home.clone()),
            Path::new("/d/stockade")
        );
        // A relative XDG value is ignored, as the spec says.
        assert_eq!(
            state_dir_for(false, Some("rel".into()), home),
            Path::new("/home/u/.local/share/stockade")
        );
        assert_eq!(runtime_dir_for(true, None, 0), Path::new("/run/stockade"));
        assert_eq!(
            runtime_dir_for(false, Some("/run/user/7".into()), 7),
            Path::new("/run/user/7/stockade")
        );
        assert_eq!(
            runtime_dir_for(false, None, 7),
            Path::new("/tmp/stockade-7")
        );
    }

    #[test]
    fn a_runtime_dir_others_may_write_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let d = t.path().join("rt");
        ensure_private_dir(&d, uid).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_private_dir(&d, uid).is_err());
        assert!(ensure_private_dir(&t.path().join("rt2"), uid + 1).is_err());
    }
}
