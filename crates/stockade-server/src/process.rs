//! Processes started with exec: the pipes the daemon keeps for them, the
//! output they printed (the most recent `OUTPUT_CAP_BYTES` of each stream),
//! their exit, and the timeout that kills them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use stockade_core::backend::{BackendError, ExecRequest, ExitWaiter};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};

use crate::config::{KEPT_FINISHED_PROCESSES, OUTPUT_CAP_BYTES};
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, Live};

/// How long readers may go on after the process exited (a child it left
/// behind may hold the pipe open); then the daemon stops reading.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout = 0,
    Stderr = 1,
}

/// Printed bytes, as read. A chunk never ends inside a UTF-8 sequence
/// that the next read completes, so chunks decode as text one by one.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub seq: u64,
    pub stream: StreamKind,
    pub data: Vec<u8>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitInfo {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `exited`, `signaled`, `timeout`, `error` (the sandbox went away
    /// while the process ran; `error` says why), or the hard breach that
    /// killed the sandbox and the process with it: `memory-limit`,
    /// `disk-limit` (`timeout` for the sandbox's time limit).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_seconds: f64,
}

/// What a process printed and whether it ended.
#[derive(Debug, Default)]
pub struct OutputLog {
    pub streams: [VecDeque<Chunk>; 2],
    bytes: [usize; 2],
    pub truncated: [bool; 2],
    next_seq: u64,
    pub exit: Option<ExitInfo>,
}

impl OutputLog {
    fn push(&mut self, stream: StreamKind, data: Vec<u8>) {
        let i = stream as usize;
        self.bytes[i] += data.len();
        self.streams[i].push_back(Chunk {
            seq: self.next_seq,
            stream,
            data,
        });
        self.next_seq += 1;
        while self.bytes[i] > OUTPUT_CAP_BYTES && self.streams[i].len() > 1 {
            let old = self.streams[i].pop_front().expect("non-empty");
            self.bytes[i] -= old.data.len();
            self.truncated[i] = true;
        }
    }

    /// Chunks with `seq >= from`, in the order they were printed.
    pub fn since(&self, from: u64) -> Vec<Chunk> {
        let mut out: Vec<Chunk> = self
            .streams
            .iter()
            .flat_map(|s| s.iter().filter(|c| c.seq >= from).cloned())
            .collect();
        out.sort_by_key(|c| c.seq);
        out
    }

    /// Everything kept of one stream, as printed.
    pub fn bytes(&self, stream: StreamKind) -> Vec<u8> {
        self.streams[stream as usize]
            .iter()
            .flat_map(|c| c.data.iter().copied())
            .collect()
    }
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

/// Where a process's output comes from: a pipe, or its terminal's master
/// (which fails with EIO once the terminal's last user closed it: its end).
pub type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Where a process's input goes: a pipe, or its terminal's master.
pub type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// One process started through the API.
pub struct Proc {
    pub pid: i32,
    pub serial: u64,
    pub background: bool,
    /// The write end of its stdin (a pipe, or its terminal), until closed.
    pub stdin: tokio::sync::Mutex<Option<Writer>>,
    /// The master side of its terminal, when it has one (for its size).
    pub tty: Option<std::os::fd::OwnedFd>,
    log: Mutex<OutputLog>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.pid)
            .field("serial", &self.serial)
            .field("background", &self.background)
            .field("tty", &self.tty.is_some())
            .finish_non_exhaustive()
    }
}

impl Proc {
    /// Sets the size of its terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let Some(m) = &self.tty else {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTTY));
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own, on a descriptor we hold.
        if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, OutputLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Wakes on every change of the log (output or exit).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
    fn touch(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
    /// Waits until the process has ended and returns how.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.subscribe();
        loop {
            if let Some(e) = self.log().exit.clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` (the sender) lives.
                return self.log().exit.clone().unwrap_or(ExitInfo {
                    exit_code: None,
                    signal: None,
                    outcome: "error",
                    error: Some("the process record was dropped".into()),
                    duration_seconds: 0.0,
                });
            }
        }
    }
}

/// The processes of one sandbox the daemon knows about.
#[derive(Debug, Default)]
pub struct ProcTable {
    map: HashMap<i32, Arc<Proc>>,
    finished: VecDeque<(i32, u64)>,
}

impl ProcTable {
    pub fn get(&self, pid: i32) -> Option<Arc<Proc>> {
        self.map.get(&pid).cloned()
    }
    fn finished(&mut self, pid: i32, serial: u64) {
        self.finished.push_back((pid, serial));
        while self.finished.len() > KEPT_FINISHED_PROCESSES {
            let (p, s) = self.finished.pop_front().expect("non-empty");
            if self.map.get(&p).is_some_and(|x| x.serial == s) {
                self.map.remove(&p);
            }
        }
    }
}

/// What to run and how.
#[derive(Debug)]
pub struct StartSpec {
    pub req: ExecRequest,
    pub timeout: Option<Duration>,
    pub stdin: Option<Vec<u8>>,
    pub background: bool,
}

fn pipe_pair() -> ApiResult<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
        ApiError::busy(format!(
            "cannot create a pipe for the process: {}; the daemon may be out of file descriptors, retry later",
            e.desc()
        ))
    })
}

/// Starts a process in `live` and the tasks that follow it.
pub async fn start(
    state: &Arc<AppState>,
    live: &Arc<Live>,
    spec: StartSpec,
) -> ApiResult<Arc<Proc>> {
    let permit = state
        .process_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::busy(format!(
                "{} processes already run in this daemon's sandboxes; wait for some to end",
                crate::config::MAX_RUNNING_PROCESSES
            ))
        })?;
    let handle = live.handle.clone();
    let req = spec.req.clone();
    let to_io = |pid: i32| {
        move |e: std::io::Error| {
            ApiError::internal(format!("cannot watch the output of process {pid}: {e}"))
        }
    };
    // Output readers and the stdin writer: pipes, or one terminal (whose
    // master is read and written on the blocking pool: it is no pipe).
    let (pid, waiter, stdin, readers_of, tty): (
        i32,
        ExitWaiter,
        Writer,
        [Reader; 2],
        Option<std::os::fd::OwnedFd>,
    ) = if req.tty {
        let (pid, master, waiter) = tokio::task::spawn_blocking(move || handle.exec_tty(&req))
            .await
            .map_err(ApiError::join)?
            .map_err(|e| ApiError::backend(&live.id, e))?;
        let dup = |m: &std::os::fd::OwnedFd| m.try_clone().map_err(to_io(pid));
        let (r, w) = (dup(&master)?, dup(&master)?);
        let reader: Reader = Box::new(tokio::fs::File::from_std(std::fs::File::from(r)));
        let writer: Writer = Box::new(tokio::fs::File::from_std(std::fs::File::from(w)));
        (
            pid,
            waiter,
            writer,
            [reader, Box::new(tokio::io::empty())],
            Some(master),
        )
    } else {
        let (in_r, in_w) = pipe_pair()?;
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
        let (pid, waiter) =
            tokio::task::spawn_blocking(move || handle.exec_waiting(&req, [in_r, out_w, err_w]))
                .await
                .map_err(ApiError::join)?
                .map_err(|e| ApiError::backend(&live.id, e))?;
        let stdin = pipe::Sender::from_owned_fd(in_w).map_err(to_io(pid))?;
        let out = pipe::Receiver::from_owned_fd(out_r).map_err(to_io(pid))?;
        let err = pipe::Receiver::from_owned_fd(err_r).map_err(to_io(pid))?;
        (
            pid,
            waiter,
            Box::new(stdin),
            [Box::new(out), Box::new(err)],
            None,
        )
    };
    let proc_ = Arc::new(Proc {
        pid,
        serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        background: spec.background,
        stdin: tokio::sync::Mutex::new(Some(stdin)),
        tty,
        log: Mutex::new(OutputLog::default()),
        changed: watch::channel(0).0,
    });
    live.procs().map.insert(pid, proc_.clone());

    // Feed stdin, then close it unless a background process may get more.
    let keep_open = spec.background;
    if spec.stdin.is_some() || !keep_open {
        let p = proc_.clone();
        let text = spec.stdin.unwrap_or_default();
        tokio::spawn(async move {
            let mut guard = p.stdin.lock().await;
            if let Some(w) = guard.as_mut() {
                // A process that never reads its stdin must not keep this
                // task (and the pipe) alive past its exit.
                tokio::select! {
                    _ = tokio::io::AsyncWriteExt::write_all(w, &text) => {}
                    _ = p.wait() => {}
                }
            }
            if !keep_open || p.log().exit.is_some() {
                *guard = None;
            }
        });
    }
    let [out, err] = readers_of;
    let readers = [
        tokio::spawn(read_stream(proc_.clone(), out, StreamKind::Stdout)),
        tokio::spawn(read_stream(proc_.clone(), err, StreamKind::Stderr)),
    ];
    tokio::spawn(follow(
        state.clone(),
        live.clone(),
        proc_.clone(),
        spec.timeout,
        waiter,
        readers,
        permit,
    ));
    Ok(proc_)
}

/// Reads one output stream into the log until EOF, keeping UTF-8
/// sequences that straddle two reads whole.
async fn read_stream(p: Arc<Proc>, mut r: Reader, stream: StreamKind) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        let keep = incomplete_utf8_tail(&carry);
        let whole: Vec<u8> = carry.drain(..carry.len() - keep).collect();
        if !whole.is_empty() {
            p.log().push(stream, whole);
            p.touch();
        }
    }
    if !carry.is_empty() {
        p.log().push(stream, carry);
        p.touch();
    }
}

/// Bytes at the end of `b` that start a UTF-8 sequence not yet complete.
fn incomplete_utf8_tail(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => b.len() - e.valid_up_to(),
        Err(_) => {
            // Invalid bytes somewhere: only hold back a possibly
            // incomplete sequence among the last three bytes.
            let start = b.len().saturating_sub(3);
            (start..b.len())
                .find(|&i| {
                    b[i] >= 0xC0
                        && std::str::from_utf8(&b[i..]).is_err_and(|e| e.error_len().is_none())
                })
                .map_or(0, |i| b.len() - i)
        }
    }
}

/// Waits for the process (on a thread of its own: the backend call
/// blocks), kills it at its timeout, drains its output, records its exit.
async fn follow(
    state: Arc<AppState>,
    live: Arc<Live>,
    p: Arc<Proc>,
    timeout: Option<Duration>,
    waiter: ExitWaiter,
    readers: [tokio::task::JoinHandle<()>; 2],
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let (tx, rx) = oneshot::channel();
    let pid = p.pid;
    // A thread of its own rather than the blocking pool: a runtime that
    // shuts down waits for its blocking tasks, and a background process
    // may run for hours after the daemon stopped.
    let spawned = std::thread::Builder::new()
        .name(format!("stockade-wait-{pid}"))
        .spawn(move || {
            let _ = tx.send(waiter());
        });
    let mut waited = match spawned {
        Ok(_) => rx,
        Err(e) => {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(BackendError::Internal(format!(
                "cannot start a thread: {e}"
            ))));
            rx
        }
    };
    let mut timed_out = false;
    let result = match timeout {
        None => (&mut waited).await,
        Some(t) => tokio::select! {
            r = &mut waited => r,
            _ = tokio::time::sleep(t) => {
                timed_out = true;
                let h = live.handle.clone();
                let _ = tokio::task::spawn_blocking(move || h.signal(pid, libc::SIGKILL)).await;
                (&mut waited).await
            }
        },
    };
    let [a, b] = readers;
    let (abort_a, abort_b) = (a.abort_handle(), b.abort_handle());
    if tokio::time::timeout(DRAIN_GRACE, async {
        let _ = a.await;
        let _ = b.await;
    })
    .await
    .is_err()
    {
        abort_a.abort();
        abort_b.abort();
    }
    let duration = started.elapsed();
    let exit = match result {
        Ok(Ok(end)) => ExitInfo {
            exit_code: end.exit_code,
            signal: end.signal,
            // A breach that killed the sandbox names the process's end
            // too: it died because the sandbox did.
            outcome: match end.killed_for {
                _ if timed_out => "timeout",
                Some(kind) => kind.as_str(),
                None if end.signal.is_some() => "signaled",
                None => "exited",
            },
            error: None,
            duration_seconds: duration.as_secs_f64(),
        },
        Ok(Err(e)) => ExitInfo {
            exit_code: None,
            signal: None,
            outcome: if timed_out { "timeout" } else { "error" },
            error: Some(e.to_string()),
            duration_seconds: duration.as_secs_f64(),
        },
        Err(_) => ExitInfo {
            exit_code: None,
            signal: None,
            outcome: "error",
            error: Some("the thread waiting for the process ended without an answer".into()),
            duration_seconds: duration.as_secs_f64(),
        },
    };
    state.metrics.exec_finished(duration);
    p.log().exit = Some(exit);
    p.touch();
    // A writer holding the lock sees the exit and closes stdin itself.
    if let Ok(mut w) = p.stdin.try_lock() {
        w.take();
    }
    live.procs().finished(p.pid, p.serial);
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_only_an_incomplete_utf8_tail() {
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"aé".as_bytes()[..2]), 1);
        assert_eq!(incomplete_utf8_tail(&[0xff, b'a', 0xe2, 0x82]), 2);
        assert_eq!(incomplete_utf8_tail(&[0xff, b'a']), 0);
    }

    #[test]
    fn output_log_keeps_the_most_recent_bytes_of_each_stream() {
        let mut log = OutputLog::default();
        let big = "x".repeat(OUTPUT_CAP_BYTES / 2 + 1);
        log.push(StreamKind::Stdout, big.clone().into_bytes());
        log.push(StreamKind::Stderr, "e".into());
        log.push(StreamKind::Stdout, big.clone().into_bytes());
        log.push(StreamKind::Stdout, "tail".into());
        assert!(log.truncated[0] && !log.truncated[1]);
        assert!(log.bytes(StreamKind::Stdout).ends_with(b"tail"));
        assert!(log.bytes(StreamKind::Stdout).len() <= OUTPUT_CAP_BYTES);
        let seqs: Vec<u64> = log.since(0).iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }
}
