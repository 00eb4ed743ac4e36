//! One sandbox's shim as the daemon reaches it: requests over the shim's
//! unix socket, its events, its final report.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use stockade_isolate::proto as iproto;

use super::proto::{report_path, socket_path, FailKind, ShimReply, ShimRequest};
use crate::backend::{
    BackendError, ExecRequest, ExitWaiter, FileClient, FileError, ProcessEnd, SandboxEvent,
    SandboxHandle, SandboxStatus, Teardown,
};
use crate::report::Report;

/// One sandbox's shim, reached by path.
#[derive(Debug)]
pub struct ShimHandle {
    id: String,
    socket: PathBuf,
    /// Where the shim leaves its final report.
    report: PathBuf,
    events: Mutex<Events>,
}

/// Where `next_event` stands.
#[derive(Debug)]
enum Events {
    NotSubscribed,
    Subscribed(OwnedFd),
    /// The shim was gone before we subscribed: the end it recorded.
    Replay(std::collections::VecDeque<SandboxEvent>),
    Ended,
}

impl ShimHandle {
    pub(super) fn new(state_dir: &Path, id: &str) -> ShimHandle {
        ShimHandle {
            id: id.to_string(),
            socket: socket_path(state_dir, id),
            report: report_path(state_dir, id),
            events: Mutex::new(Events::NotSubscribed),
        }
    }

    /// The end of a sandbox whose shim is already gone, from the report it
    /// left: `expired` if it expired, then `destroyed`.
    pub(super) fn recorded_end(&self) -> std::collections::VecDeque<SandboxEvent> {
        let report: Option<Report> = std::fs::read(&self.report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut out = std::collections::VecDeque::new();
        if let Some(r) = report {
            if r.outcome == crate::report::Outcome::Timeout {
                out.push_back(SandboxEvent::Expired);
            }
            out.push_back(SandboxEvent::Destroyed(Box::new(r)));
        }
        out
    }

    pub(super) fn connect(&self) -> Result<OwnedFd, BackendError> {
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

    pub(super) fn call(
        &self,
        req: &ShimRequest,
        fds: &[RawFd],
    ) -> Result<(OwnedFd, ShimReply), BackendError> {
        let fd = self.connect()?;
        iproto::send_msg(fd.as_fd(), req, fds)
            .map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        let reply = recv(&fd, &self.id)?;
        Ok((fd, reply))
    }
}

pub(super) fn recv(fd: &OwnedFd, id: &str) -> Result<ShimReply, BackendError> {
    recv_with_fds(fd, id).map(|(reply, _)| reply)
}

/// [`recv`], with the descriptors the reply carried.
pub(super) fn recv_with_fds(
    fd: &OwnedFd,
    id: &str,
) -> Result<(ShimReply, Vec<OwnedFd>), BackendError> {
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
        Ok(Some((reply, fds))) => Ok((reply, fds)),
        Ok(None) | Err(_) => Err(BackendError::NotRunning(id.to_string())),
    }
}

impl ShimHandle {
    /// Waits for the `Ended` the shim sends on the connection `fd` that
    /// started process `pid` (with the breach that killed it, if any). A
    /// shim that hangs up instead (one from an older daemon) is asked again
    /// with a `Wait` of its own.
    fn end_waiter(self: Arc<Self>, fd: OwnedFd, pid: i32) -> ExitWaiter {
        Box::new(move || match recv(&fd, &self.id) {
            Ok(ShimReply::Ended {
                exit_code,
                signal,
                killed_for,
                ..
            }) => Ok(ProcessEnd {
                exit_code,
                signal,
                killed_for,
            }),
            Ok(r) => Err(unexpected(r)),
            Err(BackendError::NotRunning(_)) => self.wait(pid, None).map(ProcessEnd::plain),
            Err(e) => Err(e),
        })
    }
}

pub(super) fn unexpected(r: ShimReply) -> BackendError {
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

    fn exec_waiting(
        self: Arc<Self>,
        req: &ExecRequest,
        stdio: [OwnedFd; 3],
    ) -> Result<(i32, ExitWaiter), BackendError> {
        let raw: Vec<RawFd> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        let (fd, reply) = self.call(&ShimRequest::Exec { req: req.clone() }, &raw)?;
        // Our copies of the process's stdio must close now: its readers
        // see end-of-file only once every writer is gone.
        drop(stdio);
        let pid = match reply {
            ShimReply::Started { pid } => pid,
            r => return Err(unexpected(r)),
        };
        let waiter = self.end_waiter(fd, pid);
        Ok((pid, waiter))
    }

    fn exec_tty(
        self: Arc<Self>,
        req: &ExecRequest,
    ) -> Result<(i32, OwnedFd, ExitWaiter), BackendError> {
        let mut req = req.clone();
        req.tty = true;
        let fd = self.connect()?;
        iproto::send_msg(fd.as_fd(), &ShimRequest::Exec { req }, &[])
            .map_err(|_| BackendError::NotRunning(self.id.clone()))?;
        let (reply, mut fds) = recv_with_fds(&fd, &self.id)?;
        let pid = match reply {
            ShimReply::Started { pid } => pid,
            r => return Err(unexpected(r)),
        };
        let master = fds.pop().ok_or_else(|| {
            BackendError::Internal(format!(
                "the shim started process {pid} without handing over its terminal"
            ))
        })?;
        let waiter = self.end_waiter(fd, pid);
        Ok((pid, master, waiter))
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

    fn files(&self, root: Option<bool>) -> Result<FileClient, BackendError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| BackendError::Internal(format!("cannot create a socket pair: {e}")))?;
        match self
            .call(&ShimRequest::Files { root }, &[theirs.as_raw_fd()])?
            .1
        {
            ShimReply::Done => {}
            r => return Err(unexpected(r)),
        }
        drop(theirs);
        FileClient::new(OwnedFd::from(ours)).map_err(|e| match e {
            FileError::Failed { message, .. } => BackendError::Internal(message),
            e => BackendError::Internal(stockade_isolate::error_chain(&e)),
        })
    }

    fn status(&self) -> Result<SandboxStatus, BackendError> {
        match self.call(&ShimRequest::Status, &[])?.1 {
            ShimReply::Status { status } => Ok(status),
            r => Err(unexpected(r)),
        }
    }

    fn next_event(&self) -> Option<SandboxEvent> {
        let mut guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*guard, Events::NotSubscribed) {
            let subscribed = self
                .connect()
                .ok()
                .filter(|fd| iproto::send_msg(fd.as_fd(), &ShimRequest::Subscribe, &[]).is_ok());
            *guard = match subscribed {
                Some(fd) => Events::Subscribed(fd),
                // A sandbox can end before anyone subscribes (a ttl
                // shorter than a slow create): tell its recorded end.
                None => Events::Replay(self.recorded_end()),
            };
        }
        let next = match &mut *guard {
            Events::Subscribed(fd) => match recv(fd, &self.id) {
                Ok(ShimReply::Event { event }) => Some(event),
                _ => None,
            },
            Events::Replay(queue) => queue.pop_front(),
            Events::NotSubscribed | Events::Ended => None,
        };
        if next.is_none() {
            *guard = Events::Ended;
        }
        next
    }

    fn destroy(&self) -> Result<Report, BackendError> {
        let (report, teardown) = self.destroy_deferred()?;
        teardown();
        Ok(report)
    }

    fn destroy_deferred(&self) -> Result<(Report, Teardown), BackendError> {
        match self.call(&ShimRequest::Destroy, &[])? {
            // The shim answers once the sandbox is dead, removes its
            // cgroup and directory, and hangs up when done.
            (fd, ShimReply::Destroyed { report }) => Ok((
                *report,
                Box::new(
                    move || {
                        while let Ok(Some(_)) = iproto::recv_msg::<ShimReply>(fd.as_fd()) {}
                    },
                ),
            )),
            (_, r) => Err(unexpected(r)),
        }
    }
}
