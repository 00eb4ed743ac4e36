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

fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = 0;
    if meta.nlink() <= 1 || meta.is_dir() || seen.insert((meta.dev(), meta.ino())) {
        total += meta.blocks() * 512;
    }
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                total += walk(&e.path(), seen);
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
    fn sparse_files_count_what_they_use() {
        let d = tempfile::tempdir().unwrap();
        let f = fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        let mut m = DiskMeter::new(vec![d.path().to_path_buf()]);
        assert!(m.measure() < 1 << 20);
    }
}
