//! `smarthost health`: the container HEALTHCHECK, with nothing but the binary.
//!
//! With `[admin]` set it asks the admin endpoint's `GET /healthz` (200 while
//! serving, 503 while draining); otherwise it connects to the relay's own
//! first SMTP listener and waits for the `220` banner. Blocking std sockets:
//! one short probe needs no runtime.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::{Config, ListenerTls};

/// Time for one probe beyond any configured `banner_delay`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A banner line or an HTTP status line longer than this is not one.
const MAX_PROBE_REPLY_LINE: usize = 1024;

/// What is probed, chosen from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET /healthz` on the admin endpoint.
    Admin(SocketAddr),
    /// The `220` banner of an SMTP listener (after the TLS handshake for implicit TLS).
    Smtp { address: SocketAddr, implicit: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "nothing to probe: every listener expects a PROXY header; set [admin] so `health` can ask /healthz"
    )]
    NothingToProbe,
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0}: TLS: {1}")]
    Tls(SocketAddr, String),
    #[error("{0}: unhealthy: {1:?}")]
    Unhealthy(SocketAddr, String),
}

impl Probe {
    /// The admin endpoint when configured, else the first listener that
    /// answers without a PROXY header (a plain one before an implicit-TLS one).
    pub fn for_config(config: &Config) -> Result<Probe, HealthError> {
        if let Some(admin) = &config.admin {
            return Ok(Probe::Admin(reachable(admin.address)));
        }
        let direct = || config.listeners.iter().filter(|l| !l.proxy_protocol);
        direct()
            .find(|l| l.tls == ListenerTls::Starttls)
            .or_else(|| direct().next())
            .map(|l| Probe::Smtp {
                address: reachable(l.address),
                implicit: l.tls == ListenerTls::Implicit,
            })
            .ok_or(HealthError::NothingToProbe)
    }

    /// Runs the probe; `Ok` carries what was seen (the banner or status line).
    pub fn run(&self, extra_wait: Duration) -> Result<String, HealthError> {
        let timeout = PROBE_TIMEOUT + extra_wait;
        match *self {
            Probe::Admin(address) => {
                let mut stream = connect(address, timeout)?;
                let request = format!(
                    "GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: smarthost-health\r\n\r\n"
                );
                stream
                    .write_all(request.as_bytes())
                    .map_err(|e| HealthError::Io(address, e))?;
                let status = read_line(&mut stream).map_err(|e| HealthError::Io(address, e))?;
                // "HTTP/1.1 200 OK": only a 200 is healthy (503 while draining).
                match status.split(' ').nth(1) {
                    Some("200") if status.starts_with("HTTP/1.") => Ok(status),
                    _ => Err(HealthError::Unhealthy(address, status)),
                }
            }
            Probe::Smtp { address, implicit } => {
                let stream = connect(address, timeout)?;
                if implicit {
                    let name = rustls::pki_types::ServerName::from(address.ip());
                    let tls = rustls::ClientConnection::new(
                        crate::outbound::tls::unverified_config(),
                        name,
                    )
                    .map_err(|e| HealthError::Tls(address, e.to_string()))?;
                    banner(address, rustls::StreamOwned::new(tls, stream))
                } else {
                    banner(address, stream)
                }
            }
        }
    }
}

/// Reads the greeting, says QUIT. RFC 5321 §4.2: a multi-line `220-` counts
/// as its first line; anything but 220 (e.g. `421` over the connection cap)
/// is unhealthy.
fn banner(address: SocketAddr, mut stream: impl Read + Write) -> Result<String, HealthError> {
    let line = read_line(&mut stream).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => HealthError::Tls(address, e.to_string()),
        _ => HealthError::Io(address, e),
    })?;
    if !line.starts_with("220") {
        return Err(HealthError::Unhealthy(address, line));
    }
    // Best effort: the verdict is already in.
    let _ = stream.write_all(b"QUIT\r\n");
    Ok(line)
}

/// A wildcard listen address is reached on loopback of the same family.
fn reachable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

fn connect(address: SocketAddr, timeout: Duration) -> Result<TcpStream, HealthError> {
    let stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| HealthError::Io(address, e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| HealthError::Io(address, e))?;
    Ok(stream)
}

/// One line up to CRLF, without it; bounded by `MAX_PROBE_REPLY_LINE`.
fn read_line(stream: &mut impl Read) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_PROBE_REPLY_LINE {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a reply",
        ));
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches('\r').to_owned())
}
