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

/// `pivot_root(".", ".")` after `chdir(new_root)`: the old root ends up
/// stacked on top of the new one and is then detached in one step, so no
/// directory is needed to hold it.
pub fn pivot_into(new_root: &CStr) -> nix::Result<()> {
    nix::unistd::chdir(new_root)?;
    nix::unistd::pivot_root(".", ".")?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")
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
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
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
