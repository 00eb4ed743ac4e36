//! A user's image store: work done inside a user namespace with the
//! image's id map.
//!
//! An ordinary user cannot own files as the disk block root's store uses
//! ([`crate::DISK_ID_BASE`]). Its store keeps the image's ids as they are
//! inside one fixed map, the one every image sandbox of that user runs
//! with: inside 0 is the caller, inside 1..65536 the first 65535
//! subordinate ids ([`UserIds::map_args`]). The unpacker (and whatever
//! removes a layer) runs in a child process that made a user namespace
//! with that map (written by the setuid `newuidmap`/`newgidmap`) and is
//! root there: `chown(i)` lands on disk as the caller (i = 0) or as
//! subordinate id `start + i - 1`, and the 0/0 whiteout devices may be
//! made (Linux ≥ 5.8 allows them in a user namespace).
//!
//! The child is forked: it only runs the closure given (file system work
//! and allocation; glibc's `fork` leaves the allocator usable) and leaves
//! with `_exit`, never returning into the caller's code.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use serde::{de::DeserializeOwned, Serialize};

use crate::MAPPED_IDS;

/// The caller and its subordinate ranges' starts, as the store's map
/// uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// First subordinate uid (at least `MAPPED_IDS - 1` of them).
    pub sub_uid: u32,
    /// First subordinate gid (at least `MAPPED_IDS - 1` of them).
    pub sub_gid: u32,
}

impl UserIds {
    /// The arguments of `newuidmap PID …` (`uid` true) or
    /// `newgidmap PID …`: inside 0 → the caller, 1.. → subordinate ids.
    pub fn map_args(&self, uid: bool) -> Vec<String> {
        let (own, sub) = if uid {
            (self.uid, self.sub_uid)
        } else {
            (self.gid, self.sub_gid)
        };
        [0, own, 1, 1, sub, MAPPED_IDS - 1]
            .iter()
            .map(|n| n.to_string())
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("cannot start the store's helper process")]
    Spawn(#[source] std::io::Error),
    #[error(
        "cannot run {helper} (install Debian's `uidmap` package; a user's image store \
         needs subordinate ids mapped through it)"
    )]
    Helper {
        helper: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{helper} refused the image store's id map: {stderr}")]
    Refused {
        helper: &'static str,
        stderr: String,
    },
    #[error("the image store's helper process failed ({0}); a user namespace may be refused here (see `stockade doctor`)")]
    Child(String),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), UsernsError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| UsernsError::Spawn(std::io::Error::from(e)))
}

fn helper(name: &'static str, pid: i32, args: Vec<String>) -> Result<(), UsernsError> {
    let out = std::process::Command::new(name)
        .arg(pid.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|source| UsernsError::Helper {
            helper: name,
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(UsernsError::Refused {
        helper: name,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `f` in a forked child that is root of a new user namespace with
/// `ids`' map, and returns what it returned (sent back as JSON).
pub fn run<T, F>(ids: &UserIds, f: F) -> Result<T, UsernsError>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    // SAFETY: the child only runs `f` (file system calls and allocation,
    // which glibc keeps usable after fork) and `_exit`s; it never returns
    // into the caller nor unwinds past this frame.
    let fork =
        unsafe { nix::unistd::fork() }.map_err(|e| UsernsError::Spawn(std::io::Error::from(e)))?;
    match fork {
        nix::unistd::ForkResult::Child => {
            drop((ready_r, go_w, out_r));
            let code = child(ready_w, go_r, out_w, f);
            // SAFETY: leaves the forked child without running the
            // parent's exit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((ready_w, go_r, out_w));
            let r = parent(ids, child.as_raw(), ready_r, go_w, out_r);
            let status = nix::sys::wait::waitpid(child, None);
            let value = r?;
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
                other => return Err(UsernsError::Child(format!("{other:?}"))),
            }
            serde_json::from_slice(&value).map_err(|e| UsernsError::Child(e.to_string()))
        }
    }
}

fn parent(
    ids: &UserIds,
    pid: i32,
    ready: OwnedFd,
    go: OwnedFd,
    out: OwnedFd,
) -> Result<Vec<u8>, UsernsError> {
    let mut ready = std::fs::File::from(ready);
    let mut b = [0u8; 1];
    if ready.read(&mut b).map_err(UsernsError::Spawn)? != 1 {
        return Err(UsernsError::Child(
            "it could not make a user namespace".into(),
        ));
    }
    let maps = helper("newuidmap", pid, ids.map_args(true))
        .and_then(|()| helper("newgidmap", pid, ids.map_args(false)));
    let mut go = std::fs::File::from(go);
    if maps.is_ok() {
        let _ = go.write_all(b"g");
    }
    drop(go);
    maps?;
    let mut value = Vec::new();
    std::fs::File::from(out)
        .read_to_end(&mut value)
        .map_err(UsernsError::Spawn)?;
    Ok(value)
}

fn child<T: Serialize, F: FnOnce() -> T>(ready: OwnedFd, go: OwnedFd, out: OwnedFd, f: F) -> i32 {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err() {
        return 2;
    }
    if std::fs::File::from(ready).write_all(b"r").is_err() {
        return 3;
    }
    let mut b = [0u8; 1];
    if std::fs::File::from(go).read(&mut b).ok() != Some(1) {
        return 4;
    }
    // Root of the namespace: the ids (and so the capabilities' reach)
    // the map gives.
    if nix::unistd::setresgid(0.into(), 0.into(), 0.into()).is_err()
        || nix::unistd::setresuid(0.into(), 0.into(), 0.into()).is_err()
    {
        return 5;
    }
    // A panic must not unwind out of the child into the caller's code
    // (this process is a copy of it).
    let Ok(value) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) else {
        return 8;
    };
    let Ok(bytes) = serde_json::to_vec(&value) else {
        return 6;
    };
    if std::fs::File::from(out).write_all(&bytes).is_err() {
        return 7;
    }
    0
}
