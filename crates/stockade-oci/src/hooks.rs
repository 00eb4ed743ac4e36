//! OCI hooks: each runs with the container's state JSON on its stdin, in
//! the runtime's namespaces (prestart, createRuntime, poststart, poststop).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Hook;
use crate::state::StateJson;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run the hook {path}")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the hook {path} failed ({status}): {stderr}")]
    Failed {
        path: String,
        status: String,
        stderr: String,
    },
    #[error("the hook {path} did not finish within its timeout of {secs} s and was killed")]
    Timeout { path: String, secs: u64 },
}

/// Runs one hook to completion.
pub fn run(hook: &Hook, state: &StateJson) -> Result<(), HookError> {
    let path = hook.path.display().to_string();
    let mut cmd = Command::new(&hook.path);
    if let Some((first, rest)) = hook.args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(first);
        cmd.args(rest);
    }
    cmd.env_clear();
    for e in &hook.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&serde_json::to_vec(state).unwrap_or_default());
    }
    let deadline = hook
        .timeout
        .map(|s| (Instant::now() + Duration::from_secs(s), s));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { path, source }),
        }
        if let Some((d, secs)) = deadline {
            if Instant::now() > d {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout { path, secs });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    Err(HookError::Failed {
        path,
        status: status.to_string(),
        stderr: stderr.trim().to_string(),
    })
}
