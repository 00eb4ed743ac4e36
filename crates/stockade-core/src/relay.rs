//! Keeping the caller's terminal out of the sandbox when it has no
//! terminal of its own (`stockade run` without `--tty`).
//!
//! A terminal descriptor handed to the workload would let it change the
//! terminal's settings (`stty` outliving the run), read what the user
//! types into other programs, or send job-control requests. So each of
//! the command's stdin, stdout and stderr that is a terminal is replaced
//! by a pipe, and the supervisor copies between the two — as Docker does
//! without `-t`. Pipes and files the caller gives are passed as they are.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags};

/// Most input held while the workload is not reading its stdin.
const MAX_PENDING: usize = 64 << 10;

/// The copies between the caller's terminal and the sandbox's pipes.
#[derive(Debug)]
pub struct StdioRelay {
    /// Our terminal (stdin) and the write end of the sandbox's stdin pipe.
    input: Option<(RawFd, OwnedFd)>,
    /// Typed but not yet taken by the sandbox.
    pending: Vec<u8>,
    /// Read ends of the sandbox's stdout/stderr pipes, and our terminal.
    outputs: Vec<(OwnedFd, RawFd)>,
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the caller's stdio descriptors stay open for the whole run
    // (`RunOptions::stdio` says so; our own 0-2 for the process's life).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// The stdio to give the command, and the relay that goes with it.
#[derive(Debug)]
pub struct Wrapped {
    /// Descriptors to send to init: the caller's own, or pipe ends.
    pub fds: [RawFd; 3],
    /// The sandbox's ends of the pipes, kept open until they are sent.
    pub keep: Vec<OwnedFd>,
    pub relay: Option<StdioRelay>,
}

impl StdioRelay {
    /// Replaces each of `stdio` that is a terminal by a pipe.
    pub fn wrap(stdio: [RawFd; 3]) -> nix::Result<Wrapped> {
        let mut fds = stdio;
        let mut keep = Vec::new();
        let mut relay = StdioRelay {
            input: None,
            pending: Vec::new(),
            outputs: Vec::new(),
        };
        for (i, fd) in stdio.into_iter().enumerate() {
            if !nix::unistd::isatty(borrow(fd)).unwrap_or(false) {
                continue;
            }
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            if i == 0 {
                fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
                fds[0] = r.as_raw_fd();
                keep.push(r);
                relay.input = Some((fd, w));
            } else {
                fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
                fds[i] = w.as_raw_fd();
                keep.push(w);
                relay.outputs.push((r, fd));
            }
        }
        let active = relay.input.is_some() || !relay.outputs.is_empty();
        Ok(Wrapped {
            fds,
            keep,
            relay: active.then_some(relay),
        })
    }

    /// Adds the descriptors to watch, in the order `handle` expects.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        for (r, _) in &self.outputs {
            fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
        }
        if let Some((tty, pipe)) = &self.input {
            if self.pending.is_empty() {
                fds.push(PollFd::new(borrow(*tty), PollFlags::POLLIN));
            } else {
                fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLOUT));
            }
        }
    }

    /// Moves whatever is ready; `ready` matches the order of `poll_fds`.
    pub fn handle(&mut self, ready: &[bool]) {
        let n = self.outputs.len();
        let mut done = Vec::new();
        for (i, (r, tty)) in self.outputs.iter().enumerate() {
            if ready.get(i).copied().unwrap_or(false) && !pump(r, *tty) {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            self.outputs.remove(i);
        }
        if self.input.is_some() && ready.get(n).copied().unwrap_or(false) {
            self.move_input();
        }
    }

    fn move_input(&mut self) {
        let Some((tty, pipe)) = &self.input else {
            return;
        };
        if self.pending.is_empty() {
            let mut buf = [0u8; 4096];
            match nix::unistd::read(borrow(*tty), &mut buf) {
                Ok(0) | Err(_) => {
                    // End of input (^D) or a terminal gone: the sandbox's
                    // stdin reaches its end too.
                    self.input = None;
                    return;
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
        loop {
            match nix::unistd::write(pipe, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                    if self.pending.is_empty() {
                        return;
                    }
                }
                Err(Errno::EINTR) => {}
                // Full: the sandbox is not reading; wait for room.
                Err(Errno::EAGAIN) => {
                    self.pending.truncate(MAX_PENDING);
                    return;
                }
                // Nobody reads the sandbox's stdin any more.
                Err(_) => {
                    self.input = None;
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// Copies what the sandbox wrote last and stops relaying input. Its
    /// writers are gone by now, so every pipe reaches its end at once; a
    /// pipe that does not within a few seconds is left.
    pub fn finish(&mut self) {
        self.input = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for (r, tty) in self.outputs.drain(..) {
            while pump(&r, tty) && std::time::Instant::now() < deadline {
                let mut p = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(100u16));
            }
        }
    }
}

/// Copies what `r` holds to `tty`; false once `r` reached its end.
fn pump(r: &OwnedFd, tty: RawFd) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match nix::unistd::read(r, &mut buf) {
            Ok(0) => return false,
            Ok(n) => write_all(borrow(tty), &buf[..n]),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(100u16));
            }
            Err(_) => return,
        }
    }
}
