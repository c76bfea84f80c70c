//! `[admin]`: the HTTP endpoint for health, metrics and the message list.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Spanned;

use super::ConfigError;
use super::paths::resolve;
use super::raw::RawAdmin;
use super::source::Source;

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Requests (but `/healthz`) need `Authorization: Bearer <its content>`;
    /// required when `address` is not loopback.
    pub token_file: Option<PathBuf>,
    /// Accepted messages remembered in memory for the API and the page.
    pub recent_messages: usize,
}

/// `[admin] recent_messages` when not set.
pub const DEFAULT_RECENT_MESSAGES: usize = 10_000;

/// Off loopback a token is required, and its file must hold one.
pub(super) fn validate(
    src: &Source,
    raw: Option<Spanned<RawAdmin>>,
) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(a) = raw else {
        return Ok(None);
    };
    let line = src.line(a.span().start);
    let a = a.into_inner();
    let token_file = a.token_file.map(|p| resolve(src.file, p));
    // The admin page shows senders, recipients and clients: off
    // loopback it must not be readable by whoever can connect.
    if !a.address.ip().is_loopback() && token_file.is_none() {
        return Err(src.error(
            line,
            "admin.address",
            format!(
                "[admin] address {} is not loopback and no token_file is set: anyone who can connect would read the message list",
                a.address
            ),
            "set token_file to a file holding a bearer token, or listen on 127.0.0.1",
        ));
    }
    if let Some(path) = &token_file {
        let readable = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                if t.trim().is_empty() {
                    Err("it is empty".to_owned())
                } else {
                    Ok(())
                }
            });
        if let Err(e) = readable {
            return Err(src.error(
                line,
                "admin.token_file",
                format!("cannot use {}: {e}", path.display()),
                "point it at a readable file holding the token (e.g. `openssl rand -hex 32 > FILE`)",
            ));
        }
    }
    Ok(Some(AdminConfig {
        address: a.address,
        token_file,
        recent_messages: a.recent_messages.unwrap_or(DEFAULT_RECENT_MESSAGES),
    }))
}
