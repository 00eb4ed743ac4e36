//! The daemon's side: a [`Backend`] whose sandboxes are each run by a
//! shim process, reached over the shim's unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use stockade_isolate::proto as iproto;
use stockade_policy::Policy;

use super::proto::{report_path, socket_path, FailKind, ShimReply, ShimRequest, ShimStart};
use crate::backend::{
    Backend, BackendError, ExecRequest, SandboxEvent, SandboxHandle, SandboxStatus,
};
use crate::report::Report;

/// Sandboxes run by shim processes (`<exe> shim`).
#[derive(Debug, Clone)]
pub struct ShimBackend {
    state_dir: PathBuf,
    /// The `stockade` binary, started as `<exe> shim`.
    exe: PathBuf,
}

impl ShimBackend {
    pub fn new(state_dir: PathBuf, exe: PathBuf) -> ShimBackend {
        ShimBackend { state_dir, exe }
    }
}

impl Backend for ShimBackend {
    fn create(
        &self,
        id: &str,
        policy: &Policy,
        ttl: Option<Duration>,
    ) -> Result<Box<dyn SandboxHandle>, BackendError> {
        policy
            .validate()
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let start = ShimStart {
            id: id.to_string(),
            state_dir: self.state_dir.clone(),
            policy: policy.clone(),
            ttl,
        };
        let mut child = Command::new(&self.exe)
            .arg("shim")
            .arg("--id")
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                BackendError::Internal(format!("cannot start the shim {}: {e}", self.exe.display()))
            })?;
        let json = serde_json::to_vec(&start).map_err(|e| BackendError::Internal(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&json);
        }
        let stdout = child.stdout.take();
        // The first process forks the real shim and exits at once.
        let _ = child.wait();
        let mut line = String::new();
        let mut reader = stdout.map(BufReader::new);
        if let Some(r) = reader.as_mut() {
            let _ = r.read_line(&mut line);
        }
        match line.trim().split_once(' ') {
            Some(("ready", _)) => Ok(Box::new(ShimHandle::new(&self.state_dir, id))),
            Some((kind @ ("error" | "invalid"), msg)) => {
                // The shim closes the pipe only once it has cleaned up, so
                // a failed create leaves nothing behind when reported.
                if let Some(r) = reader.as_mut() {
                    let _ = std::io::Read::read_to_end(r, &mut Vec::new());
                }
                Err(if kind == "invalid" {
                    BackendError::Invalid(msg.to_string())
                } else {
                    BackendError::Internal(msg.to_string())
                })
            }
            _ => Err(BackendError::Internal(
                "the shim exited without reporting".into(),
            )),
        }
    }

    fn attach(&self, id: &str) -> Result<Box<dyn SandboxHandle>, BackendError> {
        let handle = ShimHandle::new(&self.state_dir, id);
        handle.connect()?;
        Ok(Box::new(handle))
    }

    fn reap(&self, id: &str) -> Option<Report> {
        // The shim is gone: collect what it or its death left.
        if let Ok(state) = crate::state::StateDir::open(&self.state_dir) {
            crate::gc::collect(&state, stockade_cgroup::Driver::detect().ok().as_ref());
        }
        let path = report_path(&self.state_dir, id);
        let report = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let _ = std::fs::remove_file(&path);
        report
    }
}

/// One sandbox's shim, reached by path.
#[derive(Debug)]
pub struct ShimHandle {
    id: String,
    socket: PathBuf,
    events: Mutex<Option<OwnedFd>>,
}

impl ShimHandle {
    fn new(state_dir: &Path, id: &str) -> ShimHandle {
        ShimHandle {
            id: id.to_string(),
            socket: socket_path(state_dir, id),
            events: Mutex::new(None),
        }
    }

    fn connect(&self) -> Result<OwnedFd, BackendError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| BackendError::Internal(format!("cannot create a socket: {e}")))?;
        let addr =
            UnixAddr::new(&self.socket).map_err(|e| BackendError::Internal(e.to_string()))?;
        connect(fd.as_raw_fd(), &addr).map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        Ok(fd)
    }

    fn call(&self, req: &ShimRequest, fds: &[RawFd]) -> Result<(OwnedFd, ShimReply), BackendError> {
        let fd = self.connect()?;
        iproto::send_msg(fd.as_fd(), req, fds)
            .map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        let reply = recv(&fd, &self.id)?;
        Ok((fd, reply))
    }
}

fn recv(fd: &OwnedFd, id: &str) -> Result<ShimReply, BackendError> {
    match iproto::recv_msg::<ShimReply>(fd.as_fd()) {
        Ok(Some((
            ShimReply::Failed {
                kind,
                message,
                step,
                errno,
            },
            _,
        ))) => Err(match kind {
            FailKind::Invalid => BackendError::Invalid(message),
            FailKind::NotFound => BackendError::Invalid(message),
            FailKind::Spawn => BackendError::Spawn {
                step: step.unwrap_or_default(),
                errno: errno.unwrap_or(0),
                message,
            },
            FailKind::Internal => BackendError::Internal(message),
        }),
        Ok(Some((reply, _))) => Ok(reply),
        Ok(None) | Err(_) => Err(BackendError::NotRunning(id.to_string())),
    }
}

fn unexpected(r: ShimReply) -> BackendError {
    BackendError::Internal(format!("unexpected answer from the shim: {r:?}"))
}

impl SandboxHandle for ShimHandle {
    fn id(&self) -> &str {
        &self.id
    }

    fn exec(&self, req: &ExecRequest, stdio: [OwnedFd; 3]) -> Result<i32, BackendError> {
        let raw: Vec<RawFd> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        let (_, reply) = self.call(&ShimRequest::Exec { req: req.clone() }, &raw)?;
        match reply {
            ShimReply::Started { pid } => Ok(pid),
            r => Err(unexpected(r)),
        }
    }

    fn wait(
        &self,
        pid: i32,
        timeout: Option<Duration>,
    ) -> Result<(Option<i32>, Option<i32>), BackendError> {
        let fd = self.connect()?;
        iproto::send_msg(fd.as_fd(), &ShimRequest::Wait { pid }, &[])
            .map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        if let Some(t) = timeout {
            let mut pfd = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = nix::poll::PollTimeout::try_from(t.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(nix::poll::PollTimeout::MAX);
            if matches!(nix::poll::poll(&mut pfd, ms), Ok(0)) {
                return Err(BackendError::Internal(format!(
                    "process {pid} is still running"
                )));
            }
        }
        match recv(&fd, &self.id)? {
            ShimReply::Ended {
                exit_code, signal, ..
            } => Ok((exit_code, signal)),
            r => Err(unexpected(r)),
        }
    }

    fn signal(&self, pid: i32, sig: i32) -> Result<(), BackendError> {
        match self.call(&ShimRequest::Signal { pid, sig }, &[])?.1 {
            ShimReply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn status(&self) -> Result<SandboxStatus, BackendError> {
        match self.call(&ShimRequest::Status, &[])?.1 {
            ShimReply::Status { status } => Ok(status),
            r => Err(unexpected(r)),
        }
    }

    fn next_event(&self) -> Option<SandboxEvent> {
        let mut guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let fd = self.connect().ok()?;
            iproto::send_msg(fd.as_fd(), &ShimRequest::Subscribe, &[]).ok()?;
            *guard = Some(fd);
        }
        let fd = guard.as_ref()?;
        match recv(fd, &self.id) {
            Ok(ShimReply::Event { event }) => Some(event),
            _ => {
                *guard = None;
                None
            }
        }
    }

    fn destroy(&self) -> Result<Report, BackendError> {
        match self.call(&ShimRequest::Destroy, &[])?.1 {
            ShimReply::Destroyed { report } => Ok(*report),
            r => Err(unexpected(r)),
        }
    }
}
