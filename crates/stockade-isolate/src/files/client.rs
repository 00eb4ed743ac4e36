//! The daemon's side of the file helper protocol: a blocking client over
//! the socket to one helper. Everything the helper sends is checked: it
//! runs inside the sandbox, where the workload could have taken it over.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::{
    read_frame, write_frame, write_json, Entry, FileReply, FileRequest, Frame, CHUNK, DATA, END,
};

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The operation failed inside the sandbox with `errno`.
    #[error("{message}: {}", nix::errno::Errno::from_raw(*errno).desc())]
    Failed { errno: i32, message: String },
    /// The helper broke the protocol or went away.
    #[error("the sandbox's file helper {0}")]
    Protocol(String),
    /// The socket to the helper failed.
    #[error("talking to the sandbox's file helper failed")]
    Io(#[source] io::Error),
}

impl FileError {
    /// The errno of a failed operation.
    pub fn errno(&self) -> Option<i32> {
        match self {
            FileError::Failed { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A connection to one file helper; requests go one at a time.
#[derive(Debug)]
pub struct FileClient {
    r: BufReader<UnixStream>,
    w: BufWriter<UnixStream>,
}

fn protocol(what: &str) -> FileError {
    FileError::Protocol(what.to_string())
}

impl FileClient {
    /// Takes over the socket to a freshly started helper and waits for
    /// its greeting.
    pub fn new(sock: OwnedFd) -> Result<FileClient, FileError> {
        let sock = UnixStream::from(sock);
        let reader = sock.try_clone().map_err(FileError::Io)?;
        let mut c = FileClient {
            r: BufReader::with_capacity(CHUNK + 5, reader),
            w: BufWriter::with_capacity(CHUNK + 5, sock),
        };
        match c.reply()? {
            FileReply::Hello => Ok(c),
            other => Err(c.unexpected(other)),
        }
    }

    fn send(&mut self, req: &FileRequest) -> Result<(), FileError> {
        write_json(&mut self.w, req)
            .and_then(|_| self.w.flush())
            .map_err(FileError::Io)
    }

    fn reply(&mut self) -> Result<FileReply, FileError> {
        match read_frame(&mut self.r).map_err(FileError::Io)? {
            Some(Frame::Json(j)) => serde_json::from_slice(&j)
                .map_err(|e| FileError::Protocol(format!("sent a malformed answer: {e}"))),
            Some(_) => Err(protocol("sent data where an answer was due")),
            None => Err(protocol(
                "went away (the sandbox may have ended or be at its process limit)",
            )),
        }
    }

    /// A `Failed` answer as an error; anything else out of place as a
    /// protocol error.
    fn unexpected(&self, reply: FileReply) -> FileError {
        match reply {
            FileReply::Failed { errno, message } => FileError::Failed { errno, message },
            other => FileError::Protocol(format!("answered out of turn: {other:?}")),
        }
    }

    fn request(&mut self, req: &FileRequest) -> Result<FileReply, FileError> {
        self.send(req)?;
        match self.reply()? {
            FileReply::Failed { errno, message } => Err(FileError::Failed { errno, message }),
            r => Ok(r),
        }
    }

    /// What `path` is (`follow`: through a final symlink).
    pub fn stat(&mut self, path: &str, follow: bool) -> Result<Entry, FileError> {
        let req = FileRequest::Stat {
            path: path.into(),
            follow,
        };
        match self.request(&req)? {
            FileReply::Entry(e) => Ok(e),
            other => Err(self.unexpected(other)),
        }
    }

    /// Creates a directory; `Ok(false)` if it existed (with `parents`).
    pub fn make_dir(&mut self, path: &str, parents: bool) -> Result<bool, FileError> {
        let req = FileRequest::MakeDir {
            path: path.into(),
            parents,
        };
        match self.request(&req)? {
            FileReply::Done { created } => Ok(created),
            other => Err(self.unexpected(other)),
        }
    }

    pub fn remove(&mut self, path: &str, recursive: bool) -> Result<(), FileError> {
        let req = FileRequest::Remove {
            path: path.into(),
            recursive,
        };
        match self.request(&req)? {
            FileReply::Done { .. } => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), FileError> {
        let req = FileRequest::Rename {
            from: from.into(),
            to: to.into(),
        };
        match self.request(&req)? {
            FileReply::Done { .. } => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// The entries under `path`, `depth` levels deep, at most `max`
    /// (more is an error: the caller should list less at once).
    pub fn list(&mut self, path: &str, depth: u32, max: usize) -> Result<Vec<Entry>, FileError> {
        let req = FileRequest::List {
            path: path.into(),
            depth: depth.max(1),
        };
        match self.request(&req)? {
            FileReply::Listing => {}
            other => return Err(self.unexpected(other)),
        }
        let mut out = Vec::new();
        let mut over = false;
        loop {
            match read_frame(&mut self.r).map_err(FileError::Io)? {
                Some(Frame::Json(j)) => {
                    let batch: Vec<Entry> = serde_json::from_slice(&j).map_err(|e| {
                        FileError::Protocol(format!("sent a malformed listing: {e}"))
                    })?;
                    // Read on to the end either way, to stay in step.
                    if out.len() + batch.len() > max {
                        over = true;
                    } else {
                        out.extend(batch);
                    }
                }
                Some(Frame::End) => break,
                Some(Frame::Data(_)) | None => return Err(protocol("broke off a listing")),
            }
        }
        if over {
            return Err(FileError::Failed {
                errno: libc::E2BIG,
                message: format!(
                    "{path} holds more than {max} entries; list a subdirectory or fewer levels"
                ),
            });
        }
        Ok(out)
    }

    /// Starts reading the regular file `path`; returns its size and a
    /// reader of its contents (which must be read to its end before the
    /// next request).
    pub fn read(&mut self, path: &str) -> Result<(u64, FileReader<'_>), FileError> {
        let req = FileRequest::Read { path: path.into() };
        match self.request(&req)? {
            FileReply::Reading { size } => Ok((
                size,
                FileReader {
                    client: self,
                    chunk: Vec::new(),
                    at: 0,
                    done: false,
                },
            )),
            other => Err(self.unexpected(other)),
        }
    }

    /// Starts writing `path` (see [`FileRequest::Write`]); the data goes
    /// through the returned writer, which [`FileWriter::finish`] ends.
    pub fn write(
        &mut self,
        path: &str,
        mode: Option<u32>,
        append: bool,
    ) -> Result<FileWriter<'_>, FileError> {
        let req = FileRequest::Write {
            path: path.into(),
            mode,
            append,
        };
        match self.request(&req)? {
            FileReply::Ready => Ok(FileWriter { client: self }),
            other => Err(self.unexpected(other)),
        }
    }

    /// Writes all of `data` to `path`; returns whether the file was made.
    pub fn write_all(&mut self, path: &str, data: &mut dyn Read) -> Result<(bool, u64), FileError> {
        let mut w = self.write(path, None, false)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FileError::Io(e)),
            };
            w.chunk(&buf[..n])?;
        }
        w.finish()
    }
}

/// The contents of a file being read (see [`FileClient::read`]).
#[derive(Debug)]
pub struct FileReader<'a> {
    client: &'a mut FileClient,
    chunk: Vec<u8>,
    at: usize,
    done: bool,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match read_frame(&mut self.client.r)? {
                Some(Frame::Data(d)) => {
                    self.chunk = d;
                    self.at = 0;
                }
                Some(Frame::End) => {
                    self.done = true;
                    return match self.client.reply() {
                        Ok(FileReply::Done { .. }) => Ok(0),
                        Ok(FileReply::Failed { errno, .. }) => {
                            Err(io::Error::from_raw_os_error(errno))
                        }
                        Ok(_) | Err(_) => Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the sandbox's file helper broke off a read",
                        )),
                    };
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the sandbox's file helper broke off a read",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A file being written (see [`FileClient::write`]).
#[derive(Debug)]
pub struct FileWriter<'a> {
    client: &'a mut FileClient,
}

impl FileWriter<'_> {
    /// Sends the next piece of the file (any length).
    pub fn chunk(&mut self, mut data: &[u8]) -> Result<(), FileError> {
        while !data.is_empty() {
            let n = data.len().min(CHUNK);
            write_frame(&mut self.client.w, DATA, &data[..n]).map_err(FileError::Io)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the file; returns whether it was created and its size.
    pub fn finish(self) -> Result<(bool, u64), FileError> {
        write_frame(&mut self.client.w, END, &[])
            .and_then(|_| self.client.w.flush())
            .map_err(FileError::Io)?;
        match self.client.reply()? {
            FileReply::Written { created, size } => Ok((created, size)),
            other => Err(self.client.unexpected(other)),
        }
    }
}
