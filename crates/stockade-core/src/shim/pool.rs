//! Idle shims kept ready for the daemon, forked by a zygote.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use stockade_isolate::proto as iproto;

use super::backend::{start_shim, POOL_NICE};

/// Idle shims, started ahead of need so that a create does not wait for
/// the binary to be exec'd and linked (about a millisecond and a half).
///
/// A pooled shim is a `stockade shim` blocked reading its start request,
/// and each one serves exactly one sandbox: it holds no state of any
/// earlier sandbox because it never had one. Its command line says `--id`
/// [`super::POOLED_ID`] until it gets its sandbox's id. Idle shims are
/// forked by a zygote (`stockade shim --id pool-waiting --zygote`, see
/// [`super::zygote`]), itself started once and never given a sandbox;
/// when the zygote cannot be had, each is exec'd as before. Its stdin is
/// a pipe only we hold: if the daemon dies, even by `kill -9`, an idle shim
/// reads end-of-file and exits, and so does the zygote on its socket.
/// [`Pool::shutdown`] (and dropping the pool) kills the idle ones.
#[derive(Debug)]
pub(super) struct Pool {
    exe: PathBuf,
    size: usize,
    state: Mutex<PoolState>,
    /// The zygote, used by one refill at a time.
    zygote: Mutex<Option<Zygote>>,
}

#[derive(Debug, Default)]
pub(super) struct PoolState {
    /// Oldest first: the one taken has had the longest to finish starting.
    pub(super) idle: std::collections::VecDeque<IdleShim>,
    /// A refill thread is running.
    refilling: bool,
    closed: bool,
}

/// A shim waiting for its start request.
#[derive(Debug)]
pub(super) struct IdleShim {
    pub(super) pid: u32,
    /// Where the start request goes; closing it unused ends the shim.
    pub(super) stdin: Option<std::fs::File>,
    /// The readiness line comes back here.
    pub(super) stdout: Option<std::fs::File>,
    /// Polls readable once the shim has exited.
    pidfd: Option<OwnedFd>,
    /// Set when we exec'd it ourselves: our child, to be reaped.
    child: Option<Child>,
}

impl IdleShim {
    /// A shim we exec'd ourselves (`start_shim`).
    pub(super) fn exec_child(mut child: Child) -> IdleShim {
        let pid = child.id();
        // Our unreaped child: its pid cannot have been reused.
        let pidfd = stockade_isolate::sys::pidfd_open(pid as i32).ok();
        IdleShim {
            pid,
            stdin: child
                .stdin
                .take()
                .map(|s| std::fs::File::from(OwnedFd::from(s))),
            stdout: child
                .stdout
                .take()
                .map(|s| std::fs::File::from(OwnedFd::from(s))),
            pidfd,
            child: Some(child),
        }
    }

    pub(super) fn alive(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            return matches!(c.try_wait(), Ok(None));
        }
        self.pidfd.as_ref().is_some_and(|fd| {
            let mut fds = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            matches!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
                Ok(0)
            )
        })
    }

    /// Reaps it if it is our child (an exec'd shim's first process exits
    /// once it has forked the real shim).
    pub(super) fn reap(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.wait();
        }
    }

    /// Kills an idle shim; returns once it has exited (bounded).
    pub(super) fn kill(&mut self) {
        self.stdin = None;
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
            return;
        }
        if let Some(fd) = self.pidfd.as_ref() {
            let _ = stockade_isolate::sys::pidfd_send_signal(fd, libc::SIGKILL);
            crate::teardown::wait_gone(fd);
        }
    }
}

/// The daemon's end of a zygote.
#[derive(Debug)]
struct Zygote {
    child: Child,
    sock: OwnedFd,
}

impl Zygote {
    fn start(exe: &Path) -> std::io::Result<Zygote> {
        use nix::sys::socket::socketpair;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let child = Command::new(exe)
            .args(["shim", "--id", super::POOLED_ID, super::ZYGOTE_FLAG])
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Zygote { child, sock: ours })
    }

    /// One idle shim, forked by the zygote; `None` if the zygote failed
    /// (it is then killed).
    fn fork_idle(&mut self) -> Option<IdleShim> {
        let shim = self.ask();
        if shim.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        shim
    }

    fn ask(&mut self) -> Option<IdleShim> {
        let (req_r, req_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        iproto::send_msg(
            self.sock.as_fd(),
            &super::ZygoteRequest {},
            &[req_r.as_raw_fd(), ready_w.as_raw_fd()],
        )
        .ok()?;
        drop((req_r, ready_w));
        // A zygote answers at once; one that does not is broken.
        let mut fds = [nix::poll::PollFd::new(
            self.sock.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ZYGOTE_ANSWER_MS)),
            Ok(1)
        ) {
            return None;
        }
        let (reply, mut pidfds) =
            iproto::recv_msg::<super::ZygoteReply>(self.sock.as_fd()).ok()??;
        if reply.pid <= 0 || pidfds.len() != 1 {
            return None;
        }
        Some(IdleShim {
            pid: reply.pid as u32,
            stdin: Some(std::fs::File::from(req_w)),
            stdout: Some(std::fs::File::from(ready_r)),
            pidfd: pidfds.pop(),
            child: None,
        })
    }
}

/// How long a zygote may take to answer before it counts as broken.
const ZYGOTE_ANSWER_MS: u16 = 5000;

impl Pool {
    pub(super) fn new(exe: PathBuf, size: usize) -> Pool {
        Pool {
            exe,
            size,
            state: Mutex::default(),
            zygote: Mutex::default(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle shim that is still alive, if there is one.
    pub(super) fn take(&self) -> Option<IdleShim> {
        let mut st = self.lock();
        while let Some(mut s) = st.idle.pop_front() {
            // One that died (killed by someone) is useless.
            if s.alive() {
                return Some(s);
            }
            s.reap();
        }
        None
    }

    /// Tops the pool up on a thread of its own, unless one already does.
    pub(super) fn refill_in_background(pool: &Arc<Pool>) {
        {
            let mut st = pool.lock();
            if pool.size == 0 || st.closed || st.refilling || st.idle.len() >= pool.size {
                return;
            }
            st.refilling = true;
        }
        let p = pool.clone();
        let spawned = std::thread::Builder::new()
            .name("stockade-shim-pool".into())
            .spawn(move || p.refill());
        if spawned.is_err() {
            // Creates start their own shims meanwhile; retried next time.
            pool.lock().refilling = false;
        }
    }

    fn refill(&self) {
        // Starting a shim is work for later: at low priority it yields
        // the CPU to the requests in flight. The nice value is this
        // thread's own (Linux), inherited by the zygote and the shims it
        // forks; each resets it once it gets a sandbox.
        // SAFETY: setpriority and gettid only read their integer
        // arguments; no memory is involved.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, POOL_NICE);
        }
        loop {
            if self.lock().idle.len() >= self.size {
                break;
            }
            let Some(mut shim) = self.start_idle() else {
                break;
            };
            let mut st = self.lock();
            if st.closed {
                drop(st);
                shim.kill();
                break;
            }
            st.idle.push_back(shim);
        }
        self.lock().refilling = false;
    }

    /// One idle shim: forked by the zygote (started first if need be), or
    /// exec'd if the zygote cannot be had.
    fn start_idle(&self) -> Option<IdleShim> {
        {
            let mut z = self.zygote.lock().unwrap_or_else(|p| p.into_inner());
            let alive = z
                .as_mut()
                .is_some_and(|z| matches!(z.child.try_wait(), Ok(None)));
            if !alive {
                if let Some(mut old) = z.take() {
                    let _ = old.child.wait();
                }
                *z = Zygote::start(&self.exe).ok();
            }
            if let Some(shim) = z.as_mut().and_then(Zygote::fork_idle) {
                return Some(shim);
            }
            *z = None;
        }
        start_shim(&self.exe, super::POOLED_ID)
            .map(IdleShim::exec_child)
            .ok()
    }

    /// Kills every idle shim and the zygote; no more are started.
    pub(super) fn shutdown(&self) {
        let idle = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.idle)
        };
        for mut s in idle {
            s.kill();
        }
        if let Some(mut z) = self.zygote.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = z.child.kill();
            let _ = z.child.wait();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}
