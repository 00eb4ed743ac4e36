//! Thin wrappers over the few system calls that neither `nix` nor `libc`
//! wrap conveniently. Each returns `nix::Result` so callers can add context.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets mount attributes on the mount at `path` and, with `recursive`, on
/// every mount below it. Unlike a `MS_REMOUNT|MS_BIND` remount this covers
/// submounts and leaves attributes it was not asked about alone.
pub fn mount_setattr(path: &CStr, set: u64, recursive: bool) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is a valid NUL-terminated string and `attr` a live,
    // correctly laid out `struct mount_attr` whose size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Clones the calling process into new namespaces, fork-style: both
/// processes return, the child with `Ok(None)`, the parent with the child's
/// pid and a pidfd for it.
///
/// # Safety
/// The caller must be single-threaded (as after `fork`), because the child
/// continues with a copy of only the calling thread.
pub unsafe fn clone_fork(ns_flags: libc::c_int) -> nix::Result<Option<(i32, OwnedFd)>> {
    let mut pidfd: RawFd = -1;
    let flags = (ns_flags | libc::CLONE_PIDFD | exit_signal(ns_flags)) as libc::c_ulong;
    // SAFETY: with a NULL stack, clone behaves like fork: the child runs on
    // a copy of the parent's stack. CLONE_PIDFD writes the pidfd through the
    // `parent_tid` argument, which points at a live `RawFd`. The caller
    // guarantees the process is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut RawFd,
            std::ptr::null_mut::<libc::c_int>(),
            0usize,
        )
    };
    let pid = Errno::result(r)?;
    if pid == 0 {
        Ok(None)
    } else {
        // SAFETY: the kernel just created this descriptor for us.
        Ok(Some((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) })))
    }
}

/// The child's exit signal: SIGCHLD, except with `CLONE_PARENT`, where the
/// kernel takes the caller's own (and clone3 refuses any other).
fn exit_signal(flags: libc::c_int) -> libc::c_int {
    if flags & libc::CLONE_PARENT != 0 {
        0
    } else {
        libc::SIGCHLD
    }
}

/// Sends `sig` to the process behind `pidfd`. Unlike `kill(pid)`, the pid
/// cannot have been recycled for another process.
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: libc::c_int) -> nix::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; NULL siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Opens a pidfd for an existing process.
pub fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: plain syscall; returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Marks the calling process's death signal, so the sandbox dies with the
/// process that created it.
pub fn set_parent_death_signal(sig: libc::c_int) -> nix::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a plain integer argument.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    Errno::result(r).map(drop)
}

/// Makes the process undumpable: other processes of the same uid cannot
/// ptrace it or open its `/proc/PID/mem`.
pub fn set_undumpable() -> nix::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    Errno::result(r).map(drop)
}

/// Brings up the loopback interface of the current network namespace.
pub fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the flags member of
    // the ifreq we own; the socket is valid for the duration of the calls.
    unsafe {
        Errno::result(libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut req as *mut libc::ifreq,
        ))?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        Errno::result(libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &req as *const libc::ifreq,
        ))?;
    }
    Ok(())
}

/// Closes every descriptor from `lowest` up, except those in `keep`, so
/// nothing the supervisor held open leaks into the sandbox.
pub fn close_fds_from(lowest: RawFd, keep: &[RawFd]) {
    let mut next = lowest as libc::c_uint;
    let mut sorted: Vec<libc::c_uint> = keep
        .iter()
        .filter(|&&f| f >= lowest)
        .map(|&f| f as libc::c_uint)
        .collect();
    sorted.sort_unstable();
    for k in sorted.into_iter().chain(std::iter::once(libc::c_uint::MAX)) {
        if k > next {
            let last = k.saturating_sub(1);
            // SAFETY: close_range only closes descriptors; none of the
            // closed ones is owned by a live Rust object we use afterwards
            // (the caller is about to exec or serve with `keep` only).
            unsafe { libc::syscall(libc::SYS_close_range, next, last, 0) };
        }
        next = k.saturating_add(1);
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A detached copy of the mount tree at `path` (`open_tree` with
/// `OPEN_TREE_CLONE`). It stays usable after the namespace it came from
/// is unmounted, and is attached elsewhere with [`move_mount_to`].
pub fn open_tree_clone(path: &CStr) -> nix::Result<OwnedFd> {
    // SAFETY: `path` is a valid C string; the call returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// [`open_tree_clone`] of `path`, which must contain no symlink at all
/// (`openat2` with `RESOLVE_NO_SYMLINKS`): a caller that resolved a path
/// earlier and checked it (a bind source an API client named) gets
/// exactly that directory, not what a symlink swapped in meanwhile
/// points at.
pub fn open_tree_resolved(path: &CStr) -> nix::Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `path` is NUL-terminated and `how` a fully initialised
    // `open_how` whose size we pass; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: "" with AT_EMPTY_PATH names `fd` itself; returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE | AT_EMPTY_PATH,
        )
    };
    let tree = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as RawFd) })
}

/// Attaches a detached mount tree at `target`.
pub fn move_mount_to(tree: &OwnedFd, target: &CStr) -> nix::Result<()> {
    // SAFETY: both strings are valid C strings ("" with F_EMPTY_PATH means
    // the descriptor itself); `tree` is a live descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;

/// Makes the detached mount tree `tree` idmapped through the user
/// namespace `userns`: a file owned by host id N appears owned by whatever
/// N means inside that namespace. Needs privilege over the filesystem
/// (host root), so the supervisor does this before handing the tree over.
pub fn idmap_tree(tree: &OwnedFd, userns: &OwnedFd) -> nix::Result<()> {
    setattr_tree(tree, 0, Some(userns))
}

/// `mount_setattr` on a (detached or attached) mount tree given by fd,
/// recursively: sets the attributes `set` (`MOUNT_ATTR_*`), and the id
/// map of `userns` if given.
pub fn setattr_tree(tree: &OwnedFd, set: u64, userns: Option<&OwnedFd>) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: set
            | if userns.is_some() {
                MOUNT_ATTR_IDMAP
            } else {
                0
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    // SAFETY: "" with AT_EMPTY_PATH names the descriptor itself; `attr` is
    // a live `struct mount_attr` whose size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Like [`clone_fork`], but the child starts inside the cgroup v2 directory
/// `cgroup` (`CLONE_INTO_CGROUP`): no `cgroup.procs` write afterwards, and
/// no window in which the child runs outside its limits.
///
/// # Safety
/// As for [`clone_fork`]: the caller must be single-threaded.
pub unsafe fn clone_into_cgroup(
    ns_flags: libc::c_int,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<Option<(i32, OwnedFd)>> {
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: (ns_flags as u64) | (libc::CLONE_PIDFD as u64) | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: exit_signal(ns_flags) as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size we pass; with a
    // zero stack clone3 behaves like fork. The pidfd pointer targets a
    // live local. The caller guarantees a single thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = Errno::result(r)?;
    if pid == 0 {
        Ok(None)
    } else {
        // SAFETY: the kernel just created this descriptor for us.
        Ok(Some((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) })))
    }
}

/// A stack for a child started with `clone` and a stack of its own: an
/// anonymous mapping (pages cost memory only once touched) with a guard
/// page at its low end, so an overflow faults instead of writing into
/// whatever lies beneath. Unmapped when dropped.
#[derive(Debug)]
pub struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    /// A stack of `size` usable bytes plus the guard page.
    pub fn new(size: usize) -> nix::Result<Stack> {
        // SAFETY: sysconf only reads a system constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = size.next_multiple_of(page) + page;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping just made.
        Errno::result(unsafe { libc::mprotect(base, page, libc::PROT_NONE) })?;
        Ok(stack)
    }

    /// The initial stack pointer of a downward-growing stack: one past the
    /// mapping's end (page-aligned, so 16-byte aligned too).
    pub fn top(&self) -> *mut libc::c_void {
        // SAFETY: `len` is the mapping's length, so this is one past its
        // end, which `add` allows.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }

    /// Leaves the mapping in place for good: for a child that goes on
    /// running on it after we are gone.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; whoever ran on it is gone (the caller
        // drops a stack only after its child has exec'd or exited).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// `SECBIT_NO_SETUID_FIXUP`: uid changes leave the capability sets alone.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;

fn securebits() -> nix::Result<libc::c_ulong> {
    // SAFETY: PR_GET_SECUREBITS takes no pointer and returns the bits.
    let r = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    Errno::result(r).map(|b| b as libc::c_ulong)
}

fn set_securebits(bits: libc::c_ulong) -> nix::Result<()> {
    // SAFETY: PR_SET_SECUREBITS takes a plain integer.
    let r = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) };
    Errno::result(r).map(drop)
}

/// `setresuid(-1, euid, -1)` as a raw system call: this thread only,
/// without glibc's broadcast of id changes to other threads.
fn set_euid_raw(euid: u32) -> nix::Result<()> {
    // SAFETY: setresuid takes three integers; -1 leaves an id unchanged.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setresuid,
            libc::uid_t::MAX,
            euid as libc::uid_t,
            libc::uid_t::MAX,
        )
    };
    Errno::result(r).map(drop)
}

/// The calling thread running with another effective uid, every
/// capability kept (`SECBIT_NO_SETUID_FIXUP`), until [`EuidSwitch::leave`]:
/// a user namespace made by a clone meanwhile is owned by that uid, so the
/// kernel charges what the namespace's processes use (inotify instances,
/// user namespaces, …) to that host id instead of to host root.
#[derive(Debug)]
#[must_use = "leave() restores the caller's own uid"]
pub struct EuidSwitch {
    old_euid: u32,
    old_bits: libc::c_ulong,
}

impl EuidSwitch {
    /// Switches to `euid`. Needs CAP_SETUID and CAP_SETPCAP. Only the
    /// calling thread changes (a raw system call, not glibc's broadcast
    /// to every thread). A child cloned meanwhile inherits the secure bit and must drop it
    /// with [`reset_securebits`] first thing (and never call `leave`).
    pub fn enter(euid: u32) -> nix::Result<EuidSwitch> {
        let old_bits = securebits()?;
        let old_euid = nix::unistd::geteuid().as_raw();
        set_securebits(old_bits | SECBIT_NO_SETUID_FIXUP)?;
        if let Err(e) = set_euid_raw(euid) {
            let _ = set_securebits(old_bits);
            return Err(e);
        }
        Ok(EuidSwitch { old_euid, old_bits })
    }

    /// In a child cloned meanwhile: nothing to restore (its ids belong to
    /// its new user namespace, and it resets the secure bits itself).
    pub fn abandon(self) {}

    /// Back to the caller's own uid and secure bits.
    pub fn leave(self) {
        // Failing to switch back would leave the supervisor running under
        // the sandbox's id: stop here rather than go on wrong.
        if set_euid_raw(self.old_euid).is_err() || set_securebits(self.old_bits).is_err() {
            std::process::abort();
        }
    }
}

/// Clears the secure bits a clone inside an [`EuidSwitch`] inherited, so that
/// later uid changes drop capabilities as usual. In a new user namespace
/// the child holds CAP_SETPCAP there, which this needs.
pub fn reset_securebits() -> nix::Result<()> {
    set_securebits(0)
}

/// What [`in_namespace`] shares with its short-lived child.
struct InNamespace<'a, T> {
    ns: RawFd,
    nstype: libc::c_int,
    f: Option<&'a mut dyn FnMut() -> T>,
    out: Option<T>,
    entered: Option<nix::Result<()>>,
}

/// Runs `f` in another namespace (`nstype`, e.g. `CLONE_NEWNET`, the one
/// `ns` refers to) without the caller entering it: a child sharing our
/// memory and descriptor table (`CLONE_VM | CLONE_FILES | CLONE_VFORK`,
/// we sleep until it is gone) enters it with `setns` and runs `f`, whose
/// result and any descriptors it opens are ours afterwards. For work that
/// must happen in a sandbox's namespace with host root's credentials, such
/// as creating its network device.
///
/// # Safety
/// The caller must be single-threaded (as with `vfork`, the child runs in
/// our memory; no other thread may hold a lock `f` needs), and `f` must
/// not unwind (it runs on a stack with no one to catch a panic).
pub unsafe fn in_namespace<T>(
    ns: std::os::fd::BorrowedFd<'_>,
    nstype: libc::c_int,
    mut f: impl FnMut() -> T,
) -> nix::Result<T> {
    const STACK: usize = 256 << 10;
    extern "C" fn child<T>(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `InNamespace` on the sleeping caller's
        // stack (CLONE_VFORK keeps it there until we exit).
        let shared = unsafe { &mut *arg.cast::<InNamespace<'_, T>>() };
        // SAFETY: setns on a descriptor of the shared table, which the
        // caller keeps open; it changes only this process's namespaces.
        let r = unsafe { libc::setns(shared.ns, shared.nstype) };
        shared.entered = Some(Errno::result(r).map(drop));
        if r == 0 {
            if let Some(f) = shared.f.take() {
                shared.out = Some(f());
            }
        }
        0
    }
    let stack = Stack::new(STACK)?;
    let mut shared = InNamespace {
        ns: ns.as_raw_fd(),
        nstype,
        f: Some(&mut f),
        out: None,
        entered: None,
    };
    // SAFETY: `child` runs on `stack` in our memory while we sleep
    // (CLONE_VFORK), so `shared` and `f` outlive every use of them; it
    // returns normally (its exit status is its return value), freeing
    // nothing of ours. The caller guarantees a single thread.
    let pid = unsafe {
        libc::clone(
            child::<T>,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
            (&mut shared as *mut InNamespace<'_, T>).cast(),
        )
    };
    if pid < 0 {
        return Err(Errno::last());
    }
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::__WALL),
    );
    drop(stack);
    shared.entered.unwrap_or(Err(Errno::ECHILD))?;
    shared.out.ok_or(Errno::ECHILD)
}

/// Whether any secure bit is set for the calling thread.
pub fn securebits_set() -> bool {
    securebits().is_ok_and(|b| b != 0)
}

/// This process's argument and environment areas, `[start, end)` each, as
/// the kernel reports them (`/proc/self/stat` fields 48 to 51): the
/// strings `execve` put on the initial stack, which `/proc/PID/cmdline`
/// and `/proc/PID/environ` show.
fn arg_env_areas() -> Option<[(usize, usize); 2]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces or ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<usize> = rest
        .split_whitespace()
        .skip(45)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    let [arg_start, arg_end, env_start, env_end] = f[..] else {
        return None;
    };
    Some([(arg_start, arg_end), (env_start, env_end)])
}

/// Writes `strings`, each followed by a NUL, over the area `[start, end)`
/// and zeroes the rest of it. Returns false, changing nothing, when they
/// do not fit with a final NUL to spare (the kernel then reports exactly
/// the area) or the area is implausible.
fn overwrite_area((start, end): (usize, usize), strings: &[&[u8]]) -> bool {
    if end <= start || end - start > 1 << 20 {
        return false;
    }
    let len = end - start;
    let mut buf = Vec::with_capacity(len);
    for s in strings {
        buf.extend_from_slice(s);
        buf.push(0);
    }
    if buf.len() >= len {
        return false;
    }
    buf.resize(len, 0);
    // SAFETY: the kernel reports [start, end) as this process's argument
    // (or environment) area: mapped and writable (the initial stack), and
    // private to this process. No Rust reference points into it: the
    // arguments were parsed into owned strings at start-up, and std and
    // glibc keep only raw pointers to these strings, which read the new
    // contents from now on. `buf` is exactly `len` bytes, separate memory.
    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), start as *mut u8, len) };
    true
}

/// Replaces this process's command line (what `/proc/PID/cmdline` and
/// `ps` show) with `args`, in place, as `setproctitle` does; returns false,
/// changing nothing, when the new line does not fit in the space the
/// original took. Call it while no other thread may read the arguments.
pub fn set_command_line(args: &[&[u8]]) -> bool {
    arg_env_areas().is_some_and(|[args_area, _]| overwrite_area(args_area, args))
}

/// This process's command line as `/proc/self/cmdline` shows it, split at
/// the NULs, without the padding a line shortened in place ends in.
pub fn command_line() -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read("/proc/self/cmdline").ok()?;
    let used = raw.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    if used == 0 {
        return Some(Vec::new());
    }
    Some(raw[..used].split(|b| *b == 0).map(<[u8]>::to_vec).collect())
}

/// Replaces the process's command line with `name` and blanks its
/// environment block: a sandbox's init is a copy of its supervisor, whose
/// arguments and environment are not the sandbox's business. Also sets
/// the thread name. Only this process's own copy of the memory changes;
/// the environment is empty afterwards (glibc's `environ` points at the
/// strings, which become empty ones, so lookups find nothing).
pub fn blank_command_line(name: &str) {
    if let Some([args_area, env_area]) = arg_env_areas() {
        if !overwrite_area(args_area, &[name.as_bytes()]) {
            overwrite_area(args_area, &[]);
        }
        overwrite_area(env_area, &[]);
    }
    if let Ok(c) = std::ffi::CString::new(name) {
        // SAFETY: PR_SET_NAME reads at most 16 bytes of a NUL-terminated
        // string that outlives the call (longer names are cut).
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    }
}

const NSFS_MAGIC: libc::__fsword_t = 0x6e73_6673;
const NSIO: u64 = 0xb7;
/// The user namespace that owns a namespace (a new descriptor).
pub const NS_GET_USERNS: u64 = NSIO << 8 | 0x1;
/// The parent of a user (or pid) namespace (a new descriptor).
pub const NS_GET_PARENT: u64 = NSIO << 8 | 0x2;
const NS_GET_NSTYPE: u64 = NSIO << 8 | 0x3;
const NS_GET_OWNER_UID: u64 = NSIO << 8 | 0x4;

/// Whether `fd` is a namespace file of type `kind` (`CLONE_NEW*`).
pub fn is_namespace(fd: &OwnedFd, kind: libc::c_int) -> bool {
    if !nix::sys::statfs::fstatfs(fd).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC) {
        return false;
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns an integer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    r == kind
}

/// A namespace related to the one `fd` is ([`NS_GET_USERNS`] or
/// [`NS_GET_PARENT`]), opened.
pub fn ns_related(fd: &OwnedFd, request: u64) -> nix::Result<OwnedFd> {
    // SAFETY: both ioctls take no argument and return a new descriptor.
    let r = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), request) })?;
    // SAFETY: the descriptor was just created for us and nothing owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The uid (in our namespace) that owns the user namespace `fd`.
pub fn ns_owner_uid(fd: &OwnedFd) -> Option<u32> {
    let mut owner: libc::uid_t = libc::uid_t::MAX;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which
    // targets a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_OWNER_UID, &mut owner) };
    (r == 0).then_some(owner)
}

/// Whether two descriptors are the same file (namespace files compare
/// this way).
pub fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs in a process of its own (nextest), so changing this
    // process's command line touches no other test.
    #[test]
    fn the_command_line_is_rewritten_in_place_when_it_fits() {
        let before = command_line().unwrap();
        assert!(!before.is_empty());
        let total: usize = before.iter().map(|a| a.len() + 1).sum();
        // Too long: nothing changes.
        let long = vec![b'x'; total + 1];
        assert!(!set_command_line(&[&long]));
        assert_eq!(command_line().unwrap(), before);
        // Shorter: the new line, and nothing of the old one.
        assert!(set_command_line(&[
            b"stockade",
            b"shim",
            b"--id",
            b"0123abcd"
        ]));
        assert_eq!(
            std::fs::read("/proc/self/cmdline").unwrap(),
            b"stockade\0shim\0--id\0"
                .iter()
                .chain(b"0123abcd\0")
                .copied()
                .chain(std::iter::repeat_n(0, total - 28))
                .collect::<Vec<u8>>()
        );
        assert_eq!(
            command_line().unwrap(),
            [&b"stockade"[..], b"shim", b"--id", b"0123abcd"].map(<[u8]>::to_vec)
        );
    }

    fn c(p: &std::path::Path) -> std::ffi::CString {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
    }

    /// The promise bind sources rely on: a symlink anywhere in the path,
    /// last component or not, is refused, not followed. Holds without
    /// root: `openat2` refuses before `open_tree` would need privilege.
    #[test]
    fn open_tree_resolved_refuses_a_symlink_anywhere_in_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        for through in ["link", "link/sub"] {
            let e = open_tree_resolved(&c(&dir.path().join(through))).unwrap_err();
            assert_eq!(e, Errno::ELOOP, "{through}");
        }
        // The same directories named without a symlink: opened where we
        // may clone mount trees (root), else refused for want of privilege
        // (and never for a symlink).
        for plain in ["real", "real/sub"] {
            match open_tree_resolved(&c(&dir.path().join(plain))) {
                Ok(_) => assert!(nix::unistd::geteuid().is_root(), "{plain}"),
                Err(e) => assert_eq!(e, Errno::EPERM, "{plain}"),
            }
        }
    }
}
