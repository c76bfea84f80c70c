//! One command line: framing checks, smtp-proto's parser, and guards for the
//! parser's known quirks.
//!
//! Guarded here, before or after `Request::parse`:
//! - `BDAT` with an over-long number: smtp-proto's saturating size parser wraps
//!   to a small value after `usize::MAX`, which would desynchronise the stream,
//!   so the digits are checked first.
//! - `<postmaster>` parses as an empty address, which would make
//!   `MAIL FROM:<postmaster>` a null sender; the raw path is checked.
//! - Address literals (`user@[192.0.2.1]`, RFC 5321 §4.1.3) are refused by its
//!   address parser; a valid literal is swapped for a placeholder domain for
//!   parsing and put back after.
//! - NUL and bare CR: the parser drops CRs; RFC 5321 §2.3.8 says commands end in
//!   CRLF and nothing else, so both are refused before parsing.

use smtp_proto::{Error as ParseError, Request};

use crate::error::SmtpError;

/// RFC 5321 §4.5.3.1.4 allows 512 octets; extensions (SMTPUTF8 addresses,
/// DSN parameters) need more, so we allow what smtp-proto's receiver does.
pub const MAX_LINE: usize = 4096;

/// Verbs of HTTP and proxy requests: a browser or scanner, not an SMTP client.
/// Such a connection is closed at once (cross-protocol attacks).
const HTTP_VERBS: &[&str] = &[
    "GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "CONNECT ", "TRACE ", "PATCH ",
];

/// The outcome of reading one line.
#[derive(Debug)]
pub enum Parsed {
    Request(Request<String>),
    /// Close without a reply.
    Http,
}

/// Parses one complete line (ending in LF) into a request.
pub fn parse(line: &[u8]) -> Result<Parsed, SmtpError> {
    if line.len() > MAX_LINE {
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

    let literal = address_literal(body);
    let rewritten;
    let line = match &literal {
        // `range` indexes `body`, a prefix of `line`.
        Some((_, range)) => {
            let mut l = line.to_vec();
            l.splice(range.clone(), LITERAL_PLACEHOLDER.bytes());
            rewritten = l;
            &rewritten[..]
        }
        None => line,
    };
    let request = Request::parse(&mut line.iter()).map_err(|e| match e {
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

    let request = match request.into_owned() {
        Request::Mail { from } if from.address.is_empty() && !raw_path_is_empty(body) => {
            return Err(SmtpError::BadSender);
        }
        Request::Rcpt { to } if to.address.is_empty() => {
            return Err(if raw_path_is_empty(body) {
                SmtpError::BadRecipient
            } else {
                SmtpError::UnqualifiedPostmaster
            });
        }
        other => other,
    };
    let request = match (request, literal) {
        (Request::Mail { mut from }, Some((literal, _))) => {
            from.address = from.address.replace(LITERAL_PLACEHOLDER, &literal);
            Request::Mail { from }
        }
        (Request::Rcpt { mut to }, Some((literal, _))) => {
            to.address = to.address.replace(LITERAL_PLACEHOLDER, &literal);
            Request::Rcpt { to }
        }
        (request, _) => request,
    };
    Ok(Parsed::Request(request))
}

/// Stands in for an address literal while smtp-proto parses the line.
const LITERAL_PLACEHOLDER: &str = "address-literal.invalid";

/// A valid `[IPv4]` or `[IPv6:...]` domain after `@` in a MAIL or RCPT line:
/// the literal and the byte range it occupies.
fn address_literal(line: &[u8]) -> Option<(String, std::ops::Range<usize>)> {
    let verb = line.get(..4)?;
    if !verb.eq_ignore_ascii_case(b"MAIL") && !verb.eq_ignore_ascii_case(b"RCPT") {
        return None;
    }
    let start = line.windows(2).position(|w| w == b"@[")? + 1;
    let end = start + line[start..].iter().position(|&b| b == b']')? + 1;
    let literal = std::str::from_utf8(&line[start..end]).ok()?;
    let inner = &literal[1..literal.len() - 1];
    let valid = match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    };
    valid.then(|| (literal.to_owned(), start..end))
}

fn has_argument(line: &[u8]) -> bool {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty()).count() > 1
}

/// True when the path between `<` and `>` is empty (`<>`), as opposed to
/// `<postmaster>`, which smtp-proto also returns as empty.
fn raw_path_is_empty(line: &[u8]) -> bool {
    let Some(open) = line.iter().position(|&b| b == b'<') else {
        return false;
    };
    let rest = &line[open + 1..];
    rest.iter()
        .position(|&b| b == b'>')
        .is_some_and(|close| rest[..close].iter().all(u8::is_ascii_whitespace))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Result<Request<String>, SmtpError> {
        match parse(line.as_bytes())? {
            Parsed::Request(r) => Ok(r),
            Parsed::Http => panic!("http"),
        }
    }

    #[test]
    fn postmaster_is_not_the_null_sender() {
        assert!(matches!(
            req("MAIL FROM:<postmaster>\r\n"),
            Err(SmtpError::BadSender)
        ));
        match req("MAIL FROM:<>\r\n").unwrap() {
            Request::Mail { from } => assert_eq!(from.address, ""),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            req("RCPT TO:<Postmaster>\r\n"),
            Err(SmtpError::UnqualifiedPostmaster)
        ));
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
