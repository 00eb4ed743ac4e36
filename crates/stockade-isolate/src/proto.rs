//! Messages between the supervisor and the sandbox's init over their
//! `SOCK_SEQPACKET` socket pair: one JSON message per packet, with file
//! descriptors (stdio of a process to start, a terminal's master side, an
//! idmapped mount) attached as `SCM_RIGHTS`.
//!
//! Init serves many processes over one sandbox's life: the supervisor asks
//! it to spawn, signal and finally shut down; init answers with the pid of
//! each spawned process and reports every exit. The same protocol serves
//! `stockade run` (one process) and the daemon (many).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Largest message accepted; argv and environment must fit.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Most descriptors one message carries (stdin, stdout, stderr).
const MAX_FDS: usize = 3;

/// A process to start inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Chosen by the supervisor; echoed in the answer.
    pub tag: u64,
    pub argv: Vec<String>,
    /// `KEY=VALUE` strings: the whole environment.
    pub env: Vec<String>,
    pub cwd: String,
    /// Allocate a terminal in the sandbox's devpts (its master side comes
    /// back with `Spawned`). Otherwise the message carries three
    /// descriptors, which become the process's stdin, stdout and stderr.
    pub tty: bool,
    /// Run as root inside (`Some(true)`) or as the agent (`Some(false)`)
    /// instead of as the sandbox's policy says (`None`). Root keeps the
    /// sandbox's Landlock domain and gets no host privilege either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_root: Option<bool>,
    /// The terminal's size (rows, columns), set before the process starts
    /// so that it never sees a terminal of size 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<(u16, u16)>,
}

/// From the supervisor to init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToInit {
    /// A mount tree init needs to build the sandbox (descriptor attached):
    /// an idmapped lower layer of the copy-on-write root or an image
    /// layer, the workspace, a bind source. Sent before `Go`.
    Lower {
        name: String,
    },
    /// Id maps and cgroup are in place: build the sandbox.
    Go,
    Spawn(SpawnRequest),
    /// Start a file helper (see [`crate::files`]) on the attached socket,
    /// as root inside the sandbox or as its workloads' user.
    Files {
        tag: u64,
        root: bool,
    },
    /// Send `sig` to the process group of a process init spawned.
    Signal {
        pid: i32,
        sig: i32,
    },
    /// Kill everything and exit.
    Shutdown,
}

/// From init to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum FromInit {
    /// The sandbox is built; spawn requests are served from now on.
    Ready,
    /// Building the sandbox failed; the text says what and where.
    SetupFailed { message: String },
    /// A process started (pid as seen inside the sandbox).
    Spawned { tag: u64, pid: i32 },
    /// A file helper started (its pid inside the sandbox); it greets on
    /// its socket once it has taken the sandbox's identity.
    FilesStarted { tag: u64, pid: i32 },
    /// A process could not be started: the step that failed and errno.
    SpawnFailed { tag: u64, step: String, errno: i32 },
    /// A spawned process exited with `code`.
    Exited { pid: i32, code: i32 },
    /// A spawned process was killed by `sig`.
    Signaled { pid: i32, sig: i32 },
}

/// Why a message could not be sent or read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("the control socket failed")]
    Io(#[from] nix::Error),
    #[error("malformed control message: {0}")]
    Malformed(String),
}

/// Sends a message with optional descriptors.
pub fn send_msg<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[RawFd],
) -> Result<(), ProtoError> {
    let data = serde_json::to_vec(msg).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if data.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(ProtoError::Malformed("message too large".into()));
    }
    let iov = [std::io::IoSlice::new(&data)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message. `Ok(None)` means the other side is gone.
pub fn recv_msg<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, ProtoError> {
    // The packet's size first (MSG_TRUNC makes a peek report the whole
    // length), so the buffer is as large as the message and no larger: a
    // zeroed MAX_MESSAGE buffer per message cost 64 page faults each time.
    let size = peek_size(sock)?;
    if size > MAX_MESSAGE {
        // Take the packet off the queue (its descriptors are closed with
        // it) and refuse it.
        drop(recv_packet(sock, &mut [0u8; 1])?);
        return Err(ProtoError::Malformed(format!(
            "message of {size} bytes, more than {MAX_MESSAGE}"
        )));
    }
    let mut buf = vec![0u8; size];
    let (n, fds) = recv_packet(sock, &mut buf)?;
    if n == 0 {
        // The peer's end (or an empty packet, which we never send).
        return Ok(None);
    }
    let msg =
        serde_json::from_slice(&buf[..n]).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    Ok(Some((msg, fds)))
}

/// Takes the next packet off the queue into `buf` (truncating it if
/// `buf` is shorter) with the descriptors it carries.
fn recv_packet(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), ProtoError> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for f in raw {
                // SAFETY: SCM_RIGHTS just installed this descriptor in our
                // table; nobody else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(f) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

/// Length of the next packet, waiting for one like `recvmsg` would;
/// 0 when the peer has gone.
fn peek_size(sock: BorrowedFd<'_>) -> Result<usize, ProtoError> {
    loop {
        // SAFETY: a zero-length read into no buffer; with MSG_TRUNC the
        // kernel returns the packet's real length and copies nothing.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_PEEK | libc::MSG_TRUNC,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EINTR => continue,
            e => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn messages_and_descriptors_round_trip() {
        let (a, b) = pair();
        let req = ToInit::Spawn(SpawnRequest {
            tag: 7,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/usr/bin".into()],
            cwd: "/workspace".into(),
            tty: false,
            as_root: None,
            tty_size: None,
        });
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let raw = devnull.as_raw_fd();
        send_msg(a.as_fd(), &req, &[raw, raw, raw]).unwrap();
        let (got, fds): (ToInit, _) = recv_msg(b.as_fd()).unwrap().unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 3);
        for m in [
            FromInit::Ready,
            FromInit::Spawned { tag: 7, pid: 2 },
            FromInit::SpawnFailed {
                tag: 7,
                step: "run x".into(),
                errno: 2,
            },
            FromInit::Exited { pid: 2, code: 255 },
            FromInit::FilesStarted { tag: 8, pid: 3 },
            FromInit::Signaled { pid: 2, sig: 9 },
            FromInit::SetupFailed {
                message: "no".into(),
            },
        ] {
            send_msg(b.as_fd(), &m, &[]).unwrap();
            let (got, fds): (FromInit, _) = recv_msg(a.as_fd()).unwrap().unwrap();
            assert_eq!(got, m);
            assert!(fds.is_empty());
        }
        drop(b);
        assert!(recv_msg::<FromInit>(a.as_fd()).unwrap().is_none());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let (a, b) = pair();
        for junk in [&b"{"[..], b"{\"op\":\"format_disk\"}", b"\xff\xfe", b"[]"] {
            nix::sys::socket::send(a.as_raw_fd(), junk, MsgFlags::empty()).unwrap();
            assert!(matches!(
                recv_msg::<ToInit>(b.as_fd()),
                Err(ProtoError::Malformed(_))
            ));
        }
    }

    #[test]
    fn oversized_packets_are_refused_and_their_descriptors_closed() {
        let (a, b) = pair();
        let big = vec![b' '; MAX_MESSAGE + 1];
        // The default send buffer (about 208 KiB) could not even queue it.
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBufForce, &(4 << 20))
            .expect("SO_SNDBUFFORCE (tests run as root)");
        let (keep, other) = pair();
        let iov = [std::io::IoSlice::new(&big)];
        let fds = [keep.as_raw_fd()];
        sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(keep);
        match recv_msg::<ToInit>(b.as_fd()) {
            Err(ProtoError::Malformed(m)) => assert!(m.contains("bytes"), "{m}"),
            other => panic!("oversized packet accepted: {other:?}"),
        }
        // The refused packet's descriptor did not stay in our table: it
        // was the last copy of `keep`, so its peer now reads end-of-file.
        let mut byte = [0u8; 1];
        let n = nix::sys::socket::recv(other.as_raw_fd(), &mut byte, MsgFlags::MSG_DONTWAIT);
        assert_eq!(n, Ok(0), "the refused packet's descriptor leaked");
        // The packet is gone and the next one reads whole, however small
        // or large (the buffer follows each packet's size).
        for n in [1usize, 4096, MAX_MESSAGE - 64] {
            let req = ToInit::Signal {
                pid: n as i32,
                sig: 9,
            };
            let mut text = serde_json::to_vec(&req).unwrap();
            text.resize(n.max(text.len()), b' ');
            nix::sys::socket::send(a.as_raw_fd(), &text, MsgFlags::empty()).unwrap();
            let (got, fds) = recv_msg::<ToInit>(b.as_fd()).unwrap().unwrap();
            assert_eq!(got, req);
            assert!(fds.is_empty());
        }
        drop(a);
        assert!(recv_msg::<ToInit>(b.as_fd()).unwrap().is_none());
    }
}
