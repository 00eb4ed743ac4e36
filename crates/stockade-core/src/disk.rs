//! Disk accounting for the sandbox's writable directories.
//!
//! The host filesystem offers no per-directory hard cap without project
//! quotas (which need the filesystem mounted with them), so the supervisor
//! measures the bytes allocated under the sandbox's scratch workspace, home
//! and overlay upper directories, and kills the sandbox when they exceed
//! the limit. The walk counts allocated blocks (sparse files count what
//! they use), never follows symlinks, and counts a hard-linked file once.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Measures a fixed set of directories.
#[derive(Debug)]
pub struct DiskMeter {
    roots: Vec<PathBuf>,
    /// How long the last walk took; the caller spaces walks by a multiple
    /// of it so a huge tree does not eat the supervisor's CPU.
    pub last_walk: Duration,
}

impl DiskMeter {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        DiskMeter {
            roots,
            last_walk: Duration::ZERO,
        }
    }

    /// Bytes allocated under all roots now.
    pub fn measure(&mut self) -> u64 {
        let start = Instant::now();
        let mut seen = HashSet::new();
        let total = self.roots.iter().map(|r| walk(r, &mut seen)).sum();
        self.last_walk = start.elapsed();
        total
    }

    /// When to walk next: at least every `min`, and never more than 5% of
    /// the supervisor's time.
    pub fn next_interval(&self, min: Duration) -> Duration {
        min.max(self.last_walk * 20)
    }
}

/// Bytes allocated under `path`, walked through directory descriptors
/// (one per level, never a full path: trees deeper than PATH_MAX count
/// too) and without recursion.
fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstatat, Mode};
    use std::os::fd::AsFd;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let count = |st_nlink: u64,
                 is_dir: bool,
                 dev: u64,
                 ino: u64,
                 blocks: i64,
                 seen: &mut HashSet<(u64, u64)>| {
        if st_nlink <= 1 || is_dir || seen.insert((dev, ino)) {
            blocks.max(0) as u64 * 512
        } else {
            0
        }
    };
    let mut total = count(
        meta.nlink(),
        meta.is_dir(),
        meta.dev(),
        meta.ino(),
        meta.blocks() as i64,
        seen,
    );
    if !meta.is_dir() {
        return total;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // The names of a directory, read at once (nix's directory iterator
    // rewinds when dropped, so a stream cannot be kept per level).
    let names = |fd: &std::os::fd::OwnedFd| -> Vec<std::ffi::CString> {
        let Ok(copy) = fd.try_clone() else {
            return Vec::new();
        };
        let Ok(mut d) = nix::dir::Dir::from_fd(copy) else {
            return Vec::new();
        };
        d.iter()
            .flatten()
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect()
    };
    let Ok(top) = nix::fcntl::open(path, flags, Mode::empty()) else {
        return total;
    };
    // Each level: its descriptor and the names still to look at.
    let first = names(&top);
    let mut stack = vec![(top, first)];
    while let Some((fd, pending)) = stack.last_mut() {
        let Some(name) = pending.pop() else {
            stack.pop();
            continue;
        };
        let Ok(st) = fstatat(
            fd.as_fd(),
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        total += count(
            st.st_nlink,
            is_dir,
            st.st_dev,
            st.st_ino,
            st.st_blocks,
            seen,
        );
        if is_dir {
            if let Ok(sub) = openat(fd.as_fd(), name.as_c_str(), flags, Mode::empty()) {
                let list = names(&sub);
                stack.push((sub, list));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_bytes_once_per_inode() {
        let d = tempfile::tempdir().unwrap();
        let mut m = DiskMeter::new(vec![d.path().to_path_buf()]);
        let empty = m.measure();
        fs::write(d.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        let one = m.measure();
        assert!(one >= empty + (1 << 20), "{empty} -> {one}");
        fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        let linked = m.measure();
        assert!(
            linked < one + (1 << 19),
            "hard link counted twice: {one} -> {linked}"
        );
        std::os::unix::fs::symlink("/usr", d.path().join("escape")).unwrap();
        assert!(m.measure() < one + (1 << 19), "followed a symlink");
    }

    #[test]
    fn trees_deeper_than_path_max_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let mut dir = fs::File::open(d.path()).unwrap();
        for _ in 0..400 {
            use std::os::fd::AsFd;
            let name = "x".repeat(40);
            nix::sys::stat::mkdirat(
                dir.as_fd(),
                name.as_str(),
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            )
            .unwrap();
            let sub = nix::fcntl::openat(
                dir.as_fd(),
                name.as_str(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
            dir = fs::File::from(sub);
        }
        use std::os::fd::AsFd;
        let f = nix::fcntl::openat(
            dir.as_fd(),
            "big",
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::io::Write::write_all(&mut fs::File::from(f), &vec![1u8; 4 << 20]).unwrap();
        let mut m = DiskMeter::new(vec![d.path().to_path_buf()]);
        assert!(
            m.measure() >= 4 << 20,
            "a file 16,000 bytes deep was not counted"
        );
    }

    #[test]
    fn sparse_files_count_what_they_use() {
        let d = tempfile::tempdir().unwrap();
        let f = fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        let mut m = DiskMeter::new(vec![d.path().to_path_buf()]);
        assert!(m.measure() < 1 << 20);
    }
}
