//! A daemon running on a thread of its own, for tests.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::testing::FakeBackend;
use crate::{ServeConfig, Server};
use stockade_client::Client;

/// Tests share the process; the load test (which counts open
/// descriptors) runs alone by taking this for writing.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner())
}

pub struct TestDaemon {
    pub socket: PathBuf,
    pub fake: FakeBackend,
    pub tcp: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), crate::ServeError>>>,
}

impl TestDaemon {
    pub fn start(dir: &std::path::Path) -> TestDaemon {
        Self::start_with(dir, FakeBackend::new(dir.join("roots")), |_| {})
    }

    pub fn start_with(
        dir: &std::path::Path,
        fake: FakeBackend,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> TestDaemon {
        let mut cfg = ServeConfig {
            socket: dir.join("run/stockade.sock"),
            state_dir: dir.join("state"),
            ..ServeConfig::default()
        };
        tweak(&mut cfg);
        let socket = cfg.socket.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let backend: Arc<dyn stockade_core::backend::Backend> = Arc::new(fake.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = match Server::bind(cfg, backend).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(server.tcp_addr()));
                server
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        });
        let tcp = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("daemon started")
            .expect("daemon bound");
        TestDaemon {
            socket,
            fake,
            tcp,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> Client {
        Client::unix(&self.socket).with_timeout(Duration::from_secs(30))
    }

    /// Stops the daemon and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join()
                .expect("daemon thread")
                .expect("daemon ended cleanly");
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` until it returns Some or `secs` pass.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "condition not met within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes on the socket and returns (status, body).
pub fn raw_request(socket: &std::path::Path, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let w = s.try_clone().unwrap();
    let req = request.to_vec();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let _ = w.write_all(&req);
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}
