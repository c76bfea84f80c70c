//! Message tracking: the events a message's trail is logged as (the `event`
//! field of a log line; README "Log events" lists them), and what keeps
//! client-supplied text in those lines from forging a line or reaching a
//! terminal raw.
//!
//! Every string a client chose (EHLO name, addresses, AUTH identity,
//! Message-ID) goes into a field through `clean` and is recorded as a `&str`:
//! the text format then quotes and escapes it (`helo="a\r\nb"`), the JSON
//! format makes it a JSON string, and neither can end the line early.

use std::borrow::Cow;
use std::net::SocketAddr;

use tracing::{debug, info};

use crate::address::Printable;
use crate::error::SmtpError;
use crate::reply::Reply;

/// A message got `250` (or a delivery notice was queued): who sent what.
pub const ACCEPTED: &str = "accepted";
/// One try at one upstream: its replies, or why it failed, and how long it took.
pub const ATTEMPT: &str = "attempt";
/// A recipient was accepted by an upstream.
pub const DELIVERED: &str = "delivered";
/// A recipient will be tried again at `retry_at`.
pub const DEFERRED: &str = "deferred";
/// A recipient failed for good; `bounce_id` is the notice's queue id.
pub const BOUNCED: &str = "bounced";
/// A recipient was still not delivered after `max_lifetime`.
pub const EXPIRED: &str = "expired";
/// `smarthost queue delete` dropped the message.
pub const DELETED: &str = "deleted";
/// Nothing is left to do for the message; it left the queue.
pub const COMPLETED: &str = "completed";
/// A client's command, message or connection was refused.
pub const REFUSED: &str = "refused";
/// SIGHUP: the new configuration is in force (`changes` says what changed).
pub const RELOADED: &str = "reloaded";
/// SIGHUP: the new configuration is bad; the running one stays.
pub const RELOAD_REFUSED: &str = "reload_refused";

/// Refusals one connection logs at INFO; later ones go to DEBUG (one line
/// says so), so a client repeating a refused command cannot flood the log.
pub const REFUSALS_LOGGED_PER_CONNECTION: u32 = 100;

/// Longest Message-ID logged, in characters.
const MAX_MESSAGE_ID: usize = 256;
/// How far into the content the header section is searched for Message-ID.
const HEADER_SCAN: usize = 64 * 1024;

/// Client text as a log field value: unchanged when every character is
/// printable (no allocation), else with the others escaped (`Printable`).
/// The escaping matters for JSON, which leaves C1 controls and
/// bidirectional overrides raw; the text format escapes them anyway.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(Printable::escapes) {
        Cow::Owned(Printable(s).to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// Logs a refusal: `event=refused`, the client, a stable reason and the
/// reply line. `count` is the connection's refusals so far.
pub fn refused(client: SocketAddr, error: &SmtpError, reply: &Reply, count: &mut u32) {
    *count = count.saturating_add(1);
    let reason = error.reason();
    if *count <= REFUSALS_LOGGED_PER_CONNECTION {
        let line = reply.to_string();
        info!(event = REFUSED, client = %client, reason, reply = line.as_str(), "refused: {error}");
        if *count == REFUSALS_LOGGED_PER_CONNECTION {
            info!(client = %client, "further refusals on this connection are logged at debug level");
        }
    } else if tracing::enabled!(tracing::Level::DEBUG) {
        // Checked first: the reply line is not built for a line nobody reads.
        let line = reply.to_string();
        debug!(event = REFUSED, client = %client, reason, reply = line.as_str(), "refused: {error}");
    }
}

/// The Message-ID header field's value (RFC 5322 §3.6.4) in `content`'s
/// header section, unfolded, cleaned and cut to a loggable length.
pub fn message_id(content: &[u8]) -> Option<String> {
    let head = &content[..content.len().min(HEADER_SCAN)];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut value: Option<Vec<u8>> = None;
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        match (&mut value, folded) {
            (Some(v), true) => v.extend_from_slice(line),
            (Some(_), false) => break,
            (None, _) => {
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    continue;
                };
                // RFC 5322 §4.5.3 (obsolete syntax): blanks before the colon.
                if line[..colon]
                    .trim_ascii_end()
                    .eq_ignore_ascii_case(b"message-id")
                {
                    value = Some(line[colon + 1..].to_vec());
                }
            }
        }
    }
    let value = value?;
    let text = String::from_utf8_lossy(value.trim_ascii());
    let text: String = text.chars().take(MAX_MESSAGE_ID).collect();
    Some(clean(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_found_unfolded_and_bounded() {
        let m = b"Subject: x\r\nMESSAGE-ID : \r\n <a@b.example>\r\nX: y\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<a@b.example>"));
        assert_eq!(
            message_id(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n"),
            None
        );
        let long = format!("Message-ID: <{}@x>\r\n\r\n", "a".repeat(1000));
        assert_eq!(
            message_id(long.as_bytes()).unwrap().chars().count(),
            MAX_MESSAGE_ID
        );
        let hostile = message_id(b"Message-ID: <a\x1b[2J\xc2\x85@x>\r\n\r\n").unwrap();
        assert_eq!(hostile, "<a\\u{1b}[2J\\u{85}@x>");
    }

    #[test]
    fn clean_borrows_printable_text_and_escapes_the_rest() {
        assert!(matches!(clean("exchange01 é"), Cow::Borrowed(_)));
        assert_eq!(clean("a\r\nb\u{202e}"), "a\\u{d}\\u{a}b\\u{202e}");
    }
}
