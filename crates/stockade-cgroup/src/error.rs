//! The one error type of this crate.
//!
//! Every message is a sentence that names what failed, the path involved and
//! what the operator can do about it. The underlying `io::Error` or errno is
//! attached as `#[source]` and deliberately not repeated in the message, so a
//! caller that prints the whole chain shows it exactly once.

use std::io;
use std::path::PathBuf;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The sandbox id cannot be used as a cgroup directory name.
    #[error(
        "sandbox name {name:?} cannot be used as a cgroup name: use 1 to 64 characters from a-z, 0-9 and '-'"
    )]
    InvalidName { name: String },

    /// The CPU limit is not a usable number of CPUs.
    #[error(
        "cpu limit must be a number of CPUs of at least 0.01 (the kernel's smallest quota is 1 ms per 100 ms period), got {cpus}"
    )]
    InvalidCpus { cpus: f64 },

    /// The memory limit is too small for any program to start.
    #[error("memory limit must be at least 4 MiB (4194304 bytes), got {bytes} bytes")]
    MemoryTooSmall { bytes: u64 },

    /// A rootless sandbox's init could not be tracked (see `polled.rs`).
    #[error("cannot track the sandbox's init (pid {pid}); it may have exited during setup")]
    Track {
        pid: i32,
        #[source]
        source: io::Error,
    },

    /// A rootless sandbox without a cgroup has no OOM notifier.
    #[error("a sandbox without a cgroup has no OOM notifier; its memory is polled")]
    NoNotifier,

    /// The process limit is zero.
    #[error("process limit must be at least 1, got {pids}")]
    PidsTooSmall { pids: u64 },

    /// `/proc/self/mountinfo` could not be read.
    #[error(
        "could not read /proc/self/mountinfo to find the cgroup hierarchies; is /proc mounted?"
    )]
    Mountinfo {
        #[source]
        source: io::Error,
    },

    /// Neither a cgroup2 root nor any v1 controller we use was found.
    #[error(
        "no usable cgroup hierarchy found: /sys/fs/cgroup is not cgroup2 and /proc/self/mountinfo lists none of the v1 controllers memory, pids, cpu, cpuacct or freezer; mount cgroup2 on /sys/fs/cgroup or point STOCKADE_CGROUP_ROOT at a cgroup2 directory"
    )]
    NoHierarchy,

    /// `STOCKADE_CGROUP_ROOT` names something that is not a cgroup2 directory.
    #[error(
        "STOCKADE_CGROUP_ROOT is {path}, which is not a directory on a cgroup2 file system; unset it or point it at a cgroup2 directory stockade may manage"
    )]
    RootNotCgroup2 {
        path: PathBuf,
        #[source]
        source: Option<nix::Error>,
    },

    /// A limit was asked for but its controller is not available.
    #[error(
        "the {controller} controller is not available in {place}, so the {controller} limit cannot be enforced or observed; enable the controller (v2: in the parent's cgroup.subtree_control, v1: mount its hierarchy) or drop the limit"
    )]
    ControllerMissing {
        controller: &'static str,
        /// The cgroup directory (v2) or "the v1 mount table".
        place: String,
    },

    /// A cgroup with this name already exists.
    #[error(
        "cgroup {path} already exists: a sandbox with this name is running or was not cleaned up; pick another name or run `stockade gc`"
    )]
    AlreadyExists { path: PathBuf },

    /// A cgroup directory could not be created.
    #[error(
        "could not create cgroup directory {path}; stockade needs root or write access to a delegated cgroup subtree (see docs/cgroups.md)"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Controllers could not be enabled for the children of a v2 cgroup.
    #[error(
        "could not enable {controllers} in {path}/cgroup.subtree_control; if that cgroup holds processes, move them into a leaf cgroup first (cgroup v2 allows no processes in a cgroup that distributes controllers)"
    )]
    EnableControllers {
        path: PathBuf,
        controllers: String,
        #[source]
        source: io::Error,
    },

    /// A control file rejected a value.
    #[error(
        "could not write {value:?} to {path}; check that the value is valid for this kernel and that stockade runs as root"
    )]
    WriteFile {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },

    /// A process could not be moved into the cgroup.
    #[error(
        "could not move process {pid} into {path}; the process may have exited, or it lives in another cgroup namespace"
    )]
    AddPid {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The v2 cgroup directory could not be opened for `CLONE_INTO_CGROUP`.
    #[error("could not open cgroup directory {path}; it may have been removed by someone else")]
    OpenDir {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    /// The OOM notifier could not be set up.
    #[error(
        "could not set up an out-of-memory notifier on {path}; OOM kills are still counted in the stats, but the caller must poll for them"
    )]
    Notifier {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A cgroup directory could not be removed.
    #[error(
        "could not remove cgroup directory {path}; if processes are still inside, list them with `cat {path}/cgroup.procs`, kill them and run `stockade gc`"
    )]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
