//! The state directory: `<root>/<id>/` holds `state.json` (what `create`
//! learnt: init's pid and start time, the bundle, the cgroup) and, until
//! `start`, the fifo `exec.fifo` on which init waits.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default state root (runc's is `/run/runc`).
pub const DEFAULT_ROOT: &str = "/run/stockade-runc";
/// The fifo init waits on until `start`.
pub const FIFO: &str = "exec.fifo";
const STATE_FILE: &str = "state.json";

/// Why a container's state cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such container under this root.
    #[error("container {id:?} does not exist (no state under {root}); `list` shows the containers there")]
    NotFound { id: String, root: PathBuf },
    /// The id is taken.
    #[error(
        "container id {id:?} is already in use; delete that container first or pick another id"
    )]
    InUse { id: String },
    /// The id has characters that could leave the state root.
    #[error("container id {id:?} is not valid: use 1 to 1024 letters, digits, '.', '_', '+' or '-', not starting with '.'")]
    BadId { id: String },
    /// Reading or writing the state failed.
    #[error("cannot use the state of container {id:?} in {path}")]
    Io {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What `create` records; read by every later subcommand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub pid: i32,
    /// Field 22 of init's `/proc/<pid>/stat`: tells a reused pid apart.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    /// The cgroup directories init was put in, one per hierarchy.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The config's poststop hooks, run by `delete`.
    #[serde(default)]
    pub poststop: Vec<crate::config::Hook>,
    /// The container's process as configured, for `exec`'s defaults.
    #[serde(default)]
    pub process: crate::config::Process,
    /// The overlay work directory `create` made next to the engine's
    /// upper directory, removed by `delete`.
    #[serde(default)]
    pub overlay_work: Option<PathBuf>,
    /// The config's seccomp profile, for `exec`'d processes too.
    #[serde(default)]
    pub seccomp: Option<serde_json::Value>,
    /// The container's Landlock plan, for `exec`'d processes too (`None`
    /// for a container made before there was one).
    #[serde(default)]
    pub landlock: Option<crate::landlock::Plan>,
}

/// The runtime-spec lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The `state` subcommand's JSON (runtime-spec state, with runc's extra
/// `rootfs`, `created` and `owner`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateJson {
    pub oci_version: &'static str,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: &'static str,
    pub annotations: BTreeMap<String, String>,
}

pub const OCI_VERSION: &str = "1.0.2";

/// Checks a container id as runc does (it becomes a directory name).
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId { id: id.into() })
    }
}

/// One container's state directory.
#[derive(Debug, Clone)]
pub struct Dir {
    pub id: String,
    pub root: PathBuf,
    pub path: PathBuf,
}

impl Dir {
    pub fn of(root: &Path, id: &str) -> Result<Dir, StateError> {
        check_id(id)?;
        Ok(Dir {
            id: id.into(),
            root: root.into(),
            path: root.join(id),
        })
    }

    fn io(&self, path: &Path, source: io::Error) -> StateError {
        StateError::Io {
            id: self.id.clone(),
            path: path.into(),
            source,
        }
    }

    /// Makes the directory; fails if the id is in use.
    pub fn make(&self) -> Result<(), StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(|e| self.io(&self.root, e))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StateError::InUse {
                id: self.id.clone(),
            }),
            Err(e) => Err(self.io(&self.path, e)),
        }
    }

    pub fn fifo(&self) -> PathBuf {
        self.path.join(FIFO)
    }

    pub fn save(&self, s: &Saved) -> Result<(), StateError> {
        let path = self.path.join(STATE_FILE);
        let tmp = self.path.join(".state.json.tmp");
        let text = serde_json::to_vec(s).expect("state serialises");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| self.io(&path, e))
    }

    pub fn load(&self) -> Result<Saved, StateError> {
        let path = self.path.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound {
                    id: self.id.clone(),
                    root: self.root.clone(),
                })
            }
            Err(e) => return Err(self.io(&path, e)),
        };
        serde_json::from_slice(&text).map_err(|e| self.io(&path, io::Error::other(e)))
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> Result<(), StateError> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&self.path, e)),
        }
    }
}

/// Init's start time and whether it has ended (a zombie counts as ended:
/// the caller's subreaper has yet to reap it).
pub fn proc_stat(pid: i32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((start, matches!(*state, "Z" | "X" | "x")))
}

impl Saved {
    /// Whether init (the very process `create` started) still runs.
    pub fn init_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((start, false)) if start == self.start_time)
    }

    pub fn status(&self, dir: &Dir) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if dir.fifo().exists() {
            return Status::Created;
        }
        if crate::cgroups::is_frozen(&self.cgroup_dirs) {
            return Status::Paused;
        }
        Status::Running
    }

    pub fn to_json(&self, status: Status) -> StateJson {
        StateJson {
            oci_version: OCI_VERSION,
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: "",
            annotations: self.annotations.clone(),
        }
    }
}

/// Now as RFC 3339 with nanoseconds, UTC (`2026-01-02T03:04:05.123456789Z`).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Seconds since the epoch as an RFC 3339 UTC date (days to civil date:
/// the proleptic Gregorian algorithm on 400-year eras).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_798_761_599, 0), "2026-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn ids_that_could_leave_the_root_are_refused() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        for good in ["abc", "a.b_c+d-1", "0123456789abcdef"] {
            check_id(good).unwrap();
        }
    }

    #[test]
    fn a_second_make_of_one_id_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::of(t.path(), "c1").unwrap();
        d.make().unwrap();
        assert!(matches!(d.make(), Err(StateError::InUse { .. })));
    }

    #[test]
    fn own_process_is_alive_and_not_a_zombie() {
        let (_, ended) = proc_stat(std::process::id() as i32).unwrap();
        assert!(!ended);
    }
}
