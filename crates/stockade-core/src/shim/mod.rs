//! Per-sandbox supervisor processes for the daemon (see `server.rs`), and
//! the daemon's backend that talks to them (`client.rs`).

pub mod client;
pub mod proto;
pub mod server;

use std::io::Read;
use std::os::fd::{FromRawFd, IntoRawFd};

pub use client::{ShimBackend, ShimHandle};

/// Entry point of `stockade shim`: reads a [`proto::ShimStart`] on stdin,
/// detaches (fork, new session) so the daemon neither waits for it nor
/// takes it down, and runs the shim. The readiness line goes to stdout.
///
/// Must be called while the process is single-threaded.
pub fn entry() -> i32 {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        println!("error cannot read the shim's start request");
        return 1;
    }
    let start: proto::ShimStart = match serde_json::from_slice(&input) {
        Ok(s) => s,
        Err(e) => {
            println!("error malformed start request: {e}");
            return 1;
        }
    };
    // SAFETY: the caller guarantees a single thread, so the child may run
    // arbitrary code; the parent only exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            println!("error cannot fork the shim: {e}");
            1
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => 0,
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            // stdout (the readiness pipe) moves off fd 1; 0-2 become
            // /dev/null so nothing holds the daemon's terminal or pipes.
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
            server::main(start, ready)
        }
    }
}
