//! A stockade sandbox as an object: prepare it from a policy, launch it,
//! supervise it (limits, timeout, disk, signals), clean up, report.

pub mod backend;
pub mod disk;
pub mod freeze;
pub mod gc;
pub mod image;
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
pub mod top;
pub mod tty;

pub use report::{Outcome, Report, Usage, Violation, ViolationKind};
pub use run::{run, run_deferred, RunOptions};
pub use stockade_isolate::error_chain;
pub use teardown::PendingTeardown;

/// Why a sandbox could not be run. Every message says what failed; the
/// ones a user can cause also say what to do. A variant with a source
/// names the step only: [`RunError::message`] adds the causes, each once.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The request cannot be carried out as given; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The policy breaks a rule.
    #[error(transparent)]
    Policy(#[from] stockade_policy::ValidationError),
    /// No host id slot (a range of uids and gids) for the sandbox.
    #[error(transparent)]
    Slot(#[from] stockade_isolate::slots::SlotError),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up cgroups (`stockade doctor` shows what this host supports)")]
    Cgroup(#[from] stockade_cgroup::CgroupError),
    #[error("cannot {0}")]
    Sys(String, #[source] nix::Error),
    /// Init could not be started.
    #[error(transparent)]
    Launch(#[from] stockade_isolate::launch::LaunchError),
    #[error("cannot set up the sandbox: {0}")]
    Setup(String),
    /// The policy's image cannot be found, pulled or used.
    #[error("image {name}")]
    Image {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// The whole message: this error's, then each cause's, separated by
    /// `: `. A cause whose text its parent printed already (an error type
    /// that both prints and marks its source) is not repeated.
    pub fn message(&self) -> String {
        let mut s = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(c) = cur {
            let m = c.to_string();
            if !s.contains(&m) {
                s.push_str(": ");
                s.push_str(&m);
            }
            cur = c.source();
        }
        s
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_names_each_cause_once() {
        let io = RunError::Io {
            what: "open the state directory /x".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(io.to_string(), "cannot open the state directory /x");
        let m = io.message();
        assert!(
            m.starts_with("cannot open the state directory /x: Permission denied"),
            "{m}"
        );
        assert_eq!(m.matches("Permission denied").count(), 1, "{m}");
        let sys = RunError::Sys("poll".into(), nix::errno::Errno::EINTR);
        assert_eq!(
            sys.message(),
            format!("cannot poll: {}", nix::errno::Errno::EINTR)
        );
        // A source its parent prints already comes once.
        let launch = RunError::from(stockade_isolate::launch::LaunchError::Socket(
            nix::errno::Errno::EMFILE,
        ));
        let m = launch.message();
        assert_eq!(
            m.matches(&nix::errno::Errno::EMFILE.to_string()).count(),
            1,
            "{m}"
        );
        assert!(m.starts_with("cannot create the control socket"), "{m}");
    }

    #[test]
    fn exit_codes_follow_the_spawn_errno() {
        let spawn = |step: &str, errno| RunError::Spawn {
            step: step.into(),
            errno,
        };
        assert_eq!(spawn("run x", libc::ENOENT).exit_code(), 127);
        assert_eq!(spawn("run x", libc::EACCES).exit_code(), 126);
        assert_eq!(spawn("run x", libc::EIO).exit_code(), 125);
        assert_eq!(spawn("chdir /w", libc::ENOENT).exit_code(), 125);
        assert_eq!(RunError::Invalid("x".into()).exit_code(), 125);
    }
}
