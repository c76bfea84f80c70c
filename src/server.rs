//! The running relay: binds the listeners, starts the queue manager, serves
//! until shutdown, then drains. The top of the library: nothing below
//! imports it.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, ListenerConfig};
use crate::connections::PerAddress;
use crate::context::{ServerContext, StartError};
use crate::listener;
use crate::queue::arrivals::Arrivals;
use crate::queue::manager;

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
    arrivals: Arrivals,
    shutdown: CancellationToken,
) {
    let (_keep, current) = watch::channel(ctx);
    serve_reloadable(listeners, current, arrivals, shutdown).await;
}

/// `serve`, where each new connection takes the context `current` holds at
/// that moment: send a new one (SIGHUP) and open sessions keep the one they
/// started with.
pub async fn serve_reloadable(
    listeners: Vec<(TcpListener, ListenerConfig)>,
    current: watch::Receiver<Arc<ServerContext>>,
    arrivals: Arrivals,
    shutdown: CancellationToken,
) {
    let ctx = current.borrow().clone();
    // The queue manager sees only the delivery settings of each context.
    let (deliveries, delivery) = watch::channel(ctx.delivery.clone());
    let mut contexts = current.clone();
    tokio::spawn(async move {
        while contexts.changed().await.is_ok() {
            let next = contexts.borrow_and_update().delivery.clone();
            if deliveries.send(next).is_err() {
                break;
            }
        }
    });
    tokio::spawn(manager::run(
        ctx.spool.clone(),
        delivery,
        arrivals,
        shutdown.clone(),
    ));
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
