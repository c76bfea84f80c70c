//! `hostname` and `postmaster`: the relay's name and where mail to the bare
//! `Postmaster` goes.

use super::ConfigError;
use super::source::Source;
use crate::address::Mailbox;

/// The validated `hostname` (the system's when unset) and the postmaster
/// mailbox (`postmaster@<hostname>` when unset, `None` when that is no mailbox).
pub(super) fn validate(
    src: &Source,
    hostname: Option<String>,
    postmaster: Option<String>,
) -> Result<(String, Option<Mailbox>), ConfigError> {
    let hostname = match hostname {
        Some(h) => {
            if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(src.error_at_key(
                    "hostname",
                    format!("{h:?} is not a host name"),
                    "use the fully qualified name clients connect to, e.g. \"smarthost.example.com\"",
                ));
            }
            h
        }
        None => system_hostname(),
    };
    let postmaster = match postmaster {
        Some(text) => match Mailbox::parse(&text) {
            Ok(m) => Some(m),
            Err(e) => {
                return Err(src.error_at_key(
                    "postmaster",
                    format!("{text:?} is not a mailbox: {e}"),
                    "write a full address, e.g. \"postmaster@example.com\"",
                ));
            }
        },
        None => Mailbox::from_parts("postmaster", &hostname).ok(),
    };
    Ok((hostname, postmaster))
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
