#![no_main]
//! DATA content: the end-of-data scan and unstuffing (`dot::DotReader`), line
//! ending rules (`body::Content`, both modes, its output taken in pieces as
//! the session streams it to the spool) and the outbound side
//! (`stuffing::canonical`, `stuffing::stuff`), each against a plain reference
//! written here, fed in chunk splits derived from the input.
//!
//! Input: byte 0 seeds the chunk splits, byte 1 picks the size limit, the
//! rest is what a client sends after `354`.

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use smarthost::body::{Content, MAX_RECEIVED_HEADERS, count_received};
use smarthost::config::BareLineEndings;
use smarthost::dot::DotReader;
use smarthost::error::SmtpError;
use smarthost::outbound::stuffing::{canonical, data_blocks, stuff};

fuzz_target!(|data: &[u8]| {
    let [seed, limit, input @ ..] = data else {
        return;
    };
    let reference = reference_unstuff(input);
    let mut splits = vec![
        vec![input.len()],
        vec![1; input.len()],
        random_splits(*seed, input.len()),
    ];
    splits.retain(|s| s.iter().sum::<usize>() == input.len());
    // Limits around the input's size, so "too big" is reached and missed.
    let limit = (*limit as usize * input.len()) / 128;
    for mode in [BareLineEndings::Normalize, BareLineEndings::Reject] {
        let mut verdicts = Vec::new();
        for split in &splits {
            check_dot_reader(input, split, &reference);
            verdicts.push(check_content(input, split, mode, limit));
        }
        // The reply must not depend on how the bytes were packeted.
        assert!(
            verdicts.windows(2).all(|w| w[0] == w[1]),
            "{mode:?} verdict depends on the split: {verdicts:?}"
        );
    }
    check_outbound(input, &splits[2]);
});

/// Chunk lengths from a small xorshift seeded by `seed`; they sum to `len`.
fn random_splits(seed: u8, len: usize) -> Vec<usize> {
    let mut x = u32::from(seed) | 0x9e37_0000;
    let mut left = len;
    let mut out = Vec::new();
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Mostly short chunks (every boundary matters), some long ones.
        let n = if x % 4 == 0 {
            x as usize % 64
        } else {
            x as usize % 4
        };
        let n = n.clamp(1, left);
        out.push(n);
        left -= n;
    }
    out
}

/// What RFC 5321 §4.5.2 says, read from the whole input at once: a line starts
/// at the beginning or after CRLF (only CRLF); there, "." CRLF ends the data
/// and any other "." is stuffing, removed.
struct Reference {
    /// Unstuffed content before the end (or all of it).
    content: Vec<u8>,
    /// Bytes consumed through the end marker, if there is one.
    end: Option<usize>,
    /// The input stops just after a line-start "." CR: the CR may yet be the
    /// end marker's, so a streaming reader cannot have emitted it.
    held_cr: bool,
}

fn reference_unstuff(input: &[u8]) -> Reference {
    let mut content = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let line_start = i == 0 || (i >= 2 && &input[i - 2..i] == b"\r\n");
        if line_start && input[i] == b'.' {
            if input[i + 1..].starts_with(b"\r\n") {
                return Reference {
                    content,
                    end: Some(i + 3),
                    held_cr: false,
                };
            }
            i += 1;
            continue;
        }
        content.push(input[i]);
        i += 1;
    }
    let n = input.len();
    let held_cr = n >= 2
        && &input[n - 2..] == b".\r"
        && (n == 2 || (n >= 4 && &input[n - 4..n - 2] == b"\r\n"));
    Reference {
        content,
        end: None,
        held_cr,
    }
}

/// Feeds `input` to a fresh `DotReader` in `split` chunks, as the session does
/// (stopping at the end marker); returns the output of each feed and the end.
fn feed(input: &[u8], split: &[usize]) -> (Vec<Vec<u8>>, Option<usize>) {
    let mut reader = DotReader::default();
    let mut pieces = Vec::new();
    let mut at = 0;
    for &n in split {
        let mut out = Vec::new();
        let end = reader.feed(&input[at..at + n], &mut out);
        pieces.push(out);
        if let Some(k) = end {
            assert!(k >= 1 && k <= n, "end {k} outside a chunk of {n}");
            return (pieces, Some(at + k));
        }
        at += n;
    }
    (pieces, None)
}

fn check_dot_reader(input: &[u8], split: &[usize], reference: &Reference) {
    let (pieces, end) = feed(input, split);
    let got: Vec<u8> = pieces.concat();
    assert_eq!(end, reference.end, "end of data differs (split {split:?})");
    if let Some(end) = end {
        // Only CRLF "." CRLF ends data; the CRLF of DATA counts as the first.
        assert!(input[..end].ends_with(b".\r\n"));
        assert!(end == 3 || input[..end - 3].ends_with(b"\r\n"));
    }
    let mut expected = reference.content.clone();
    if reference.held_cr {
        expected.pop();
    }
    assert_eq!(got, expected, "unstuffed content differs (split {split:?})");
}

/// The reference for `Content`: the unstuffed bytes with every bare CR or LF
/// made CRLF and, unless empty, a final CRLF; and whether any was bare.
fn reference_normalize(content: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(content.len() + 2);
    let mut bare = false;
    let mut i = 0;
    while i < content.len() {
        match (content[i], content.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            (b'\r' | b'\n', _) => {
                bare = true;
                out.extend_from_slice(b"\r\n");
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    (out, bare)
}

fn check_content(
    input: &[u8],
    split: &[usize],
    mode: BareLineEndings,
    limit: usize,
) -> Result<Vec<u8>, String> {
    // As the session does: every feed's output goes to `Content` as it comes,
    // and what is pending is taken (to the spool) now and then.
    let (pieces, _) = feed(input, split);
    let mut content = Content::new(limit, mode);
    let mut received = 0;
    let mut taken = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        content.push(p);
        received += p.len();
        if i % 3 == 2 {
            let chunk = content.take();
            taken.extend_from_slice(&chunk);
            content.reuse(chunk);
        }
    }
    // The session finishes a DATA message only at its end marker; a lone CR
    // still held back then is the marker's, never content.
    let unstuffed: Vec<u8> = pieces.concat();
    // NUL is not text (RFC 2045 §2.8): dropped in normalize mode, refused in
    // reject mode; line endings are judged without it.
    let nul = unstuffed.contains(&0);
    let text: Vec<u8> = unstuffed.iter().copied().filter(|&b| b != 0).collect();
    let (normal, bare) = reference_normalize(&text);
    let result = content.finish();
    let what = format!("{mode:?} limit {limit} split {split:?}");
    if received > limit {
        assert!(
            matches!(result, Err(SmtpError::MessageTooBig)),
            "{received} bytes over {limit} not refused: {what}"
        );
        return Err("too big".into());
    }
    if mode == BareLineEndings::Reject && (bare || nul) {
        match &result {
            Err(SmtpError::BareLineEnding) if bare => {}
            Err(SmtpError::NulInContent) if nul => {}
            other => panic!("bare {bare} nul {nul}: {:?}: {what}", other.as_ref().err()),
        }
        return Err(result.unwrap_err().to_string());
    }
    if count_received(&normal) >= MAX_RECEIVED_HEADERS {
        assert!(matches!(result, Err(SmtpError::TooManyHops)), "{what}");
        return Err("loop".into());
    }
    let stored = match result {
        Ok(tail) => [taken, tail].concat(),
        Err(e) => panic!("refused ({e}) though within limits and clean: {what}"),
    };
    assert_eq!(stored, normal, "normalised content differs: {what}");
    assert!(no_bare_line_endings(&stored), "bare CR/LF stored: {what}");
    assert!(!stored.contains(&0), "NUL stored: {what}");
    Ok(stored)
}

/// Every CR is followed by LF and every LF preceded by CR.
fn no_bare_line_endings(m: &[u8]) -> bool {
    m.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => m.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && m[i - 1] == b'\r',
        _ => true,
    })
}

/// The outbound side: `canonical` makes any message CRLF-only, and stuffing
/// it then reading it back as an inbound server would gives it back exactly,
/// ending precisely at our terminator.
fn check_outbound(input: &[u8], split: &[usize]) {
    let canon = canonical(input);
    let (normal, bare) = reference_normalize(input);
    assert_eq!(&*canon, &normal[..], "canonical differs from the reference");
    assert_eq!(
        matches!(canon, Cow::Borrowed(_)),
        !bare && (input.is_empty() || input.ends_with(b"\r\n")),
        "canonical copied a canonical message or borrowed another"
    );
    assert_eq!(&*canonical(&canon), &*canon, "canonical is not idempotent");

    // The blocks DATA sends, and the same stuffing applied piece by piece.
    let wire: Vec<u8> = data_blocks(&canon).flatten().collect();
    let mut pieced = Vec::new();
    let mut at = 0;
    for &n in split {
        let end = (at + n).min(canon.len());
        if at >= end {
            break;
        }
        stuff(
            &canon[at..end],
            at == 0 || canon[at - 1] == b'\n',
            &mut pieced,
        );
        at = end;
    }
    if at < canon.len() {
        stuff(&canon[at..], at == 0 || canon[at - 1] == b'\n', &mut pieced);
    }
    pieced.extend_from_slice(b".\r\n");
    assert_eq!(pieced, wire, "stuffing depends on where the message is cut");

    let mut out = Vec::new();
    let end = DotReader::default().feed(&wire, &mut out);
    assert_eq!(end, Some(wire.len()), "data ends early or not at all");
    assert_eq!(out, &*canon, "unstuffing does not give the message back");
}
