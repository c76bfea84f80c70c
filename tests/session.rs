//! Session transcripts driven over an in-memory pipe: raw bytes in, exact
//! reply codes out. TLS here is a real rustls handshake over the pipe.

mod support;

use std::time::Duration;

use support::client::{send_data, tls_session};
use support::harness::Harness;
use support::message::{message_of_size, strip_received};
use support::pki::HOSTNAME;

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";

#[tokio::test]
async fn ehlo_advertises_exactly_our_extensions() {
    let h = Harness::new("[limits]\nmax_message_size = 1048576\n");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    let banner = c.expect("220 ").await;
    assert!(banner.text().contains(HOSTNAME));
    let ehlo = c.cmd("EHLO exchange.tenant.example", "250").await;
    let caps: Vec<String> = ehlo.lines[1..].iter().map(|l| l[4..].to_owned()).collect();
    assert_eq!(
        caps,
        [
            "PIPELINING",
            "SIZE 1048576",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "SMTPUTF8",
            "DSN",
            "STARTTLS"
        ]
    );
    for never in [
        "BINARYMIME",
        "X-ANONYMOUSTLS",
        "XEXCH50",
        "XSHADOW",
        "XOORG",
        "AUTH",
    ] {
        assert!(!ehlo.text().contains(never), "{never} advertised");
    }
    let mut c = c.starttls(&h.ca).await;
    let ehlo = c.cmd("EHLO exchange.tenant.example", "250").await;
    assert!(
        !ehlo.text().contains("STARTTLS"),
        "STARTTLS offered inside TLS"
    );
    c.cmd("STARTTLS", "503 5.5.1").await;
    let helo = c.cmd("HELO old.example", "250 ").await;
    assert_eq!(helo.lines.len(), 1);
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250 2.1.0").await;
    c.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn require_tls_refuses_mail_commands_before_starttls() {
    let h = Harness::new("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    for line in [
        format!("MAIL FROM:<{FROM}>"),
        format!("RCPT TO:<{TO}>"),
        "DATA".into(),
        "AUTH PLAIN AGFhAGI=".into(),
        "VRFY x".into(),
    ] {
        c.cmd(&line, "530 5.7.0").await;
    }
    // BDAT is refused too, and its bytes are consumed, not run as commands.
    c.send("BDAT 12 LAST\r\nRSET\r\nQUIT\r\n").await;
    c.expect("530 5.7.0").await;
    for line in ["NOOP", "RSET", "HELP", "EHLO again.example"] {
        c.cmd(line, "2").await;
    }
    let mut c = c.starttls(&h.ca).await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    assert_eq!(h.spool_files(), 0);
}

#[tokio::test]
async fn bytes_pipelined_after_starttls_close_the_connection() {
    let h = Harness::new("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.send(format!(
        "STARTTLS\r\nMAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\n"
    ))
    .await;
    let r = c.reply().await;
    assert_eq!(r.status(), "554 5.5.0", "{r:?}");
    assert!(c.closed().await);
    assert!(c.try_reply().await.is_none());
}

#[tokio::test]
async fn starttls_forgets_the_session() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut p = h.session(&ctx, "127.0.0.1:4000");
    p.hello().await;
    p.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    let mut t = p.starttls_no_ehlo(&h.ca).await;
    // No EHLO since the handshake: MAIL is out of sequence, the old one is gone.
    t.cmd(&format!("MAIL FROM:<{FROM}>"), "503 5.5.1").await;
    t.cmd("EHLO client.test", "250").await;
    t.cmd(&format!("RCPT TO:<{TO}>"), "503 5.5.1").await;
}

#[tokio::test]
async fn a_full_transaction_is_spooled_with_one_received_header() {
    let h = Harness::new("");
    let ctx = h.context();
    let c = h.session(&ctx, "127.0.0.1:4000");
    let mut c = tls_session(c, &h.ca).await;
    let body =
        b"From: a@tenant.example\r\nSubject: hi\r\n\r\n..leading dot\r\n\xc3\xa9t\xc3\xa9 8bit\r\n";
    let r = send_data(&mut c, FROM, &[TO, "second@partner.example"], body).await;
    assert_eq!(r.status(), "250 2.0.0");
    let id = r.text().rsplit(' ').next().unwrap().to_owned();
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1);
    let (env, msg) = &spooled[0];
    assert_eq!(env.id, id);
    assert_eq!(env.sender, FROM);
    assert_eq!(env.recipients.len(), 2);
    assert!(env.client.tls.is_some());
    assert_eq!(env.client.helo, "client.test");
    // Dot-unstuffed, otherwise byte for byte.
    assert_eq!(
        strip_received(msg),
        b"From: a@tenant.example\r\nSubject: hi\r\n\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9 8bit\r\n"
    );
    let header =
        String::from_utf8_lossy(&msg[..msg.len() - strip_received(msg).len()]).into_owned();
    assert!(header.contains("with ESMTPS"), "{header}");
    assert!(header.contains(&format!("id {id}")), "{header}");
    assert!(header.contains("[127.0.0.1]"), "{header}");
    assert!(header.contains("cipher="), "{header}");
    assert!(
        !header.contains(" for <"),
        "two recipients are not named: {header}"
    );
}

#[tokio::test]
async fn pipelined_transaction_in_one_packet() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.expect("220").await;
    c.send(format!(
        "EHLO client.test\r\nMAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nRCPT TO:<bad@@x>\r\nDATA\r\n"
    ))
    .await;
    c.expect("250").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("501 5.1.3").await;
    c.expect("354").await;
    // Content, end of data and the next transaction in one write.
    c.send(format!(
        "Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nBDAT 5 LAST\r\nhello"
    ))
    .await;
    c.expect("250 2.0.0").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("250 2.0.0").await;
    c.cmd("QUIT", "221").await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 2);
    assert_eq!(
        strip_received(&spooled[0].1),
        b"Subject: one\r\n\r\nbody\r\n"
    );
    assert_eq!(strip_received(&spooled[1].1), b"hello\r\n");
    assert!(String::from_utf8_lossy(&spooled[1].1).contains(&format!("for <{TO}>")));
}

#[tokio::test]
async fn data_with_a_lone_dot_first_is_an_empty_message() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    let r = send_data(&mut c, FROM, &[TO], b"").await;
    assert_eq!(r.status(), "250 2.0.0");
    assert_eq!(strip_received(&h.spooled()[0].1), b"");
}

/// The end-of-data variants from the SMTP smuggling research: only CRLF.CRLF
/// ends the message, so each yields exactly one message holding the rest.
const SMUGGLING: &[&[u8]] = &[
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r.\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\r\n.\r\r\n",
];

#[tokio::test]
async fn smuggling_payloads_stay_one_message_when_normalised() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    for (i, eod) in SMUGGLING.iter().enumerate() {
        let mut body = format!("Subject: smuggle {i}\r\n\r\nfirst").into_bytes();
        body.extend_from_slice(eod);
        body.extend_from_slice(
            b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@partner.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n",
        );
        let r = send_data(&mut c, FROM, &[TO], &body).await;
        assert_eq!(r.status(), "250 2.0.0", "variant {i}");
    }
    c.cmd("NOOP", "250").await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), SMUGGLING.len(), "one message per variant");
    for (env, msg) in &spooled {
        assert_eq!(env.sender, FROM);
        assert_eq!(env.recipients.len(), 1);
        assert_no_bare_line_endings(msg);
        assert!(!msg.contains(&0), "a NUL is dropped in normalize mode");
        assert!(String::from_utf8_lossy(msg).contains("MAIL FROM:<evil@attacker.example>"));
    }
}

#[tokio::test]
async fn smuggling_payloads_are_refused_in_reject_mode() {
    let h = Harness::plain("[limits]\nbare_line_endings = \"reject\"\n");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    for (i, eod) in SMUGGLING.iter().enumerate() {
        let mut body = b"Subject: s\r\n\r\nfirst".to_vec();
        body.extend_from_slice(eod);
        body.extend_from_slice(b"MAIL FROM:<evil@attacker.example>\r\n");
        let r = send_data(&mut c, FROM, &[TO], &body).await;
        // NUL variants have no bare CR/LF, but a NUL is refused in its own right.
        let nul = eod.contains(&0);
        let want = if nul { "554 5.6.0" } else { "550 5.5.2" };
        assert_eq!(r.status(), want, "variant {i}");
    }
    c.cmd("NOOP", "250").await;
    assert_eq!(h.spooled().len(), 0);
}

fn assert_no_bare_line_endings(msg: &[u8]) {
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert_eq!(
                i.checked_sub(1).map(|p| msg[p]),
                Some(b'\r'),
                "bare LF at {i}"
            );
        }
    }
}

#[tokio::test]
async fn oversize_is_read_to_the_end_then_552_and_the_session_goes_on() {
    let h = Harness::plain("[limits]\nmax_message_size = 1000\n");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}> SIZE=1001"), "552 5.3.4")
        .await;
    c.cmd(&format!("MAIL FROM:<{FROM}> SIZE=1000"), "250").await;
    c.cmd("RSET", "250").await;
    // The oversize body contains what looks like commands: they must not run.
    let mut body = message_of_size(5000);
    body.extend_from_slice(b"QUIT\r\n");
    let r = send_data(&mut c, FROM, &[TO], &body).await;
    assert_eq!(r.status(), "552 5.3.4");
    c.cmd("NOOP", "250").await;
    // BDAT: the chunk is read whole, refused, and the transaction ends at LAST.
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c.send(format!("BDAT 2000\r\n{}", "x".repeat(2000))).await;
    c.expect("552 5.3.4").await;
    c.send("BDAT 3 LAST\r\nabc").await;
    c.expect("552 5.3.4").await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    assert_eq!(h.spool_files(), 0);
}

#[tokio::test]
async fn bdat_chunks_down_to_zero_last() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}> BODY=8BITMIME"), "250")
        .await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c.send("BDAT 16\r\nSubject: chunk\r\n").await;
    c.expect("250 2.0.0").await;
    // A chunk holding "\r\n.\r\n" and what looks like commands: just bytes.
    c.send("BDAT 20\r\n\r\n.\r\nQUIT\r\nRSET\r\n.x\r").await;
    c.expect("250 2.0.0").await;
    c.send("BDAT 1\r\n\n").await;
    c.expect("250 2.0.0").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.send("BDAT 0 LAST\r\n").await;
    let r = c.expect("250 2.0.0").await;
    assert!(r.text().contains("queued as"));
    let spooled = h.spooled();
    assert_eq!(
        strip_received(&spooled[0].1),
        b"Subject: chunk\r\n\r\n.\r\nQUIT\r\nRSET\r\n.x\r\n"
    );
    assert_eq!(spooled[0].0.params.body.as_deref(), Some("8BITMIME"));
}

#[tokio::test]
async fn bdat_without_a_transaction_is_503_and_its_bytes_are_consumed() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.send("BDAT 6 LAST\r\nQUIT\r\n").await;
    c.expect("503 5.5.1").await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.send("BDAT 6\r\nRSET\r\n").await;
    c.expect("503 5.5.1").await;
    c.cmd("NOOP", "250").await;
    // A size that smtp-proto would wrap to a small number: refused and closed.
    c.send("BDAT 99999999999999999999999 LAST\r\nQUIT\r\n")
        .await;
    c.expect("501 5.5.4").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn recipient_limit_and_mail_loops() {
    let h = Harness::plain("[limits]\nmax_recipients = 3\n");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    for i in 0..3 {
        c.cmd(&format!("RCPT TO:<r{i}@partner.example>"), "250")
            .await;
    }
    c.cmd("RCPT TO:<r4@partner.example>", "452 4.5.3").await;
    c.cmd("RSET", "250").await;
    let hops = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(50);
    let r = send_data(
        &mut c,
        FROM,
        &[TO],
        format!("{hops}\r\nbody\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), "554 5.4.6");
    let hops = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(48);
    let r = send_data(
        &mut c,
        FROM,
        &[TO],
        format!("{hops}\r\nbody\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), "250 2.0.0", "49 with ours is still fine");
}

#[tokio::test]
async fn bad_input_gets_the_rfc_reply() {
    let h = Harness::plain("[limits]\nmax_errors = 100\n");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.expect("220").await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "503 5.5.1").await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("FOO bar", "500 5.5.1").await;
    c.cmd("XEXCH50 10 2", "500 5.5.1").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("MAIL FROM:<not an address>", "501 5.").await;
    c.cmd("MAIL FROM:<postmaster>", "501 5.1.7").await;
    c.cmd(&format!("MAIL FROM:<{FROM}> FOO=BAR"), "555 5.5.4")
        .await;
    c.cmd(&format!("MAIL FROM:<{FROM}> REQUIRETLS"), "555 5.5.4")
        .await;
    c.cmd(&format!("MAIL FROM:<{FROM}> BODY=BINARYMIME"), "555 5.5.4")
        .await;
    c.cmd("MAIL FROM:<jos\u{e9}@tenant.example>", "553 5.6.7")
        .await;
    c.cmd("MAIL FROM:<jos\u{e9}@tenant.example> SMTPUTF8", "250")
        .await;
    c.cmd("MAIL FROM:<a@b.example>", "503 5.5.1").await;
    // RFC 5321 §4.5.1: relayed to postmaster@<hostname>.
    c.cmd("RCPT TO:<Postmaster>", "250 2.1.5").await;
    c.cmd("RCPT TO:<>", "501 5.1.3").await;
    c.cmd(&format!("RCPT TO:<{TO}> NOTIFY=NEVER,SUCCESS"), "501 5.5.4")
        .await;
    c.cmd("RCPT TO:<\u{fc}ber@partner.example>", "250").await;
    c.send("NO\rOP\r\n").await;
    c.expect("500 5.5.2").await;
    c.send("NOOP\0\r\n").await;
    c.expect("500 5.5.2").await;
    c.cmd("EXPN list", "502 5.5.1").await;
    c.cmd("VRFY user", "252").await;
    c.cmd("AUTH LOGIN", "538 5.7.11").await;
    c.cmd("QUIT", "221 2.0.0").await;
    assert_eq!(h.spool_files(), 0);
}

#[tokio::test]
async fn ten_mebibytes_without_a_newline_is_one_500_then_back_in_sync() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    let junk = vec![b'A'; 1 << 20];
    let writer = async {
        for _ in 0..10 {
            c.send(&junk).await;
        }
        c.send("\r\nNOOP\r\n").await;
        c.expect("500 5.5.2").await;
        c.expect("250").await;
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), writer)
        .await
        .expect("no stall");
}

#[tokio::test]
async fn http_first_line_closes_at_once() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.expect("220").await;
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(c.try_reply().await.is_none(), "no reply to HTTP");
}

// The clock is paused: it jumps to the next timer whenever every task
// waits, so the session's delays and deadlines take no real time.
#[tokio::test(start_paused = true)]
async fn client_talking_before_the_banner_is_refused() {
    let h = Harness::plain("[limits]\nbanner_delay = \"5s\"\n");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:5");
    c.send("EHLO eager.example\r\n").await;
    c.expect("554 5.5.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn too_many_errors_end_the_session() {
    let h = Harness::plain("[limits]\nmax_errors = 3\n");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.cmd("BOGUS", "500").await;
    c.cmd("BOGUS", "500").await;
    c.send("BOGUS\r\n").await;
    c.expect("500").await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await);
}

/// The real defaults (command_timeout 5 minutes, data_timeout 10), on a
/// paused clock.
#[tokio::test(start_paused = true)]
async fn idle_and_slow_clients_time_out() {
    let h = Harness::plain("[limits]\ncommand_timeout = \"5m\"\ndata_timeout = \"10m\"\n");
    let ctx = h.context();
    let session = || {
        let mut c = h.session(&ctx, "127.0.0.1:4000");
        c.reply_timeout = Duration::from_secs(3600);
        c
    };
    let mut c = session();
    c.hello().await;
    c.expect("421 4.4.2").await;
    assert!(c.closed().await);
    // A command trickled a byte at a time is bounded by its deadline, not per
    // byte: a byte every 30 s, 19 bytes.
    let mut c = session();
    c.hello().await;
    let trickle = async {
        for b in b"NOOP NOOP NOOP NOOP" {
            if !c.try_send([*b]).await {
                break;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    };
    trickle.await;
    c.expect("421 4.4.2").await;
    // Stalling inside DATA.
    let mut c = session();
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.send("Subject: stall\r\n").await;
    c.expect("421 4.4.2").await;
    assert_eq!(h.spool_files(), 0);
}

#[tokio::test]
async fn strangers_may_not_relay_and_nothing_is_spooled() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "192.0.2.7:4000");
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    for rcpt in [
        "<victim@partner.example>",
        "<victim%partner.example@relay.test>",
        "<@relay.test:victim@partner.example>",
        "<\"victim@partner.example\">",
        "<partner.example!victim>",
    ] {
        let r = {
            c.send(format!("RCPT TO:{rcpt}\r\n")).await;
            c.reply().await
        };
        assert!(r.code >= 500, "{rcpt}: {r:?}");
    }
    c.cmd("DATA", "503").await;
    assert_eq!(h.spool_files(), 0);
    // An IPv4-mapped IPv6 address from the allow-list may relay.
    let mut c = h.session(&ctx, "[::ffff:127.0.0.9]:4000");
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
}

#[tokio::test]
async fn sender_domains_restrict_mail_from() {
    let h = Harness::plain("");
    h.edit_config(
        "[access]\n",
        "[access]\nsender_domains = [\"tenant.example\"]\n",
    );
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.cmd("MAIL FROM:<x@other.example>", "553 5.7.1").await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
}

#[tokio::test]
async fn spool_failure_is_451_never_250() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    // Where a message of any size could go.
    for dir in ["msg", "journal"] {
        std::fs::remove_dir_all(h.spool_dir().join(dir)).unwrap();
    }
    let r = send_data(&mut c, FROM, &[TO], b"Subject: x\r\n\r\nbody\r\n").await;
    assert_eq!(r.status(), "451 4.3.0");
    c.cmd("NOOP", "250").await;
}

#[tokio::test]
async fn shutdown_ends_idle_sessions_with_421() {
    let h = Harness::plain("");
    let ctx = h.context();
    let token = tokio_util::sync::CancellationToken::new();
    let mut c = h.session_until(&ctx, "127.0.0.1:5", token.clone());
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c.cmd("DATA", "354").await;
    token.cancel();
    // A message in progress is finished, then the session ends.
    c.send("Subject: last\r\n\r\nbody\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    c.expect("421 4.3.2").await;
    assert!(c.closed().await);
    assert_eq!(h.spooled().len(), 1);
}

#[tokio::test]
async fn dsn_parameters_are_kept_in_the_envelope() {
    let h = Harness::plain("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "127.0.0.1:4000");
    c.hello().await;
    c.cmd(
        &format!("MAIL FROM:<{FROM}> RET=HDRS ENVID=QQ314159"),
        "250",
    )
    .await;
    c.cmd(
        &format!("RCPT TO:<{TO}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Bx@partner.example"),
        "250",
    )
    .await;
    c.cmd("RCPT TO:<quiet@partner.example> NOTIFY=NEVER", "250")
        .await;
    c.cmd("DATA", "354").await;
    c.send("Subject: dsn\r\n\r\nx\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    let (env, _) = &h.spooled()[0];
    assert_eq!(env.params.ret.as_deref(), Some("HDRS"));
    assert_eq!(env.params.envid.as_deref(), Some("QQ314159"));
    assert_eq!(
        env.recipients[0].notify.as_deref(),
        Some(&["SUCCESS".to_owned(), "FAILURE".to_owned()][..])
    );
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("orig+x@partner.example")
    );
    assert_eq!(
        env.recipients[1].notify.as_deref(),
        Some(&["NEVER".to_owned()][..])
    );
}
