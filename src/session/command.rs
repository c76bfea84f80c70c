//! One command line: framing checks, smtp-proto's parser, and guards for the
//! parser's known quirks.
//!
//! Guarded here, before or after `Request::parse`:
//! - `BDAT` with an over-long number: smtp-proto's saturating size parser wraps
//!   to a small value after `usize::MAX`, which would desynchronise the stream,
//!   so the digits are checked first.
//! - MAIL and RCPT paths are parsed by `address::Path`, not smtp-proto, which
//!   drops a Quoted-string's quotes (so `"a> X=1"@b` would later be relayed as
//!   `a> X=1@b`), takes `foo@` for an address and refuses address literals.
//!   smtp-proto sees `<>` in the path's place and parses only the parameters.
//! - NUL and bare CR: the parser drops CRs; RFC 5321 §2.3.8 says commands end in
//!   CRLF and nothing else, so both are refused before parsing.

use smtp_proto::{Error as ParseError, MailFrom, RcptTo, Request};

use crate::address::Path;
use crate::error::SmtpError;

/// RFC 5321 §4.5.3.1.4 allows 512 octets; extensions (SMTPUTF8 addresses,
/// DSN parameters) need more, so we allow what smtp-proto's receiver does.
pub const MAX_COMMAND_LINE: usize = 4096;

/// Verbs of HTTP and proxy requests: a browser or scanner, not an SMTP client.
/// Such a connection is closed at once (cross-protocol attacks).
const HTTP_VERBS: &[&str] = &[
    "GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "CONNECT ", "TRACE ", "PATCH ",
];

/// The outcome of reading one line.
#[derive(Debug)]
pub enum Parsed {
    Request(Request<String>),
    /// MAIL: the parameters, and the reverse-path (a mailbox or `Null`).
    Mail(MailFrom<String>, Path),
    /// RCPT: the parameters, and the forward-path (a mailbox or `Postmaster`).
    Rcpt(RcptTo<String>, Path),
    /// Close without a reply.
    Http,
}

/// Parses one complete line (ending in LF) into a request.
pub fn parse(line: &[u8]) -> Result<Parsed, SmtpError> {
    if line.len() > MAX_COMMAND_LINE {
        return Err(SmtpError::LineTooLong);
    }
    let body = line
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line);
    if body.iter().any(|&b| b == 0 || b == b'\r') || std::str::from_utf8(body).is_err() {
        return Err(SmtpError::BadCharacters);
    }
    if HTTP_VERBS.iter().any(|v| body.starts_with(v.as_bytes())) {
        return Ok(Parsed::Http);
    }
    let verb = body.split(|&b| b == b' ').next().unwrap_or_default();
    if verb.eq_ignore_ascii_case(b"BDAT") {
        check_bdat_size(body)?;
    }

    let path = match mail_path(body, verb)? {
        Some((range, path)) => {
            // The path is replaced by `<>`, which smtp-proto takes for MAIL and
            // RCPT alike, so it parses the parameters only.
            let mut rewritten = Vec::with_capacity(line.len());
            rewritten.extend_from_slice(&body[..range.start]);
            rewritten.extend_from_slice(b"<>");
            rewritten.extend_from_slice(&body[range.end..]);
            rewritten.extend_from_slice(b"\r\n");
            Some((rewritten, path))
        }
        None => None,
    };
    let parse_input = path.as_ref().map_or(line, |(l, _)| &l[..]);
    let request = Request::parse(&mut parse_input.iter()).map_err(|e| match e {
        ParseError::UnknownCommand => SmtpError::UnknownCommand,
        ParseError::InvalidSenderAddress => SmtpError::BadSender,
        ParseError::InvalidRecipientAddress => SmtpError::BadRecipient,
        // smtp-proto reports an unknown SASL mechanism as a syntax error;
        // RFC 4954 §4 wants 504 for it.
        ParseError::SyntaxError { .. }
            if verb.eq_ignore_ascii_case(b"AUTH") && has_argument(body) =>
        {
            SmtpError::UnsupportedMechanism
        }
        ParseError::SyntaxError { syntax } => SmtpError::Syntax(syntax),
        ParseError::InvalidParameter { param } => SmtpError::InvalidParameter(param),
        ParseError::UnsupportedParameter { param } => SmtpError::UnsupportedParameter(param),
        ParseError::ResponseTooLong => SmtpError::LineTooLong,
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            SmtpError::Syntax("command")
        }
    })?;

    Ok(match (request.into_owned(), path) {
        (Request::Mail { mut from }, Some((_, path))) => {
            if from.env_id.as_deref().is_some_and(|v| !dsn_text(v)) {
                return Err(SmtpError::InvalidParameter("ENVID"));
            }
            from.address = match &path {
                Path::Null => String::new(),
                Path::Mailbox(m) => m.to_string(),
                // Reverse-path = Path / "<>": a mailbox needs a domain.
                Path::Postmaster => return Err(SmtpError::BadSender),
            };
            Parsed::Mail(from, path)
        }
        (Request::Rcpt { mut to }, Some((_, path))) => {
            if to.orcpt.as_deref().is_some_and(|v| !dsn_text(v)) {
                return Err(SmtpError::InvalidParameter("ORCPT"));
            }
            to.address = match &path {
                Path::Mailbox(m) => m.to_string(),
                Path::Postmaster => "postmaster".to_owned(),
                Path::Null => return Err(SmtpError::BadRecipient),
            };
            Parsed::Rcpt(to, path)
        }
        // `mail_path` found no MAIL/RCPT verb, yet smtp-proto read one: never
        // let an address through that `Path` did not judge.
        (Request::Mail { .. }, None) => return Err(SmtpError::BadSender),
        (Request::Rcpt { .. }, None) => return Err(SmtpError::BadRecipient),
        (request, _) => Parsed::Request(request),
    })
}

/// For a MAIL or RCPT line: where its path (`<...>`, brackets included) is,
/// and what it names. `None` for other verbs.
fn mail_path(
    body: &[u8],
    verb: &[u8],
) -> Result<Option<(std::ops::Range<usize>, Path)>, SmtpError> {
    let verb = verb.split(|&b| b == b':').next().unwrap_or_default();
    let mail = verb.eq_ignore_ascii_case(b"MAIL");
    let (keyword, syntax): (&[u8], _) = if mail {
        (b"MAILFROM", "MAIL FROM:<reverse-path> [parameters]")
    } else if verb.eq_ignore_ascii_case(b"RCPT") {
        (b"RCPTTO", "RCPT TO:<forward-path> [parameters]")
    } else {
        return Ok(None);
    };
    let bad = || match mail {
        true => SmtpError::BadSender,
        false => SmtpError::BadRecipient,
    };
    let Some(colon) = body.iter().position(|&b| b == b':') else {
        return Err(SmtpError::Syntax(syntax));
    };
    let head: Vec<u8> = body[..colon]
        .iter()
        .copied()
        .filter(|&b| b != b' ')
        .collect();
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(SmtpError::Syntax(syntax));
    }
    let open = colon + 1 + body[colon + 1..].iter().take_while(|&&b| b == b' ').count();
    if body.get(open) != Some(&b'<') {
        return Err(SmtpError::Syntax(syntax));
    }
    // The closing `>` is the first outside a Quoted-string.
    let mut quoted = false;
    let mut escaped = false;
    let mut close = None;
    for (i, &b) in body.iter().enumerate().skip(open + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close.ok_or_else(bad)?;
    let inner =
        std::str::from_utf8(&body[open + 1..close]).map_err(|_| SmtpError::BadCharacters)?;
    let path = Path::parse(inner).map_err(|e| {
        tracing::debug!("refused path: {e}");
        bad()
    })?;
    Ok(Some((open..close + 1, path)))
}

fn has_argument(line: &[u8]) -> bool {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty()).count() > 1
}

/// Refuses chunk sizes smtp-proto cannot represent (more than 19 significant
/// digits); the caller closes the connection, as the chunk cannot be skipped.
fn check_bdat_size(line: &[u8]) -> Result<(), SmtpError> {
    let size = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(1)
        .unwrap_or_default();
    if !size.is_empty() && size.iter().all(u8::is_ascii_digit) {
        let significant = size.iter().skip_while(|&&b| b == b'0').count();
        if significant > 19 {
            return Err(SmtpError::BdatSizeOutOfRange);
        }
    }
    Ok(())
}

/// RFC 3461 §4.4: an ENVID is printable US-ASCII; §4.2: an `rfc822` ORCPT
/// (the only type smtp-proto reads) is a US-ASCII address. Their xtext may
/// encode any octet, and smtp-proto decodes each to the char of that value
/// (`+AC` is U+00AC), which no upstream would read back the same: refused.
fn dsn_text(value: &str) -> bool {
    value.bytes().all(|b| (b' '..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Result<Request<String>, SmtpError> {
        match parse(line.as_bytes())? {
            Parsed::Request(r) => Ok(r),
            Parsed::Mail(from, _) => Ok(Request::Mail { from }),
            Parsed::Rcpt(to, _) => Ok(Request::Rcpt { to }),
            Parsed::Http => panic!("http"),
        }
    }

    fn path(line: &str) -> Result<Path, SmtpError> {
        match parse(line.as_bytes())? {
            Parsed::Mail(_, p) | Parsed::Rcpt(_, p) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn postmaster_is_not_the_null_sender() {
        assert!(matches!(
            req("MAIL FROM:<postmaster>\r\n"),
            Err(SmtpError::BadSender)
        ));
        assert_eq!(path("MAIL FROM:<>\r\n").unwrap(), Path::Null);
        assert_eq!(path("MAIL  FROM : < >\r\n").unwrap(), Path::Null);
        // RFC 5321 §4.5.1: accepted without a domain, any case.
        assert_eq!(path("RCPT TO:<Postmaster>\r\n").unwrap(), Path::Postmaster);
        assert!(matches!(
            req("RCPT TO:<>\r\n"),
            Err(SmtpError::BadRecipient)
        ));
    }

    #[test]
    fn address_literals_survive_parsing() {
        match req("MAIL FROM:<a@[192.0.2.1]> SIZE=10\r\n").unwrap() {
            Request::Mail { from } => {
                assert_eq!(from.address, "a@[192.0.2.1]");
                assert_eq!(from.size, 10);
            }
            r => panic!("{r:?}"),
        }
        match req("RCPT TO:<b@[IPv6:2001:db8::1]>\r\n").unwrap() {
            Request::Rcpt { to } => assert_eq!(to.address, "b@[IPv6:2001:db8::1]"),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            req("MAIL FROM:<a@[999.1.1.1]>\r\n"),
            Err(SmtpError::BadSender)
        ));
    }

    #[test]
    fn quoted_local_parts_keep_their_quotes_and_parameters_stay_outside() {
        let line = "MAIL FROM:<\"ceo@evil.test> AUTH=ceo@evil.test ENVID=x\"@good.test> SIZE=5\r\n";
        match parse(line.as_bytes()).unwrap() {
            Parsed::Mail(from, Path::Mailbox(m)) => {
                assert_eq!(m.domain(), "good.test");
                assert_eq!(m.local_part(), "ceo@evil.test> AUTH=ceo@evil.test ENVID=x");
                assert_eq!(from.address, m.to_string());
                assert_eq!(from.size, 5);
                assert_eq!(from.env_id, None);
            }
            other => panic!("{other:?}"),
        }
        let line = "RCPT TO:<\"v@dest.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x\"@dest.test>\r\n";
        match parse(line.as_bytes()).unwrap() {
            Parsed::Rcpt(to, Path::Mailbox(m)) => {
                assert_eq!(to.flags, 0, "no NOTIFY was given");
                assert_eq!(to.orcpt, None);
                assert_eq!(
                    m.local_part(),
                    "v@dest.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x"
                );
            }
            other => panic!("{other:?}"),
        }
        // A `>` inside quotes does not end the path; an escaped quote does not
        // end the Quoted-string.
        assert_eq!(
            req("RCPT TO:<\"a\\\">b\"@c.test> NOTIFY=NEVER\r\n").unwrap(),
            Request::Rcpt {
                to: RcptTo {
                    address: "\"a\\\">b\"@c.test".into(),
                    flags: smtp_proto::RCPT_NOTIFY_NEVER,
                    ..Default::default()
                }
            }
        );
    }

    #[test]
    fn envid_and_orcpt_must_decode_to_printable_ascii() {
        // `+ac`: smtp-proto makes it U+00AC, which xtext cannot carry back.
        for (line, param) in [
            ("MAIL FROM:<a@b.test> RET=HDRS ENVID=bB2+acd\r\n", "ENVID"),
            ("MAIL FROM:<a@b.test> ENVID=x+0Dy\r\n", "ENVID"),
            (
                "RCPT TO:<a@b.test> ORCPT=rfc822;x+C3+A9@b.test\r\n",
                "ORCPT",
            ),
        ] {
            assert!(
                matches!(req(line), Err(SmtpError::InvalidParameter(p)) if p == param),
                "{line:?}"
            );
        }
        let Request::Mail { from } = req("MAIL FROM:<a@b.test> ENVID=QQ+2Bx+3D1\r\n").unwrap()
        else {
            panic!("not a MAIL");
        };
        assert_eq!(from.env_id.as_deref(), Some("QQ+x=1"));
    }

    #[test]
    fn empty_domains_and_malformed_paths_are_refused() {
        for line in [
            "MAIL FROM:<foo@>\r\n",
            "MAIL FROM:<foo>\r\n",
            "MAIL FROM:<\"unterminated@a.test>\r\n",
            "MAIL FROM:<a@b.test\r\n",
            "MAIL FROM:<a\u{85}b@c.test> SMTPUTF8\r\n",
        ] {
            assert!(matches!(req(line), Err(SmtpError::BadSender)), "{line:?}");
        }
        for line in ["RCPT TO:<user@>\r\n", "RCPT TO:<a@b.test> <c@d.test>\r\n"] {
            assert!(
                matches!(
                    req(line),
                    Err(SmtpError::BadRecipient
                        | SmtpError::Syntax(_)
                        | SmtpError::UnsupportedParameter(_))
                ),
                "{line:?}"
            );
        }
        assert!(matches!(
            req("RCPT TO:<user@>\r\n"),
            Err(SmtpError::BadRecipient)
        ));
        for line in [
            "MAIL FROM:a@b.test\r\n",
            "MAIL TO:<a@b.test>\r\n",
            "RCPT <a@b.test>\r\n",
        ] {
            assert!(matches!(req(line), Err(SmtpError::Syntax(_))), "{line:?}");
        }
    }

    #[test]
    fn bdat_sizes_that_would_wrap_are_refused() {
        assert!(matches!(
            req("BDAT 184467440737095516150 LAST\r\n"),
            Err(SmtpError::BdatSizeOutOfRange)
        ));
        assert!(matches!(
            req("BDAT 0000000000000000000000000005 LAST\r\n").unwrap(),
            Request::Bdat {
                chunk_size: 5,
                is_last: true
            }
        ));
        assert!(matches!(
            req("BDAT 0 LAST\r\n").unwrap(),
            Request::Bdat {
                chunk_size: 0,
                is_last: true
            }
        ));
    }

    #[test]
    fn nul_bare_cr_and_http_are_caught() {
        assert!(matches!(req("NOOP\0\r\n"), Err(SmtpError::BadCharacters)));
        assert!(matches!(req("NO\rOP\r\n"), Err(SmtpError::BadCharacters)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Ok(Parsed::Http)));
        assert!(matches!(req("NOOP\n").unwrap(), Request::Noop { .. }));
    }

    #[test]
    fn unknown_parameters_and_commands() {
        assert!(matches!(
            req("MAIL FROM:<a@b.example> FOO=1\r\n"),
            Err(SmtpError::UnsupportedParameter(_))
        ));
        assert!(matches!(
            req("XEXCH50 1 2\r\n"),
            Err(SmtpError::UnknownCommand)
        ));
    }
}
