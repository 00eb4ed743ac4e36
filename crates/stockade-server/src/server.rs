//! Starting and stopping the daemon: state directory and registry,
//! recovery of running sandboxes, listeners, background tasks, graceful
//! shutdown.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stockade_core::backend::Backend;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use crate::auth::Token;
use crate::config::{ServeConfig, MAX_RUNNING_PROCESSES};
use crate::error::ServeError;
use crate::events::Hub;
use crate::lifecycle;
use crate::log::Log;
use crate::metrics::Metrics;
use crate::state::{AppState, Live};
use crate::store::Store;
use crate::webhook::WebhookUrl;

/// How long shutdown waits for requests in flight before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A daemon whose listeners are bound and whose registry is open and
/// recovered, ready to [`run`](Server::run).
pub struct Server {
    cfg: ServeConfig,
    backend: Arc<dyn Backend>,
    store: Arc<Store>,
    recovered: Vec<Live>,
    unix: UnixListener,
    tcp: Option<(TcpListener, Token)>,
    webhook: Option<WebhookUrl>,
    e2b: Option<crate::e2b::Bound>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("cfg", &self.cfg)
            .field("tcp_addr", &self.tcp_addr())
            .finish_non_exhaustive()
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io { what, path, source }
}

/// Binds the unix socket with mode 0660 without a window in which it has
/// looser permissions: bound in a private directory, then renamed.
fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io_err("create the socket directory", parent))?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err("remove the stale socket", path))?;
    }
    let private = parent.join(format!(".stockade-sock-{}", crate::state::new_id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io_err("create a private directory in", parent))?;
    let tmp = private.join("s");
    let result = (|| {
        let l = UnixListener::bind(&tmp).map_err(io_err("listen on", path))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
            .map_err(io_err("set the mode of", path))?;
        std::fs::rename(&tmp, path).map_err(io_err("move the socket to", path))?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&private);
    result
}

impl Server {
    /// Opens the registry under `cfg.state_dir`, reattaches the sandboxes
    /// it says are running (marking dead those whose supervisor is gone)
    /// and binds the listeners.
    pub async fn bind(cfg: ServeConfig, backend: Arc<dyn Backend>) -> Result<Server, ServeError> {
        if cfg.max_body_bytes == 0 {
            return Err(ServeError::Config(
                "max_body_bytes must be at least 1".into(),
            ));
        }
        let webhook = cfg.webhook.as_deref().map(WebhookUrl::parse).transpose()?;
        crate::hostpaths::BindRoots::new(&cfg.bind_roots).map_err(ServeError::Config)?;
        let token = match (&cfg.listen, &cfg.token_file) {
            (Some(_), Some(f)) => Some(Token::load(f)?),
            (Some(a), None) => {
                return Err(ServeError::Config(format!(
                    "listening on TCP ({a}) needs a token file so that requests can be authenticated; give --token-file FILE"
                )))
            }
            (None, _) => None,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.state_dir)
            .map_err(io_err("create the state directory", &cfg.state_dir))?;
        let db = cfg.state_dir.join("stockade.db");
        let b = backend.clone();
        let (store, recovered) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&db)?;
            let lives = lifecycle::recover(&store, &b)?;
            Ok::<_, ServeError>((store, lives))
        })
        .await
        .map_err(|e| ServeError::Config(format!("the recovery task failed: {e}")))??;
        let unix = bind_socket(&cfg.socket)?;
        let tcp = match (cfg.listen, token) {
            (Some(addr), Some(t)) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(io_err("listen on", &PathBuf::from(addr.to_string())))?;
                Some((l, t))
            }
            _ => None,
        };
        let e2b = match &cfg.e2b {
            Some(e) => Some(crate::e2b::bind(e, cfg.token_file.as_deref(), &cfg.state_dir).await?),
            None => None,
        };
        Ok(Server {
            cfg,
            backend,
            store: Arc::new(store),
            recovered,
            unix,
            tcp,
            webhook,
            e2b,
        })
    }

    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The address of the E2B listener actually bound.
    pub fn e2b_addr(&self) -> Option<SocketAddr> {
        self.e2b.as_ref().and_then(|b| b.local_addr())
    }

    /// Serves until `shutdown` completes, then stops accepting, ends open
    /// event streams, waits up to 10 s for requests in flight and removes
    /// the socket. Sandboxes keep running; the next daemon reattaches them.
    pub async fn run<F>(self, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let log = Log(self.cfg.log);
        let metrics = Arc::new(Metrics::default());
        let webhook = self
            .webhook
            .map(|u| crate::webhook::start(u, metrics.clone(), stop_rx.clone()));
        let state = Arc::new(AppState {
            backend: self.backend,
            store: self.store,
            hub: Hub::new(metrics.clone(), webhook, log),
            metrics,
            live: Default::default(),
            process_permits: Arc::new(Semaphore::new(MAX_RUNNING_PROCESSES)),
            shutdown: stop_rx.clone(),
            max_body_bytes: self.cfg.max_body_bytes,
            state_dir: self.cfg.state_dir.clone(),
            task_exe: self.cfg.task_exe.clone(),
            bind_roots: crate::hostpaths::BindRoots::new(&self.cfg.bind_roots).unwrap_or_default(),
            teardowns: Arc::default(),
            image_root: stockade_image::Store::under_state_dir(&self.cfg.state_dir),
            image_limits: self.cfg.image_limits,
            pull_options: self.cfg.pull.clone(),
        });
        let teardowns = state.teardowns.clone();
        let backend = state.backend.clone();
        lifecycle::adopt(&state, self.recovered);
        let expiry = tokio::spawn(lifecycle::expiry_loop(Arc::downgrade(&state)));

        let app = crate::routes::router(state.clone());
        let graceful = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let logged = |r: axum::Router| {
            r.layer(axum::middleware::from_fn_with_state(
                log,
                crate::log::requests,
            ))
        };
        let mut servers = Vec::new();
        log.listening("unix socket", &self.cfg.socket.display().to_string(), "");
        servers.push(tokio::spawn(
            axum::serve(self.unix, logged(app.clone()))
                .with_graceful_shutdown(graceful(stop_rx.clone()))
                .into_future(),
        ));
        if let Some((l, token)) = self.tcp {
            if let Ok(a) = l.local_addr() {
                log.listening("tcp", &a.to_string(), "bearer token required");
            }
            let authed = logged(app.layer(axum::middleware::from_fn_with_state(
                token,
                crate::auth::require_token,
            )));
            servers.push(tokio::spawn(
                axum::serve(
                    {
                        use axum::serve::ListenerExt as _;
                        // As the E2B listener: no Nagle delay on small answers.
                        l.tap_io(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        })
                    },
                    authed,
                )
                .with_graceful_shutdown(graceful(stop_rx.clone()))
                .into_future(),
            ));
        }
        if let Some(b) = self.e2b {
            servers.push(crate::e2b::spawn(b, state.clone(), stop_rx.clone()));
        }
        drop(state);

        shutdown.await;
        log.stopping();
        let _ = stop_tx.send(true);
        let mut result = Ok(());
        for s in servers {
            let abort = s.abort_handle();
            match tokio::time::timeout(SHUTDOWN_GRACE, s).await {
                Ok(Ok(Err(e))) => result = Err(ServeError::Http(e)),
                Ok(_) => {}
                Err(_) => abort.abort(),
            }
        }
        expiry.abort();
        // Destroys already answered finish their teardown; shims not yet
        // handed a sandbox are stopped.
        let left = teardowns.wait(SHUTDOWN_GRACE).await;
        if left > 0 {
            eprintln!("stockade serve: {left} destroyed sandboxes were still being torn down at exit; their shims finish it, or `stockade gc` does");
        }
        let _ = tokio::task::spawn_blocking(move || backend.shutdown()).await;
        let _ = std::fs::remove_file(&self.cfg.socket);
        result
    }
}

/// Runs the daemon until `shutdown` completes (see [`Server::run`]).
pub async fn serve<F>(
    cfg: ServeConfig,
    backend: Arc<dyn Backend>,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    Server::bind(cfg, backend).await?.run(shutdown).await
}

/// For the CLI: builds a tokio runtime and serves until SIGINT or SIGTERM.
pub fn serve_blocking(cfg: ServeConfig, backend: Arc<dyn Backend>) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stockade-serve")
        .build()
        .map_err(|source| ServeError::Io {
            what: "start the async runtime for",
            path: cfg.socket.clone(),
            source,
        })?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| ServeError::Io {
                what: "install a SIGTERM handler for",
                path: cfg.socket.clone(),
                source,
            })?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        serve(cfg, backend, stop).await
    })
}
