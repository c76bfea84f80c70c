//! Inputs the fuzz targets (fuzz/fuzz_targets/) found, replayed through a
//! real session on an in-memory pipe, so they stay fixed without the fuzzer.

mod support;

use support::client::send_data;
use support::harness::Harness;

/// fuzz target `session`: an unknown MAIL parameter is echoed in the 555
/// reply, which was as long as the client made it (634 bytes for a 600-byte
/// parameter). RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets.
#[tokio::test]
async fn echoed_parameter_keeps_the_reply_line_within_512_octets() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    for len in [600, 4000] {
        let r = c
            .cmd(
                &format!("MAIL FROM:<a@contoso.example> {}", "X".repeat(len)),
                "555 5.5.4 Unsupported parameter XXX",
            )
            .await;
        for line in &r.lines {
            assert!(line.len() + 2 <= 512, "{len}: a line of {}", line.len() + 2);
        }
    }
    c.cmd("NOOP", "250").await;
}

/// fuzz target `data`: in reject mode a message with a bare LF and a NUL got
/// `554 5.6.0` when both arrived in one packet and `550 5.5.2` when the bare
/// LF came first on its own; the verdict must not depend on packeting.
#[tokio::test]
async fn bare_line_ending_and_nul_get_one_verdict_however_packeted() {
    let h = Harness::plain("[limits]\nbare_line_endings = \"reject\"\n");
    let ctx = h.context();
    let body: &[u8] = b"Subject: x\r\n\r\na\nb\0c\r\n";
    // One write.
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    let r = send_data(&mut c, "a@contoso.example", &["b@example.net"], body).await;
    assert_eq!(r.status(), "550 5.5.2");
    // Byte by byte: DATA first, then each byte of the content on its own.
    let mut c = h.session(&ctx, "127.0.0.1:4001");
    c.hello().await;
    c.cmd("MAIL FROM:<a@contoso.example>", "250").await;
    c.cmd("RCPT TO:<b@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    for b in body.iter().chain(b".\r\n") {
        c.send([*b]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(c.reply().await.status(), "550 5.5.2");
    c.cmd("NOOP", "250").await;
    assert!(h.spooled().is_empty());
}
