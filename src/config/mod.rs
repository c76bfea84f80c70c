//! The configuration: a TOML file parsed once into validated types.
//!
//! `raw` mirrors the file (serde, unknown keys refused); `Config` is what
//! the rest of the program sees: addresses are `SocketAddr`, networks `IpNet`,
//! durations `Duration`, paths resolved against the config file's directory
//! (`paths`). Nothing downstream re-parses strings.
//!
//! Every error names the file, the line, the key and the fix (`ConfigError`);
//! `source` is the one place that finds lines and keys. Each section has its
//! own file with its types and its checks (`listeners`, `tls`, `access` with
//! `networks`, `users`, `limits`, `queue`, `upstreams`, `routes`, `admin`).

mod access;
mod admin;
mod error;
mod hostname;
mod limits;
mod listeners;
mod log;
mod networks;
mod paths;
mod queue;
mod raw;
mod routes;
mod source;
mod summary;
#[cfg(test)]
mod tests;
mod tls;
mod toml_errors;
mod upstreams;
mod users;

use std::path::Path;

use crate::address::Mailbox;

pub use access::{AccessConfig, NullSender};
pub use admin::{AdminConfig, DEFAULT_RECENT_MESSAGES};
pub use error::ConfigError;
pub use limits::{BareLineEndings, Limits};
pub use listeners::{ListenerConfig, ListenerTls};
pub use log::{LogConfig, LogFormat};
pub use queue::QueueConfig;
pub use routes::RouteConfig;
pub use tls::{CertificatePaths, TlsConfig};
pub use upstreams::{UpstreamConfig, UpstreamTls};
pub use users::UserConfig;

use raw::RawConfig;
use source::Source;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name in the banner, the EHLO reply and our Received headers.
    pub hostname: String,
    /// Where `RCPT TO:<Postmaster>` (no domain, RFC 5321 §4.5.1) is relayed:
    /// the `postmaster` key, else `postmaster@<hostname>`; `None` when the
    /// hostname is not a mail domain (then that RCPT gets 550 5.1.1).
    pub postmaster: Option<Mailbox>,
    /// `[log]`: how `serve` writes its log lines.
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    /// `None`: a self-signed ECDSA certificate is made at start.
    pub tls: Option<TlsConfig>,
    pub access: AccessConfig,
    pub users: Vec<UserConfig>,
    pub limits: Limits,
    pub queue: QueueConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub admin: Option<AdminConfig>,
    /// Warnings found while validating (logged by `serve`, printed by `check-config`).
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            problem: format!("cannot read the file: {e}"),
            fix: "pass the path of a readable TOML file with --config".into(),
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its directory).
    ///
    /// Sections are checked in a fixed order, each by its own module: the
    /// first error found is the one reported, and warnings come in that order.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source { text, file: path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_errors::explain(&src, &e))?;
        let mut warnings = Vec::new();
        let (hostname, postmaster) = hostname::validate(&src, raw.hostname, raw.postmaster)?;
        let listeners = listeners::validate(&src, &raw.listener)?;
        let tls = tls::validate(&src, raw.tls, &mut warnings);
        let access = access::validate(&src, raw.access, &listeners, &mut warnings)?;
        let users = users::validate(&src, raw.user, &mut warnings)?;
        let limits = limits::validate(&src, raw.limits)?;
        let queue = queue::validate(&src, raw.queue)?;
        let upstreams = upstreams::validate(&src, raw.upstream, &mut warnings)?;
        let routes = routes::validate(&src, raw.route, &upstreams)?;
        let admin = admin::validate(&src, raw.admin)?;
        Ok(Config {
            hostname,
            postmaster,
            log: LogConfig {
                format: raw.log.format,
            },
            listeners,
            tls,
            access,
            users,
            limits,
            queue,
            upstreams,
            routes,
            admin,
            warnings,
        })
    }

    /// An error found after parsing (a certificate that does not load, say),
    /// located at the line of `file` that sets `key` to a value containing `value`.
    pub fn error_at_value(
        file: &Path,
        key: &str,
        value: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        Source { text: &text, file }.error_at_value(key, value, problem, fix)
    }
}

/// Domains compare without case (RFC 5321 §2.4): kept lowercase.
fn lowercase_all(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|d| d.to_ascii_lowercase()).collect()
}
