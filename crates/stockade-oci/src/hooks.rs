//! OCI hooks: each runs with the container's state JSON on its stdin.
//! `prestart`, `createRuntime`, `poststart` and `poststop` run in the
//! runtime's namespaces as host root ([`run`]); `createContainer` and
//! `startContainer` run inside the container, as its root, under
//! stockade's seccomp filters and `no_new_privs` and a Landlock ruleset
//! ([`run_confined`]).

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

/// What a hook inside the container runs under.
#[derive(Debug)]
pub struct Confine {
    /// stockade's seccomp filters.
    pub filters: stockade_isolate::seccomp::SeccompFilters,
    /// A Landlock ruleset to restrict the hook with.
    pub landlock: Option<std::os::fd::RawFd>,
}

/// Runs one hook to completion.
pub fn run(hook: &Hook, state: &StateJson) -> Result<(), HookError> {
    run_with(hook, &serde_json::to_vec(state).unwrap_or_default(), None)
}

/// Runs one hook inside the container (`state` is the state JSON), with
/// `no_new_privs`, the Landlock ruleset and stockade's seccomp filters set
/// in the hook's process before it executes.
pub fn run_confined(hook: &Hook, state: &[u8], confine: Confine) -> Result<(), HookError> {
    run_with(hook, state, Some(confine))
}

fn run_with(hook: &Hook, state: &[u8], confine: Option<Confine>) -> Result<(), HookError> {
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
    if let Some(c) = confine {
        use std::os::unix::process::CommandExt;
        let confine = move || -> std::io::Result<()> {
            // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_SET_NO_NEW_PRIVS,
                    1 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(r) = c.landlock {
                stockade_isolate::landlock_rules::restrict_self_with(r)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            }
            stockade_isolate::seccomp::install(&c.filters)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
        };
        // SAFETY: the closure makes system calls only (prctl,
        // landlock_restrict_self, seccomp) and allocates nothing, as is
        // required between fork and exec.
        unsafe { cmd.pre_exec(confine) };
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state);
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
