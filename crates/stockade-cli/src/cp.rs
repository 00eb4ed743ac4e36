//! `stockade cp`: files and directory trees between the host and a
//! sandbox, as `docker cp` copies them. The sandbox's side goes through
//! the daemon's files API, so it runs inside the sandbox as its user.
//!
//! Out of a sandbox, nothing the sandbox made is followed on the host: its
//! symlinks are recreated as symlinks, files are created without following
//! a symlink at their name, and entry names are single path components. A
//! copy is bounded in entries and depth. Into a sandbox, host symlinks and
//! special files are skipped (with a warning), never followed.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;
use stockade_client::{Client, ClientError};

/// Most entries one copy handles.
const MAX_ENTRIES: usize = 200_000;
/// Deepest directory nesting one copy follows.
const MAX_DEPTH: usize = 128;

/// Entries copied so far, for the bounds.
struct Walk {
    entries: usize,
}

impl Walk {
    fn count(&mut self, depth: usize, what: &str) -> anyhow::Result<()> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            bail!("{what}: the copy has more than {MAX_ENTRIES} entries; copy a smaller tree, or pack it with tar first");
        }
        if depth > MAX_DEPTH {
            bail!("{what}: directories nest deeper than {MAX_DEPTH} levels; copy a smaller tree");
        }
        Ok(())
    }
}

/// `base/name` inside the sandbox.
fn join(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// The last component of a path (`/a/b/` → `b`).
fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// `SRC/.` copies the directory's contents rather than the directory.
fn contents_only(p: &str) -> bool {
    p.ends_with("/.")
}

fn kind(entry: &Value) -> &str {
    entry["type"].as_str().unwrap_or("other")
}

fn mode(entry: &Value) -> u32 {
    entry["mode"]
        .as_str()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0o644)
        & 0o777
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 404, .. })
}

/// Writes to a file, leaving runs of zeros as holes: a sparse file
/// copied out of a sandbox stays sparse on the host.
struct SparseWriter {
    file: std::fs::File,
    len: u64,
    hole_at_end: bool,
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::Seek;
        let mut rest = buf;
        while !rest.is_empty() {
            let n = rest.len().min(64 << 10);
            let (piece, tail) = rest.split_at(n);
            if piece.iter().all(|&b| b == 0) {
                self.file.seek(std::io::SeekFrom::Current(n as i64))?;
                self.hole_at_end = true;
            } else {
                self.file.write_all(piece)?;
                self.hole_at_end = false;
            }
            self.len += n as u64;
            rest = tail;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.hole_at_end {
            self.file.set_len(self.len)?;
        }
        Ok(())
    }
}

/// Copies the sandbox's `src` to the host's `dst`.
pub fn out_of(client: &Client, id: &str, src: &str, dst: &Path) -> anyhow::Result<()> {
    let entry = client.stat(id, src)?;
    let dst_is_dir = std::fs::metadata(dst).is_ok_and(|m| m.is_dir());
    match kind(&entry) {
        "dir" => {
            let target = if dst_is_dir && !contents_only(src) {
                dst.join(base_name(src))
            } else {
                dst.to_path_buf()
            };
            let mut walk = Walk { entries: 0 };
            make_host_dir(&target)?;
            copy_dir_out(client, id, src, &target, 1, &mut walk)?;
            set_mode(&target, mode(&entry))
        }
        "file" => {
            let target = if dst_is_dir {
                dst.join(base_name(src))
            } else {
                dst.to_path_buf()
            };
            // The destination the user named may be a symlink of theirs.
            let file = std::fs::File::create(&target)
                .with_context(|| format!("cannot write {}", target.display()))?;
            file_out(client, id, src, file, &target)
        }
        other => {
            bail!("{src} in the sandbox is a {other}; only files and directories can be copied")
        }
    }
}

fn file_out(
    client: &Client,
    id: &str,
    src: &str,
    file: std::fs::File,
    target: &Path,
) -> anyhow::Result<()> {
    let mut w = SparseWriter {
        file,
        len: 0,
        hole_at_end: false,
    };
    client.read_file_to(id, src, &mut w)?;
    w.flush()
        .with_context(|| format!("cannot write {}", target.display()))
}

fn make_host_dir(p: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "{} exists and is not a directory; remove it or choose another destination",
            p.display()
        ),
        Err(_) => std::fs::create_dir(p).with_context(|| format!("cannot create {}", p.display())),
    }
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", p.display()))
}

fn copy_dir_out(
    client: &Client,
    id: &str,
    src: &str,
    dst: &Path,
    depth: usize,
    walk: &mut Walk,
) -> anyhow::Result<()> {
    for e in client.list_dir(id, src)? {
        let name = e["name"].as_str().unwrap_or("");
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            bail!("the sandbox listed an entry {name:?} in {src}, which is not a file name; nothing more was copied");
        }
        let (from, to) = (join(src, name), dst.join(name));
        walk.count(depth, &from)?;
        match kind(&e) {
            "file" => {
                // Never through a symlink at the name (O_NOFOLLOW): what
                // the sandbox made must not steer writes on the host.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode(&e))
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&to)
                    .with_context(|| format!("cannot write {}", to.display()))?;
                file_out(client, id, &from, file, &to)?;
                set_mode(&to, mode(&e))?;
            }
            "dir" => {
                make_host_dir(&to)?;
                copy_dir_out(client, id, &from, &to, depth + 1, walk)?;
                set_mode(&to, mode(&e))?;
            }
            "symlink" => {
                let target = e["target"].as_str().unwrap_or("");
                std::os::unix::fs::symlink(target, &to)
                    .with_context(|| format!("cannot make the symlink {}", to.display()))?;
            }
            other => eprintln!("stockade: skipped {from}: a {other} (only files, directories and symlinks are copied)"),
        }
    }
    Ok(())
}

/// Copies the host's `src` into the sandbox's `dst`.
pub fn into(client: &Client, id: &str, src: &str, dst: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {src}"))?;
    let dst_is_dir = match client.stat(id, dst) {
        Ok(e) => kind(&e) == "dir",
        Err(e) if is_not_found(&e) => false,
        Err(e) => return Err(e.into()),
    };
    if meta.is_dir() {
        let target = if dst_is_dir && !contents_only(src) {
            join(dst, base_name(src))
        } else {
            dst.to_string()
        };
        client.make_dir(id, &target)?;
        let mut walk = Walk { entries: 0 };
        copy_dir_in(client, id, Path::new(src), &target, 1, &mut walk)
    } else if meta.is_file() {
        let target = if dst_is_dir {
            join(dst, base_name(src))
        } else {
            dst.to_string()
        };
        file_in(
            client,
            id,
            Path::new(src),
            &target,
            meta.permissions().mode(),
        )
    } else {
        bail!("{src} is not a regular file or a directory; only those can be copied")
    }
}

fn file_in(client: &Client, id: &str, src: &Path, dst: &str, mode: u32) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot read {}", src.display()))?
        .len();
    client.write_file_with_mode(id, dst, &mut f, len, Some(mode & 0o777))?;
    Ok(())
}

fn copy_dir_in(
    client: &Client,
    id: &str,
    src: &Path,
    dst: &str,
    depth: usize,
    walk: &mut Walk,
) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", src.display()))?;
        let from: PathBuf = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            eprintln!(
                "stockade: skipped {}: its name is not UTF-8",
                from.display()
            );
            continue;
        };
        walk.count(depth, &from.display().to_string())?;
        let to = join(dst, &name);
        let meta = std::fs::symlink_metadata(&from)
            .with_context(|| format!("cannot read {}", from.display()))?;
        if meta.is_file() {
            file_in(client, id, &from, &to, meta.permissions().mode())?;
        } else if meta.is_dir() {
            client.make_dir(id, &to)?;
            copy_dir_in(client, id, &from, &to, depth + 1, walk)?;
        } else {
            let what = if meta.file_type().is_symlink() {
                "a symlink"
            } else {
                "not a file or directory"
            };
            eprintln!("stockade: skipped {}: {what} (only files and directories are copied into a sandbox)", from.display());
        }
    }
    Ok(())
}
