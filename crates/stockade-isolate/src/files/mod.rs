//! File operations on a sandbox's contents, done *inside* the sandbox.
//!
//! The daemon never walks a sandbox's files as host root: a path the
//! workload planted (a symlink to `/proc/sys/kernel/core_pattern`, say)
//! would lead host root wherever it points, and a bind of a host directory
//! would expose files the workload itself may not read. Instead the
//! sandbox's init starts a *file helper* — a fork of itself that takes the
//! sandbox's user, its Landlock domain, no capabilities, `no_new_privs`
//! and the seccomp filter, exactly like a workload — and the daemon asks
//! it over a socket pair. Whatever the helper can do is what the workload
//! itself could do, and nothing more.
//!
//! The protocol is a stream of frames, each `[kind: u8][length: u32 BE]
//! [payload]`: `J` a JSON message ([`FileRequest`] one way, [`FileReply`]
//! the other), `D` a chunk of file data, `E` the end of a data stream. The
//! helper greets with `Hello` (or `Failed` if it could not take the
//! sandbox's identity), then serves one request after another:
//!
//! - `Stat` → `Entry`; `MakeDir`, `Remove`, `Rename` → `Done`;
//! - `List` → `Listing`, then `J` frames of entry batches, then `E`;
//! - `Read` → `Reading { size }`, then `D` frames, `E`, and `Done` (or
//!   `Failed`, if reading failed half-way);
//! - `Write` → `Ready` (or `Failed`); the client sends `D` frames and `E`;
//!   the helper answers `Written` (or `Failed`, after reading to `E`).
//!
//! [`serve`] is the helper's side, [`FileClient`] the daemon's.

mod client;
mod serve;

pub use client::{FileClient, FileError, FileReader, FileWriter};
pub use serve::{serve, Root};

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest JSON frame accepted.
pub const MAX_JSON: usize = 4 << 20;
/// Size of the data chunks the helper sends, and the largest accepted.
pub const CHUNK: usize = 256 << 10;
/// Entries per `J` frame of a listing.
const LIST_BATCH: usize = 512;

/// A request to the file helper. Paths are absolute paths inside the
/// sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileRequest {
    /// What `path` is; with `follow`, what a symlink there points at.
    Stat {
        path: String,
        #[serde(default)]
        follow: bool,
    },
    /// The entries of directory `path` (and of its subdirectories down to
    /// `depth` levels; 1 lists the directory itself only).
    List {
        path: String,
        #[serde(default = "one")]
        depth: u32,
    },
    /// The contents of the regular file `path`.
    Read { path: String },
    /// Replace (or with `append`, extend) the regular file `path`,
    /// creating it and its missing parent directories. `mode` is the new
    /// file's permission bits (0644 by default; only 0777 bits count).
    Write {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        append: bool,
    },
    /// Create directory `path` (with `parents`, its missing parents too;
    /// then an existing directory is not an error).
    MakeDir {
        path: String,
        #[serde(default)]
        parents: bool,
    },
    /// Remove a file, a symlink (not its target) or an empty directory;
    /// with `recursive`, a directory and everything in it.
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Rename `from` to `to` (replacing a file at `to`).
    Rename { from: String, to: String },
}

fn one() -> u32 {
    1
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A device, socket or FIFO.
    Other,
}

/// A file as the sandbox sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The last component of `path`.
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner and group as ids inside the sandbox.
    pub uid: u32,
    pub gid: u32,
    /// Modification time, unix seconds.
    pub mtime: i64,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// An answer of the file helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum FileReply {
    /// The helper runs as the sandbox's user and takes requests.
    Hello,
    Entry(Entry),
    /// Entry batches follow, then the end of the stream.
    Listing,
    /// Data follows, then the end of the stream, then `Done`/`Failed`.
    Reading {
        size: u64,
    },
    /// Send the data now, then the end of the stream.
    Ready,
    Written {
        created: bool,
        size: u64,
    },
    Done {
        created: bool,
    },
    /// The operation failed with `errno`; `message` says what was tried.
    Failed {
        errno: i32,
        message: String,
    },
}

const JSON: u8 = b'J';
const DATA: u8 = b'D';
const END: u8 = b'E';

/// One frame off the wire.
#[derive(Debug)]
enum Frame {
    Json(Vec<u8>),
    Data(Vec<u8>),
    End,
}

fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

fn write_json<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let data = serde_json::to_vec(msg).map_err(io::Error::other)?;
    write_frame(w, JSON, &data)
}

/// Reads one frame; `Ok(None)` at a clean end of the stream (before a
/// frame's first byte).
fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let limit = match head[0] {
        JSON => MAX_JSON,
        DATA => CHUNK,
        END => 0,
        k => return Err(bad(format!("unknown frame kind {k:#x}"))),
    };
    if len > limit {
        return Err(bad(format!("frame of {len} bytes, more than {limit}")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(match head[0] {
        JSON => Frame::Json(payload),
        DATA => Frame::Data(payload),
        _ => Frame::End,
    }))
}

/// Tells a client that the helper could not start (instead of `Hello`).
pub fn greet_failed(w: &mut impl Write, errno: nix::errno::Errno, message: &str) -> io::Result<()> {
    write_json(
        w,
        &FileReply::Failed {
            errno: errno as i32,
            message: message.to_string(),
        },
    )
}

#[cfg(test)]
mod tests;
