//! What every session shares, built once per configuration: TLS, users, the
//! spool, delivery settings and telemetry. Below the listener, the session
//! and the admin endpoint, which all read it; the queue manager does not (it
//! gets the spool and a `watch` of `Delivery` from `server`).

use std::io;
use std::sync::Arc;

use tracing::warn;

use crate::auth::{AuthThrottle, Users};
use crate::config::Config;
use crate::queue::arrivals::{Arrivals, QueueHandle};
use crate::queue::delivery::Delivery;
use crate::spool::Spool;
use crate::telemetry::Telemetry;
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
    /// Loads certificates and opens the spool (clearing crash debris). The
    /// `Arrivals` are for the queue manager `server::serve` starts; a context
    /// that only runs sessions (tests, fuzzing) may drop them.
    pub fn new(config: Config) -> Result<(Arc<ServerContext>, Arrivals), StartError> {
        // No warning here about a missing [tls]: the config's own warning says
        // it, once per start and once per reload.
        let tls = tls::server_config(config.tls.as_ref(), &config.hostname)?;
        let spool = Spool::open(&config.queue.path).map_err(|source| StartError::Spool {
            path: config.queue.path.display().to_string(),
            source,
        })?;
        let users = Users::new(&config.users);
        let (queue, arrivals) = QueueHandle::channel();
        // Without [admin] nobody reads the ring: keep none.
        let recent = config.admin.as_ref().map_or(0, |a| a.recent_messages);
        let telemetry = Arc::new(Telemetry::new(recent));
        let delivery = Delivery::new(&config, spool.clone(), queue.clone(), telemetry.clone())
            .map_err(StartError::Upstream)?;
        let ctx = Arc::new(ServerContext {
            config,
            tls,
            spool,
            users,
            auth_throttle: Arc::default(),
            delivery: Arc::new(delivery),
            queue,
            telemetry,
        });
        Ok((ctx, arrivals))
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
        }))
    }
}
