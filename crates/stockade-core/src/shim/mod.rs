//! Per-sandbox supervisor processes for the daemon (see `server.rs`), and
//! the daemon's backend that talks to them (`client.rs`).

pub mod client;
pub mod proto;
pub mod server;

use std::io::Read;
use std::os::fd::{FromRawFd, IntoRawFd};

pub use client::{ShimBackend, ShimHandle, DEFAULT_POOL_SIZE};

/// The `--id` of a pooled shim that has no sandbox yet: as long as a
/// sandbox id (12 characters), so that it can be overwritten in place,
/// and never one (ids are hex digits).
pub const POOLED_ID: &str = "pool-waiting";

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

/// A pooled shim (started as `stockade shim --id pool-waiting`) that got
/// its sandbox rewrites its command line to `stockade shim --id ID`, so
/// that `ps` and the tools that find a sandbox's shim by its command line
/// see the right id. The argument strings live in this process's memory
/// from `arg_start` (`/proc/self/stat`); they are overwritten through
/// `/proc/self/mem`, byte for byte, which needs no pointer of ours. Best
/// effort: on any surprise the line stays as it is. Returns whether this
/// shim was started as a pooled one.
fn name_pooled(id: &str) -> bool {
    let Some(cmdline) = read_proc("/proc/self/cmdline") else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.len() < 4 || args[1] != b"shim" || args[2] != b"--id" || args[3] != POOLED_ID.as_bytes()
    {
        return false;
    }
    if id.len() == POOLED_ID.len() {
        let offset = args[0].len() + 1 + args[1].len() + 1 + args[2].len() + 1;
        if let Some(arg_start) = arg_start() {
            if let Ok(mem) = std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/mem")
            {
                use std::os::unix::fs::FileExt;
                let _ = mem.write_all_at(id.as_bytes(), arg_start + offset as u64);
            }
        }
    }
    true
}

/// Where this process's argument strings start (`/proc/self/stat` field
/// 48, counted after the command name, which may contain spaces).
fn arg_start() -> Option<u64> {
    let stat = String::from_utf8(read_proc("/proc/self/stat")?).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    // `after` starts at field 3.
    after.split_whitespace().nth(48 - 3)?.parse().ok()
}

/// A small `/proc` file in one `read` (a proc file is generated anew for
/// every read, so the growing reads of `fs::read` cost several times more).
fn read_proc(path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; 4096];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    (n < buf.len()).then(|| {
        buf.truncate(n);
        buf
    })
}
