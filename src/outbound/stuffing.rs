//! The message as it goes on the wire: CRLF line endings only, then
//! dot-stuffing for DATA (RFC 5321 §4.5.2).
//!
//! The spool already stores CRLF-only messages ending in CRLF, but a bare CR or
//! LF reaching an upstream is how SMTP smuggling starts (one server's line end
//! is another's content), so the outbound side enforces it again: `canonical`
//! turns every bare CR or LF into CRLF and ends the message with CRLF, so the
//! DATA terminator is exactly CRLF "." CRLF.

use std::borrow::Cow;

/// Bytes per write while sending a message: each block gets its own timeout
/// (RFC 5321 §4.5.3.2.5, the data block timeout).
pub const BLOCK: usize = 64 * 1024;

/// `message` with CRLF line endings only and, unless empty, ending in CRLF.
/// Borrows when the message is already so (the usual case).
pub fn canonical(message: &[u8]) -> Cow<'_, [u8]> {
    if is_canonical(message) {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Cow::Owned(out)
}

fn is_canonical(m: &[u8]) -> bool {
    if m.is_empty() {
        return true;
    }
    if !m.ends_with(b"\r\n") {
        return false;
    }
    // Every CR is followed by LF and every LF preceded by CR.
    memchr::memchr2_iter(b'\r', b'\n', m).all(|i| match m[i] {
        b'\r' => m.get(i + 1) == Some(&b'\n'),
        _ => i > 0 && m[i - 1] == b'\r',
    })
}

/// Appends `piece` to `out` with a "." doubled at the start of every line
/// (RFC 5321 §4.5.2). `at_line_start`: `piece` begins a line (it is the start
/// of the message, or the byte before it was LF).
pub fn stuff(piece: &[u8], at_line_start: bool, out: &mut Vec<u8>) {
    let mut line_start = at_line_start;
    let mut rest = piece;
    while let Some(&first) = rest.first() {
        if line_start && first == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                break;
            }
        }
    }
}

/// The DATA content of a canonical message in blocks of about `BLOCK` bytes,
/// dot-stuffed, the last one ending with the terminating "." CRLF.
pub fn data_blocks(canonical: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let pieces = canonical.len().div_ceil(BLOCK).max(1);
    (0..pieces).map(move |n| {
        let start = n * BLOCK;
        let piece = &canonical[start..canonical.len().min(start + BLOCK)];
        let mut out = Vec::with_capacity(piece.len() + 64);
        stuff(piece, start == 0 || canonical[start - 1] == b'\n', &mut out);
        if n + 1 == pieces {
            out.extend_from_slice(b".\r\n");
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(m: &[u8]) -> Vec<u8> {
        data_blocks(&canonical(m)).flatten().collect()
    }

    #[test]
    fn bare_line_endings_become_crlf() {
        assert!(matches!(canonical(b"a\r\nb\r\n"), Cow::Borrowed(_)));
        assert!(matches!(canonical(b""), Cow::Borrowed(_)));
        assert_eq!(&*canonical(b"a\nb\rc\r\r\nd"), b"a\r\nb\r\nc\r\n\r\nd\r\n");
        assert_eq!(&*canonical(b"\n"), b"\r\n");
        assert_eq!(&*canonical(b"x\r"), b"x\r\n");
    }

    #[test]
    fn dots_are_doubled_at_line_start_only() {
        assert_eq!(
            data(b".a\r\nb.\r\n..\r\n."),
            b"..a\r\nb.\r\n...\r\n..\r\n.\r\n"
        );
        assert_eq!(data(b""), b".\r\n");
        assert_eq!(data(b"x"), b"x\r\n.\r\n");
        // A smuggling attempt arrives as content, never as an end marker.
        assert_eq!(data(b"a\n.\nMAIL"), b"a\r\n..\r\nMAIL\r\n.\r\n");
    }

    #[test]
    fn blocks_keep_line_starts_across_boundaries() {
        let mut m = vec![b'a'; BLOCK - 2];
        m.extend_from_slice(b"\r\n.dot\r\n");
        let blocks: Vec<_> = data_blocks(&m).collect();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1], b"..dot\r\n.\r\n");
    }
}
