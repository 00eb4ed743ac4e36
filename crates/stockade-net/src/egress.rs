//! [`Egress`]: the running stack for one sandbox, on a thread of its own.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use stockade_policy::NetMode;
use tokio::sync::oneshot;

use crate::audit::{Audit, NetEvent, NetSummary};
use crate::{stack, EgressConfig, NetError};

/// The egress filter serving one sandbox's TUN device.
///
/// It owns one thread (`stockade-net`), which runs a single-threaded tokio
/// runtime, plus at most a few blocking threads while host lookups are in
/// flight. [`Egress::shutdown`] (or dropping it) stops the loop, closes the
/// device and every proxied socket, and joins the thread.
#[derive(Debug)]
pub struct Egress {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    audit: Audit,
}

impl Egress {
    /// Serves `tun` (the sandbox's TUN device, made in its network
    /// namespace with this crate's addresses and MTU) under `cfg`. Every decision is given to `events`,
    /// on the egress thread; it should be quick (queue it, write a line).
    /// The caller need not be async.
    pub fn start(
        tun: OwnedFd,
        cfg: EgressConfig,
        events: impl Fn(NetEvent) + Send + Sync + 'static,
    ) -> Result<Egress, NetError> {
        cfg.policy.validate()?;
        if cfg.policy.mode == NetMode::None {
            return Err(NetError::ModeNone);
        }
        crate::tun::set_nonblocking(&tun).map_err(NetError::Runtime)?;
        let audit = Audit::new(cfg.sandbox_id.clone(), Arc::new(events));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_audit = audit.clone();
        let thread = std::thread::Builder::new()
            .name("stockade-net".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .max_blocking_threads(4)
                    .thread_name("stockade-net-resolve")
                    .build();
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let local = tokio::task::LocalSet::new();
                let shared = Rc::new(stack::build(cfg.policy, thread_audit, cfg.resolver));
                local.block_on(&rt, stack::run(shared, tun, stop_rx));
                // Dropping the set and the runtime drops every connection
                // task and with it every socket; the runtime waits for host
                // lookups still in flight.
                drop(local);
                drop(rt);
            })
            .map_err(NetError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(NetError::Runtime(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(NetError::Runtime(std::io::Error::other(
                    "the egress thread died",
                )));
            }
        }
        Ok(Egress {
            stop: Some(stop_tx),
            thread: Some(thread),
            audit,
        })
    }

    /// Totals so far.
    pub fn summary(&self) -> NetSummary {
        self.audit.summary()
    }

    /// Stops everything, closes every socket, joins the thread, and returns
    /// the final totals. Connections still open are dropped with the TUN
    /// device and not reported;
    /// a host lookup in flight is waited for (it cannot be interrupted).
    pub fn shutdown(mut self) -> NetSummary {
        self.stop_and_join();
        self.audit.summary()
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
