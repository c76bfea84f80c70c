//! `[limits]`: what one session or the whole relay may use, with defaults.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::raw::{HumanDuration, RawLimits};
use super::source::Source;

/// What to do with a bare CR or LF inside message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Turn each into CRLF (the stored message never holds one).
    #[default]
    Normalize,
    /// Refuse the message with `550 5.5.2`.
    Reject,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_auth_failures: u32,
    /// Errors one session may make before `421` and close.
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// How long to wait before the banner, to catch clients that talk first.
    pub banner_delay: Duration,
    pub bare_line_endings: BareLineEndings,
    /// How long SIGTERM waits for open sessions before exiting anyway.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 157_286_400,
            max_recipients: 1000,
            max_connections: 2000,
            max_connections_per_ip: 100,
            max_auth_failures: 3,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            banner_delay: Duration::ZERO,
            bare_line_endings: BareLineEndings::Normalize,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The defaults with what the file sets; counts and timeouts must be positive.
pub(super) fn validate(src: &Source, raw: RawLimits) -> Result<Limits, ConfigError> {
    let mut l = Limits::default();
    let positive = |v: Option<Spanned<usize>>, key: &str, dst: &mut usize| {
        if let Some(v) = v {
            if *v.get_ref() == 0 {
                return Err(src.error(
                    src.line(v.span().start),
                    &format!("limits.{key}"),
                    "must be greater than 0",
                    "use a positive number or remove the key for the default",
                ));
            }
            *dst = v.into_inner();
        }
        Ok(())
    };
    positive(
        raw.max_message_size,
        "max_message_size",
        &mut l.max_message_size,
    )?;
    positive(raw.max_recipients, "max_recipients", &mut l.max_recipients)?;
    positive(
        raw.max_connections,
        "max_connections",
        &mut l.max_connections,
    )?;
    positive(
        raw.max_connections_per_ip,
        "max_connections_per_ip",
        &mut l.max_connections_per_ip,
    )?;
    if let Some(v) = raw.max_errors {
        let mut n = *v.get_ref() as usize;
        positive(Some(Spanned::new(v.span(), n)), "max_errors", &mut n)?;
        l.max_errors = n as u32;
    }
    if let Some(v) = raw.max_auth_failures {
        l.max_auth_failures = v;
    }
    let set = |v: Option<HumanDuration>, dst: &mut Duration| {
        if let Some(d) = v {
            *dst = d.0;
        }
    };
    set(raw.command_timeout, &mut l.command_timeout);
    set(raw.data_timeout, &mut l.data_timeout);
    set(raw.banner_delay, &mut l.banner_delay);
    set(raw.shutdown_grace, &mut l.shutdown_grace);
    if let Some(b) = raw.bare_line_endings {
        l.bare_line_endings = b;
    }
    for (key, d) in [
        ("command_timeout", l.command_timeout),
        ("data_timeout", l.data_timeout),
    ] {
        if d.is_zero() {
            return Err(src.error_at_key(
                &format!("limits.{key}"),
                format!("limits.{key} is zero"),
                "use a positive duration, e.g. \"5m\"",
            ));
        }
    }
    Ok(l)
}
