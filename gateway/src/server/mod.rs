//! The NBD server: listeners, the connection limit, and orderly shutdown.
//!
//! * [`negotiate`]: the option phase as a pure state machine;
//! * [`request`]: checking and executing one transmission request (pure checks, I/O through
//!   the volume's write path);
//! * [`connection`]: the per-connection tasks that move bytes.
//!
//! Shutdown (SIGTERM/SIGINT in the binary): listeners stop accepting, each connection stops
//! reading new requests, in-flight requests finish and their replies are sent, then every
//! volume is flushed.

pub mod connection;
pub mod negotiate;
pub mod request;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::volume::Volume;
use negotiate::Catalog;

/// The exports this server offers, in configuration order.
#[derive(Clone)]
pub struct Exports {
    ordered: Arc<Vec<Arc<Volume>>>,
    by_name: Arc<HashMap<String, Arc<Volume>>>,
}

impl Exports {
    pub fn new(volumes: Vec<Arc<Volume>>) -> Self {
        let by_name = volumes.iter().map(|v| (v.name().to_owned(), v.clone())).collect();
        Self { ordered: Arc::new(volumes), by_name: Arc::new(by_name) }
    }

    pub fn volumes(&self) -> &[Arc<Volume>] {
        &self.ordered
    }
}

impl Catalog for Exports {
    fn lookup(&self, name: &str) -> Option<Arc<Volume>> {
        self.by_name.get(name).cloned()
    }
    fn all(&self) -> Vec<Arc<Volume>> {
        self.ordered.to_vec()
    }
}

/// Where to listen.
#[derive(Debug, Clone)]
pub struct Listen {
    pub tcp: Vec<SocketAddr>,
    pub unix: Option<PathBuf>,
    pub max_connections: usize,
}

/// How long shutdown waits for connections to finish their in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Bind every listener, then serve until `shutdown` is cancelled; returns after connections
/// have drained (or the drain timeout passed) and every volume was flushed.
pub async fn run(exports: Exports, listen: Listen, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(listen.max_connections));
    let mut accept_tasks = Vec::new();
    for addr in &listen.tcp {
        let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = l.local_addr().context("listener address")?;
        tracing::info!("listening on nbd://{local}");
        accept_tasks.push(tokio::spawn(accept_tcp(
            l,
            exports.clone(),
            slots.clone(),
            tracker.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(path) = &listen.unix {
        remove_stale_socket(path)?;
        let l = UnixListener::bind(path).with_context(|| format!("cannot listen on unix socket {}", path.display()))?;
        tracing::info!("listening on nbd+unix:///?socket={}", path.display());
        accept_tasks.push(tokio::spawn(accept_unix(
            l,
            exports.clone(),
            slots.clone(),
            tracker.clone(),
            shutdown.clone(),
        )));
    }
    tracing::info!(exports = exports.volumes().len(), "gateway ready");
    shutdown.cancelled().await;
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    for v in exports.volumes() {
        v.refuse_held("the gateway is shutting down; this export was held offline");
    }
    for t in accept_tasks {
        t.abort();
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await.is_err() {
        tracing::warn!("connections still busy after {DRAIN_TIMEOUT:?}; flushing anyway");
    }
    if let Some(path) = &listen.unix {
        let _ = std::fs::remove_file(path);
    }
    flush_all(&exports).await
}

pub async fn flush_all(exports: &Exports) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for v in exports.volumes() {
        if v.read_only() {
            continue;
        }
        if let Err(e) = v.flush().await {
            tracing::error!(export = v.name(), "flush at shutdown failed: {e}");
            failed.push(v.name().to_owned());
        }
    }
    anyhow::ensure!(failed.is_empty(), "flush failed for exports: {}", failed.join(", "));
    tracing::info!("all exports flushed");
    Ok(())
}

/// A socket file left by a previous run that died would make bind fail; remove it, but never
/// remove anything that is not a socket.
fn remove_stale_socket(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket; refusing to replace it", path.display()),
        Err(_) => Ok(()),
    }
}

macro_rules! accept_loop {
    ($name:ident, $listener:ty, $setup:expr) => {
        async fn $name(l: $listener, exports: Exports, slots: Arc<Semaphore>, tracker: TaskTracker, shutdown: CancellationToken) {
            loop {
                let (stream, peer) = match l.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let peer = format!("{peer:?}");
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "connection refused: connection limit reached");
                    continue;
                };
                #[allow(clippy::redundant_closure_call)]
                ($setup)(&stream);
                let (r, w) = stream.into_split();
                let exports = exports.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    tracing::debug!(%peer, "connected");
                    match connection::serve(r, w, exports, shutdown).await {
                        Ok(()) => tracing::debug!(%peer, "disconnected"),
                        Err(e) => tracing::warn!(%peer, "connection closed: {e}"),
                    }
                    drop(slot);
                });
            }
        }
    };
}

accept_loop!(accept_tcp, TcpListener, |s: &tokio::net::TcpStream| {
    // Small replies must not wait for Nagle.
    let _ = s.set_nodelay(true);
});
accept_loop!(accept_unix, UnixListener, |_s: &tokio::net::UnixStream| {});
