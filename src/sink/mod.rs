//! `smarthost sink`: a minimal upstream for trying a setup out. It accepts
//! every message and writes each, exactly as received (after dot-unstuffing),
//! to its own file, with a JSON sidecar holding the envelope (`store`).
//!
//! The protocol side (`conn`) is a small SMTP server of its own: one buffer
//! walked across states, so pipelined commands and content in one packet
//! (RFC 2920) work. Messages are held in memory until complete (bounded by
//! `MAX_MESSAGE_SIZE`): this is a test tool, not a spool.
//!
//! Not the relay's `session`: a test and benchmark peer with no policy, spool
//! or config, so it keeps its own small loop (sharing the relay's command
//! parser and dot reader). Its STARTTLS drops plaintext pipelined behind the
//! command and goes on, where the relay refuses it (CVE-2011-0411): it takes
//! whatever a client sends.

mod conn;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use conn::{Conn, Shared};

pub use conn::MAX_MESSAGE_SIZE;

/// Serves SMTP on `listener` until `shutdown`, writing messages to `dir`
/// (created if missing). On shutdown the listener is dropped at once (its port
/// is free again) and open connections get `421 4.3.2` at their next read.
pub async fn run(
    listener: TcpListener,
    dir: PathBuf,
    tls: Option<Arc<rustls::ServerConfig>>,
    name: String,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let shared = Arc::new(Shared {
        dir,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        name,
    });
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = Conn::new(shared.clone(), peer, Box::new(stream), shutdown.clone());
                tracker.spawn(conn.serve());
            }
            Err(e) => {
                // EMFILE and friends: wait for connections to end, never die.
                warn!("sink: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// A server TLS configuration from a PEM certificate chain and key, with the
/// relay's own choices (`crate::tls`).
pub fn tls_from_files(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let config = crate::config::TlsConfig {
        certificates: vec![crate::config::CertificatePaths {
            certificate: cert.to_path_buf(),
            private_key: key.to_path_buf(),
        }],
    };
    crate::tls::server_config(Some(&config), "localhost").map_err(|e| e.to_string())
}
