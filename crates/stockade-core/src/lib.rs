//! A stockade sandbox as an object: prepare it from a policy, launch it,
//! supervise it (limits, timeout, disk, signals), clean up, report.

pub mod backend;
pub mod disk;
pub mod gc;
pub mod monitor;
pub mod netwatch;
pub mod prepare;
pub mod relay;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod scratch;
pub mod shim;
pub mod state;
pub mod task;
mod teardown;
pub mod tty;

pub use report::{Outcome, Report, Usage, Violation, ViolationKind};
pub use run::{run, run_deferred, RunOptions};
pub use teardown::PendingTeardown;

/// Why a sandbox could not be run. Every message says what failed; the
/// ones a user can cause also say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up cgroups: {0} (see `stockade doctor`)")]
    Cgroup(String),
    #[error("cannot {0}: {1}")]
    Sys(String, #[source] nix::Error),
    #[error(transparent)]
    Launch(#[from] stockade_isolate::launch::LaunchError),
    #[error("cannot set up the sandbox: {0}")]
    Setup(String),
    #[error("{}", spawn_message(.step, *.errno))]
    Spawn { step: String, errno: i32 },
}

fn spawn_message(step: &str, errno: i32) -> String {
    let err = nix::errno::Errno::from_raw(errno);
    match (step.strip_prefix("run "), err) {
        (Some(cmd), nix::errno::Errno::ENOENT) => {
            format!("{cmd}: command not found in the sandbox")
        }
        (
            Some(cmd),
            nix::errno::Errno::EACCES | nix::errno::Errno::ENOEXEC | nix::errno::Errno::EISDIR,
        ) => {
            format!("{cmd}: cannot execute: {}", err.desc())
        }
        _ => format!("cannot {step}: {}", err.desc()),
    }
}

impl RunError {
    /// Exit status of `stockade run` for this error: 127 when the command
    /// does not exist, 126 when it cannot be executed, 125 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Spawn { step, errno } if step.starts_with("run ") => match *errno {
                libc::ENOENT => 127,
                libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM => 126,
                _ => 125,
            },
            _ => 125,
        }
    }
}
