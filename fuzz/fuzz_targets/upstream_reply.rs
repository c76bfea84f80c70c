#![no_main]
//! Replies from an upstream: framing (`outbound::wire::read_frame`), parsing
//! (`UpstreamReply::parse`) and EHLO capabilities (`Capabilities::from_ehlo`).
//!
//! Properties: no panic; replies are framed in order, each a prefix of what
//! is left (nothing invented, nothing skipped), every line well-formed and
//! bounded (`MAX_UPSTREAM_REPLY_LINE`, `MAX_UPSTREAM_REPLY_LINES`); a parsed reply has a code in 200..=599
//! equal to its lines' digits, control-free text and a status of the code's
//! class; and an upstream that never stops talking (the input repeated
//! forever) gets an answer or an error after a bounded number of bytes.
//!
//! Input: byte 0 sets how many bytes each read returns; the rest is what the
//! upstream sends.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use smarthost::outbound::wire::{MAX_UPSTREAM_REPLY_LINE, MAX_UPSTREAM_REPLY_LINES, read_frame};
use smarthost::outbound::{Capabilities, Stage, UpstreamReply};
use tokio::io::{AsyncRead, ReadBuf};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The input, at most `step` bytes per read, then EOF; or, `forever`, the
/// input again and again.
struct Upstream<'a> {
    data: &'a [u8],
    at: usize,
    step: usize,
    forever: bool,
    /// Bytes handed out so far.
    total: usize,
}

impl AsyncRead for Upstream<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at == self.data.len() && self.forever {
            self.at = 0;
        }
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        self.total += n;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let [step, input @ ..] = data else {
        return;
    };
    let step = match step {
        0 => usize::MAX,
        s => *s as usize,
    };
    let rt = runtime();

    let mut upstream = Upstream {
        data: input,
        at: 0,
        step,
        forever: false,
        total: 0,
    };
    let mut buf = Vec::new();
    let mut framed = 0;
    // Each reply takes at least 4 bytes ("250\n"), so this ends.
    while let Ok(frame) = rt.block_on(read_frame(&mut upstream, &mut buf, Stage::Greeting)) {
        assert!(
            input[framed..].starts_with(&frame),
            "a reply that is not the next bytes of the stream"
        );
        framed += frame.len();
        check_frame(&frame);
    }

    if !input.is_empty() {
        let mut upstream = Upstream {
            data: input,
            at: 0,
            step,
            forever: true,
            total: 0,
        };
        let mut buf = Vec::new();
        if let Ok(frame) = rt.block_on(read_frame(&mut upstream, &mut buf, Stage::Greeting)) {
            check_frame(&frame);
        }
        // Each line is at most MAX_UPSTREAM_REPLY_LINE, plus one over-long line and one read.
        let bound = (MAX_UPSTREAM_REPLY_LINES + 1) * MAX_UPSTREAM_REPLY_LINE + MAX_UPSTREAM_REPLY_LINE.max(4096) + 4096;
        assert!(
            upstream.total <= bound,
            "read {} bytes for one reply (bound {bound})",
            upstream.total
        );
    }
});

fn check_frame(frame: &[u8]) {
    let lines: Vec<&[u8]> = frame.split_inclusive(|&b| b == b'\n').collect();
    assert!(
        !lines.is_empty() && lines.len() <= MAX_UPSTREAM_REPLY_LINES,
        "{} lines",
        lines.len()
    );
    let code = &frame[..3];
    for (i, line) in lines.iter().enumerate() {
        assert!(line.len() <= MAX_UPSTREAM_REPLY_LINE, "line of {} bytes", line.len());
        assert!(line.ends_with(b"\n"), "unterminated line framed");
        assert_eq!(&line[..3], code, "codes differ between lines");
        let last = i + 1 == lines.len();
        let sep = line.get(3).copied();
        if last {
            assert!(
                matches!(sep, Some(b' ' | b'\r' | b'\n')),
                "last line continues: {line:?}"
            );
        } else {
            assert_eq!(sep, Some(b'-'), "reply ended early: {line:?}");
        }
    }
    let digits: u16 = std::str::from_utf8(code).unwrap().parse().unwrap();
    // RFC 5321 §4.2: the first digit is 2 to 5.
    assert!((200..=599).contains(&digits), "reply code {digits} framed");
    let _ = Capabilities::from_ehlo(frame);
    let Ok(reply) = UpstreamReply::parse(frame) else {
        return;
    };
    assert_eq!(reply.code, digits, "parsed code differs from the digits");
    assert!(
        !reply.text.chars().any(char::is_control),
        "control characters in reply text {:?}",
        reply.text
    );
    if let Some(status) = &reply.status {
        let parts: Vec<&str> = status.split('.').collect();
        assert_eq!(parts.len(), 3, "status {status}");
        assert_eq!(parts[0], (reply.code / 100).to_string(), "status class");
        assert!(
            parts[1..]
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        );
    }
    assert_eq!(
        [
            reply.is_positive(),
            reply.is_transient(),
            reply.is_permanent()
        ]
        .iter()
        .filter(|&&b| b)
        .count(),
        1
    );
    let _ = reply.to_string();
}
