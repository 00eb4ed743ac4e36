//! Landlock: the filesystem view of the workload, enforced by the kernel per
//! process rather than by the mount table.
//!
//! Everything beneath `/` may be read and executed; only the paths the policy
//! names as writable may be changed. Landlock also scopes abstract unix
//! sockets and (optionally) signals to the sandbox. See `docs/landlock.md`.
//!
//! Compatibility is best-effort through the `landlock` crate: rights the
//! running kernel does not know are left out, and [`LandlockStatus::Partial`]
//! says so. The rights we ask for are pinned to [`TARGET_ABI`], the newest
//! ABI this code has been tested on, as the crate recommends: an untested
//! right is denied by default and could break workloads in ways we have not
//! seen. ABI 8 adds no filesystem right; ABI 9's `ResolveUnix` (connect to a
//! pathname unix socket) is the next candidate once tested.

use std::fs::File;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

/// The newest Landlock ABI whose rights this module requests.
pub const TARGET_ABI: u32 = 7;
const ABI_PINNED: ABI = ABI::V7;

/// `landlock_create_ruleset` flag asking for the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// Applying the Landlock ruleset failed. The workload must not be started.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The ruleset could not be created.
    #[error("cannot create the Landlock ruleset (the kernel may have disabled Landlock: try booting with lsm=...,landlock)")]
    Create(#[source] RulesetError),
    /// A path could not be opened to anchor a rule.
    #[error(
        "cannot open {path} to add a Landlock rule (make sure the path is readable by the sandbox)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a rule.
    #[error("cannot add the Landlock rule for {path}")]
    AddRule {
        path: PathBuf,
        #[source]
        source: RulesetError,
    },
    /// `landlock_restrict_self` failed.
    #[error("cannot enforce the Landlock ruleset (the process must have no_new_privs set or hold CAP_SYS_ADMIN)")]
    RestrictSelf(#[source] RulesetError),
}

/// What [`apply`] achieved on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockStatus {
    /// Every requested restriction is in force.
    Enforced { abi: u32 },
    /// Landlock is in force, but the kernel lacks some requested rights or
    /// scopes (an ABI older than [`TARGET_ABI`]); they are not restricted.
    Partial { abi: u32 },
    /// The kernel has no Landlock (not built in, or not enabled at boot).
    Unsupported,
}

/// The running kernel's Landlock ABI version, or `None` if Landlock is not
/// built in or not enabled.
pub fn abi_version() -> Option<u32> {
    // SAFETY: with a NULL attribute, size 0 and the VERSION flag the kernel
    // reads no memory and only returns the version (or -1 with errno).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(rc).ok().filter(|&v| v > 0)
}

/// Rights that make sense on a non-directory (Landlock rejects directory
/// rights on a file rule).
fn file_rights(all: BitFlags<AccessFs>) -> BitFlags<AccessFs> {
    all & (AccessFs::ReadFile
        | AccessFs::WriteFile
        | AccessFs::Execute
        | AccessFs::Truncate
        | AccessFs::IoctlDev)
}

/// Opens `path` as an `O_PATH` anchor for a rule; `Ok(None)` if it does not exist.
fn open_anchor(path: &Path) -> Result<Option<(File, bool)>, LandlockError> {
    let opened = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .and_then(|file| Ok((file.metadata()?.is_dir(), file)));
    match opened {
        Ok((is_dir, file)) => Ok(Some((file, is_dir))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LandlockError::Open {
            path: path.to_owned(),
            source,
        }),
    }
}

fn add(
    ruleset: RulesetCreated,
    path: &Path,
    access: BitFlags<AccessFs>,
) -> Result<RulesetCreated, LandlockError> {
    let Some((file, is_dir)) = open_anchor(path)? else {
        return Ok(ruleset);
    };
    let access = if is_dir { access } else { file_rights(access) };
    ruleset
        .add_rule(PathBeneath::new(file, access))
        .map_err(|source| LandlockError::AddRule {
            path: path.to_owned(),
            source,
        })
}

/// Restricts the calling thread (and everything it later runs) to read and
/// execute beneath `/`, plus full access beneath each existing path in
/// `writable` (missing ones are skipped). Pass `/dev` to let the workload
/// write to and `ioctl` its device nodes.
///
/// On ABI 6 or later, abstract unix sockets are scoped to the sandbox, and so
/// are signals when `scope_signals` is true: the workload can then only
/// signal processes inside its own Landlock domain.
///
/// Also sets `no_new_privs` (the `landlock` crate's default), which
/// `landlock_restrict_self` requires of a process without CAP_SYS_ADMIN.
/// Returns `Ok(Unsupported)`, having restricted nothing, on a kernel without
/// Landlock.
pub fn apply(writable: &[PathBuf], scope_signals: bool) -> Result<LandlockStatus, LandlockError> {
    let Some((ruleset, abi)) = ruleset(writable, true, scope_signals)? else {
        return Ok(LandlockStatus::Unsupported);
    };
    let RestrictionStatus {
        ruleset: status, ..
    } = ruleset
        .restrict_self()
        .map_err(LandlockError::RestrictSelf)?;
    Ok(match status {
        RulesetStatus::FullyEnforced => LandlockStatus::Enforced { abi },
        RulesetStatus::PartiallyEnforced => LandlockStatus::Partial { abi },
        RulesetStatus::NotEnforced => LandlockStatus::Unsupported,
    })
}

/// The ruleset [`apply`] would enforce, built but not enforced: its
/// descriptor, for another process to restrict itself with
/// ([`restrict_self_with`]), or `None` on a kernel without Landlock. Paths
/// are resolved in the caller's mount namespace.
pub fn build(writable: &[PathBuf], scope_signals: bool) -> Result<Option<OwnedFd>, LandlockError> {
    build_scoped(writable, true, scope_signals)
}

/// As [`build`], with abstract unix socket scoping optional too: where
/// the sandbox has a network namespace of its own, its abstract socket
/// namespace is already its own, and scoping would only part processes
/// that restricted themselves separately (an OCI container's init and
/// its `exec`'d processes, each a Landlock domain of its own).
pub fn build_scoped(
    writable: &[PathBuf],
    abstract_sockets: bool,
    signals: bool,
) -> Result<Option<OwnedFd>, LandlockError> {
    Ok(ruleset(writable, abstract_sockets, signals)?.and_then(|(r, _)| r.into()))
}

/// Sets `no_new_privs` and restricts the calling thread with a ruleset
/// from [`build`]. Allocates nothing, so it may run in a child that shares
/// its parent's memory.
pub fn restrict_self_with(ruleset: RawFd) -> Result<(), nix::errno::Errno> {
    let zero: libc::c_ulong = 0;
    let one: libc::c_ulong = 1;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) };
    nix::errno::Errno::result(rc)?;
    // SAFETY: landlock_restrict_self takes a descriptor and flags only.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) };
    nix::errno::Errno::result(rc).map(drop)
}

/// The ruleset and the kernel's ABI, or `None` without Landlock.
fn ruleset(
    writable: &[PathBuf],
    scope_abstract: bool,
    scope_signals: bool,
) -> Result<Option<(RulesetCreated, u32)>, LandlockError> {
    let Some(abi) = abi_version() else {
        return Ok(None);
    };
    let all = AccessFs::from_all(ABI_PINNED);
    let mut scopes: BitFlags<Scope> = BitFlags::empty();
    if scope_abstract {
        scopes |= Scope::AbstractUnixSocket;
    }
    if scope_signals {
        scopes |= Scope::Signal;
    }
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        // An empty scope request is an error to the crate: asked only
        // when there is one.
        .and_then(|r| {
            if scopes.is_empty() {
                Ok(r)
            } else {
                r.scope(scopes)
            }
        })
        .and_then(Ruleset::create)
        .map_err(LandlockError::Create)?;
    ruleset = add(ruleset, Path::new("/"), AccessFs::from_read(ABI_PINNED))?;
    for path in writable {
        ruleset = add(ruleset, path, all)?;
    }
    Ok(Some((ruleset, abi)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::test_child;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    const ENTRY: &str = "landlock_rules::tests::child_entry";

    fn env_path(name: &str) -> PathBuf {
        std::env::var_os(name)
            .expect("set by the parent test")
            .into()
    }

    fn errno<T>(r: io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    fn kill_parent() -> Option<i32> {
        // SAFETY: signal 0 only checks permission; getppid cannot fail.
        let rc = unsafe { libc::kill(libc::getppid(), 0) };
        (rc != 0).then(|| io::Error::last_os_error().raw_os_error().unwrap())
    }

    fn connect_parent() -> Option<i32> {
        let name = std::env::var("STOCKADE_TEST_ABSTRACT").unwrap();
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        errno(UnixStream::connect_addr(&addr))
    }

    /// Runs in a re-executed test binary: restricts itself, then attacks.
    #[test]
    fn child_entry() {
        let Some(scenario) = test_child::scenario() else {
            return;
        };
        let (inside, outside) = (env_path("STOCKADE_TEST_A"), env_path("STOCKADE_TEST_B"));
        let missing = inside.join("does-not-exist");
        let (writable, scope_signals) = match scenario.as_str() {
            "fs" => (vec![inside.clone(), missing, "/dev".into()], false),
            "no-dev" => (vec![inside.clone()], false),
            "scoped" => (vec![inside.clone()], true),
            other => panic!("unknown scenario {other}"),
        };
        let status = apply(&writable, scope_signals).unwrap();
        let abi = abi_version().unwrap();
        let expected = if abi >= TARGET_ABI {
            LandlockStatus::Enforced { abi }
        } else {
            LandlockStatus::Partial { abi }
        };
        assert_eq!(status, expected);

        let secret = outside.join("file");
        // Reading and executing stay allowed everywhere.
        std::fs::read(&secret).unwrap();
        std::fs::read("/etc/hostname").unwrap();
        assert!(std::process::Command::new("/bin/true")
            .status()
            .unwrap()
            .success());
        match scenario.as_str() {
            "fs" => {
                std::fs::write(inside.join("new"), b"ok").unwrap();
                std::fs::create_dir(inside.join("dir")).unwrap();
                std::fs::rename(inside.join("new"), inside.join("dir/moved")).unwrap();
                std::fs::write("/dev/null", b"ok").unwrap();
                let eacces = Some(libc::EACCES);
                assert_eq!(errno(std::fs::write(outside.join("new"), b"x")), eacces);
                assert_eq!(errno(std::fs::create_dir(outside.join("dir"))), eacces);
                assert_eq!(
                    errno(std::fs::OpenOptions::new().append(true).open(&secret)),
                    eacces
                );
                assert_eq!(errno(std::fs::remove_file(&secret)), eacces);
                assert_eq!(
                    errno(std::fs::rename(&secret, inside.join("stolen"))),
                    eacces
                );
                // A hard link into the writable tree would give the file more
                // rights than it has where it lives; Landlock refuses.
                assert_eq!(
                    errno(std::fs::hard_link(&secret, inside.join("link"))),
                    Some(libc::EXDEV)
                );
                assert_eq!(
                    kill_parent(),
                    None,
                    "signals are not scoped in this scenario"
                );
            }
            "no-dev" => {
                let dev_null = std::fs::OpenOptions::new().write(true).open("/dev/null");
                assert_eq!(errno(dev_null), Some(libc::EACCES));
            }
            _ => {
                assert_eq!(kill_parent(), Some(libc::EPERM));
                // SAFETY: signal 0 to ourselves only checks permission.
                assert_eq!(unsafe { libc::kill(libc::getpid(), 0) }, 0);
            }
        }
        // Abstract unix sockets are scoped whatever `scope_signals` says.
        assert_eq!(connect_parent(), Some(libc::EPERM));
    }

    fn run(scenario: &str) {
        let (inside, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(outside.path().join("file"), b"secret").unwrap();
        // A listener outside the sandbox, with a name unique to this run.
        let name = format!("stockade-landlock-test-{}-{scenario}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _listener = UnixListener::bind_addr(&addr).unwrap();
        test_child::run(ENTRY, scenario, |cmd| {
            cmd.env("STOCKADE_TEST_A", inside.path())
                .env("STOCKADE_TEST_B", outside.path())
                .env("STOCKADE_TEST_ABSTRACT", &name);
        });
        assert_eq!(
            std::fs::read(outside.path().join("file")).unwrap(),
            b"secret"
        );
    }

    #[test]
    #[ignore = "needs a kernel with Landlock ABI >= 6 enabled"]
    fn writes_only_beneath_writable_paths_and_skips_missing_ones() {
        run("fs");
    }

    #[test]
    #[ignore = "needs a kernel with Landlock ABI >= 6 enabled"]
    fn devices_are_read_only_unless_dev_is_writable() {
        run("no-dev");
    }

    #[test]
    #[ignore = "needs a kernel with Landlock ABI >= 6 enabled"]
    fn scoped_workload_cannot_signal_or_connect_outside() {
        run("scoped");
    }

    #[test]
    fn file_rules_get_no_directory_rights() {
        let rights = file_rights(AccessFs::from_all(ABI_PINNED));
        assert!(rights.contains(AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev));
        assert!(!rights.intersects(AccessFs::MakeReg | AccessFs::RemoveFile | AccessFs::Refer));
    }

    #[test]
    fn pinned_abi_matches_its_number() {
        assert_eq!(ABI_PINNED as u32, TARGET_ABI);
    }
}
