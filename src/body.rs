//! Message content as it arrives in DATA or BDAT, turned into what we store.
//!
//! `Content` enforces the size limit while bytes stream in (memory stays bounded:
//! once over the limit the bytes are counted and dropped, so the stream can be
//! read to its real end and answered in sync) and makes line endings canonical.
//! A bare CR or LF is either turned into CRLF or makes the message refused
//! (`bare_line_endings`), so what we store and later relay never holds one:
//! mismatched ideas of "end of line" between MTAs are what SMTP smuggling
//! (CVE-2023-51764 and kin) exploits.

use std::net::IpAddr;

use crate::config::BareLineEndings;
use crate::error::SmtpError;
use crate::spool::TlsInfo;

/// RFC 5321 §6.3: this many Received headers means a loop.
pub const MAX_RECEIVED_HEADERS: usize = 50;

/// The content of one message being received.
pub struct Content {
    data: Vec<u8>,
    /// The last byte pushed was a CR whose LF may be in the next push.
    pending_cr: bool,
    /// Bytes received (after dot-unstuffing), whether kept or not.
    received: u64,
    limit: u64,
    mode: BareLineEndings,
    bare_line_ending: bool,
    /// A NUL byte was seen (dropped in normalize mode, refused in reject mode).
    nul: bool,
}

impl Content {
    pub fn new(limit: usize, mode: BareLineEndings) -> Content {
        Content {
            data: Vec::new(),
            pending_cr: false,
            received: 0,
            limit: limit as u64,
            mode,
            bare_line_ending: false,
            nul: false,
        }
    }

    pub fn too_big(&self) -> bool {
        self.received > self.limit
    }

    /// The refusal this message already earned, if any; the rest of it is
    /// still read (and dropped) so the session stays in sync.
    pub fn refusal(&self) -> Option<SmtpError> {
        if self.too_big() {
            Some(SmtpError::MessageTooBig)
        } else if self.bare_line_ending && self.mode == BareLineEndings::Reject {
            Some(SmtpError::BareLineEnding)
        } else if self.nul && self.mode == BareLineEndings::Reject {
            Some(SmtpError::NulInContent)
        } else {
            None
        }
    }

    /// Takes more content, making every line ending CRLF.
    pub fn push(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        let mut text = std::borrow::Cow::Borrowed(bytes);
        if memchr::memchr(0, bytes).is_some() {
            // RFC 2045 §2.8, RFC 3030 §3: without BINARYMIME (never offered)
            // content is text, and text holds no NUL. A next hop that drops
            // NULs before looking for the end of data would read
            // "\r\n\0.\r\n" as one (a smuggling variant), so none is relayed.
            self.nul = true;
            text = bytes.iter().copied().filter(|&b| b != 0).collect();
        }
        if self.too_big() {
            self.data = Vec::new();
            return;
        }
        // Line endings are still judged once the message is refused (the
        // bytes then dropped), so which refusal it gets does not depend on
        // how the content was split into packets.
        self.normalise(&text);
        if self.refusal().is_some() {
            self.data = Vec::new();
        }
    }

    fn normalise(&mut self, mut bytes: &[u8]) {
        if self.pending_cr && !bytes.is_empty() {
            self.pending_cr = false;
            if bytes[0] == b'\n' {
                self.data.extend_from_slice(b"\r\n");
                bytes = &bytes[1..];
            } else {
                self.bare();
            }
        }
        while let Some(i) = memchr::memchr2(b'\r', b'\n', bytes) {
            self.data.extend_from_slice(&bytes[..i]);
            match (bytes[i], bytes.get(i + 1)) {
                (b'\r', Some(b'\n')) => {
                    self.data.extend_from_slice(b"\r\n");
                    bytes = &bytes[i + 2..];
                }
                (b'\r', None) => {
                    self.pending_cr = true;
                    return;
                }
                _ => {
                    self.bare();
                    bytes = &bytes[i + 1..];
                }
            }
        }
        self.data.extend_from_slice(bytes);
    }

    fn bare(&mut self) {
        self.bare_line_ending = true;
        self.data.extend_from_slice(b"\r\n");
    }

    /// The finished content, ending in CRLF, or why it is refused.
    pub fn finish(mut self) -> Result<Vec<u8>, SmtpError> {
        if self.pending_cr {
            self.pending_cr = false;
            self.bare();
        }
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        if !self.data.is_empty() && !self.data.ends_with(b"\r\n") {
            // A BDAT message may end mid-line; every stored line ends in CRLF.
            self.data.extend_from_slice(b"\r\n");
        }
        if count_received(&self.data) >= MAX_RECEIVED_HEADERS {
            return Err(SmtpError::TooManyHops);
        }
        Ok(self.data)
    }
}

/// Received header fields in the header section of `message`.
pub fn count_received(message: &[u8]) -> usize {
    mail_parser::MessageParser::new()
        .parse_headers(message)
        .map_or(0, |m| {
            m.headers()
                .iter()
                .filter(|h| h.name == mail_parser::HeaderName::Received)
                .count()
        })
}

/// What our Received header records about the session (RFC 5321 §4.4).
pub struct Trace<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    pub tls: Option<&'a TlsInfo>,
    pub authenticated: bool,
    pub esmtp: bool,
    pub queue_id: &'a str,
    /// Named only when there is exactly one, so a Bcc'd list is not disclosed.
    pub single_recipient: Option<&'a str>,
    pub timestamp: i64,
}

impl Trace<'_> {
    /// The folded `Received:` header line, ending in CRLF.
    pub fn received_header(&self) -> String {
        // RFC 3848 protocol names.
        let with = match (self.esmtp, self.tls.is_some(), self.authenticated) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let ip = match self.client_ip.to_canonical() {
            IpAddr::V4(v4) => format!("[{v4}]"),
            IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        };
        let helo: String = self
            .helo
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && !"()[];\\\"".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut h = format!(
            "Received: from {helo} ({ip})\r\n\tby {} (smarthost) with {with}",
            self.hostname
        );
        if let Some(tls) = self.tls {
            h.push_str(&format!(
                "\r\n\t(version={} cipher={})",
                tls.version, tls.cipher
            ));
        }
        h.push_str(&format!("\r\n\tid {}", self.queue_id));
        if let Some(rcpt) = self.single_recipient {
            h.push_str(&format!("\r\n\tfor <{rcpt}>"));
        }
        let date = mail_parser::DateTime::from_timestamp(self.timestamp).to_rfc822();
        h.push_str(&format!(";\r\n\t{date}\r\n"));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(parts: &[&[u8]], mode: BareLineEndings) -> Result<Vec<u8>, SmtpError> {
        let mut c = Content::new(100_000, mode);
        for p in parts {
            c.push(p);
        }
        c.finish()
    }

    #[test]
    fn bare_endings_become_crlf_across_pushes() {
        let out = content(
            &[b"a\nb\r", b"\nc\rd\r", b"", b"e\r\n"],
            BareLineEndings::Normalize,
        )
        .unwrap();
        assert_eq!(out, b"a\r\nb\r\nc\r\nd\r\ne\r\n");
    }

    #[test]
    fn bare_endings_refused_in_reject_mode() {
        for bad in [&b"a\nb\r\n"[..], b"a\rb\r\n", b"ab\r"] {
            assert!(matches!(
                content(&[bad], BareLineEndings::Reject),
                Err(SmtpError::BareLineEnding)
            ));
        }
        assert_eq!(
            content(&[b"ok\r\n"], BareLineEndings::Reject).unwrap(),
            b"ok\r\n"
        );
    }

    #[test]
    fn nul_is_dropped_or_refused() {
        let smuggle: &[&[u8]] = &[b"a\r\n\0", b".\r\nb\r\n.\0\r\n"];
        assert_eq!(
            content(smuggle, BareLineEndings::Normalize).unwrap(),
            b"a\r\n.\r\nb\r\n.\r\n"
        );
        assert!(matches!(
            content(smuggle, BareLineEndings::Reject),
            Err(SmtpError::NulInContent)
        ));
        // A CR, a NUL, then the LF in the next push: still one CRLF.
        assert_eq!(
            content(&[b"a\r\0", b"\nb"], BareLineEndings::Normalize).unwrap(),
            b"a\r\nb\r\n"
        );
    }

    #[test]
    fn refusal_does_not_depend_on_the_split() {
        // Found by fuzz/fuzz_targets/data.rs: a bare CR then a NUL got
        // 554 5.6.0 in one push but 550 5.5.2 byte by byte.
        let whole: &[u8] = b"\r\r\0\0x\r\n";
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        for parts in [&[whole][..], &bytes] {
            assert!(matches!(
                content(parts, BareLineEndings::Reject),
                Err(SmtpError::BareLineEnding)
            ));
        }
        for parts in [&[&b"\0"[..], b"a\n"][..], &[b"\0a\n"]] {
            assert!(matches!(
                content(parts, BareLineEndings::Reject),
                Err(SmtpError::BareLineEnding)
            ));
        }
    }

    #[test]
    fn over_limit_is_counted_not_kept() {
        let mut c = Content::new(10, BareLineEndings::Normalize);
        c.push(b"0123456789");
        assert!(c.refusal().is_none());
        c.push(b"x");
        assert!(c.too_big());
        assert!(c.data.is_empty());
        assert!(matches!(c.finish(), Err(SmtpError::MessageTooBig)));
    }

    #[test]
    fn unterminated_last_line_gets_crlf() {
        assert_eq!(content(&[b"x"], BareLineEndings::Reject).unwrap(), b"x\r\n");
        assert_eq!(content(&[], BareLineEndings::Reject).unwrap(), b"");
    }

    #[test]
    fn fifty_received_headers_is_a_loop() {
        let hops = |n| {
            let mut m = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(n);
            m.push_str("Subject: x\r\n\r\nbody\r\nReceived: not a header\r\n");
            m
        };
        assert_eq!(count_received(hops(49).as_bytes()), 49);
        assert!(content(&[hops(49).as_bytes()], BareLineEndings::Normalize).is_ok());
        let mut c = Content::new(100_000, BareLineEndings::Normalize);
        c.push(hops(50).as_bytes());
        assert!(matches!(c.finish(), Err(SmtpError::TooManyHops)));
    }

    #[test]
    fn received_header_is_folded_and_complete() {
        let tls = TlsInfo {
            version: "TLSv1_3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        };
        let h = Trace {
            helo: "ex01(evil)",
            client_ip: "::ffff:192.0.2.7".parse().unwrap(),
            hostname: "relay.example",
            tls: Some(&tls),
            authenticated: false,
            esmtp: true,
            queue_id: "ABC",
            single_recipient: Some("a@b.example"),
            timestamp: 0,
        }
        .received_header();
        assert_eq!(
            h,
            "Received: from ex01_evil_ ([192.0.2.7])\r\n\tby relay.example (smarthost) with ESMTPS\r\n\t(version=TLSv1_3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\tid ABC\r\n\tfor <a@b.example>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        assert_eq!(count_received(format!("{h}\r\n").as_bytes()), 1);
    }
}
