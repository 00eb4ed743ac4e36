//! Small helpers shared by the v1 and v2 drivers: control-file I/O, parsers
//! for the kernel's file formats, and the kill / remove loops.
//!
//! Everything here is driven by paths, so the drivers can be pointed at a
//! fake tree in a temporary directory by the unit tests.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::CgroupError;

/// How the drivers create and remove cgroup directories.
///
/// On a real cgroup file system `mkdir` also creates the control files and
/// `rmdir` refuses while processes remain; the unit tests replace both with
/// functions that imitate that on a plain directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirOps {
    pub mkdir: fn(&Path) -> io::Result<()>,
    pub rmdir: fn(&Path) -> io::Result<()>,
}

impl DirOps {
    pub(crate) const REAL: DirOps = DirOps {
        mkdir: |p| fs::create_dir(p),
        rmdir: |p| fs::remove_dir(p),
    };
}

/// How long `kill_all` keeps trying before it gives up on stragglers (tasks
/// stuck in uninterruptible sleep cannot be hurried).
pub(crate) const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// Writes `value` to a control file in one `write(2)`.
///
/// cgroup files parse each write on its own, so the value must not be split.
/// The file is never created: a missing file means a missing controller or an
/// old kernel, and the caller decides whether that matters (`NotFound`).
pub(crate) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    let written = file.write(value.as_bytes())?;
    if written != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the kernel accepted only part of the value",
        ));
    }
    Ok(())
}

/// Writes `dir/file`, turning a failure into an error naming the file.
pub(crate) fn set(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    write_file(&path, value).map_err(|source| CgroupError::WriteFile {
        path,
        value: value.to_owned(),
        source,
    })
}

/// Like [`set`], for files that older kernels or configurations lack;
/// returns whether the file was there.
pub(crate) fn set_if_present(dir: &Path, file: &str, value: &str) -> Result<bool, CgroupError> {
    let path = dir.join(file);
    match write_file(&path, value) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CgroupError::WriteFile {
            path,
            value: value.to_owned(),
            source,
        }),
    }
}

/// Reads a control file; `None` when it is missing or unreadable, which the
/// stats treat as "not supported here".
pub(crate) fn read_opt(path: &Path) -> Option<String> {
    read_sized(path, 4096).ok()
}

/// Reads a whole file whose size the kernel does not report (procfs,
/// cgroupfs), with nothing but `read` calls:
/// - through `Take`, because `fs::read_to_string` first asks for the size
///   (`statx` and `lseek`, while control files all claim 4096 or 0 bytes);
/// - into a buffer of `guess` bytes, because without spare room
///   `read_to_string` starts with a 32-byte probe and doubles its way up
///   (eight reads for a 2.5 KB `/proc/self/mountinfo`, where this takes
///   two: the data and the end).
pub(crate) fn read_sized(path: &Path, guess: usize) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(guess);
    fs::File::open(path)?
        .take(u64::MAX)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Parses a file holding a single number, such as `memory.current`.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Looks up `key` in a flat-keyed file ("key value" per line), the format of
/// `memory.events`, `pids.events`, `cpu.stat` and v1 `memory.oom_control`.
pub(crate) fn keyed_u64(text: &str, key: &str) -> Option<u64> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(key) {
            return fields.next()?.parse().ok();
        }
    }
    None
}

/// Reads a number from `dir/file`, 0 when absent.
pub(crate) fn read_u64(dir: &Path, file: &str) -> u64 {
    read_opt(&dir.join(file))
        .and_then(|t| parse_u64(&t))
        .unwrap_or(0)
}

/// Reads `key` from the flat-keyed file `dir/file`, 0 when absent.
pub(crate) fn read_keyed(dir: &Path, file: &str, key: &str) -> u64 {
    read_opt(&dir.join(file))
        .and_then(|t| keyed_u64(&t, key))
        .unwrap_or(0)
}

/// Parses `cgroup.procs`: one pid per line.
pub(crate) fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The processes listed in `dir/cgroup.procs`; empty when the cgroup is gone.
pub(crate) fn read_procs(dir: &Path) -> Vec<i32> {
    read_opt(&dir.join("cgroup.procs"))
        .map(|t| parse_pids(&t))
        .unwrap_or_default()
}

/// Sends SIGKILL to every pid in `pids`. Pids that already exited are fine.
pub(crate) fn kill_pids(pids: &[i32]) {
    for &pid in pids {
        // Pid 0 or negative would signal a process group; cgroup.procs never
        // lists those, but a corrupt read must not turn into a group kill.
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Calls `probe` until it returns true or `deadline` passes, sleeping a
/// little longer each round. Returns the last answer.
pub(crate) fn wait_until(deadline: Instant, mut probe: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_micros(200);
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Removes a cgroup directory, retrying on `EBUSY` for about a second: right
/// after a kill the dying tasks may still pin the cgroup for a moment.
/// A directory that is already gone counts as removed.
pub(crate) fn remove_dir(ops: DirOps, path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut last = Ok(());
    wait_until(deadline, || {
        last = match (ops.rmdir)(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        !matches!(&last, Err(e) if e.raw_os_error() == Some(libc::EBUSY))
    });
    last
}

/// A non-blocking inotify fd that becomes readable when `path` is modified.
///
/// Called through libc because the workspace builds nix without its
/// `inotify` feature.
pub(crate) fn watch_modify(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: inotify_init1 takes only flags and returns a new fd or -1.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by inotify_init1, so it is an open fd
    // that nothing else owns; OwnedFd closes it on every path below.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `fd` is a live inotify fd and `c_path` is a NUL-terminated
    // string that outlives the call; the kernel copies the path.
    let watch =
        unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), libc::IN_MODIFY) };
    if watch < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One `rmdir` without retries: `Ok(false)` when the cgroup is in use
/// (`EBUSY`), `Ok(true)` when it is gone, whoever removed it.
pub(crate) fn remove_dir_if_unused(ops: DirOps, path: &Path) -> io::Result<bool> {
    match (ops.rmdir)(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a notifier fd has something to read right now.
pub(crate) fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Empties an eventfd or inotify fd without ever blocking: it polls before
/// every read, so even a blocking fd handed in by mistake cannot hang us.
pub(crate) fn drain(fd: BorrowedFd<'_>) {
    // One read resets an eventfd; an inotify queue may need a few. The bound
    // keeps a misbehaving fd from spinning us forever.
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        if !readable(fd) {
            return;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(Errno::EAGAIN) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_opt_reads_files_of_any_size_whole() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, 50_000] {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let path = dir.path().join(format!("f{len}"));
            fs::write(&path, &text).unwrap();
            assert_eq!(
                read_opt(&path).as_deref(),
                Some(text.as_str()),
                "{len} bytes"
            );
        }
        // A generated file whose size says 0 (procfs, like cgroupfs).
        let status = read_opt(Path::new("/proc/self/status")).unwrap();
        assert!(status.contains("\nPid:"), "{status}");
        assert_eq!(read_opt(&dir.path().join("absent")), None);
        fs::write(dir.path().join("binary"), [0xff, 0xfe]).unwrap();
        assert_eq!(read_opt(&dir.path().join("binary")), None);
    }

    #[test]
    fn keyed_u64_finds_a_key_among_others() {
        let events = "low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_u64(events, "oom_kill"), Some(1));
        assert_eq!(keyed_u64(events, "oom"), Some(2));
        assert_eq!(keyed_u64(events, "high"), Some(12));
        assert_eq!(keyed_u64(events, "absent"), None);
    }

    #[test]
    fn keyed_u64_reads_v1_oom_control() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(keyed_u64(text, "oom_kill"), Some(7));
        assert_eq!(keyed_u64(text, "oom_kill_disable"), Some(0));
    }

    #[test]
    fn keyed_u64_reads_cpu_stat_usage() {
        let text = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n\
                    nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(keyed_u64(text, "usage_usec"), Some(2_500_000));
    }

    #[test]
    fn keyed_u64_ignores_malformed_lines() {
        assert_eq!(keyed_u64("max\nmax x\n", "max"), None);
        assert_eq!(keyed_u64("", "max"), None);
    }

    #[test]
    fn parse_u64_treats_max_as_unknown() {
        assert_eq!(parse_u64("4096\n"), Some(4096));
        assert_eq!(parse_u64("max\n"), None);
    }

    #[test]
    fn parse_pids_skips_blank_lines() {
        assert_eq!(parse_pids("12\n\n345\n"), vec![12, 345]);
    }

    #[test]
    fn write_file_replaces_content_and_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pids.max");
        fs::write(&path, "max\n").unwrap();
        write_file(&path, "8").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "8");
        let missing = dir.path().join("memory.swap.max");
        let err = write_file(&missing, "0").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!missing.exists());
    }

    #[test]
    fn remove_dir_accepts_an_already_removed_directory() {
        let dir = tempfile::tempdir().unwrap();
        remove_dir(DirOps::REAL, &dir.path().join("gone")).unwrap();
    }
}
