//! An SMTP reply as it goes on the wire: code, enhanced status code
//! (RFC 3463, RFC 2034) and text, one line or several (RFC 5321 §4.2.1).

use std::borrow::Cow;
use std::fmt::Write;

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
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // Text is ours, but keep CR/LF out of it whatever it holds.
            let line = line.replace(['\r', '\n'], " ");
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
}
