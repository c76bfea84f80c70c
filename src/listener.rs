//! Accepting connections: the global connection cap, TCP_NODELAY, and an
//! accept loop that survives resource exhaustion.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::ListenerConfig;
use crate::error::SmtpError;
use crate::server::ServerContext;
use crate::session::Session;

/// Accepts until `shutdown`; each connection gets a session task in `sessions`.
pub async fn accept_loop(
    socket: TcpListener,
    config: ListenerConfig,
    ctx: Arc<ServerContext>,
    slots: Arc<Semaphore>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: wait for resources instead of dying.
                warn!(address = %config.address, "accept failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Without TCP_NODELAY a TLS 1.3 handshake stalls on delayed ACKs (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            debug!(client = %peer, "set_nodelay: {e}");
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: a best-effort reply without blocking the loop.
            let mut reply = Vec::new();
            SmtpError::TooManyConnections.reply().write_to(&mut reply);
            let _ = stream.try_write(&reply);
            warn!(client = %peer, "connection limit reached");
            continue;
        };
        let id = Session::next_id();
        let session = Session::new(
            ctx.clone(),
            config.clone(),
            peer,
            Box::new(stream),
            shutdown.clone(),
        );
        sessions.spawn(
            async move {
                debug!("connected");
                session.run().await;
                debug!("closed");
                drop(permit);
            }
            .instrument(info_span!("session", id, client = %peer)),
        );
    }
}
