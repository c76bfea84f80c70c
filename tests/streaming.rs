//! Message content streamed to the spool's temporary file as it arrives
//! (issue 11): sessions on in-memory pipes against a real spool. A message
//! larger than the session's buffer (128 KiB) has its `tmp/<id>.eml` while it
//! arrives; it is stored byte for byte as before, and every way a message can
//! end without a 250 (refusals, RSET, disconnect, timeout) removes that file.

mod support;

use std::time::Duration;

use support::client::Client;
use support::harness::{Harness, file_names};
use support::message::{message_of_size, strip_received};
use support::wait::eventually;

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";
/// Well over the session's write buffer: at least two writes before the end.
const BIG: usize = 300 * 1024;

fn tmp_files(h: &Harness) -> usize {
    file_names(&h.spool_dir().join("tmp")).len()
}

/// Greeted, with one recipient, ready for DATA or BDAT.
async fn transaction(
    h: &Harness,
    ctx: &std::sync::Arc<smarthost::ServerContext>,
) -> Client<tokio::io::DuplexStream> {
    let mut c = h.session(ctx, "127.0.0.1:4000");
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c
}

/// Waits until the content sent so far has reached a temporary file: the
/// streaming path is really taken.
async fn tmp_file_appears(h: &Harness) {
    eventually("a temporary file while content arrives", 10, || {
        tmp_files(h) == 1
    })
    .await;
}

#[tokio::test]
async fn large_messages_are_stored_byte_for_byte() {
    let h = Harness::plain_limits("bare_line_endings = \"normalize\"");
    let ctx = h.context();
    // DATA: dot-stuffed lines and bare LFs across the write boundaries.
    let mut c = transaction(&h, &ctx).await;
    c.cmd("DATA", "354").await;
    let mut wire = b"Subject: big\r\n\r\n".to_vec();
    let mut expected = wire.clone();
    let mut i = 0;
    while wire.len() < 3 * BIG {
        let line = format!("..{i} stuffed\nline {i}\r\n");
        wire.extend_from_slice(line.as_bytes());
        expected.extend_from_slice(format!(".{i} stuffed\r\nline {i}\r\n").as_bytes());
        i += 1;
    }
    // The 354 came before any content: nothing on disk yet.
    assert_eq!(tmp_files(&h), 0, "the file is made with the first write");
    c.send(&wire).await;
    tmp_file_appears(&h).await;
    c.send(".\r\n").await;
    c.expect("250 2.0.0").await;
    // BDAT: chunks of odd sizes, the last ending mid-line.
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    let body = message_of_size(2 * BIG + 7);
    let body = &body[..body.len() - 2];
    assert!(!body.ends_with(b"\n") && !body.ends_with(b"\r"));
    let mut at = 0;
    for size in [1, 100_000, 131_072, 200_000] {
        c.send(format!("BDAT {size}\r\n")).await;
        c.send(&body[at..at + size]).await;
        c.expect("250 2.0.0").await;
        at += size;
    }
    c.send(format!("BDAT {} LAST\r\n", body.len() - at)).await;
    c.send(&body[at..]).await;
    c.expect("250 2.0.0").await;
    c.cmd("QUIT", "221").await;

    let spooled = h.spooled();
    assert_eq!(spooled.len(), 2);
    let mut bdat_expected = body.to_vec();
    bdat_expected.extend_from_slice(b"\r\n");
    for ((env, message), want) in spooled.iter().zip([&expected, &bdat_expected]) {
        assert!(strip_received(message) == &want[..], "{} differs", env.id);
        // `Spool::read` checked the size against the file; and it is all of it.
        assert_eq!(env.size, message.len() as u64);
        let header = &message[..message.len() - want.len()];
        let header = String::from_utf8_lossy(header);
        assert!(header.contains(&format!("id {}", env.id)), "{header}");
        assert!(header.contains(&format!("for <{TO}>")), "{header}");
    }
    assert_eq!(tmp_files(&h), 0);
}

/// Each refusal that comes after content was written: the reply after the
/// real end of the content, the session still in sync, no file in tmp/.
#[tokio::test]
async fn refused_messages_leave_no_temporary_file() {
    let h = Harness::plain_limits("bare_line_endings = \"reject\"\nmax_message_size = 1048576");
    let ctx = h.context();
    let good = message_of_size(BIG);
    let hops = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(50);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "over the size limit",
            good.clone(),
            message_of_size(1_000_000)[40..].to_vec(),
            "552 5.3.4",
        ),
        (
            "bare LF",
            good.clone(),
            b"bare\nline\r\n".to_vec(),
            "550 5.5.2",
        ),
        ("NUL", good.clone(), b"a\0b\r\n".to_vec(), "554 5.6.0"),
        (
            "50 Received headers",
            [hops.as_bytes(), &good].concat(),
            Vec::new(),
            "554 5.4.6",
        ),
    ];
    for (what, first, rest, reply) in cases {
        let mut c = transaction(&h, &ctx).await;
        c.cmd("DATA", "354").await;
        c.send(&first).await;
        tmp_file_appears(&h).await;
        c.send(&rest).await;
        c.send(".\r\n").await;
        c.expect(reply).await;
        assert_eq!(tmp_files(&h), 0, "{what}: tmp/ when the reply came");
        c.cmd("NOOP", "250").await;
        c.cmd("QUIT", "221").await;
    }
    // The same refusals in BDAT: said for the chunk; RSET ends it.
    let mut c = transaction(&h, &ctx).await;
    c.send(format!("BDAT {}\r\n", good.len())).await;
    c.send(&good).await;
    c.expect("250 2.0.0").await;
    tmp_file_appears(&h).await;
    c.send("BDAT 5\r\na\nb\r\n").await;
    c.expect("550 5.5.2").await;
    assert_eq!(tmp_files(&h), 0, "refused BDAT chunk");
    c.cmd("RSET", "250").await;
    c.cmd("QUIT", "221").await;
    assert_eq!(h.spool_files(), 0);
}

/// Messages that end without a verdict: their file goes when the session
/// drops them (RSET, a disconnect, the content deadline).
#[tokio::test]
async fn abandoned_messages_leave_no_temporary_file() {
    let h = Harness::plain_limits("data_timeout = \"1s\"");
    let ctx = h.context();
    let content = message_of_size(BIG);

    // RSET between BDAT chunks.
    let mut c = transaction(&h, &ctx).await;
    c.send(format!("BDAT {}\r\n", content.len())).await;
    c.send(&content).await;
    c.expect("250 2.0.0").await;
    tmp_file_appears(&h).await;
    c.cmd("RSET", "250").await;
    eventually("RSET: tmp/ empty", 10, || tmp_files(&h) == 0).await;
    // A new transaction on the same session still works.
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c.send(format!("BDAT {} LAST\r\n", content.len())).await;
    c.send(&content).await;
    c.expect("250 2.0.0").await;
    c.cmd("QUIT", "221").await;
    assert_eq!(h.spooled().len(), 1);

    // The client goes away mid-DATA.
    let mut c = transaction(&h, &ctx).await;
    c.cmd("DATA", "354").await;
    c.send(&content).await;
    tmp_file_appears(&h).await;
    drop(c);
    eventually("disconnect: tmp/ empty", 10, || tmp_files(&h) == 0).await;

    // The client stops sending mid-DATA: the content deadline ends it.
    let mut c = transaction(&h, &ctx).await;
    c.cmd("DATA", "354").await;
    c.send(&content).await;
    tmp_file_appears(&h).await;
    c.reply_timeout = Duration::from_secs(30);
    c.expect("421 4.4.2").await;
    eventually("timeout: tmp/ empty", 10, || tmp_files(&h) == 0).await;
    assert_eq!(h.spooled().len(), 1);
}
