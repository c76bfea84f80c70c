//! Replies from an upstream (RFC 5321 §4.2): code, enhanced status code
//! (RFC 3463) and text.
//!
//! `Wire` frames a reply (bounded, every line checked); smtp-proto's
//! `ResponseReceiver` then parses it. Its quirks, guarded here: the enhanced
//! code is a `[u8; 3]`, so Microsoft's `4.7.500` comes out as `4.7.255` (the
//! status is read here from the first line instead), and it neither checks
//! that every line carries the same code nor bounds the number of lines
//! (`Wire` does both).

use std::fmt;

use serde::{Deserialize, Serialize};
use smtp_proto::response::parser::ResponseReceiver;

/// One reply from an upstream, or made up on its behalf (`synthetic`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamReply {
    pub code: u16,
    /// The enhanced status code as written (`"5.1.1"`, `"4.7.500"`); a string
    /// because RFC 3463 allows three-digit subject and detail.
    pub status: Option<String>,
    /// The text without code and status, lines joined by a space, control
    /// characters replaced (it ends up in logs and bounces).
    pub text: String,
}

impl UpstreamReply {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later (or elsewhere).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// A reply we make up, e.g. `553 5.6.7` when the upstream lacks SMTPUTF8.
    pub fn synthetic(code: u16, status: &str, text: &str) -> Self {
        UpstreamReply {
            code,
            status: (!status.is_empty()).then(|| status.to_owned()),
            text: text.to_owned(),
        }
    }

    /// Parses one complete reply as framed by `Wire` (every line `ddd-` or
    /// `ddd `, the same code throughout, the last ending the reply). Public
    /// for the fuzz target.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        let response = ResponseReceiver::default()
            .parse(&mut raw.iter())
            .map_err(|e| format!("unparsable reply {:?}: {e:?}", lossy_head(raw)))?;
        let first_line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
        let status = first_line
            .get(4..)
            .and_then(|text| enhanced_status(text, response.code));
        let text = response
            .message
            .split('\n')
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ")
            .replace(|c: char| c.is_control(), " ");
        Ok(UpstreamReply {
            code: response.code,
            status,
            text,
        })
    }
}

impl fmt::Display for UpstreamReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(status) = &self.status {
            write!(f, " {status}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// The `class.subject.detail` at the start of `text` (RFC 3463 §2: subject and
/// detail up to three digits), if its class matches the reply code's.
fn enhanced_status(text: &[u8], code: u16) -> Option<String> {
    let end = text
        .iter()
        .position(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(text.len());
    let word = std::str::from_utf8(&text[..end]).ok()?;
    let mut parts = word.split('.');
    let class = parts.next()?;
    let ok = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    let (subject, detail) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !ok(subject, 3) || !ok(detail, 3) {
        return None;
    }
    let expected = char::from(b'0' + (code / 100) as u8).to_string();
    (class == expected && matches!(class, "2" | "4" | "5")).then(|| word.to_owned())
}

fn lossy_head(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> UpstreamReply {
        UpstreamReply::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn status_survives_three_digit_detail() {
        let r = parse("450 4.7.500 Server busy. Please try again later\r\n");
        assert_eq!(r.status.as_deref(), Some("4.7.500"));
        assert_eq!(r.text, "Server busy. Please try again later");
        assert_eq!(
            r.to_string(),
            "450 4.7.500 Server busy. Please try again later"
        );
        assert!(r.is_transient() && !r.is_permanent() && !r.is_positive());
    }

    #[test]
    fn multiline_and_plain_replies() {
        let r = parse("550-5.1.1 no such\r\n550 5.1.1 user\r\n");
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        let r = parse("220 mx.example ESMTP\r\n");
        assert_eq!(
            (r.code, r.status, r.text.as_str()),
            (220, None, "mx.example ESMTP")
        );
        let r = parse("250\r\n");
        assert_eq!((r.code, r.text.as_str()), (250, ""));
        // A class that contradicts the code is not a status.
        assert_eq!(parse("550 2.0.0 odd\r\n").status, None);
        assert_eq!(parse("421 2023.1.1 x\r\n").status, None);
        assert_eq!(parse("250 2.0.0\r\n").status.as_deref(), Some("2.0.0"));
    }
}
