//! Accepting connections: the global connection cap, TCP_NODELAY, and an
//! accept loop that survives resource exhaustion.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::ListenerConfig;
use crate::connections::PerAddress;
use crate::context::ServerContext;
use crate::error::SmtpError;
use crate::proxy;
use crate::session::Session;

/// Accepts until `shutdown`; each connection gets a session task in `sessions`.
pub async fn accept_loop(
    socket: TcpListener,
    config: ListenerConfig,
    current: watch::Receiver<Arc<ServerContext>>,
    slots: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
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
            let refusal = SmtpError::TooManyConnections;
            let reply = refusal.reply();
            crate::tracking::refused(peer, &refusal, &reply, &mut 0);
            current.borrow().telemetry.refused(&refusal);
            let mut wire = Vec::new();
            reply.write_to(&mut wire);
            let _ = stream.try_write(&wire);
            continue;
        };
        let id = Session::next_id();
        // The config of this moment: a reload later does not change this session.
        let (ctx, config, per_address, shutdown) = (
            current.borrow().clone(),
            config.clone(),
            per_address.clone(),
            shutdown.clone(),
        );
        sessions.spawn(
            async move {
                let telemetry = ctx.telemetry.clone();
                let _active = telemetry.connection();
                connection(stream, peer, config, ctx, per_address, shutdown).await;
                drop(permit);
            }
            .instrument(info_span!("session", id, tcp_peer = %peer)),
        );
    }
}

/// One accepted connection: the PROXY header if the listener expects one, the
/// per-address cap, then the SMTP session.
async fn connection(
    mut stream: TcpStream,
    tcp_peer: std::net::SocketAddr,
    config: ListenerConfig,
    ctx: Arc<ServerContext>,
    per_address: Arc<PerAddress>,
    shutdown: CancellationToken,
) {
    let peer = if config.proxy_protocol {
        let trusted = &ctx.config.access.trusted_proxies;
        match proxy::read_client_address(&mut stream, tcp_peer, trusted).await {
            Ok(client) => client,
            Err(e) => {
                // No banner, no reply: the source is not a proxy we trust.
                let error = e.to_string();
                info!(event = crate::tracking::REFUSED, client = %tcp_peer, reason = "proxy", error = error.as_str(), "PROXY header refused; closing");
                return;
            }
        }
    } else {
        tcp_peer
    };
    let limit = ctx.config.limits.max_connections_per_ip;
    let Some(_slot) = per_address.try_acquire(peer.ip(), limit) else {
        let refusal = SmtpError::TooManyConnectionsFromIp;
        let reply = refusal.reply();
        crate::tracking::refused(peer, &refusal, &reply, &mut 0);
        ctx.telemetry.refused(&refusal);
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&wire)).await;
        return;
    };
    debug!(client = %peer, "connected");
    Session::new(ctx, config, peer, Box::new(stream), shutdown)
        .run()
        .await;
    debug!(client = %peer, "closed");
}
