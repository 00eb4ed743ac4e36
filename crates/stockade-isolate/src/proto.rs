//! Messages between the supervisor and the sandbox's init over their
//! `SOCK_SEQPACKET` socket pair. Each message is one packet: a tag byte and
//! a short text payload. A terminal's master side travels with `Ready` as
//! an `SCM_RIGHTS` descriptor.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// From init to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitMsg {
    /// The sandbox is built and the workload started; carries its pid as
    /// seen inside the sandbox.
    Ready(i32),
    /// Building the sandbox failed; the text says what and where.
    SetupFailed(String),
    /// The workload could not be started: the step that failed and errno.
    SpawnFailed { step: String, errno: i32 },
    /// The workload exited with this code.
    Exited(i32),
    /// The workload was killed by this signal.
    Signaled(i32),
}

/// From the supervisor to init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisorMsg {
    /// Id maps and cgroup are in place: go ahead.
    Go,
}

impl InitMsg {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            InitMsg::Ready(pid) => format!("R{pid}"),
            InitMsg::SetupFailed(m) => format!("F{m}"),
            InitMsg::SpawnFailed { step, errno } => format!("E{errno}:{step}"),
            InitMsg::Exited(c) => format!("X{c}"),
            InitMsg::Signaled(s) => format!("S{s}"),
        }
        .into_bytes()
    }

    pub fn decode(b: &[u8]) -> Option<InitMsg> {
        let (&tag, rest) = b.split_first()?;
        let text = std::str::from_utf8(rest).ok()?;
        Some(match tag {
            b'R' => InitMsg::Ready(text.parse().ok()?),
            b'F' => InitMsg::SetupFailed(text.to_string()),
            b'E' => {
                let (errno, step) = text.split_once(':')?;
                InitMsg::SpawnFailed {
                    step: step.to_string(),
                    errno: errno.parse().ok()?,
                }
            }
            b'X' => InitMsg::Exited(text.parse().ok()?),
            b'S' => InitMsg::Signaled(text.parse().ok()?),
            _ => return None,
        })
    }
}

/// Sends one packet, with an optional descriptor attached.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let iov = [std::io::IoSlice::new(data)];
    let fds;
    let cmsgs: &[ControlMessage<'_>] = match fd {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// Receives one packet. `Ok(None)` means the other side is gone.
pub fn recv(sock: BorrowedFd<'_>) -> nix::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in
                    // our table; nobody else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        (msg.bytes, fd)
    };
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            InitMsg::Ready(2),
            InitMsg::SetupFailed("cannot mount /proc: EPERM".into()),
            InitMsg::SpawnFailed {
                step: "exec ls".into(),
                errno: 2,
            },
            InitMsg::Exited(0),
            InitMsg::Exited(255),
            InitMsg::Signaled(9),
        ] {
            assert_eq!(InitMsg::decode(&m.encode()), Some(m));
        }
        assert_eq!(InitMsg::decode(b""), None);
        assert_eq!(InitMsg::decode(b"Xnope"), None);
        assert_eq!(InitMsg::decode(b"Q1"), None);
    }
}
