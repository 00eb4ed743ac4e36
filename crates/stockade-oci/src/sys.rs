//! Raw system calls the runtime needs beyond `stockade-isolate::sys`, and
//! the message channel between `create`/`exec` and the processes they
//! start (one JSON object per `SOCK_SEQPACKET` packet, descriptors riding
//! along as `SCM_RIGHTS`).

use std::ffi::CStr;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Serialize};

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

pub use stockade_isolate::sys::setattr_tree;

/// Attaches a detached tree onto the object `target` refers to (an
/// `O_PATH` descriptor).
pub fn move_mount_onto(tree: &OwnedFd, target: RawFd) -> nix::Result<()> {
    const F_EMPTY: libc::c_uint = 0x4;
    const T_EMPTY: libc::c_uint = 0x40;
    // SAFETY: both paths are "" with the EMPTY_PATH flags, naming the
    // descriptors, which are live.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target,
            c"".as_ptr(),
            F_EMPTY | T_EMPTY,
        )
    };
    Errno::result(r).map(drop)
}

/// `openat2` with `RESOLVE_IN_ROOT`: `path` resolved as if `root` were
/// `/`, symlinks included, never leaving it; no magic links.
pub fn open_in_root(root: RawFd, path: &CStr, flags: libc::c_int) -> nix::Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `path` is NUL-terminated and `how` a fully initialised
    // `open_how` whose size we pass; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pivot_root(".", ".")` then detaches the old root, which is stacked
/// under the new one: the classic way without a spare directory.
pub fn pivot_here() -> nix::Result<()> {
    // SAFETY: both arguments are valid C strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    Errno::result(r)?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")
}

/// Sends one JSON message with descriptors.
pub fn send<T: Serialize>(sock: RawFd, msg: &T, fds: &[RawFd]) -> nix::Result<()> {
    let body = serde_json::to_vec(msg).map_err(|_| Errno::EINVAL)?;
    let iov = [IoSlice::new(&body)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one JSON message and its descriptors; `Ok(None)` at the end of
/// the stream.
pub fn recv<T: DeserializeOwned>(sock: RawFd) -> nix::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut space = nix::cmsg_space!([RawFd; 64]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = loop {
            match socket::recvmsg::<()>(
                sock,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                r => break r?,
            }
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors for us.
                fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        (msg.bytes, fds)
    };
    if n == 0 {
        return Ok(None);
    }
    let v = serde_json::from_slice(&buf[..n]).map_err(|_| Errno::EBADMSG)?;
    Ok(Some((v, fds)))
}

/// Sends a terminal's master over the engine's console socket, as runc
/// does (one byte of payload naming nothing, the descriptor as
/// `SCM_RIGHTS`).
pub fn send_console(sock: RawFd, master: RawFd) -> nix::Result<()> {
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [master];
    socket::sendmsg::<()>(
        sock,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Connects to the engine's console socket.
pub fn connect_console(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path)?;
    Ok(OwnedFd::from(s))
}

/// Marks every descriptor from `lowest` up close-on-exec.
pub fn cloexec_from(lowest: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOEXEC only sets a flag on our own
    // descriptors; no pointer is involved.
    unsafe {
        libc::syscall(libc::SYS_close_range, lowest, u32::MAX, CLOSE_RANGE_CLOEXEC);
    }
}

/// A detached copy of the one mount at `path` (`open_tree` with
/// `OPEN_TREE_CLONE`, without `AT_RECURSIVE`): submounts stay behind, as
/// with a non-recursive bind.
pub fn open_tree_single(path: &CStr) -> nix::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: `path` is a valid C string; the call returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
