//! Relaying a sandbox's terminal to ours for `--tty`.
//!
//! The pty lives in the sandbox's own devpts; init hands us its master
//! side. We put our terminal in raw mode (restored on every exit path),
//! copy keystrokes to the master and its output to our stdout, and pass
//! window size changes on.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags};
use nix::sys::termios::{self, SetArg, Termios};

/// The relay between our stdin/stdout and the sandbox's terminal.
#[derive(Debug)]
pub struct TtyRelay {
    master: OwnedFd,
    saved: Option<Termios>,
    stdin_open: bool,
    master_open: bool,
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: descriptor 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

fn stdout() -> BorrowedFd<'static> {
    // SAFETY: descriptor 1 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(1) }
}

impl TtyRelay {
    pub fn start(master: OwnedFd) -> nix::Result<TtyRelay> {
        fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let saved = termios::tcgetattr(stdin()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin(), SetArg::TCSANOW, &raw);
        }
        let relay = TtyRelay {
            master,
            saved,
            stdin_open: true,
            master_open: true,
        };
        relay.copy_window_size();
        Ok(relay)
    }

    /// Adds the descriptors to watch, in the order `handle` expects.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        if self.master_open {
            fds.push(PollFd::new(self.master.as_fd(), PollFlags::POLLIN));
        }
        if self.stdin_open && self.master_open {
            fds.push(PollFd::new(stdin(), PollFlags::POLLIN));
        }
    }

    /// Moves whatever is ready; `ready` matches the order of `poll_fds`.
    pub fn handle(&mut self, ready: &[bool]) {
        let mut i = 0;
        let master_was_open = self.master_open;
        let stdin_was_open = self.stdin_open && self.master_open;
        if master_was_open {
            if ready.get(i).copied().unwrap_or(false) {
                self.pump_output();
            }
            i += 1;
        }
        if stdin_was_open && ready.get(i).copied().unwrap_or(false) {
            let mut buf = [0u8; 4096];
            match nix::unistd::read(stdin(), &mut buf) {
                Ok(0) | Err(_) => self.stdin_open = false,
                Ok(n) => write_all(self.master.as_fd(), &buf[..n]),
            }
        }
    }

    fn pump_output(&mut self) {
        let mut buf = [0u8; 16384];
        loop {
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(0) => {
                    self.master_open = false;
                    return;
                }
                Ok(n) => write_all(stdout(), &buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => return,
                // EIO: every process holding the terminal is gone.
                Err(_) => {
                    self.master_open = false;
                    return;
                }
            }
        }
    }

    /// Sets the sandbox terminal's size to ours.
    pub fn copy_window_size(&self) {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it from our
        // terminal and TIOCSWINSZ reads it, on descriptors we hold.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// Copies the last output and restores our terminal.
    pub fn finish(&mut self) {
        if self.master_open {
            self.pump_output();
        }
        if let Some(t) = self.saved.take() {
            let _ = termios::tcsetattr(stdin(), SetArg::TCSANOW, &t);
        }
    }
}

impl Drop for TtyRelay {
    fn drop(&mut self) {
        if let Some(t) = self.saved.take() {
            let _ = termios::tcsetattr(stdin(), SetArg::TCSANOW, &t);
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(100u16));
            }
            Err(_) => return,
        }
    }
}
