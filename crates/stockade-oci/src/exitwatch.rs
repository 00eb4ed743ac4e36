//! How the keeper learns init's exit status. init is not the keeper's
//! child (the engine's subreaper reaps it, usually at once), so the
//! status comes from the kernel's process events connector
//! (`NETLINK_CONNECTOR`, `CN_IDX_PROC`), which announces every exit with
//! its status to host root. The connector serves only the initial network
//! namespace: a keeper elsewhere makes the socket there (`/proc/1/ns/net`)
//! if it may; nothing is sent on it but the subscription.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_DONE: u16 = 3;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct cn_msg` without its data.
const CN_MSG: usize = 20;
/// `struct proc_event` up to its union: what, cpu, timestamp.
const EVENT_HEAD: usize = 16;

/// A subscription to process exits.
#[derive(Debug)]
pub struct ExitWatch {
    sock: OwnedFd,
}

fn netns_of_pid1() -> Option<OwnedFd> {
    nix::fcntl::open(
        "/proc/1/ns/net",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}

impl ExitWatch {
    /// Subscribes; `None` where the connector is not available (then the
    /// status is read from `/proc` while init is a zombie, if it still is).
    pub fn new(pid: i32) -> Option<ExitWatch> {
        if let Some(sock) = Self::subscribe(pid) {
            return Some(ExitWatch { sock });
        }
        // Outside the initial network namespace there is no connector:
        // the socket is made there, if this process may enter it.
        let home = nix::fcntl::open(
            "/proc/thread-self/ns/net",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        let init = netns_of_pid1()?;
        nix::sched::setns(&init, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let sock = Self::subscribe(pid);
        // Back home whatever happened: the egress stack connects from here.
        if nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            // SAFETY: leaves at once; a keeper in the wrong namespace must
            // not go on (its egress stack would connect from there).
            unsafe { libc::_exit(1) };
        }
        sock.map(|sock| ExitWatch { sock })
    }

    /// A socket filter that lets only the exit of `pid` through: the
    /// connector announces every fork, exec and exit on the host, which
    /// the keeper should not wake up for.
    fn only_exit_of(sock: RawFd, pid: i32) -> bool {
        // BPF loads words in network byte order; the event is native.
        let be = |v: u32| u32::from_be_bytes(v.to_ne_bytes());
        let what = (NLMSG_HDR + CN_MSG) as u32;
        let data = what + EVENT_HEAD as u32;
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
        let ret = libc::BPF_RET | libc::BPF_K;
        let prog = [
            op(ld, 0, 0, what),
            op(jeq, 0, 3, be(PROC_EVENT_EXIT)),
            op(ld, 0, 0, data + 4), // process_tgid
            op(jeq, 0, 1, be(pid as u32)),
            op(ret, 0, 0, u32::MAX),
            op(ret, 0, 0, 0),
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr().cast_mut(),
        };
        // SAFETY: `fprog` points at `prog`, both live for the call; the
        // kernel copies the program.
        let r = unsafe {
            libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        r == 0
    }

    fn subscribe(pid: i32) -> Option<OwnedFd> {
        // SAFETY: plain socket call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: a descriptor we just opened and own.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        if !Self::only_exit_of(raw, pid) {
            return None;
        }
        // SAFETY: sockaddr_nl is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: `addr` is a live sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return None;
        }
        let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG + 4);
        msg.extend_from_slice(&((NLMSG_HDR + CN_MSG + 4) as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: sends `msg.len()` bytes from a live buffer.
        let n = unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) };
        (n == msg.len() as isize).then_some(sock)
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads what is queued; returns the wait status of `pid` if its exit
    /// was among it.
    pub fn exit_of(&self, pid: i32) -> Option<i32> {
        let mut buf = vec![0u8; 8192];
        let mut found = None;
        loop {
            // SAFETY: receives into a live buffer of the length given.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                // Empty, or events lost (ENOBUFS): what was found stands.
                if n < 0 && nix::errno::Errno::last() == nix::errno::Errno::ENOBUFS {
                    continue;
                }
                return found;
            }
            found = found.or_else(|| parse_exit(&buf[..n as usize], pid));
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The exit status of `pid` (a thread-group leader) in one datagram of
/// netlink messages, if it announces that exit.
fn parse_exit(mut b: &[u8], pid: i32) -> Option<i32> {
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0)? as usize;
        if len < NLMSG_HDR || len > b.len() {
            return None;
        }
        let ev = NLMSG_HDR + CN_MSG;
        let data = ev + EVENT_HEAD;
        if u32_at(b, ev) == Some(PROC_EVENT_EXIT)
            && u32_at(b, data) == Some(pid as u32)
            && u32_at(b, data + 4) == Some(pid as u32)
        {
            return u32_at(b, data + 8).map(|s| s as i32);
        }
        b = &b[(len + 3) & !3..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, pid: u32, tgid: u32, status: u32) -> Vec<u8> {
        let len = NLMSG_HDR + CN_MSG + EVENT_HEAD + 24;
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        let ev = NLMSG_HDR + CN_MSG;
        b[ev..ev + 4].copy_from_slice(&what.to_ne_bytes());
        let d = ev + EVENT_HEAD;
        b[d..d + 4].copy_from_slice(&pid.to_ne_bytes());
        b[d + 4..d + 8].copy_from_slice(&tgid.to_ne_bytes());
        b[d + 8..d + 12].copy_from_slice(&status.to_ne_bytes());
        b
    }

    #[test]
    fn exits_are_found_by_leader_pid() {
        assert_eq!(
            parse_exit(&event(PROC_EVENT_EXIT, 42, 42, 3 << 8), 42),
            Some(3 << 8)
        );
        // A thread of 42, another process, a fork event: not init's exit.
        assert_eq!(parse_exit(&event(PROC_EVENT_EXIT, 43, 42, 9), 42), None);
        assert_eq!(parse_exit(&event(PROC_EVENT_EXIT, 7, 7, 9), 42), None);
        assert_eq!(parse_exit(&event(1, 42, 42, 0), 42), None);
        assert_eq!(parse_exit(&[1, 2, 3], 42), None);
    }

    #[test]
    #[ignore = "needs root: the process events connector"]
    fn a_childs_exit_status_is_heard() {
        // Stopped until subscribed, so its exit cannot come first.
        let child = std::process::Command::new("sh")
            .args(["-c", "kill -STOP $$; exit 5"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let w = ExitWatch::new(pid).expect("subscribe (needs root)");
        let other = ExitWatch::new(1).expect("subscribe (needs root)");
        loop {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if st[st.rfind(')').unwrap() + 2..].starts_with('T') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
        let status = child.wait_with_output().unwrap().status;
        assert_eq!(status.code(), Some(5));
        let mut got = None;
        for _ in 0..100 {
            got = got.or_else(|| w.exit_of(pid));
            if got.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, Some(5 << 8));
        // The filter let nothing else through to a watch of another pid.
        let mut buf = [0u8; 64];
        // SAFETY: receives into a live buffer of the length given.
        let n = unsafe { libc::recv(other.fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n < 0, "a watch of pid 1 heard another process's event");
    }
}
