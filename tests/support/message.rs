//! Message bytes for tests: made to a size or with a unique Message-ID,
//! dot-stuffed as a client sends them, and read back (our Received header,
//! the Message-ID, the queue id a 250 names).

use super::client::Reply;

/// A message of exactly `size` bytes of CRLF lines, none starting with a dot.
pub fn message_of_size(size: usize) -> Vec<u8> {
    let mut m = b"Subject: test\r\nMessage-ID: <x@test>\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while m.len() < size {
        let take = (size - m.len()).min(line.len());
        if take < 3 {
            // Too short for a line of its own: lengthen the previous one.
            let at = m.len() - 2;
            m.splice(at..at, std::iter::repeat_n(b'x', take));
            break;
        }
        m.extend_from_slice(&line[line.len() - take..]);
    }
    m
}

/// A CRLF message of about `size` bytes with a unique Message-ID.
pub fn message(message_id: &str, from: &str, subject: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <rcpt@partner.example>\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0u64;
    while m.len() < size {
        m.extend_from_slice(
            format!("{message_id} line {i:08} abcdefghijklmnopqrstuvwxyz\r\n").as_bytes(),
        );
        i += 1;
    }
    m
}

/// RFC 5321 §4.5.2 transparency, as a client sends the message: a dot that
/// starts a line is doubled.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// `bytes` with every CRLF made LF (as peers that store mail in Unix form do).
pub fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// The stored message minus our Received header (which is first, and folded).
pub fn strip_received(message: &[u8]) -> &[u8] {
    assert!(
        message.starts_with(b"Received: from "),
        "{:?}",
        String::from_utf8_lossy(message)
    );
    let mut pos = 0;
    loop {
        let nl = message[pos..].iter().position(|&b| b == b'\n').unwrap() + pos;
        pos = nl + 1;
        if message.get(pos) != Some(&b'\t') {
            return &message[pos..];
        }
    }
}

/// The Message-ID in `content`'s header section, without its brackets.
pub fn message_id_in(content: &[u8]) -> String {
    let text = String::from_utf8_lossy(content);
    let header = text.split("\r\n\r\n").next().unwrap_or("");
    header
        .split("Message-ID: <")
        .nth(1)
        .and_then(|r| r.split('>').next())
        .unwrap_or_else(|| panic!("no Message-ID in {header:.300}"))
        .to_owned()
}

/// The queue id in a `250 2.0.0 ... queued as <id>` reply.
pub fn queue_id_of(reply: &Reply) -> Option<String> {
    let last = reply.lines.last()?;
    if !last.starts_with("250 2.0.0") || !last.contains("queued as ") {
        return None;
    }
    let id = last.rsplit("queued as ").next()?.trim();
    (!id.is_empty()).then(|| id.to_owned())
}
