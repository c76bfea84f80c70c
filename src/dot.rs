//! The DATA dot protocol (RFC 5321 §4.5.2): finding the end of data and
//! removing dot-stuffing.
//!
//! Written by hand because smtp-proto 0.2.5's `DataReceiver` ends data on
//! CRLF "." CR+ LF (e.g. `\r\n.\r\r\n`), a smuggling vector, and misses a "."
//! on the first line. Here the end is exactly CRLF "." CRLF, where the CRLF
//! ending the DATA command counts as the first one; every other variant
//! (`\n.\n`, `\r.\r`, `\r\n.\r\r\n`, ...) is content, and content never holds
//! a bare CR or LF once `body::Content` has normalised it.

/// Where the reader is relative to line boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after CRLF (or at the very start).
    LineStart,
    /// Inside a line.
    Text,
    /// Inside a line, the last byte was CR.
    Cr,
    /// A "." at line start (held back: stuffing or the end marker).
    Dot,
    /// "." CR at line start (held back: the end marker if LF follows).
    DotCr,
}

/// Streams DATA content: feed it bytes as they arrive.
#[derive(Debug)]
pub struct DotReader {
    state: State,
}

impl Default for DotReader {
    fn default() -> Self {
        DotReader {
            state: State::LineStart,
        }
    }
}

impl DotReader {
    /// Appends the unstuffed content in `input` to `out`. Returns `Some(n)` when
    /// the end marker was found, `n` being the bytes of `input` consumed through
    /// it (the rest belongs to the next command); `None` if all was content.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Text => {
                    // Fast path: copy up to the next CR.
                    match memchr::memchr(b'\r', &input[i..]) {
                        Some(at) => {
                            out.extend_from_slice(&input[i..=i + at]);
                            self.state = State::Cr;
                            i += at + 1;
                        }
                        None => {
                            out.extend_from_slice(&input[i..]);
                            return None;
                        }
                    }
                    continue;
                }
                State::LineStart => {
                    if b == b'.' {
                        self.state = State::Dot;
                    } else {
                        self.text(b, out);
                    }
                }
                State::Cr => {
                    out.push(b);
                    self.state = match b {
                        b'\n' => State::LineStart,
                        b'\r' => State::Cr,
                        _ => State::Text,
                    };
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                    } else {
                        // A stuffed dot: dropped; the byte after it is content.
                        self.text(b, out);
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return Some(i + 1);
                    }
                    // "." CR then something else: the dot was stuffing.
                    out.push(b'\r');
                    self.state = State::Cr;
                    continue; // re-read `b` as the byte after a CR
                }
            }
            i += 1;
        }
        None
    }

    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        out.push(b);
        self.state = if b == b'\r' { State::Cr } else { State::Text };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every position, checking the result is the same.
    fn read(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut whole = Vec::new();
        let end = DotReader::default().feed(input, &mut whole);
        for split in 0..input.len() {
            let mut r = DotReader::default();
            let mut out = Vec::new();
            let first = r.feed(&input[..split], &mut out);
            let got = match first {
                Some(n) => Some(n),
                None => r.feed(&input[split..], &mut out).map(|n| n + split),
            };
            assert_eq!((&out, got), (&whole, end), "split at {split} of {input:?}");
        }
        (whole, end)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        assert_eq!(read(b".\r\nMAIL"), (vec![], Some(3)));
        assert_eq!(read(b"a\r\n.\r\nX"), (b"a\r\n".to_vec(), Some(6)));
        for content in [
            &b"a\n.\nb"[..],
            b"a\n.\r\nb",
            b"a\r.\rb",
            b"a\r.\nb",
            b"a\r\n.\rb",
            b"a\r\n.\nb",
            b"a\r\n\x00.\r\nb",
            b"a\r\n.\x00\r\nb",
        ] {
            assert_eq!(read(content).1, None, "{content:?} ended data");
        }
        // smtp-proto 0.2.5 would end here.
        let (out, end) = read(b"a\r\n.\r\r\nb");
        assert_eq!(end, None);
        assert_eq!(out, b"a\r\n\r\r\nb");
    }

    #[test]
    fn unstuffs_leading_dots() {
        assert_eq!(
            read(b"..a\r\n...\r\n.\r\n"),
            (b".a\r\n..\r\n".to_vec(), Some(13))
        );
        assert_eq!(read(b"x\r\n.\r.\r\n"), (b"x\r\n\r.\r\n".to_vec(), None));
    }
}
