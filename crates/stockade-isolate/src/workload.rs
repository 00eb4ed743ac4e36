//! Starting the workload from init: the last steps that turn a process
//! of the sandbox's init into the untrusted program.
//!
//! Init builds what the child needs first (the `execve` arguments, the
//! Landlock ruleset). In the child (started with `CLONE_VM | CLONE_VFORK`,
//! see [`spawn`]), in this order: default signal handling, its own process
//! group (or session and controlling terminal with `--tty`), supplementary
//! groups cleared, gid set, Landlock applied, capability
//! bounding set dropped, uid set (which clears the remaining capabilities
//! for `agent`), capabilities cleared for root, `no_new_privs`, working
//! directory, seccomp, and `execve`. Seccomp comes last because it forbids
//! calls the earlier steps make.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::unistd::{Gid, Pid, Uid};

use crate::proto::SpawnRequest;
use crate::spec::SandboxSpec;
use crate::{caps, landlock_rules, seccomp, sys};

/// Opens a terminal pair in the sandbox's own devpts; returns the master
/// side and the path of the slave.
pub fn open_pty() -> nix::Result<(OwnedFd, String)> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let raw = master.as_raw_fd();
    std::mem::forget(master);
    // SAFETY: ownership of the descriptor moves from the forgotten
    // PtyMaster to this OwnedFd; it is closed exactly once.
    Ok((unsafe { OwnedFd::from_raw_fd(raw) }, name))
}

/// Where a new process's stdin, stdout and stderr come from.
#[derive(Debug)]
pub enum Stdio {
    /// These three descriptors, in order.
    Fds([OwnedFd; 3]),
    /// The slave side of a terminal in the sandbox's devpts (by path); it
    /// also becomes the process's controlling terminal.
    Terminal(String),
}

/// What `execve` gets, built by init before the child exists: bad input is
/// an error here rather than in the child, and the child allocates nothing.
struct Exec {
    argv: Vec<CString>,
    /// Held for `env_ptrs`, which points into it.
    _env: Vec<CString>,
    cwd: CString,
    /// The identity asked for, if not the policy's.
    as_root: Option<bool>,
    /// Where to look for the program, in order: `argv[0]` itself when it
    /// has a slash, else each directory of the sandbox's `PATH` (not the
    /// one init inherited from the supervisor), as a shell's `execvp` does.
    candidates: Vec<CString>,
    /// NULL-terminated pointer arrays into `argv` and `env`, as `execve`
    /// takes them. The strings' heap buffers never move, so the pointers
    /// stay valid while `Exec` lives and is not changed.
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
}

fn exec_of(req: &SpawnRequest) -> Result<Exec, (String, Errno)> {
    let c = |what: &str, s: &str| {
        CString::new(s).map_err(|_| {
            (
                format!("pass {what} {s:?} (it contains a NUL byte)"),
                Errno::EINVAL,
            )
        })
    };
    if req.argv.is_empty() {
        return Err(("start an empty command".into(), Errno::EINVAL));
    }
    let argv: Vec<CString> = req
        .argv
        .iter()
        .map(|a| c("argument", a))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = req
        .env
        .iter()
        .map(|e| c("environment entry", e))
        .collect::<Result<_, _>>()?;
    let name = argv[0].to_bytes();
    let candidates = if name.contains(&b'/') {
        vec![argv[0].clone()]
    } else {
        let path = env
            .iter()
            .find_map(|kv| kv.to_bytes().strip_prefix(b"PATH="))
            .unwrap_or(b"/usr/bin:/bin");
        path.split(|&b| b == b':')
            .filter_map(|dir| {
                let dir = if dir.is_empty() { &b"."[..] } else { dir };
                let mut full = dir.to_vec();
                full.push(b'/');
                full.extend_from_slice(name);
                CString::new(full).ok()
            })
            .collect()
    };
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    Ok(Exec {
        argv_ptrs: ptrs(&argv),
        env_ptrs: ptrs(&env),
        cwd: c("working directory", &req.cwd)?,
        as_root: req.as_root,
        candidates,
        argv,
        _env: env,
    })
}

/// Everything the child reads, prepared by init. The child borrows it all
/// and owns nothing: it runs in init's memory (see [`spawn`]).
struct Child<'a> {
    spec: &'a SandboxSpec,
    exec: &'a Exec,
    /// Its stdin, stdout and stderr, or the terminal to open.
    stdio: ChildStdio<'a>,
    /// Init's end of the control socket, closed in the child.
    ctl: RawFd,
    /// The write end of the error pipe.
    report: RawFd,
    /// The Landlock ruleset to restrict the child with, if the kernel has
    /// Landlock.
    landlock: Option<RawFd>,
}

enum ChildStdio<'a> {
    Fds([RawFd; 3]),
    Terminal(&'a std::ffi::CStr),
}

/// The sandbox's Landlock ruleset, built by init on its first spawn and
/// kept for the next ones: its paths (the sandbox's root and its writable
/// mount points) stay the same for the sandbox's life, and each process
/// restricts itself with it anew.
#[derive(Debug, Default)]
pub struct Rules(Option<Option<OwnedFd>>);

impl Rules {
    /// The ruleset's descriptor, or `None` on a kernel without Landlock.
    pub(crate) fn get(&mut self, spec: &SandboxSpec) -> Result<Option<RawFd>, (String, Errno)> {
        if self.0.is_none() {
            let built = landlock_rules::build(&spec.writable_paths(), true).map_err(|e| {
                let why = crate::error_chain(&e);
                (format!("apply Landlock rules ({why})"), Errno::EPERM)
            })?;
            self.0 = Some(built);
        }
        Ok(self
            .0
            .as_ref()
            .and_then(|r| r.as_ref())
            .map(|f| f.as_raw_fd()))
    }
}

/// Size of the stack the child runs on until it execs (a guard page
/// below it makes an overflow fault in the child instead of writing into
/// init's memory).
const CHILD_STACK: usize = 256 << 10;

/// Starts a process and execs the command. Returns its pid, or the step
/// that failed and its errno (the child reports failures through a
/// close-on-exec pipe, which stays silent when `execve` succeeds).
///
/// The child is cloned with `CLONE_VM | CLONE_VFORK`: it runs in init's
/// memory, on a stack of its own, while init is suspended until it execs or
/// exits. Init waited for the exec anyway (on the pipe); this way no page
/// tables are copied and no copy-on-write faults follow (what that saves:
/// benches/OPTIMISATIONS.md). What makes that sound:
/// - init is single-threaded and suspended, so the child is the only one
///   touching that memory, and no lock (malloc's included) is held;
/// - everything the child needs is built here first ([`Exec`], the
///   Landlock ruleset), and the child only borrows it: it drops nothing of
///   init's, and allocates nothing that would still be live at `execve`
///   (it would leak in init's heap once per spawn);
/// - descriptors, credentials, signal handlers, seccomp and Landlock are
///   per process or per thread, not shared by `CLONE_VM`: the child's
///   `close`, `setresuid`, `sigaction` and filters do not reach init.
pub fn spawn(
    spec: &SandboxSpec,
    req: &SpawnRequest,
    stdio: Stdio,
    ctl: RawFd,
    rules: &mut Rules,
) -> Result<Pid, (String, Errno)> {
    let exec = exec_of(req)?;
    let terminal: CString;
    let child_stdio = match &stdio {
        Stdio::Fds(fds) => ChildStdio::Fds(fds.each_ref().map(|f| f.as_raw_fd())),
        Stdio::Terminal(path) => {
            terminal = CString::new(path.as_str()).map_err(|_| {
                (
                    format!("open terminal {path:?} (it contains a NUL byte)"),
                    Errno::EINVAL,
                )
            })?;
            ChildStdio::Terminal(&terminal)
        }
    };
    let landlock = rules.get(spec)?;
    let (rd, wr) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ("create a pipe".to_string(), e))?;
    let child = Child {
        spec,
        exec: &exec,
        stdio: child_stdio,
        ctl,
        report: wr.as_raw_fd(),
        landlock,
    };
    let pid = clone_vfork(&child).map_err(|e| ("start the workload".to_string(), e))?;
    // The child has exec'd or exited: our copies go now.
    drop((wr, stdio));
    let mut buf = [0u8; 512];
    let n = loop {
        match nix::unistd::read(&rd, &mut buf) {
            Err(Errno::EINTR) => continue,
            r => break r.unwrap_or(0),
        }
    };
    if n == 0 {
        return Ok(pid);
    }
    let text = String::from_utf8_lossy(&buf[..n]);
    let (errno, step) = text.split_once(':').unwrap_or(("5", "start the workload"));
    Err((
        step.to_string(),
        Errno::from_raw(errno.parse().unwrap_or(libc::EIO)),
    ))
}

/// Clones the child on a fresh stack with `CLONE_VM | CLONE_VFORK` and
/// returns once it has exec'd or exited.
fn clone_vfork(child: &Child<'_>) -> nix::Result<Pid> {
    let stack = sys::Stack::new(CHILD_STACK)?;
    // SAFETY: `child_main` gets a pointer to `child`, which outlives the
    // call: with CLONE_VFORK, clone returns only after the child has
    // exec'd or exited, and so stopped using it and the stack (which is
    // unmapped only after that, when dropped). The caller (init) is
    // single-threaded.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (child as *const Child<'_>).cast_mut().cast(),
        )
    };
    Errno::result(pid).map(Pid::from_raw)
}

/// The child's entry point. Never returns: execs, or reports and exits.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    use std::io::Write;
    // SAFETY: `clone_vfork` passes a `Child` that outlives the child's use
    // of it; the child only reads it.
    let child = unsafe { &*(arg as *const Child<'_>) };
    let (step, detail, errno) = exec_workload(child);
    // "errno:step detail", written into a stack buffer: formatting an
    // integer and copying bytes allocate nothing. What does not fit is cut.
    let mut msg = [0u8; 512];
    let cap = msg.len();
    let mut rest = &mut msg[..];
    let _ = write!(rest, "{}:{step}", errno as i32);
    if !detail.is_empty() {
        let _ = rest.write_all(b" ");
        let _ = rest.write_all(detail);
    }
    let len = cap - rest.len();
    // SAFETY: writes `len` initialised bytes to the pipe; `_exit` leaves
    // without running any of init's destructors or exit handlers.
    unsafe {
        libc::write(child.report, msg.as_ptr().cast(), len);
        libc::_exit(if errno == Errno::ENOENT { 127 } else { 126 })
    }
}

/// Runs in the child. Returns only on failure: the step, a detail (a path,
/// or empty) and the errno. Leaves nothing allocated (see [`spawn`]): the
/// one allocation on its way, in `close_fds_from`, is freed before it
/// returns.
fn exec_workload<'a>(c: &Child<'a>) -> (&'static str, &'a [u8], Errno) {
    macro_rules! step {
        ($what:expr, $e:expr) => {
            if let Err(e) = $e {
                return ($what, b"", e);
            }
        };
    }
    // Init blocks these to wait for them; the workload starts clean.
    let _ = SigSet::all().thread_unblock();
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL involves no handler code.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    // SAFETY: closing init's end of the control socket in this child only
    // (the child has its own descriptor table).
    unsafe { libc::close(c.ctl) };
    match c.stdio {
        ChildStdio::Terminal(path) => {
            step!("start a terminal session", nix::unistd::setsid().map(drop));
            // SAFETY: a NUL-terminated path; the result is checked.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
            if fd < 0 {
                return ("open terminal", path.to_bytes(), Errno::last());
            }
            // SAFETY: TIOCSCTTY takes an integer argument; fd is a fresh,
            // valid terminal descriptor; dup2 onto 0-2 is what we want.
            unsafe {
                if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                    return ("make the terminal controlling", b"", Errno::last());
                }
                for n in 0..3 {
                    libc::dup2(fd, n);
                }
            }
        }
        ChildStdio::Fds(fds) => {
            step!(
                "create a process group",
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
            );
            // Move the descriptors above 0-2 first, so that installing one
            // cannot overwrite another that is still to be installed.
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(fds) {
                // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
                *h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
                if *h < 0 {
                    return ("set up stdio", b"", Errno::last());
                }
            }
            for (n, h) in high.into_iter().enumerate() {
                // SAFETY: dup2 onto 0-2 replaces whatever was there, which
                // is what we want; `h` is a valid descriptor.
                if unsafe { libc::dup2(h, n as RawFd) } < 0 {
                    return ("set up stdio", b"", Errno::last());
                }
            }
        }
    }
    // Everything else goes, the originals of stdio included (in this
    // child's table only).
    sys::close_fds_from(3, &[c.report, c.landlock.unwrap_or(-1)]);

    // An exec may ask for root (E2B's `user="root"`) or, explicitly, for
    // the sandbox's own user.
    let ids = match c.exec.as_root {
        Some(true) => (0, 0),
        Some(false) if c.spec.user.is_none() => (crate::idmap::AGENT_ID, crate::idmap::AGENT_ID),
        _ => c.spec.workload_ids(),
    };
    let caps = if ids.0 == 0 { c.spec.root_caps() } else { 0 };
    if let Err((step, e)) = take_identity(ids, c.landlock, caps) {
        return (step, b"", e);
    }
    if let Err(e) = nix::unistd::chdir(c.exec.cwd.as_c_str()) {
        return ("enter the working directory", c.exec.cwd.to_bytes(), e);
    }
    if seccomp::install(&c.spec.seccomp).is_err() {
        return ("install the seccomp filter", b"", Errno::EPERM);
    }
    let e = exec_in_path(c.exec);
    ("run", c.exec.argv[0].to_bytes(), e)
}

/// Set in init when its user namespace denies `setgroups` (a rootless
/// sandbox with a single id, see [`crate::rootless`]): supplementary
/// groups cannot be cleared there, and the kernel keeps the caller's.
static SETGROUPS_DENIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process's user namespace as denying `setgroups`.
pub(crate) fn deny_setgroups() {
    SETGROUPS_DENIED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The sandbox user's identity (`uid`, `gid` inside), in the order the kernel needs: no
/// supplementary groups, the gid, the Landlock ruleset (closed after),
/// the capability bounding set dropped, the uid (which clears the
/// remaining capabilities for the agent), capabilities cleared for root
/// but for `root_caps` (see [`SandboxSpec::root_caps`]),
/// `no_new_privs`. Seccomp is the caller's last step. Allocates nothing
/// (it runs in the workload's `CLONE_VM` child too). Returns the step
/// that failed.
pub(crate) fn take_identity(
    (uid, gid): (u32, u32),
    landlock: Option<RawFd>,
    root_caps: u64,
) -> Result<(), (&'static str, Errno)> {
    let as_root = uid == 0;
    if !SETGROUPS_DENIED.load(std::sync::atomic::Ordering::Relaxed) {
        nix::unistd::setgroups(&[]).map_err(|e| ("clear supplementary groups", e))?;
    }
    nix::unistd::setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
        .map_err(|e| ("set the group id", e))?;
    if let Some(ruleset) = landlock {
        landlock_rules::restrict_self_with(ruleset).map_err(|e| ("apply Landlock rules", e))?;
        // SAFETY: this process's copy of the ruleset; init keeps its own.
        unsafe { libc::close(ruleset) };
    }
    let root_caps = if as_root { root_caps } else { 0 };
    caps::drop_all_but(as_root, root_caps).map_err(|_| ("drop capabilities", Errno::EPERM))?;
    nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .map_err(|e| ("set the user id", e))?;
    caps::ensure_only(root_caps)
        .map_err(|_| ("drop capabilities (some are still held)", Errno::EPERM))?;
    caps::set_no_new_privs().map_err(|_| ("set no_new_privs", Errno::EPERM))?;
    Ok(())
}

/// Tries each candidate path in turn, as a shell's `execvp` does. Returns
/// why it failed: `EACCES` if some candidate existed but could not be
/// executed, else the last error (normally `ENOENT`).
fn exec_in_path(exec: &Exec) -> Errno {
    let mut saw_eacces = false;
    let mut last = Errno::ENOENT;
    for path in &exec.candidates {
        // SAFETY: NUL-terminated path and NULL-terminated arrays of
        // NUL-terminated strings, all owned by `exec`, which outlives this.
        unsafe {
            libc::execve(
                path.as_ptr(),
                exec.argv_ptrs.as_ptr(),
                exec.env_ptrs.as_ptr(),
            )
        };
        let e = Errno::last();
        match e {
            Errno::EACCES => saw_eacces = true,
            Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => {}
            other => return other,
        }
        last = e;
    }
    if saw_eacces {
        Errno::EACCES
    } else {
        last
    }
}
