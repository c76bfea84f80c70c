//! Message content as it arrives in DATA or BDAT, turned into what we store.
//!
//! `Content` enforces the size limit while bytes stream in (memory stays bounded:
//! once over the limit the bytes are counted and dropped, so the stream can be
//! read to its real end and answered in sync) and makes line endings canonical.
//! The canonical bytes wait in `Content` until the session takes them for the
//! spool (`take`), so a large message never sits whole in memory; a small one
//! is all taken at `finish`.
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

/// How much of the header section is kept to count Received headers in once
/// content has been taken away (a message under it is counted in full).
/// Each hop's trace block (its Received header and whatever else it adds on
/// top, e.g. Exchange Online's X-MS-Exchange-* fields) is at most a few KiB,
/// so 50 hops fit; past 256 KiB of header the count is of the first 256 KiB
/// only (Postfix stops reading headers at 100 KiB, `header_size_limit`),
/// and a loop there still ends at the size limit. Kept only while the header
/// section is unfinished: a few KiB for real mail, never more than this.
pub const HEADER_COPY_MAX: usize = 256 * 1024;

/// The content of one message being received.
pub struct Content {
    /// Canonical content not yet taken (all of it until `take` is used).
    data: Vec<u8>,
    /// Bytes of canonical content taken out before `data`.
    taken: u64,
    /// What was taken so far ended in CRLF (or nothing was taken).
    taken_ends_in_crlf: bool,
    /// The start of the header section, copied from what was taken, for the
    /// hop count; up to its blank line or `HEADER_COPY_MAX`.
    head: Vec<u8>,
    /// `head` holds the whole header section, or all it ever will.
    head_done: bool,
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
            taken: 0,
            taken_ends_in_crlf: true,
            head: Vec::new(),
            head_done: false,
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

    /// The start of the message as received so far (the header copy once
    /// content has been taken out), e.g. to find its Message-ID.
    pub fn start(&self) -> &[u8] {
        if self.taken == 0 {
            &self.data
        } else {
            &self.head
        }
    }

    /// Canonical bytes waiting to be taken.
    pub fn pending(&self) -> usize {
        self.data.len()
    }

    /// Takes the canonical bytes received so far (to be written out); later
    /// ones start a new buffer, `reuse`'s if given back.
    pub fn take(&mut self) -> Vec<u8> {
        let data = std::mem::take(&mut self.data);
        if !data.is_empty() {
            self.taken += data.len() as u64;
            // Canonical: every LF is a CRLF's.
            self.taken_ends_in_crlf = data.ends_with(b"\n");
            self.copy_head(&data);
        }
        data
    }

    /// Gives a buffer from `take` back, so the next one needs no allocation.
    pub fn reuse(&mut self, mut buffer: Vec<u8>) {
        if self.data.is_empty() {
            buffer.clear();
            self.data = buffer;
        }
    }

    /// Keeps the start of the header section while it goes out in pieces.
    fn copy_head(&mut self, bytes: &[u8]) {
        if self.head_done {
            return;
        }
        let from = self.head.len().saturating_sub(3);
        let n = bytes.len().min(HEADER_COPY_MAX - self.head.len());
        self.head.extend_from_slice(&bytes[..n]);
        // RFC 5322 §2.1: the header section ends at the first empty line.
        if let Some(at) = memchr::memmem::find(&self.head[from..], b"\r\n\r\n") {
            self.head.truncate(from + at + 4);
            self.head_done = true;
        } else if self.head.len() == HEADER_COPY_MAX {
            self.head_done = true;
        }
    }

    /// The rest of the content (everything not taken), ending in CRLF, or why
    /// the message is refused.
    pub fn finish(mut self) -> Result<Vec<u8>, SmtpError> {
        if self.pending_cr {
            self.pending_cr = false;
            self.bare();
        }
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let ends_in_crlf = if self.data.is_empty() {
            self.taken_ends_in_crlf
        } else {
            self.data.ends_with(b"\r\n")
        };
        if !ends_in_crlf {
            // A BDAT message may end mid-line; every stored line ends in CRLF.
            self.data.extend_from_slice(b"\r\n");
        }
        let hops = if self.taken == 0 {
            count_received(&self.data)
        } else {
            let data = std::mem::take(&mut self.data);
            self.copy_head(&data);
            self.data = data;
            count_received(&self.head)
        };
        if hops >= MAX_RECEIVED_HEADERS {
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

    /// Pushes `parts`, taking what is pending after each push listed in
    /// `take_after`; returns everything taken then the finished tail.
    fn streamed(
        parts: &[&[u8]],
        take_after: &[usize],
        mode: BareLineEndings,
    ) -> Result<Vec<u8>, SmtpError> {
        let mut c = Content::new(10_000_000, mode);
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            c.push(p);
            if take_after.contains(&i) {
                let taken = c.take();
                out.extend_from_slice(&taken);
                c.reuse(taken);
            }
        }
        out.extend_from_slice(&c.finish()?);
        Ok(out)
    }

    #[test]
    fn taking_as_it_goes_changes_nothing() {
        let parts: &[&[u8]] = &[b"Subject: a\r", b"\nX: b\n\r\nbody\r", b"\r\nend"];
        let whole = content(parts, BareLineEndings::Normalize).unwrap();
        assert_eq!(whole, b"Subject: a\r\nX: b\r\n\r\nbody\r\n\r\nend\r\n");
        for takes in [&[0][..], &[1], &[2], &[0, 1, 2]] {
            assert_eq!(
                streamed(parts, takes, BareLineEndings::Normalize).unwrap(),
                whole,
                "taking after {takes:?}"
            );
        }
        // A message taken whole up to a line end gets no second CRLF; one
        // taken mid-line gets its final CRLF in the tail.
        assert_eq!(
            streamed(&[b"a\r\n"], &[0], BareLineEndings::Reject).unwrap(),
            b"a\r\n"
        );
        assert_eq!(
            streamed(&[b"a\r\nb"], &[0], BareLineEndings::Reject).unwrap(),
            b"a\r\nb\r\n"
        );
        // Refusals are the same whether or not content was taken.
        assert!(matches!(
            streamed(&[b"a\r\n", b"b\nc\r\n"], &[0], BareLineEndings::Reject),
            Err(SmtpError::BareLineEnding)
        ));
    }

    #[test]
    fn hops_are_counted_in_the_header_section_taken_in_pieces() {
        let received = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n";
        let message = |hops: usize, body: &str| {
            format!("{}Subject: x\r\n\r\n{body}", received.repeat(hops)).into_bytes()
        };
        let body = "Received: not a header\r\n".repeat(100);
        for hops in [49, 50] {
            let m = message(hops, &body);
            // Cut into 7-byte pieces, each taken: the blank line and the
            // header names straddle the cuts.
            let pieces: Vec<&[u8]> = m.chunks(7).collect();
            let all: Vec<usize> = (0..pieces.len()).collect();
            let result = streamed(&pieces, &all, BareLineEndings::Reject);
            if hops < MAX_RECEIVED_HEADERS {
                assert_eq!(result.unwrap(), m);
            } else {
                assert!(matches!(result, Err(SmtpError::TooManyHops)));
            }
        }
        // Only the header section is kept: the body's lookalikes are not.
        let mut c = Content::new(10_000_000, BareLineEndings::Reject);
        c.push(&message(2, &body));
        c.take();
        assert!(
            c.head.ends_with(b"Subject: x\r\n\r\n"),
            "{:?}",
            c.head.len()
        );
        // A header section over HEADER_COPY_MAX: counted in its first part.
        let mut c = Content::new(10_000_000, BareLineEndings::Reject);
        let padding = format!("X-Pad: {}\r\n", "p".repeat(990)).repeat(300);
        c.push(received.repeat(60).as_bytes());
        c.push(padding.as_bytes());
        c.take();
        c.push(b"\r\nbody\r\n");
        assert_eq!(c.head.len(), HEADER_COPY_MAX);
        assert!(matches!(c.finish(), Err(SmtpError::TooManyHops)));
        // Hops past it are not seen (the documented limit of the count).
        let mut c = Content::new(10_000_000, BareLineEndings::Reject);
        c.push(padding.as_bytes());
        c.push(received.repeat(60).as_bytes());
        c.take();
        c.push(b"\r\nbody\r\n");
        assert!(c.finish().is_ok());
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
