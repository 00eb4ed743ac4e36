//! Per-sandbox supervisor processes for the daemon (see `server.rs`), and
//! the daemon's side that talks to them: the backend (`backend.rs`), the
//! pool of idle shims and their zygote (`pool.rs`), and the handle of one
//! sandbox's shim (`handle.rs`).

pub mod backend;
pub mod handle;
mod pool;
pub mod proto;
pub mod server;

use std::io::Read;
use std::os::fd::{FromRawFd, IntoRawFd};

pub use backend::{ShimBackend, DEFAULT_POOL_SIZE};
pub use handle::ShimHandle;

/// The `--id` of a pooled shim that has no sandbox yet: as long as a
/// sandbox id (12 characters), so that the command line can be rewritten
/// in place, and never one (ids are hex digits).
pub const POOLED_ID: &str = "pool-waiting";

/// Entry point of `stockade shim`: reads a [`proto::ShimStart`] on stdin,
/// detaches (fork, new session) so the daemon neither waits for it nor
/// takes it down, and runs the shim. The readiness line goes to stdout.
///
/// Must be called while the process is single-threaded.
pub fn entry() -> i32 {
    serve_request(true, None)
}

/// Reads the start request and serves it, in a detached process: forked
/// off when `fork` (the process was exec'd by the daemon, whose child it
/// is), or this very process (a zygote's child, which is no child of the
/// daemon's already and only needs a session of its own). `driver` is
/// the host's cgroup layout if it was found already (by the zygote).
fn serve_request(fork: bool, driver: Option<stockade_cgroup::Driver>) -> i32 {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        println!("error cannot read the shim's start request");
        return 1;
    }
    if input.is_empty() {
        // A pooled shim whose daemon went away without using it.
        return 0;
    }
    let start: proto::ShimStart = match serde_json::from_slice(&input) {
        Ok(s) => s,
        Err(e) => {
            println!("error malformed start request: {e}");
            return 1;
        }
    };
    if name_pooled(&start.id) {
        // Started at low priority ahead of need; the sandbox runs at the
        // normal one. (Lowering a nice value needs privilege, which a
        // shim has: it creates namespaces and cgroups.)
        // SAFETY: setpriority only reads its integer arguments.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
    }
    if fork {
        // SAFETY: the caller guarantees a single thread, so the child may
        // run arbitrary code; the parent only exits.
        match unsafe { nix::unistd::fork() } {
            Err(e) => {
                println!("error cannot fork the shim: {e}");
                return 1;
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
            Ok(nix::unistd::ForkResult::Child) => {}
        }
    }
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    // stdout (the readiness pipe) moves off fd 1; 0-2 become /dev/null so
    // nothing holds the daemon's terminal or pipes.
    // SAFETY: dup returns a new descriptor we own from here on.
    let ready = unsafe { libc::dup(1) };
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let n = null.into_raw_fd();
        for target in 0..3 {
            // SAFETY: replaces our own stdio with /dev/null.
            unsafe { libc::dup2(n, target) };
        }
    }
    // SAFETY: `ready` is the descriptor dup'ed above, owned here.
    let ready = unsafe { std::fs::File::from_raw_fd(ready) };
    server::main(start, ready, driver)
}

/// The argument that makes `stockade shim --id pool-waiting` a zygote.
pub const ZYGOTE_FLAG: &str = "--zygote";

/// What the daemon sends a zygote: one idle shim, please. Its stdin (the
/// start request's pipe) and stdout (the readiness pipe) ride along as
/// `SCM_RIGHTS`, in that order.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ZygoteRequest {}

/// The zygote's answer: the new idle shim's pid; its pidfd rides along.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ZygoteReply {
    pub pid: i32,
}

/// Entry point of `stockade shim --id pool-waiting --zygote`: the daemon's
/// source of idle shims. Exec'ing and linking the binary for every idle
/// shim costs CPU that, on a busy host, the requests in flight pay for; a
/// fork of this small, already started process costs far less
/// (benches/OPTIMISATIONS.md, "idle shims forked by a zygote").
///
/// Stdin is a `SOCK_SEQPACKET` socket from the daemon. For each request
/// the zygote forks a child that takes the two descriptors as its stdin
/// and stdout and goes on exactly like a freshly started pooled shim (see
/// [`entry`]); the child's pid and pidfd go back to the daemon, which
/// watches and kills idle shims through the pidfd. The zygote holds
/// nothing of any sandbox (it never gets a start request), so its
/// children start as clean as an exec'd shim. It exits when the daemon
/// goes (end-of-file); children ignore that, an idle one ends with the
/// end of its own stdin, a serving one runs on.
///
/// Must be called while the process is single-threaded.
pub fn zygote() -> i32 {
    use std::os::fd::{AsRawFd, BorrowedFd};
    use stockade_isolate::proto::{recv_msg, send_msg, ProtoError};
    // The kernel reaps our children (each idle shim forks once more and
    // its first process exits at once; killed idle shims end here too).
    // SAFETY: changes the disposition of SIGCHLD only; no handler runs.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    // SAFETY: fd 0 is the daemon's socket for this process's whole life.
    let sock = unsafe { BorrowedFd::borrow_raw(0) };
    // Found once here, inherited by every child: a create need not read
    // the mount table again. (A shim whose create fails with it looks
    // again, in case the host's cgroups changed meanwhile.)
    let driver = stockade_cgroup::Driver::detect().ok();
    loop {
        let fds = match recv_msg::<ZygoteRequest>(sock) {
            Ok(None) => return 0,
            Ok(Some((_, fds))) => fds,
            Err(ProtoError::Io(nix::errno::Errno::EINTR)) => continue,
            Err(ProtoError::Malformed(_)) => continue,
            Err(ProtoError::Io(_)) => return 1,
        };
        let [stdin, stdout] = match <[_; 2]>::try_from(fds) {
            Ok(pair) => pair,
            // Anything else is not a request of ours: its descriptors
            // are closed and nothing is answered.
            Err(_) => continue,
        };
        // SAFETY: single-threaded (see above), so the child may run any
        // code; it never returns into this loop (`idle_child` exits).
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                idle_child(stdin.as_raw_fd(), stdout.as_raw_fd(), driver.clone());
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let reply = ZygoteReply {
                    pid: child.as_raw(),
                };
                // The child is ours and unreaped until it exits, so its
                // pid cannot be reused before the pidfd is opened.
                let sent = match stockade_isolate::sys::pidfd_open(child.as_raw()) {
                    Ok(pidfd) => send_msg(sock, &reply, &[pidfd.as_raw_fd()]),
                    Err(_) => send_msg(sock, &reply, &[]),
                };
                if sent.is_err() {
                    return 1;
                }
            }
            Err(_) => {
                // No child: an answer without a pidfd says so.
                if send_msg(sock, &ZygoteReply { pid: 0 }, &[]).is_err() {
                    return 1;
                }
            }
        }
    }
}

/// The zygote's child: takes `stdin`/`stdout` as its standard descriptors,
/// drops the zygote's settings, and becomes an idle pooled shim.
fn idle_child(
    stdin: std::os::fd::RawFd,
    stdout: std::os::fd::RawFd,
    driver: Option<stockade_cgroup::Driver>,
) -> ! {
    // SAFETY: signal resets a disposition; dup2 makes 0 and 1 copies of
    // descriptors we own (the zygote's socket on 0 is closed by it).
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::dup2(stdin, 0);
        libc::dup2(stdout, 1);
        libc::close(stdin);
        libc::close(stdout);
    }
    hide_zygote_flag();
    // No second fork: the zygote, not the daemon, is our parent (and
    // lets the kernel reap us), so a session of our own is all we need.
    let code = serve_request(false, driver);
    std::process::exit(code)
}

/// Drops `--zygote` from the command line, so that an idle shim forked
/// from the zygote reads `stockade shim --id pool-waiting`, like one that
/// was exec'd.
fn hide_zygote_flag() {
    use stockade_isolate::sys::{command_line, set_command_line};
    let Some(args) = command_line() else {
        return;
    };
    if args.iter().any(|a| a == ZYGOTE_FLAG.as_bytes()) {
        let kept: Vec<&[u8]> = args
            .iter()
            .map(Vec::as_slice)
            .filter(|a| *a != ZYGOTE_FLAG.as_bytes())
            .collect();
        set_command_line(&kept);
    }
}

/// A pooled shim (started as `stockade shim --id pool-waiting`) that got
/// its sandbox changes its command line to `stockade shim --id ID`, so
/// that `ps` and the tools that find a sandbox's shim by its command line
/// see the right id (the pooled id is as long as a sandbox id, so the new
/// line always fits). Returns whether this shim was started as a pooled
/// one.
fn name_pooled(id: &str) -> bool {
    let Some(mut args) = stockade_isolate::sys::command_line() else {
        return false;
    };
    if args.len() < 4 || args[1] != b"shim" || args[2] != b"--id" || args[3] != POOLED_ID.as_bytes()
    {
        return false;
    }
    args[3] = id.as_bytes().to_vec();
    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    stockade_isolate::sys::set_command_line(&args);
    true
}
