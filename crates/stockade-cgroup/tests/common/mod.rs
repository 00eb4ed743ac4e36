//! Helpers shared by the privileged integration tests.
//!
//! Every test here needs root and a real cgroup file system (v1 or v2), so
//! each is marked `#[ignore = "needs root and cgroups"]`; CI runs them as root
//! with `cargo test -p stockade-cgroup -- --include-ignored`.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::Write;
use std::ops::Deref;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use stockade_cgroup::{Cgroup, Driver, Limits};

pub fn driver() -> Driver {
    Driver::detect().expect("these tests need a cgroup v1 or v2 hierarchy")
}

/// A name unique to this test process, so parallel tests and parallel runs
/// of other crates' tests never collide.
pub fn unique(case: &str) -> String {
    format!("it-{case}-{}", std::process::id())
}

/// Destroys the group when the test ends, even when it panics.
pub struct Guard(Option<Cgroup>);

impl Guard {
    pub fn create(driver: &Driver, case: &str, limits: &Limits) -> Guard {
        let name = unique(case);
        if let Some(stale) = driver.open_existing(&name) {
            stale
                .destroy()
                .expect("removing a stale group from an earlier run");
        }
        Guard(Some(driver.create(&name, limits).expect("create")))
    }

    pub fn take(mut self) -> Cgroup {
        self.0.take().expect("group already taken")
    }
}

impl Deref for Guard {
    type Target = Cgroup;
    fn deref(&self) -> &Cgroup {
        self.0.as_ref().expect("group already taken")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let _ = cg.destroy();
        }
    }
}

/// A `sh -c` child that waits for a line on stdin before running `script`,
/// so the test can move it into a cgroup before it does anything.
pub struct Gated {
    pub child: Child,
    gate: Option<ChildStdin>,
}

impl Gated {
    pub fn spawn(script: &str) -> Gated {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning sh");
        let gate = child.stdin.take();
        Gated { child, gate }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Lets the script run.
    pub fn release(&mut self) {
        let mut gate = self.gate.take().expect("released twice");
        gate.write_all(b"go\n").expect("writing to the gate");
    }

    /// Waits for the shell to exit, up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `probe` holds or `limit` passes; returns the last answer.
pub fn eventually(limit: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        sleep(Duration::from_millis(10));
    }
    probe()
}

/// Whether `fd` becomes readable within `limit`.
pub fn readable_within(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// The trimmed content of `file` in whichever of the group's directories
/// has it (v1 spreads control files over several hierarchies).
pub fn control_file(cg: &Cgroup, file: &str) -> Option<String> {
    cg.paths()
        .iter()
        .map(|dir| dir.join(file))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(&p).unwrap().trim().to_owned())
}

/// Whether process `pid` is gone or a zombie (dead, waiting to be reaped).
pub fn is_dead(pid: i32) -> bool {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    match std::fs::read_to_string(stat) {
        Err(_) => true,
        // The state letter follows the ")" that closes the command name.
        Ok(text) => text
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}
