//! The running relay: shared state, listeners, and orderly shutdown.

use std::io;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::Telemetry;
use crate::auth::{AuthThrottle, Users};
use crate::config::{Config, ListenerConfig};
use crate::connections::PerAddress;
use crate::listener;
use crate::queue::manager::{self, Delivery, QueueHandle};
use crate::spool::Spool;
use crate::tls::{self, TlsSetupError};

/// What every session shares: the config it started with, TLS and the spool.
pub struct ServerContext {
    pub config: Config,
    pub tls: Arc<rustls::ServerConfig>,
    pub spool: Spool,
    pub users: Users,
    /// Shared by every session, so failures count across connections.
    pub auth_throttle: Arc<AuthThrottle>,
    /// Upstreams, routes and their health, for the queue manager.
    pub delivery: Arc<Delivery>,
    /// Where sessions announce newly spooled messages.
    pub queue: QueueHandle,
    /// Metrics and recent messages; one per process, kept across reloads.
    pub telemetry: Arc<Telemetry>,
    /// The other end of `queue`, taken by the queue manager when serving starts.
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot open the spool at {path}: {source}")]
    Spool { path: String, source: io::Error },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: io::Error },
    #[error("{0}")]
    Reload(String),
    #[error("{0}")]
    Upstream(String),
}

impl ServerContext {
    /// Loads certificates and opens the spool (clearing crash debris).
    pub fn new(config: Config) -> Result<Arc<ServerContext>, StartError> {
        // No warning here about a missing [tls]: the config's own warning says
        // it, once per start and once per reload.
        let tls = tls::server_config(config.tls.as_ref(), &config.hostname)?;
        let spool = Spool::open(&config.queue.path).map_err(|source| StartError::Spool {
            path: config.queue.path.display().to_string(),
            source,
        })?;
        let users = Users::new(&config.users);
        let (queue, queue_rx) = QueueHandle::channel();
        // Without [admin] nobody reads the ring: keep none.
        let recent = config.admin.as_ref().map_or(0, |a| a.recent_messages);
        let telemetry = Arc::new(Telemetry::new(recent));
        let delivery = Delivery::new(&config, spool.clone(), queue.clone(), telemetry.clone())
            .map_err(StartError::Upstream)?;
        Ok(Arc::new(ServerContext {
            config,
            tls,
            spool,
            users,
            auth_throttle: Arc::default(),
            delivery: Arc::new(delivery),
            queue,
            telemetry,
            queue_rx: Mutex::new(Some(queue_rx)),
        }))
    }
}

impl ServerContext {
    /// A context for `config` that keeps what must outlive a reload: the open
    /// spool (reopening would sweep in-flight temporary files) and the AUTH
    /// failure counts. Certificates, users, networks and limits are new.
    pub fn reload(&self, config: Config) -> Result<Arc<ServerContext>, StartError> {
        if config.queue.path != self.config.queue.path {
            return Err(StartError::Reload(
                "queue.path differs from the running one; changing it needs a restart".into(),
            ));
        }
        let listeners = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.address, l.tls, l.require_tls, l.proxy_protocol))
                .collect::<Vec<_>>()
        };
        if listeners(&config) != listeners(&self.config) {
            warn!("[[listener]] changes take effect at the next restart");
        }
        if config.limits.max_connections != self.config.limits.max_connections {
            warn!("limits.max_connections changes take effect at the next restart");
        }
        let tls = tls::server_config(config.tls.as_ref(), &config.hostname)?;
        let users = Users::new(&config.users);
        let delivery = Delivery::new(
            &config,
            self.spool.clone(),
            self.queue.clone(),
            self.telemetry.clone(),
        )
        .map_err(StartError::Upstream)?;
        Ok(Arc::new(ServerContext {
            config,
            tls,
            spool: self.spool.clone(),
            users,
            auth_throttle: self.auth_throttle.clone(),
            delivery: Arc::new(delivery),
            queue: self.queue.clone(),
            telemetry: self.telemetry.clone(),
            queue_rx: Mutex::new(None),
        }))
    }
}

/// Binds every configured listener.
pub async fn bind(config: &Config) -> Result<Vec<(TcpListener, ListenerConfig)>, StartError> {
    let mut bound = Vec::new();
    for l in &config.listeners {
        let socket = TcpListener::bind(l.address)
            .await
            .map_err(|source| StartError::Listen {
                address: l.address.to_string(),
                source,
            })?;
        bound.push((socket, l.clone()));
    }
    Ok(bound)
}

/// Serves on already-bound listeners until `shutdown` is cancelled, then
/// stops accepting, lets sessions finish (idle ones get `421 4.3.2`), and
/// returns once they have, or after `shutdown_grace`.
pub async fn serve(
    listeners: Vec<(TcpListener, ListenerConfig)>,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    let (_keep, current) = watch::channel(ctx);
    serve_reloadable(listeners, current, shutdown).await;
}

/// `serve`, where each new connection takes the context `current` holds at
/// that moment: send a new one (SIGHUP) and open sessions keep the one they
/// started with.
pub async fn serve_reloadable(
    listeners: Vec<(TcpListener, ListenerConfig)>,
    current: watch::Receiver<Arc<ServerContext>>,
    shutdown: CancellationToken,
) {
    let ctx = current.borrow().clone();
    let queue_rx = ctx
        .queue_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(rx) = queue_rx {
        tokio::spawn(manager::run(current.clone(), rx, shutdown.clone()));
    }
    let sessions = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(ctx.config.limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let mut accept_loops = Vec::new();
    for (socket, config) in listeners {
        info!(address = %config.address, tls = ?config.tls, "listening");
        accept_loops.push(tokio::spawn(listener::accept_loop(
            socket,
            config,
            current.clone(),
            slots.clone(),
            per_address.clone(),
            sessions.clone(),
            shutdown.clone(),
        )));
    }
    for l in accept_loops {
        let _ = l.await;
    }
    sessions.close();
    let grace = current.borrow().config.limits.shutdown_grace;
    info!(open = sessions.len(), "draining sessions");
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        warn!(
            open = sessions.len(),
            "sessions still open after {grace:?}; exiting (their messages were not acknowledged)"
        );
    }
}
