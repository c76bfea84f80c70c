//! An SMTP reply as it goes on the wire: code, enhanced status code
//! (RFC 3463, RFC 2034) and text, one line or several (RFC 5321 §4.2.1).

use std::borrow::Cow;
use std::fmt::Write;

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
pub const MAX_REPLY_LINE: usize = 512;

/// One reply. The enhanced code is a string so Microsoft's three-digit
/// details (`4.7.500`) fit, which smtp-proto's `[u8; 3]` cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Cow<'static, str>,
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    pub fn new(
        code: u16,
        status: impl Into<Cow<'static, str>>,
        text: impl Into<Cow<'static, str>>,
    ) -> Reply {
        Reply {
            code,
            status: status.into(),
            lines: vec![text.into()],
        }
    }

    /// A reply whose lines carry no enhanced code (the greeting, EHLO).
    pub fn plain(code: u16, lines: Vec<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: Cow::Borrowed(""),
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form, every line ending in CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        let last = self.lines.len().saturating_sub(1);
        // What a line leaves for text: code, separator, status and its
        // space, and CRLF take the rest.
        let status = match self.status.len() {
            0 => 0,
            n => n + 1,
        };
        let room = MAX_REPLY_LINE.saturating_sub(6 + status);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // Text is ours, but keep CR/LF out of it whatever it holds.
            let mut line = line.replace(['\r', '\n'], " ");
            // Some text echoes the client (an unknown MAIL parameter): cut it
            // to fit the line, at a character boundary.
            if line.len() > room {
                let mut cut = room;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            if self.status.is_empty() {
                let _ = write!(s, "{}{sep}{line}\r\n", self.code);
            } else {
                let _ = write!(s, "{}{sep}{} {line}\r\n", self.code, self.status);
            }
        }
        out.extend_from_slice(s.as_bytes());
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = Vec::new();
        self.write_to(&mut v);
        f.write_str(String::from_utf8_lossy(&v).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_and_long_enhanced_codes() {
        let mut out = Vec::new();
        Reply::plain(250, vec!["a".into(), "b".into()]).write_to(&mut out);
        Reply::new(450, "4.7.500", "try later\r\nX").write_to(&mut out);
        assert_eq!(out, b"250-a\r\n250 b\r\n450 4.7.500 try later  X\r\n");
    }

    #[test]
    fn lines_fit_in_512_octets() {
        // Found by fuzz/fuzz_targets/session.rs: `MAIL FROM:<a@b> XXX...`
        // with a 600-byte unknown parameter got a 634-byte 555 line.
        let long = format!("Unsupported parameter {}", "é".repeat(400));
        for reply in [
            Reply::new(555, "5.5.4", long.clone()),
            Reply::plain(250, vec![long.clone().into(), "x".into()]),
        ] {
            let mut out = Vec::new();
            reply.write_to(&mut out);
            let text = String::from_utf8(out).unwrap();
            let lines: Vec<&str> = text.split_inclusive("\r\n").collect();
            assert!(lines.iter().all(|l| l.len() <= MAX_REPLY_LINE), "{lines:?}");
            // "é" is two bytes: at most one byte short of the limit.
            assert!(lines[0].len() >= MAX_REPLY_LINE - 1, "cut more than needed");
        }
        let mut out = Vec::new();
        Reply::new(250, "2.0.0", "short").write_to(&mut out);
        assert_eq!(out, b"250 2.0.0 short\r\n");
    }
}
