//! The file helper's side: one request after another until the client
//! hangs up. Runs inside the sandbox with the sandbox's identity (see the
//! module above); every error goes back to the client as `Failed`, and
//! nothing the client or the sandbox's files contain can make it panic.

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use super::{
    read_frame, write_frame, write_json, Entry, EntryKind, FileReply, FileRequest, Frame, CHUNK,
    DATA, END, LIST_BATCH,
};

/// Where paths are resolved.
#[derive(Debug)]
pub enum Root {
    /// The calling process's own view: inside a sandbox, its root. What
    /// a workload's `open("/a/b")` does, the helper does.
    Here,
    /// Below this directory, as if it were `/`: `..` stops at it and
    /// absolute symlinks resolve inside it (`openat2(RESOLVE_IN_ROOT)`).
    /// For tests and fakes, which run without a sandbox.
    Dir(OwnedFd),
}

impl Root {
    /// Opens `path`, following symlinks (inside the root).
    fn open(&self, path: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
        let c = CString::new(path).map_err(|_| Errno::EINVAL)?;
        match self {
            Root::Here => nix::fcntl::open(
                c.as_c_str(),
                flags | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            ),
            Root::Dir(dir) => openat2_in_root(dir.as_fd(), &c, flags, mode),
        }
    }

    /// The directory that holds `path`'s last component, and that
    /// component. `None` for `/` itself.
    fn parent(&self, path: &str) -> Result<Option<(OwnedFd, CString)>, Errno> {
        let Some((dir, name)) = split(path)? else {
            return Ok(None);
        };
        let fd = self.open(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok(Some((fd, name)))
    }
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2_in_root(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: OFlag,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow {
        flags: (flags | OFlag::O_CLOEXEC).bits() as u64,
        mode: if flags.intersects(OFlag::O_CREAT | OFlag::O_TMPFILE) {
            u64::from(mode)
        } else {
            0
        },
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `path` is NUL-terminated and `how` a fully initialised
    // `open_how`; both outlive the call, whose size argument is `how`'s.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: a new descriptor from the kernel that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Splits an absolute path into its directory and last component; `None`
/// for `/`. The last component is never `.` or `..`.
fn split(path: &str) -> Result<Option<(String, CString)>, Errno> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Errno::EINVAL);
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    let (dir, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    let dir = if dir.is_empty() { "/" } else { dir };
    Ok(Some((
        dir.to_string(),
        CString::new(name).map_err(|_| Errno::EINVAL)?,
    )))
}

/// Why a request failed: the errno and what was being done.
struct Fail(Errno, String);

type Res<T> = Result<T, Fail>;

fn fail(what: impl Into<String>) -> impl FnOnce(Errno) -> Fail {
    let what = what.into();
    move |e| Fail(e, what)
}

/// Serves requests on `sock` until the client hangs up or the stream
/// breaks. The greeting (`Hello`) is sent first.
pub fn serve(sock: OwnedFd, root: &Root) {
    let sock = std::os::unix::net::UnixStream::from(sock);
    let Ok(reader) = sock.try_clone() else { return };
    let mut r = BufReader::with_capacity(CHUNK + 5, reader);
    let mut w = BufWriter::with_capacity(CHUNK + 5, sock);
    if write_json(&mut w, &FileReply::Hello)
        .and_then(|_| w.flush())
        .is_err()
    {
        return;
    }
    loop {
        let req = match read_frame(&mut r) {
            Ok(Some(Frame::Json(j))) => serde_json::from_slice::<FileRequest>(&j),
            // The client is gone, or broke the protocol: nothing to say.
            _ => return,
        };
        let ok = match req {
            Ok(req) => handle(req, root, &mut r, &mut w),
            Err(e) => reply_failed(
                &mut w,
                Fail(Errno::EINVAL, format!("malformed request: {e}")),
            ),
        };
        if ok.and_then(|_| w.flush()).is_err() {
            return;
        }
    }
}

fn reply_failed(w: &mut impl Write, Fail(errno, message): Fail) -> io::Result<()> {
    write_json(
        w,
        &FileReply::Failed {
            errno: errno as i32,
            message,
        },
    )
}

/// Answers one request. An `Err` means the stream itself broke.
fn handle(req: FileRequest, root: &Root, r: &mut impl Read, w: &mut impl Write) -> io::Result<()> {
    let done = |w: &mut dyn FnMut(&FileReply) -> io::Result<()>, res: Res<FileReply>| match res {
        Ok(reply) => w(&reply),
        Err(f) => w(&FileReply::Failed {
            errno: f.0 as i32,
            message: f.1,
        }),
    };
    match req {
        FileRequest::Stat { path, follow } => {
            let res = stat(root, &path, follow).map(FileReply::Entry);
            done(&mut |m| write_json(w, m), res)
        }
        FileRequest::MakeDir { path, parents } => {
            let res = make_dir(root, &path, parents).map(|created| FileReply::Done { created });
            done(&mut |m| write_json(w, m), res)
        }
        FileRequest::Remove { path, recursive } => {
            let res = remove(root, &path, recursive).map(|()| FileReply::Done { created: false });
            done(&mut |m| write_json(w, m), res)
        }
        FileRequest::Rename { from, to } => {
            let res = rename(root, &from, &to).map(|()| FileReply::Done { created: false });
            done(&mut |m| write_json(w, m), res)
        }
        FileRequest::List { path, depth } => list(root, &path, depth, w),
        FileRequest::Read { path } => read(root, &path, w),
        FileRequest::Write { path, mode, append } => write(root, &path, mode, append, r, w),
    }
}

fn kind_of(st: &FileStat) -> EntryKind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => EntryKind::File,
        SFlag::S_IFDIR => EntryKind::Dir,
        SFlag::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn entry(path: &str, name: &str, st: &FileStat, target: Option<String>) -> Entry {
    Entry {
        name: name.to_string(),
        path: path.to_string(),
        kind: kind_of(st),
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        target,
    }
}

fn link_target(dir: BorrowedFd<'_>, name: &CStr) -> Option<String> {
    nix::fcntl::readlinkat(dir, name)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

fn stat(root: &Root, path: &str, follow: bool) -> Res<Entry> {
    let f = || fail(format!("look up {path}"));
    let name = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("/");
    match root.parent(path).map_err(f())? {
        Some((dir, cname)) if !follow => {
            let st = nix::sys::stat::fstatat(&dir, cname.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(f())?;
            let target = (kind_of(&st) == EntryKind::Symlink)
                .then(|| link_target(dir.as_fd(), &cname))
                .flatten();
            Ok(entry(path, name, &st, target))
        }
        _ => {
            let fd = root.open(path, OFlag::O_PATH, 0).map_err(f())?;
            let st = nix::sys::stat::fstat(&fd).map_err(f())?;
            Ok(entry(path, name, &st, None))
        }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Lists `path` breadth first down to `depth` levels, streaming batches.
fn list(root: &Root, path: &str, depth: u32, w: &mut impl Write) -> io::Result<()> {
    let first = match root.open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
        Ok(fd) => fd,
        Err(e) => return reply_failed(w, Fail(e, format!("list {path}"))),
    };
    write_json(w, &FileReply::Listing)?;
    let mut queue: VecDeque<(String, u32, Option<OwnedFd>)> = VecDeque::new();
    queue.push_back((path.to_string(), 1, Some(first)));
    let mut batch = Vec::with_capacity(LIST_BATCH);
    while let Some((dir_path, level, fd)) = queue.pop_front() {
        let fd = match fd {
            Some(fd) => fd,
            // A subdirectory that vanished or cannot be opened is left out.
            None => match root.open(&dir_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
                Ok(fd) => fd,
                Err(_) => continue,
            },
        };
        let Ok(copy) = fd.try_clone() else { continue };
        let Ok(mut d) = nix::dir::Dir::from_fd(copy) else {
            continue;
        };
        for ent in d.iter().flatten() {
            let cname = ent.file_name();
            let raw = cname.to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            // The entry may vanish between readdir and stat: skip it then.
            let Ok(st) = nix::sys::stat::fstatat(&fd, cname, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let name = String::from_utf8_lossy(raw).into_owned();
            let full = join(&dir_path, &name);
            let kind = kind_of(&st);
            let target = (kind == EntryKind::Symlink)
                .then(|| link_target(fd.as_fd(), cname))
                .flatten();
            if kind == EntryKind::Dir && level < depth {
                queue.push_back((full.clone(), level + 1, None));
            }
            batch.push(entry(&full, &name, &st, target));
            if batch.len() == LIST_BATCH {
                write_json(w, &batch)?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        write_json(w, &batch)?;
    }
    write_frame(w, END, &[])
}

/// Opens a regular file for reading (a FIFO must not hang the helper).
fn open_regular(root: &Root, path: &str, flags: OFlag, mode: u32) -> Res<OwnedFd> {
    let fd = root
        .open(path, flags | OFlag::O_NOCTTY | OFlag::O_NONBLOCK, mode)
        .map_err(fail(format!("open {path}")))?;
    let st = nix::sys::stat::fstat(&fd).map_err(fail(format!("look up {path}")))?;
    match kind_of(&st) {
        EntryKind::File => {}
        EntryKind::Dir => return Err(Fail(Errno::EISDIR, format!("{path} is a directory"))),
        _ => {
            return Err(Fail(
                Errno::EINVAL,
                format!("{path} is not a regular file (a device, socket or FIFO)"),
            ))
        }
    }
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(fail(format!("open {path}")))?;
    Ok(fd)
}

fn read(root: &Root, path: &str, w: &mut impl Write) -> io::Result<()> {
    let fd = match open_regular(root, path, OFlag::O_RDONLY, 0) {
        Ok(fd) => fd,
        Err(f) => return reply_failed(w, f),
    };
    let size = nix::sys::stat::fstat(&fd).map_or(0, |st| st.st_size.max(0) as u64);
    write_json(w, &FileReply::Reading { size })?;
    let mut file = std::fs::File::from(fd);
    let mut buf = vec![0u8; CHUNK];
    let outcome = loop {
        match file.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => write_frame(w, DATA, &buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    write_frame(w, END, &[])?;
    match outcome {
        Ok(()) => write_json(w, &FileReply::Done { created: false }),
        Err(e) => reply_failed(
            w,
            Fail(
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                format!("read {path}"),
            ),
        ),
    }
}

/// Creates the missing directories on the way to `dir` (itself included).
fn make_parents(root: &Root, dir: &str) -> Res<()> {
    let mut done = String::new();
    for comp in dir.split('/').filter(|c| !c.is_empty() && *c != ".") {
        done.push('/');
        done.push_str(comp);
        if comp == ".." {
            continue;
        }
        match root.open(&done, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
            Ok(_) => {}
            Err(Errno::ENOENT) => match make_dir(root, &done, false) {
                Ok(_) => {}
                Err(Fail(Errno::EEXIST, _)) => {}
                Err(f) => return Err(f),
            },
            Err(e) => return Err(Fail(e, format!("create directory {done}"))),
        }
    }
    Ok(())
}

fn make_dir(root: &Root, path: &str, parents: bool) -> Res<bool> {
    if parents {
        if root
            .open(path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
            .is_ok()
        {
            return Ok(false);
        }
        if let Some((dir, _)) = split(path).map_err(fail(format!("create directory {path}")))? {
            make_parents(root, &dir)?;
        }
    }
    let f = || fail(format!("create directory {path}"));
    let Some((dir, name)) = root.parent(path).map_err(f())? else {
        return Err(Fail(Errno::EEXIST, "/ exists".into()));
    };
    match nix::sys::stat::mkdirat(&dir, name.as_c_str(), Mode::from_bits_truncate(0o755)) {
        Ok(()) => Ok(true),
        // Made meanwhile is fine; a file or a symlink there is not.
        Err(Errno::EEXIST)
            if parents
                && root
                    .open(path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
                    .is_ok() =>
        {
            Ok(false)
        }
        Err(e) => Err(f()(e)),
    }
}

/// Reads the client's data to the end of its stream, writing it to `out`
/// while that works; the first write error is kept and returned after
/// the stream is drained, so the protocol stays in step. Pieces that are
/// all zeros become holes (unless appending), so a sparse file stays
/// sparse and counts what it really uses against the disk limit.
fn receive(
    r: &mut impl Read,
    out: &mut std::fs::File,
    append: bool,
) -> io::Result<Result<u64, io::Error>> {
    use std::io::Seek;
    let mut written = 0u64;
    let mut error = None;
    let mut hole_at_end = false;
    loop {
        match read_frame(r)? {
            Some(Frame::Data(chunk)) => {
                if error.is_some() {
                    continue;
                }
                let zeros = !append && chunk.iter().all(|&b| b == 0);
                let step = if zeros {
                    out.seek(io::SeekFrom::Current(chunk.len() as i64))
                        .map(drop)
                } else {
                    out.write_all(&chunk)
                };
                match step {
                    Ok(()) => {
                        written += chunk.len() as u64;
                        hole_at_end = zeros;
                    }
                    Err(e) => error = Some(e),
                }
            }
            Some(Frame::End) => break,
            Some(Frame::Json(_)) | None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the data stream of a write ended early",
                ))
            }
        }
    }
    // A file that ends in a hole gets its length from a truncate.
    if error.is_none() && hole_at_end {
        if let Err(e) = out.set_len(written) {
            error = Some(e);
        }
    }
    Ok(match error {
        Some(e) => Err(e),
        None => Ok(written),
    })
}

fn open_for_write(root: &Root, path: &str, mode: u32, append: bool) -> Res<(OwnedFd, bool)> {
    let Some((dir, _)) = split(path).map_err(fail(format!("write {path}")))? else {
        return Err(Fail(Errno::EISDIR, "/ is a directory".into()));
    };
    make_parents(root, &dir)?;
    let (parent, name) = root
        .parent(path)
        .map_err(fail(format!("write {path}")))?
        .ok_or_else(|| Fail(Errno::EISDIR, "/ is a directory".into()))?;
    let mode = mode & 0o777;
    let excl = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_NOFOLLOW
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(
        &parent,
        name.as_c_str(),
        excl,
        Mode::from_bits_truncate(mode),
    ) {
        Ok(fd) => Ok((fd, true)),
        Err(Errno::EEXIST) => {
            // It exists (maybe as a symlink, followed as the workload's
            // own open would; a dangling one gets its target created).
            let flags = OFlag::O_WRONLY
                | if append {
                    OFlag::O_APPEND
                } else {
                    OFlag::empty()
                };
            match open_regular(root, path, flags, 0) {
                Ok(fd) => {
                    if !append {
                        nix::unistd::ftruncate(&fd, 0).map_err(fail(format!("truncate {path}")))?;
                    }
                    Ok((fd, false))
                }
                Err(Fail(Errno::ENOENT, _)) => {
                    open_regular(root, path, flags | OFlag::O_CREAT, mode).map(|fd| (fd, true))
                }
                Err(f) => Err(f),
            }
        }
        Err(e) => Err(Fail(e, format!("create {path}"))),
    }
}

fn write(
    root: &Root,
    path: &str,
    mode: Option<u32>,
    append: bool,
    r: &mut impl Read,
    w: &mut impl Write,
) -> io::Result<()> {
    let opened = open_for_write(root, path, mode.unwrap_or(0o644), append);
    let (fd, created) = match opened {
        Ok(x) => x,
        Err(f) => return reply_failed(w, f),
    };
    write_json(w, &FileReply::Ready)?;
    w.flush()?;
    let mut file = std::fs::File::from(fd);
    match receive(r, &mut file, append)? {
        Ok(size) => write_json(w, &FileReply::Written { created, size }),
        Err(e) => reply_failed(
            w,
            Fail(
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                format!("write {path}"),
            ),
        ),
    }
}

fn remove(root: &Root, path: &str, recursive: bool) -> Res<()> {
    let f = || fail(format!("remove {path}"));
    let Some((dir, name)) = root.parent(path).map_err(f())? else {
        return Err(Fail(Errno::EBUSY, "/ cannot be removed".into()));
    };
    match nix::unistd::unlinkat(
        &dir,
        name.as_c_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EISDIR) if recursive => {
            crate::fsutil::remove_tree_at(dir.as_fd(), &name).map_err(f())
        }
        Err(Errno::EISDIR) => {
            nix::unistd::unlinkat(&dir, name.as_c_str(), nix::unistd::UnlinkatFlags::RemoveDir)
                .map_err(f())
        }
        Err(e) => Err(f()(e)),
    }
}

fn rename(root: &Root, from: &str, to: &str) -> Res<()> {
    let f = || fail(format!("rename {from} to {to}"));
    let (fdir, fname) = root
        .parent(from)
        .map_err(f())?
        .ok_or_else(|| f()(Errno::EBUSY))?;
    let (tdir, tname) = root
        .parent(to)
        .map_err(f())?
        .ok_or_else(|| f()(Errno::EBUSY))?;
    nix::fcntl::renameat(&fdir, fname.as_c_str(), &tdir, tname.as_c_str()).map_err(f())
}
