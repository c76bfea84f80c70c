//! The relay delivering to REAL third-party upstream servers on loopback:
//! Postfix's `smtp-sink` (plain SMTP, PIPELINING, DSN; its fault options for
//! 4xx / 5xx / 421 / dropped connections) and Python's aiosmtpd with STARTTLS
//! (tests/peers/aiosmtpd/upstream.py: no CHUNKING, so DATA with dot-stuffing).
//!
//! The tools are installed by `scripts/install-test-deps.sh`; a missing one is
//! a test failure, never a skip. Every peer runs with a time limit and is
//! killed when its test ends.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use smarthost::spool::RecipientStatus;
use support::client::{send_data, tls_session};
use support::harness::{Harness, Running, upstream_toml, verified_upstream_toml};
use support::message::{crlf_to_lf, dot_stuff, strip_received};
use support::pki::HOSTNAME;
use support::smtp_sink::{Dump, SmtpSink};
use support::tools::{INSTALL_HINT, repo};
use support::wait::{eventually, free_port, wait_listening};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";
const TO2: &str = "second@partner.example";

/// How long a peer may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The relay's one upstream, "real", on `port`: plaintext, or TLS verified
/// against the harness CA under `tls_name`.
fn upstream(port: u16, tls_name: Option<&str>) -> String {
    let address = format!("127.0.0.1:{port}");
    match tls_name {
        None => upstream_toml("real", address, "none"),
        Some(name) => verified_upstream_toml("real", address, Path::new("ca.pem"), name),
    }
}

/// Fast retries, so that a deferred message is tried again within seconds.
const FAST_RETRY: &str = "retry_min = \"1s\"\nretry_max = \"1s\"\n\n";

/// The status of the first recipient of every spooled message.
fn statuses(h: &Harness) -> Vec<RecipientStatus> {
    h.spooled()
        .into_iter()
        .map(|(e, _)| e.recipients[0].status.clone())
        .collect()
}

/// The one spooled message's first recipient, once it is deferred.
async fn wait_deferred(h: &Harness, what: &str) -> (String, u32) {
    let mut found = None;
    eventually(what, 30, || {
        found = statuses(h).into_iter().find_map(|s| match s {
            RecipientStatus::Deferred {
                reply, attempts, ..
            } => Some((reply, attempts)),
            _ => None,
        });
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// A message with full headers, CRLF line ends, lines that begin with one
/// and with two dots, a lone-dot-lookalike (". ") and 8-bit UTF-8 text; its
/// last line is "end <tag>" (how a complete capture is recognised).
fn message(tag: &str) -> Vec<u8> {
    format!(
        "From: Sender <{FROM}>\r\n\
         To: <{TO}>\r\n\
         Subject: {tag}\r\n\
         Message-ID: <{tag}@tenant.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         first line\r\n\
         .a line that begins with a dot\r\n\
         ..two dots\r\n\
         . \r\n\
         .\tdot tab\r\n\
         caf\u{e9} \u{2014} 8-bit\r\n\
         end {tag}\r\n"
    )
    .into_bytes()
}

/// Sends each message over one TLS session with DATA (dot-stuffed), 250 each.
async fn submit(relay: &Running, h: &Harness, rcpts: &[&str], messages: &[Vec<u8>]) {
    let c = relay.connect().await;
    let mut c = tls_session(c, &h.ca).await;
    for m in messages {
        c.cmd(&format!("MAIL FROM:<{FROM}> BODY=8BITMIME"), "250")
            .await;
        for r in rcpts {
            c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
        }
        c.cmd("DATA", "354").await;
        c.send(dot_stuff(m)).await;
        c.send(".\r\n").await;
        c.expect("250 2.0.0").await;
    }
    c.cmd("QUIT", "221").await;
}

// ------------------------------------------------------------------ smtp-sink

/// smtp-sink's complete captures of `message`s (whose last line is
/// "end <tag>": a capture cut at an empty line is not one).
fn tagged(sink: &SmtpSink) -> Vec<Dump> {
    sink.dumps()
        .into_iter()
        .filter(|d| {
            d.message[..d.message.len().saturating_sub(1)]
                .rsplit(|&b| b == b'\n')
                .next()
                .is_some_and(|last| last.starts_with(b"end "))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_sink_gets_all_twenty_and_the_bytes_the_relay_spooled() {
    // The upstream is down at first: the first message is deferred, which
    // leaves its exact spooled bytes (our Received header + body) to read.
    let port = free_port();
    let h = Harness::new(&format!("{FAST_RETRY}{}", upstream(port, None)));
    let relay = h.start().await;
    let first = message("sink-0");
    submit(&relay, &h, &[TO, TO2], std::slice::from_ref(&first)).await;
    wait_deferred(&h, "the first message deferred (upstream down)").await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1);
    let (envelope, spooled_bytes) = spooled.into_iter().next().unwrap();
    assert!(spooled_bytes.starts_with(b"Received: from client.test"));
    assert_eq!(strip_received(&spooled_bytes), first.as_slice());

    let sink = SmtpSink::start(port, &[]).await;
    let rest: Vec<Vec<u8>> = (1..20).map(|i| message(&format!("sink-{i}"))).collect();
    submit(&relay, &h, &[TO, TO2], &rest).await;
    eventually("20 messages captured by smtp-sink", 30, || {
        tagged(&sink).len() >= 20
    })
    .await;
    eventually("an empty queue", 30, || h.spool_files() == 0).await;
    // Exactly once each: no duplicates after the queue emptied.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dumps = tagged(&sink);
    assert_eq!(dumps.len(), 20, "{:?}", sink.commands());
    for i in 0..20 {
        let end = format!("\nend sink-{i}\n");
        let n = dumps
            .iter()
            .filter(|d| d.message.ends_with(end.as_bytes()))
            .count();
        assert_eq!(n, 1, "message sink-{i} captured {n} times");
    }
    for d in &dumps {
        assert!(d.mail_args.starts_with(&format!("<{FROM}>")), "{d:?}");
        assert!(d.mail_args.contains("BODY=8BITMIME"), "{d:?}");
        assert_eq!(d.rcpt_args.len(), 2, "{d:?}");
        assert!(d.rcpt_args[0].starts_with(&format!("<{TO}>")), "{d:?}");
        assert!(d.rcpt_args[1].starts_with(&format!("<{TO2}>")), "{d:?}");
    }
    // The deferred one, as smtp-sink received it, is what we spooled (smtp-sink
    // stores lines with LF ends, so CRLF is compared as LF).
    let got = dumps
        .iter()
        .find(|d| d.message.ends_with(b"\nend sink-0\n"))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.message),
        String::from_utf8_lossy(&crlf_to_lf(&spooled_bytes)),
        "smtp-sink's capture differs from the spooled message {}",
        envelope.id
    );
    // Nothing bounced.
    assert_eq!(sink.count("MAIL FROM:<>"), 0, "{:?}", sink.commands());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_sink_temporary_failures_defer_with_the_upstream_reply() {
    // (smtp-sink options, what the recorded reply must contain). A reply to
    // a recipient or to the data is recorded as it came; a failure of the
    // whole session is recorded as "4xx upstream NAME: ..." with the
    // upstream's reply (or the I/O error) in the text.
    let cases: [(&[&str], &str); 4] = [
        // 4xx to RCPT (-r implies no PIPELINING)
        (
            &["-r", "RCPT", "-b", "451 4.7.1 greylisted, try later"],
            "451 4.7.1 greylisted",
        ),
        // 4xx to the end of the data
        (
            &["-r", ".", "-b", "452 4.3.1 insufficient storage"],
            "452 4.3.1 insufficient storage",
        ),
        // 421 and a closed connection after MAIL
        (&["-Q", "MAIL"], "421 4.0.0"),
        // the whole message received, then the connection dropped, no reply
        (&["-q", "."], ""),
    ];
    for (faults, expect) in cases {
        let port = free_port();
        let sink = SmtpSink::start(port, faults).await;
        let h = Harness::new(&format!("{FAST_RETRY}{}", upstream(port, None)));
        let relay = h.start().await;
        submit(&relay, &h, &[TO], &[message("temp")]).await;
        // Deferred with the reply, then tried again (retry_min 1s), and still
        // neither delivered, failed nor bounced.
        let (reply, _) = wait_deferred(&h, &format!("deferral under {faults:?}")).await;
        assert!(
            reply.starts_with('4') && reply.contains(expect),
            "{faults:?}: recorded {reply:?}"
        );
        eventually(&format!("a second attempt under {faults:?}"), 30, || {
            statuses(&h)
                .iter()
                .any(|s| matches!(s, RecipientStatus::Deferred { attempts, .. } if *attempts >= 2))
        })
        .await;
        let (reply, _) = wait_deferred(&h, "still deferred").await;
        assert!(
            reply.starts_with('4') && reply.contains(expect),
            "{faults:?}: recorded {reply:?}"
        );
        eprintln!("{faults:?}: deferred with {reply:?}");
        assert_eq!(h.spooled().len(), 1, "{faults:?}");
        assert_eq!(
            sink.count("MAIL FROM:<>"),
            0,
            "bounced: {:?}",
            sink.commands()
        );
        assert!(
            sink.count(&format!("MAIL FROM:<{FROM}>")) >= 2,
            "{faults:?}: {:?}",
            sink.commands()
        );
        relay.stop().await;
        drop(sink);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_sink_5xx_to_rcpt_fails_once_and_bounces_to_the_sender() {
    let port = free_port();
    let sink = SmtpSink::start(port, &["-f", "RCPT", "-B", "550 5.1.1 no such user here"]).await;
    let h = Harness::new(&format!("{FAST_RETRY}{}", upstream(port, None)));
    let relay = h.start().await;
    submit(&relay, &h, &[TO], &[message("hard")]).await;
    // The bounce goes to the sender through the same upstream (which refuses
    // it too: a bounce of a bounce is never made), then the queue is empty.
    eventually("the bounce's attempt", 30, || {
        sink.count("MAIL FROM:<>") >= 1
    })
    .await;
    eventually("an empty queue", 30, || h.spool_files() == 0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let commands = sink.commands();
    assert_eq!(
        sink.count(&format!("MAIL FROM:<{FROM}>")),
        1,
        "a permanent failure is not retried: {commands:?}"
    );
    assert_eq!(sink.count("MAIL FROM:<>"), 1, "{commands:?}");
    assert_eq!(sink.count(&format!("RCPT TO:<{TO}>")), 1, "{commands:?}");
    assert_eq!(sink.count(&format!("RCPT TO:<{FROM}>")), 1, "{commands:?}");
    assert_eq!(sink.count("DATA"), 0, "no recipient, no data: {commands:?}");
    assert!(h.spooled().is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_sink_5xx_after_the_data_fails_and_the_bounce_carries_the_reply() {
    let port = free_port();
    let sink = SmtpSink::start(port, &["-f", ".", "-B", "554 5.6.0 content rejected"]).await;
    let h = Harness::new(&format!("{FAST_RETRY}{}", upstream(port, None)));
    let relay = h.start().await;
    submit(&relay, &h, &[TO], &[message("refused")]).await;
    eventually("an empty queue", 30, || h.spool_files() == 0).await;
    // smtp-sink captures what it received even when it refuses it at the dot:
    // the original and our DSN (which it refuses as well).
    let mut bounce = None;
    eventually("the bounce captured", 30, || {
        bounce = sink
            .captures()
            .into_iter()
            .find(|b| b.windows(15).any(|w| w == b"X-Mail-Args: <>"))
            .filter(|b| b.ends_with(b"--\n\n"));
        bounce.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = String::from_utf8_lossy(bounce.as_ref().unwrap()).into_owned();
    assert!(text.contains(&format!("X-Rcpt-Args: <{FROM}>")), "{text}");
    assert!(
        text.contains("report-type=delivery-status")
            || text.contains("report-type=\"delivery-status\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("Final-Recipient: rfc822; {TO}")),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.6.0"), "{text}");
    assert!(text.contains("554 5.6.0 content rejected"), "{text}");
    assert!(
        text.contains("Message-ID: <refused@tenant.example>"),
        "{text}"
    );
    assert_eq!(sink.count("MAIL FROM:<>"), 1, "{:?}", sink.commands());
    assert_eq!(
        sink.count(&format!("MAIL FROM:<{FROM}>")),
        1,
        "{:?}",
        sink.commands()
    );
    relay.stop().await;
}

// -------------------------------------------------------------------- aiosmtpd

/// A Python interpreter that has aiosmtpd: `python3` in PATH, else Debian's
/// (which is where the python3-aiosmtpd package puts it).
fn python_with_aiosmtpd() -> PathBuf {
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = std::process::Command::new(candidate)
            .args(["-c", "import aiosmtpd.controller"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!("no python3 with the aiosmtpd module: {INSTALL_HINT}");
}

/// tests/peers/aiosmtpd/upstream.py: aiosmtpd with STARTTLS (required),
/// recording every message in a directory.
struct Aiosmtpd {
    dir: tempfile::TempDir,
    /// Killed when dropped.
    _child: Child,
}

/// One message as aiosmtpd's handler recorded it.
#[derive(Debug)]
struct Received {
    envelope: serde_json::Value,
    original_content: Vec<u8>,
}

impl Aiosmtpd {
    /// On `port`, with the harness's server certificate.
    async fn start(port: u16, h: &Harness) -> Aiosmtpd {
        let (cert, key) = (
            h.dir.path().join("server.crt"),
            h.dir.path().join("server.key"),
        );
        let python = python_with_aiosmtpd();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&python)
            .arg(repo().join("tests/peers/aiosmtpd/upstream.py"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--dir")
            .arg(dir.path())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--max-seconds", "180"])
            // Its stdin closing (this test gone) stops it too.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its log (e.g. the TLSSetupException of the refused handshake).
            .stderr(fs::File::create(dir.path().join("aiosmtpd.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", python.display()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(START_TIMEOUT, stdout.next_line())
            .await
            .expect("aiosmtpd ready in time")
            .unwrap();
        assert_eq!(line.as_deref(), Some(format!("READY {port}").as_str()));
        wait_listening(port, "aiosmtpd", &mut child).await;
        Aiosmtpd { dir, _child: child }
    }

    fn received(&self) -> Vec<Received> {
        let mut names: Vec<PathBuf> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| Received {
                envelope: serde_json::from_slice(&fs::read(p).unwrap()).unwrap(),
                original_content: fs::read(p.with_extension("eml")).unwrap(),
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aiosmtpd_over_verified_starttls_gets_the_spooled_bytes_and_envelope() {
    let port = free_port();
    let h = Harness::new(&format!(
        "{FAST_RETRY}{}",
        upstream(port, Some("localhost"))
    ));
    let relay = h.start().await;
    // Deferred first (aiosmtpd not yet started) to read the exact spooled bytes.
    let m = message("aiosmtpd");
    submit(&relay, &h, &[TO, TO2], std::slice::from_ref(&m)).await;
    wait_deferred(&h, "deferral while the upstream is down").await;
    let (_, spooled) = h.spooled().into_iter().next().unwrap();
    assert_eq!(strip_received(&spooled), m.as_slice());

    let up = Aiosmtpd::start(port, &h).await;
    eventually("delivery to aiosmtpd", 30, || up.received().len() == 1).await;
    eventually("an empty queue", 30, || h.spool_files() == 0).await;
    let got = &up.received()[0];
    let e = &got.envelope;
    assert_eq!(e["mail_from"], FROM, "{e}");
    assert_eq!(e["rcpt_tos"], serde_json::json!([TO, TO2]), "{e}");
    assert!(
        e["mail_options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "BODY=8BITMIME"),
        "{e}"
    );
    assert_eq!(e["helo"], HOSTNAME, "{e}");
    let version = e["tls"]["version"]
        .as_str()
        .unwrap_or_else(|| panic!("not over TLS: {e}"));
    assert!(version == "TLSv1.3" || version == "TLSv1.2", "{e}");
    // Byte for byte (CRLF, 8-bit, dots unstuffed by aiosmtpd): what we spooled.
    assert_eq!(
        String::from_utf8_lossy(&got.original_content),
        String::from_utf8_lossy(&spooled)
    );
    assert_eq!(got.original_content, spooled);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aiosmtpd_with_a_name_its_certificate_lacks_gets_nothing() {
    let port = free_port();
    let h = Harness::new(&format!(
        "{FAST_RETRY}{}",
        upstream(port, Some("not-in-the-certificate.test"))
    ));
    let up = Aiosmtpd::start(port, &h).await;
    let relay = h.start().await;
    submit(&relay, &h, &[TO], &[message("unverified")]).await;
    let (reply, _) = wait_deferred(&h, "deferral: the certificate does not verify").await;
    assert!(
        reply.starts_with('4') && reply.contains("not-in-the-certificate.test"),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(up.received().is_empty(), "delivered without verification");
    assert_eq!(h.spooled().len(), 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aiosmtpd_receives_quoted_local_parts_as_sent_and_nothing_is_lost() {
    // Issue 11: `"john smith"@...` lost its quotes, aiosmtpd refused the
    // unquoted `john smith@...` with 501, the bounce to it was refused too,
    // and the message accepted with 250 was gone.
    let port = free_port();
    let h = Harness::new(&format!(
        "{FAST_RETRY}{}",
        upstream(port, Some("localhost"))
    ));
    let up = Aiosmtpd::start(port, &h).await;
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    let from = "\"john smith\"@tenant.example";
    let to = "\"jane \\\"jd\\\" doe\"@partner.example";
    let r = send_data(&mut c, from, &[to], &message("quoted")).await;
    assert_eq!(r.status(), "250 2.0.0");
    c.cmd("QUIT", "221").await;
    eventually("delivery to aiosmtpd", 30, || up.received().len() == 1).await;
    eventually("an empty queue", 30, || h.spool_files() == 0).await;
    let e = &up.received()[0].envelope;
    assert_eq!(e["mail_from"], from, "{e}");
    assert_eq!(e["rcpt_tos"], serde_json::json!([to]), "{e}");
    relay.stop().await;
}
