//! What the daemon and a shim say to each other over the shim's socket
//! (`<state>/sandboxes/<id>/shim.sock`, `SOCK_SEQPACKET`). Each request
//! opens its own connection; `Exec` carries the process's stdin, stdout
//! and stderr as descriptors and is answered `Started`, then `Ended` on the
//! same connection when the process ends (a client that only wants the
//! pid hangs up); `Subscribe` keeps its connection for events.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::backend::{ExecRequest, SandboxEvent, SandboxStatus};
use crate::report::{Report, ViolationKind};
use stockade_policy::Policy;

/// What a new shim reads on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimStart {
    pub id: String,
    pub state_dir: std::path::PathBuf,
    pub policy: Policy,
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShimRequest {
    Exec {
        req: ExecRequest,
    },
    Wait {
        pid: i32,
    },
    Signal {
        pid: i32,
        sig: i32,
    },
    /// Start a file helper inside the sandbox on the attached socket (as
    /// root inside, as the agent, or as the policy says when `None`);
    /// answered `Done` once it runs (it greets on the socket itself).
    Files {
        root: Option<bool>,
    },
    Status,
    Subscribe,
    Destroy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum ShimReply {
    Started {
        pid: i32,
    },
    Ended {
        pid: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        /// The hard breach that killed the sandbox, and the process with
        /// it (absent from older shims).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        killed_for: Option<ViolationKind>,
    },
    Status {
        status: SandboxStatus,
    },
    Event {
        event: SandboxEvent,
    },
    Destroyed {
        report: Box<Report>,
    },
    Done,
    Failed {
        kind: FailKind,
        message: String,
        step: Option<String>,
        errno: Option<i32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    Invalid,
    Spawn,
    NotFound,
    Internal,
}

/// Where a sandbox's shim listens.
pub fn socket_path(state_dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    state_dir.join("sandboxes").join(id).join("shim.sock")
}

/// Where a shim leaves its final report for a daemon that was not there
/// to hear it.
pub fn report_path(state_dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    state_dir.join("reports").join(format!("{id}.json"))
}
