//! `[[listener]]`: the addresses the relay accepts SMTP on, and how TLS starts there.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::raw::RawListener;
use super::source::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain TCP, TLS after the STARTTLS command (RFC 3207), usually port 25 or 587.
    Starttls,
    /// TLS from the first byte (RFC 8314), usually port 465.
    Implicit,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: ListenerTls,
    /// Mail commands before TLS get `530 5.7.0` (RFC 3207 §4).
    pub require_tls: bool,
    pub proxy_protocol: bool,
}

/// At least one listener, no address listed twice.
pub(super) fn validate(
    src: &Source,
    raw: &[Spanned<RawListener>],
) -> Result<Vec<ListenerConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(src.error(
            0,
            "listener",
            "no [[listener]] is configured",
            "add one, e.g.\n    [[listener]]\n    address = \"0.0.0.0:25\"\n    tls = \"starttls\"",
        ));
    }
    let mut listeners = Vec::new();
    for l in raw {
        let span = l.span();
        let l = l.get_ref();
        // Port 0 (any free port) may repeat; tests bind several that way.
        if l.address.port() != 0
            && listeners
                .iter()
                .any(|o: &ListenerConfig| o.address == l.address)
        {
            return Err(src.error(
                src.line(span.start),
                "listener.address",
                format!("{} is listed twice", l.address),
                "give each [[listener]] its own address",
            ));
        }
        listeners.push(ListenerConfig {
            address: l.address,
            tls: l.tls,
            require_tls: l.require_tls,
            proxy_protocol: l.proxy_protocol,
        });
    }
    Ok(listeners)
}
