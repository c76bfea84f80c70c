//! Delivery status notifications (RFC 3464): the report sent to a message's
//! envelope sender when recipients fail for good, are delayed, or were relayed
//! to a place that sends no notifications of its own.
//!
//! The message is a `multipart/report; report-type=delivery-status` (RFC 6522)
//! of three parts: a human explanation, the machine-readable
//! `message/delivery-status`, and the original's header section
//! (`text/rfc822-headers`), or the whole original (`message/rfc822`) when the
//! sender asked for `RET=FULL` (RFC 3461 §4.3).
//!
//! Everything taken from the envelope or an upstream's reply is untrusted:
//! control characters (CR and LF above all) become spaces, so nothing can add
//! a header field or a MIME part, and long values are folded (RFC 5322 §2.2.3)
//! to stay far below the 998-octet line limit. The delivery-status part is
//! kept 7-bit; only the human part may carry UTF-8.

use std::fmt::Write as _;

use mail_parser::DateTime;

use crate::spool::{Envelope, Recipient};

/// What happened to a recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Relayed,
    Delivered,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
            Action::Delivered => "delivered",
        }
    }

    /// The NOTIFY keyword (RFC 3461 §4.1) that asks for this kind of notice.
    fn notify_keyword(self) -> &'static str {
        match self {
            Action::Failed => "FAILURE",
            Action::Delayed => "DELAY",
            Action::Relayed | Action::Delivered => "SUCCESS",
        }
    }
}

/// One recipient's line in the report.
#[derive(Debug, Clone)]
pub struct RecipientReport<'a> {
    pub address: &'a str,
    /// The DSN `ORCPT` address, xtext-decoded (as smtp-proto gives it).
    pub orcpt: Option<&'a str>,
    pub action: Action,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1`.
    pub status: String,
    /// The upstream's reply, e.g. `550 5.1.1 no such user`.
    pub diagnostic: Option<String>,
    /// The upstream that gave the reply (`host` or `host:port`).
    pub remote_mta: Option<&'a str>,
}

/// Whether `recipient` wants a notice of `action`. RFC 3461 §4.1: without
/// NOTIFY the MTA acts as if `FAILURE,DELAY` had been given; `NEVER` means no
/// notice at all; otherwise only the kinds listed.
pub fn wants(recipient: &Recipient, action: &Action) -> bool {
    match &recipient.notify {
        None => matches!(action, Action::Failed | Action::Delayed),
        Some(list) => {
            !list.iter().any(|n| n.eq_ignore_ascii_case("NEVER"))
                && list
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(action.notify_keyword()))
        }
    }
}

/// Builds the complete notification (CRLF line endings only), ready to be
/// queued from `<>` to `envelope.sender`. `now` is seconds since the epoch.
pub fn build(
    hostname: &str,
    envelope: &Envelope,
    original: &[u8],
    reports: &[RecipientReport<'_>],
    now: u64,
) -> Vec<u8> {
    let hostname = clean(hostname);
    let date = |t: u64| DateTime::from_timestamp(t as i64).to_rfc822();
    // A lone CR or LF in a stored message must not reach the notice as a bare
    // line ending.
    let original = crate::outbound::stuffing::canonical(original);
    // RFC 2046 §5.1.1: the boundary must not occur in the enclosed content.
    let boundary = loop {
        let b = format!("=_smarthost_dsn_{:016x}", rand::random::<u64>());
        if memchr::memmem::find(&original, b.as_bytes()).is_none() {
            break b;
        }
    };
    let full = envelope
        .params
        .ret
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("FULL"));

    let mut out = String::new();
    header(
        &mut out,
        "From",
        &format!("\"Mail Delivery System\" <MAILER-DAEMON@{hostname}>"),
    );
    header(&mut out, "To", &format!("<{}>", clean(&envelope.sender)));
    header(&mut out, "Subject", subject(reports));
    header(&mut out, "Date", &date(now));
    let id = format!("<{now}.{:016x}.dsn@{hostname}>", rand::random::<u64>());
    header(&mut out, "Message-ID", &id);
    // RFC 3834 §5: marks the notice as automatic, so nothing auto-replies to it.
    header(&mut out, "Auto-Submitted", "auto-replied");
    header(&mut out, "MIME-Version", "1.0");
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n");

    // Part 1: for people. UTF-8 only if an address or reply needs it.
    let human = explanation(&hostname, envelope, reports);
    let _ = write!(out, "\r\n--{boundary}\r\n");
    header(&mut out, "Content-Description", "Notification");
    header(&mut out, "Content-Type", "text/plain; charset=utf-8");
    let cte = if human.is_ascii() { "7bit" } else { "8bit" };
    header(&mut out, "Content-Transfer-Encoding", cte);
    out.push_str("\r\n");
    out.push_str(&human);

    // Part 2: for machines (RFC 3464 §2.2 per-message, §2.3 per-recipient fields).
    let _ = write!(out, "\r\n--{boundary}\r\n");
    header(&mut out, "Content-Description", "Delivery report");
    header(&mut out, "Content-Type", "message/delivery-status");
    out.push_str("\r\n");
    header(&mut out, "Reporting-MTA", &format!("dns; {hostname}"));
    if let Some(envid) = &envelope.params.envid {
        header(&mut out, "Original-Envelope-Id", &xtext(envid));
    }
    header(&mut out, "Arrival-Date", &date(envelope.received_at));
    for r in reports {
        out.push_str("\r\n");
        if let Some(orcpt) = r.orcpt {
            header(&mut out, "Original-Recipient", &address_field(orcpt));
        }
        header(&mut out, "Final-Recipient", &address_field(r.address));
        header(&mut out, "Action", r.action.as_str());
        header(&mut out, "Status", &status_code(&r.status, r.action));
        if let Some(mta) = r.remote_mta {
            header(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", ascii(mta_host(mta))),
            );
        }
        if let Some(diag) = &r.diagnostic {
            header(
                &mut out,
                "Diagnostic-Code",
                &format!("smtp; {}", ascii(diag)),
            );
        }
        header(&mut out, "Last-Attempt-Date", &date(now));
    }

    // Part 3: the original, or its header section only (RFC 3462 §3, RFC 3461 §4.3).
    let _ = write!(out, "\r\n--{boundary}\r\n");
    let (ctype, content) = if full {
        ("message/rfc822", &original[..])
    } else {
        ("text/rfc822-headers", header_section(&original))
    };
    let desc = if full {
        "Undelivered message"
    } else {
        "Undelivered message headers"
    };
    header(&mut out, "Content-Description", desc);
    header(&mut out, "Content-Type", ctype);
    // message/rfc822 allows only 7bit, 8bit or binary (RFC 2046 §5.2.1).
    let cte = if content.is_ascii() { "7bit" } else { "8bit" };
    header(&mut out, "Content-Transfer-Encoding", cte);
    out.push_str("\r\n");

    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(content);
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

fn subject(reports: &[RecipientReport<'_>]) -> &'static str {
    let any = |a: Action| reports.iter().any(|r| r.action == a);
    if any(Action::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if any(Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else if any(Action::Relayed) {
        "Delivery Status Notification (Relay)"
    } else {
        "Delivery Status Notification (Success)"
    }
}

/// The human-readable part: what happened, recipient by recipient.
fn explanation(hostname: &str, envelope: &Envelope, reports: &[RecipientReport<'_>]) -> String {
    let mut s = format!("This is the mail system at host {hostname}.\r\n\r\n");
    let any = |a: Action| reports.iter().any(|r| r.action == a);
    if any(Action::Failed) {
        s.push_str(
            "Your message could not be delivered to one or more recipients.\r\n\
             The failures are permanent: sending again will not help unless\r\n\
             the problem is fixed. The message (or its header) is attached.\r\n",
        );
    }
    if any(Action::Delayed) {
        s.push_str(
            "Delivery of your message to some recipients has been delayed.\r\n\
             Nothing needs to be done: delivery will be retried.\r\n",
        );
    }
    if any(Action::Relayed) || any(Action::Delivered) {
        s.push_str("Your message was delivered or passed on, as you asked to be told.\r\n");
    }
    let _ = write!(
        s,
        "\r\nMessage received {} from {}.\r\n",
        DateTime::from_timestamp(envelope.received_at as i64).to_rfc822(),
        envelope.client.address.ip()
    );
    for r in reports {
        let what = match r.action {
            Action::Failed => "could not be delivered",
            Action::Delayed => "delayed; delivery will be retried",
            Action::Relayed => "passed on to a system that sends no notices",
            Action::Delivered => "delivered",
        };
        let _ = write!(s, "\r\n<{}>: {what}\r\n", clean(r.address));
        if let Some(mta) = r.remote_mta {
            s.push_str("   ");
            fold(&mut s, &format!("{} said:", clean(mta)), 3, "   ");
        }
        if let Some(diag) = &r.diagnostic {
            s.push_str("   ");
            fold(&mut s, diag, 3, "   ");
        }
    }
    s
}

/// Appends `Name: value` CRLF, the value cleaned and folded.
fn header(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push(':');
    fold(out, value, name.len() + 1, "");
}

/// Appends `value`, cleaned (see `clean`), word by word, starting a
/// continuation line (CRLF, space) before a word that would pass 78 columns
/// (RFC 5322 §2.1.1), then CRLF. Continuation lines start with `indent`
/// (then the space).
/// A word longer than 900 octets is cut (at a character boundary) so no line
/// nears 998. `col` is where the first word starts (0: no leading space).
fn fold(out: &mut String, value: &str, mut col: usize, indent: &str) {
    // Cleaned here, whatever the caller did: no CR or LF gets through.
    let value = clean(value);
    let pieces = value.split(' ').flat_map(|mut word| {
        std::iter::from_fn(move || {
            if word.is_empty() {
                return None;
            }
            let mut cut = word.len().min(900);
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, rest) = word.split_at(cut);
            word = rest;
            Some(piece)
        })
    });
    for (i, piece) in pieces.enumerate() {
        if i > 0 && col + 1 + piece.len() > 78 {
            out.push_str("\r\n");
            out.push_str(indent);
            col = indent.len();
        }
        // Folding is CRLF then a space; a body line's first word has none.
        if i > 0 || col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(piece);
        col += piece.len();
    }
    out.push_str("\r\n");
}

/// Control characters (CR, LF, TAB, NUL, ...) become spaces; runs of
/// whitespace collapse, and the ends are trimmed.
fn clean(s: &str) -> String {
    s.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `clean`, and 7-bit: anything else becomes `?` (the human part has it whole).
fn ascii(s: &str) -> String {
    clean(s)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// xtext (RFC 3461 §4): `+XX` for anything outside printable ASCII, `+`, `=`.
fn xtext(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

/// `rfc822; addr`, or for an internationalised address RFC 6533 §3's
/// `utf-8; ` type with `\x{HEX}` escapes, keeping the field 7-bit.
fn address_field(address: &str) -> String {
    let address = clean(address);
    if address.is_ascii() {
        return format!("rfc822; {address}");
    }
    let mut out = String::from("utf-8; ");
    for c in address.chars() {
        match c {
            c if c.is_ascii() && c != '\\' => out.push(c),
            c => {
                let _ = write!(out, "\\x{{{:X}}}", c as u32);
            }
        }
    }
    out
}

/// `host` from `host:port` or `[v6]:port`; anything else as given.
fn mta_host(mta: &str) -> &str {
    if let Ok(addr) = mta.parse::<std::net::SocketAddr>() {
        let s = mta.rsplit_once(':').map_or(mta, |(h, _)| h);
        return if addr.is_ipv6() {
            s.trim_start_matches('[').trim_end_matches(']')
        } else {
            s
        };
    }
    match mta.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => mta,
    }
}

/// The status if it is a well-formed enhanced code (RFC 3463 §2) whose class
/// fits the action; otherwise the generic code of the action's class.
fn status_code(status: &str, action: Action) -> String {
    let parts: Vec<&str> = status.split('.').collect();
    let well_formed = parts.len() == 3
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && matches!(parts[0], "2" | "4" | "5");
    let class = match action {
        Action::Failed => "5",
        Action::Delayed => "4",
        Action::Relayed | Action::Delivered => "2",
    };
    if well_formed && parts[0] == class {
        status.to_owned()
    } else {
        format!("{class}.0.0")
    }
}

/// The header section, through the CRLF ending its last field, without the
/// empty line or anything after it (RFC 5322 §2.1). No empty line: it is all
/// header. A message starting with the empty line has no header section.
fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match memchr::memmem::find(message, b"\r\n\r\n") {
        Some(at) => &message[..at + 2],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_lines_short_and_words_whole() {
        let mut s = String::new();
        let long = "word ".repeat(100) + &"x".repeat(2000);
        header(&mut s, "Diagnostic-Code", &long);
        assert!(s.split("\r\n").all(|l| l.len() <= 902), "{s}");
        assert!(s.starts_with("Diagnostic-Code: word word"));
        assert!(
            s.split("\r\n")
                .skip(1)
                .filter(|l| !l.is_empty())
                .all(|l| l.starts_with(' '))
        );
        let unfolded = s.replace("\r\n", "");
        assert!(unfolded.contains(&"x".repeat(900)));
    }

    #[test]
    fn helpers() {
        assert_eq!(mta_host("mx.example:25"), "mx.example");
        assert_eq!(mta_host("[::1]:25"), "::1");
        assert_eq!(mta_host("192.0.2.1:2525"), "192.0.2.1");
        assert_eq!(mta_host("mx.example"), "mx.example");
        assert_eq!(status_code("5.1.1", Action::Failed), "5.1.1");
        assert_eq!(status_code("4.4.1", Action::Failed), "5.0.0");
        assert_eq!(status_code("5.1.x", Action::Failed), "5.0.0");
        assert_eq!(address_field("josé@example"), "utf-8; jos\\x{E9}@example");
        assert_eq!(xtext("a b+c"), "a+20b+2Bc");
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
    }
}
