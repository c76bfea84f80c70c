//! Hostile and broken upstreams, end to end through the queue: the real
//! `smarthost serve` accepts a message and delivers it to a faulty upstream
//! (the scripted fake, tests/support/fake_upstream.rs) and, where the
//! failover rules say so, to a good one. For each fault: what the queue does (failover in
//! the same attempt, or deferred with the reply recorded and retried), that
//! it is logged, that the relay neither crashes nor buffers without bound.
//! tests/upstream_client.rs covers the same faults at the client level.

mod support;

use std::path::PathBuf;

use support::binary::{Relay, queue_list, status_kib};
use support::client::send_data;
use support::fake_upstream::{FakeUpstream, Flood, FloodAt, Script};
use support::harness::{Harness, PLAIN_LISTENER, upstream_toml, verified_upstream_toml};
use support::pki::TestCa;
use support::wait::{eventually, within};

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";

/// How an upstream is configured.
enum Tls<'a> {
    None,
    /// `tls = "required"` verified against this CA file, name `localhost`.
    Required(&'a std::path::Path),
    Opportunistic,
}

fn upstream(name: &str, fake: &FakeUpstream, tls: &Tls) -> String {
    match tls {
        Tls::None => upstream_toml(name, fake.address(), "none"),
        Tls::Opportunistic => upstream_toml(name, fake.address(), "opportunistic"),
        Tls::Required(ca) => verified_upstream_toml(name, fake.address(), ca, "localhost"),
    }
}

/// A relay config with these upstreams, in this order (the first message
/// of a route tries the first upstream first). `retry` is `retry_min` and
/// `retry_max`: "1s" to watch retries, "1h" to prove a delivery happened in
/// the same attempt.
fn harness(retry: &str, upstreams: &[String]) -> Harness {
    Harness::with_listeners(
        PLAIN_LISTENER,
        &format!(
            "retry_min = \"{retry}\"\nretry_max = \"{retry}\"\n\n{}",
            upstreams.concat()
        ),
    )
}

/// An upstream CA: its certificate is for localhost / 127.0.0.1.
struct UpstreamCa {
    ca: TestCa,
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
}

impl UpstreamCa {
    fn new() -> UpstreamCa {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        UpstreamCa {
            ca,
            _dir: dir,
            ca_file,
        }
    }

    fn server_config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        self.ca.server_config()
    }
}

async fn send_one(relay: &Relay, tag: &str) {
    let mut c = relay.connect().await;
    c.hello().await;
    let body = format!(
        "From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: {tag}\r\nMessage-ID: <{tag}@faults.test>\r\n\r\nbody of {tag}\r\n"
    );
    let r = send_data(&mut c, FROM, &[TO], body.as_bytes()).await;
    assert_eq!(r.status(), "250 2.0.0", "{r:?}");
    c.cmd("QUIT", "221").await;
}

/// Transactions at `fake` whose content (with this tag) arrived.
fn got(fake: &FakeUpstream, tag: &str) -> usize {
    let needle = format!("Message-ID: <{tag}@faults.test>");
    fake.transactions()
        .iter()
        .filter(|t| {
            t.method.is_some() && String::from_utf8_lossy(&t.message).contains(needle.as_str())
        })
        .count()
}

/// `queue list --json`: (state, last_reply) of each recipient of each message.
fn queue_states(h: &Harness) -> Vec<(String, String)> {
    queue_list(&h.config_path)
        .iter()
        .flat_map(|e| e["recipients"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["state"].as_str().unwrap_or("").to_owned(),
                r["last_reply"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The relay's peak resident memory (VmHWM), in kB.
fn peak_rss_kb(relay: &Relay) -> u64 {
    status_kib(relay.pid(), "VmHWM")
}

/// The single faulty upstream: the message is deferred with `reply_has` in
/// its recorded reply (a failed attempt is recorded as `451 4.4.x upstream
/// NAME: what went wrong`), retried (more connections), and the failure logged.
async fn deferred_and_retried(
    h: &Harness,
    relay: &mut Relay,
    fake: &FakeUpstream,
    reply_has: &str,
) {
    eventually("deferred with the reply recorded", 20, || {
        queue_states(h)
            .iter()
            .any(|(state, reply)| state == "deferred" && reply.contains(reply_has))
    })
    .await;
    let before = fake.connections();
    eventually("a retry", 20, || fake.connections() > before).await;
    assert!(relay.log().contains("attempt failed"), "{}", relay.log());
    assert!(relay.log().contains(reply_has), "{}", relay.log());
    assert_eq!(h.spooled().len(), 1, "still queued");
    relay.assert_alive();
}

// ---------------------------------------------------------------------------

/// A 1 MB reply line to the final dot: the client stops at its 4 kB line
/// bound, the upstream counts as failed after the content went out (so it
/// may have the message: a duplicate, never a loss) and the next upstream
/// delivers in the same attempt. Alone, it is deferred and retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_reply_line_fails_that_upstream_without_buffering_it() {
    within(120, async {
        let script = Script {
            flood: Some(Flood {
                at: FloodAt::Content,
                bytes: 1 << 20,
                newline: true,
            }),
            ..Script::default()
        };
        let bad = FakeUpstream::start(script.clone()).await;
        let good = FakeUpstream::start(Script::default()).await;
        let h = harness(
            "1h",
            &[
                upstream("bad", &bad, &Tls::None),
                upstream("good", &good, &Tls::None),
            ],
        );
        let mut relay = Relay::start(&h).await;
        let base = peak_rss_kb(&relay);
        send_one(&relay, "mega").await;
        eventually("delivered by the next upstream", 20, || {
            got(&good, "mega") == 1
        })
        .await;
        assert_eq!(got(&bad, "mega"), 1, "the content had reached the bad one");
        eventually("queue empty", 20, || h.spool_files() == 0).await;
        let log = relay.log();
        assert!(log.contains("reply line over 4096 bytes (DATA)"), "{log}");
        assert!(bad.record().flood_cut, "the relay hung up on the flood");
        let grown = peak_rss_kb(&relay).saturating_sub(base);
        assert!(grown < 8 * 1024, "peak RSS grew {grown} kB for a 1 MB line");
        relay.assert_alive();
        relay.kill();

        // Alone: temporary, recorded, retried.
        let alone = FakeUpstream::start(script).await;
        let h = harness("1s", &[upstream("alone", &alone, &Tls::None)]);
        let mut relay = Relay::start(&h).await;
        send_one(&relay, "mega-alone").await;
        deferred_and_retried(&h, &mut relay, &alone, "reply line over 4096 bytes").await;
        assert!(alone.record().flood_cut);
    })
    .await;
}

/// 100 MB (or `SMARTHOST_FLOOD_MB`) of greeting without a line end: the
/// client reads at most its bound and hangs up; the relay's memory does not
/// grow with the flood; the next upstream delivers.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_greeting_is_cut_off_at_the_bound() {
    let mb: usize = std::env::var("SMARTHOST_FLOOD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    within(120, async {
        let bad = FakeUpstream::start(Script {
            flood: Some(Flood {
                at: FloodAt::Greeting,
                bytes: mb << 20,
                newline: false,
            }),
            ..Script::default()
        })
        .await;
        let good = FakeUpstream::start(Script::default()).await;
        let h = harness(
            "1h",
            &[
                upstream("bad", &bad, &Tls::None),
                upstream("good", &good, &Tls::None),
            ],
        );
        let mut relay = Relay::start(&h).await;
        let base = peak_rss_kb(&relay);
        send_one(&relay, "endless").await;
        eventually("delivered by the next upstream", 20, || {
            got(&good, "endless") == 1
        })
        .await;
        eventually("the flood cut off", 20, || bad.record().flood_cut).await;
        let sent = bad.record().flood_sent;
        let grown = peak_rss_kb(&relay).saturating_sub(base);
        eprintln!(
            "flood of {mb} MB: {} kB written before the relay hung up; relay peak RSS +{grown} kB",
            sent >> 10
        );
        // What went out is what loopback socket buffers hold, not the flood.
        assert!(sent < 32 << 20, "{sent} bytes taken");
        assert!(grown < 8 * 1024, "peak RSS grew {grown} kB");
        assert!(!bad.saw("EHLO"), "no conversation without a greeting");
        assert!(
            relay
                .log()
                .contains("reply line over 4096 bytes (greeting)"),
            "{}",
            relay.log()
        );
        relay.assert_alive();
    })
    .await;
}

/// Plaintext bytes after the 220 to STARTTLS (RFC 3207 §4 / CVE-2011-0411
/// seen from the client): they are not taken as part of the TLS session,
/// that upstream gets nothing, and there is no plaintext fallback, with
/// `required` or `opportunistic`. Another upstream delivers over real TLS.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_after_the_starttls_220_fail_that_upstream_with_no_plaintext_fallback() {
    within(120, async {
        let ca = UpstreamCa::new();
        let script = Script {
            tls: Some(ca.server_config()),
            junk_after_starttls: Some(b"250-injected\r\n250 AUTH PLAIN\r\n".to_vec()),
            ..Script::default()
        };
        let bad = FakeUpstream::start(script.clone()).await;
        let good = FakeUpstream::start(Script {
            tls: Some(ca.server_config()),
            ..Script::default()
        })
        .await;
        let required = Tls::Required(&ca.ca_file);
        let h = harness(
            "1h",
            &[
                upstream("bad", &bad, &required),
                upstream("good", &good, &required),
            ],
        );
        let mut relay = Relay::start(&h).await;
        send_one(&relay, "injected").await;
        eventually("delivered by the next upstream", 20, || {
            got(&good, "injected") == 1
        })
        .await;
        assert!(good.transactions().iter().all(|t| t.tls), "over TLS");
        assert_eq!(
            bad.commands(),
            ["EHLO relay.test", "STARTTLS"],
            "nothing after STARTTLS, in plaintext or otherwise"
        );
        assert!(relay.log().contains("after the 220 to STARTTLS"));
        relay.assert_alive();
        relay.kill();

        // Alone, required or opportunistic: deferred and retried, never MAIL.
        for tls in [Tls::Required(&ca.ca_file), Tls::Opportunistic] {
            let alone = FakeUpstream::start(script.clone()).await;
            let h = harness("1s", &[upstream("alone", &alone, &tls)]);
            let mut relay = Relay::start(&h).await;
            send_one(&relay, "injected-alone").await;
            deferred_and_retried(&h, &mut relay, &alone, "after the 220").await;
            assert!(
                !alone.saw("MAIL") && !alone.saw("AUTH"),
                "{:?}",
                alone.commands()
            );
            assert!(
                alone
                    .commands()
                    .iter()
                    .all(|c| c == "EHLO relay.test" || c == "STARTTLS"),
                "{:?}",
                alone.commands()
            );
        }
    })
    .await;
}

/// The connection closes after our final dot, before any reply: the message
/// may have been taken, so this is temporary (never a bounce), logged, and
/// the message is sent again: a duplicate at worst, never lost.
#[tokio::test(flavor = "multi_thread")]
async fn lost_after_the_final_dot_is_temporary_and_may_duplicate() {
    within(120, async {
        for chunking in [false, true] {
            let alone = FakeUpstream::start(Script {
                drop_after_data: true,
                chunking,
                ..Script::default()
            })
            .await;
            let h = harness("1s", &[upstream("alone", &alone, &Tls::None)]);
            let mut relay = Relay::start(&h).await;
            send_one(&relay, "dropped").await;
            deferred_and_retried(
                &h,
                &mut relay,
                &alone,
                "connection closed by the upstream (DATA)",
            )
            .await;
            eventually("sent again", 20, || got(&alone, "dropped") >= 2).await;
            assert!(
                queue_states(&h)
                    .iter()
                    .all(|(s, r)| s == "deferred" && r.starts_with("451 4.4.2 upstream alone")),
                "{:?}",
                queue_states(&h)
            );
            assert!(!relay.log().contains("bounce queued"), "never a bounce");
        }

        // With a second upstream.
        let bad = FakeUpstream::start(Script {
            drop_after_data: true,
            ..Script::default()
        })
        .await;
        let good = FakeUpstream::start(Script::default()).await;
        let h = harness(
            "1h",
            &[
                upstream("bad", &bad, &Tls::None),
                upstream("good", &good, &Tls::None),
            ],
        );
        let mut relay = Relay::start(&h).await;
        send_one(&relay, "dropped2").await;
        eventually("delivered", 20, || got(&good, "dropped2") == 1).await;
        eventually("queue empty", 20, || h.spool_files() == 0).await;
        // Observed: the next upstream is tried at once, in the same attempt
        // (retry_min is an hour). The first has a copy too: the duplicate.
        assert_eq!(got(&bad, "dropped2"), 1);
        assert!(
            relay
                .log()
                .contains("connection closed by the upstream (DATA)")
        );
        relay.assert_alive();
    })
    .await;
}

/// 421 at MAIL, at a RCPT or to the content (RFC 5321 §3.8: the server is
/// closing): the attempt at that upstream is over, the next upstream takes
/// the message in the same attempt. Alone: deferred with the 421 recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_421_mid_transaction_moves_to_the_next_upstream() {
    within(150, async {
        let bye = "421 4.3.2 closing down now";
        let scripts = [
            (
                "mail",
                Script {
                    mail_reply: Some(bye.into()),
                    ..Script::default()
                },
            ),
            (
                "rcpt",
                Script {
                    rcpt_replies: vec![(TO.into(), bye.into())],
                    ..Script::default()
                },
            ),
            (
                "rcpt-nopipe",
                Script {
                    pipelining: false,
                    rcpt_replies: vec![(TO.into(), bye.into())],
                    ..Script::default()
                },
            ),
            (
                "content",
                Script {
                    data_reply: bye.into(),
                    ..Script::default()
                },
            ),
            (
                "content-data",
                Script {
                    chunking: false,
                    data_reply: bye.into(),
                    ..Script::default()
                },
            ),
        ];
        for (stage, script) in &scripts {
            let bad = FakeUpstream::start(script.clone()).await;
            let good = FakeUpstream::start(Script::default()).await;
            let h = harness(
                "1h",
                &[
                    upstream("bad", &bad, &Tls::None),
                    upstream("good", &good, &Tls::None),
                ],
            );
            let mut relay = Relay::start(&h).await;
            let tag = format!("bye-{stage}");
            send_one(&relay, &tag).await;
            eventually("delivered by the next upstream", 20, || {
                got(&good, &tag) == 1
            })
            .await;
            eventually("queue empty", 20, || h.spool_files() == 0).await;
            assert!(relay.log().contains(bye), "{stage}: {}", relay.log());
            assert!(!relay.log().contains("bounce queued"), "{stage}: no bounce");
            if !stage.starts_with("content") {
                assert!(
                    !bad.saw("DATA") && !bad.saw("BDAT"),
                    "{stage}: {:?}",
                    bad.commands()
                );
            }
            relay.assert_alive();
        }

        let alone = FakeUpstream::start(scripts[1].1.clone()).await;
        let h = harness("1s", &[upstream("alone", &alone, &Tls::None)]);
        let mut relay = Relay::start(&h).await;
        send_one(&relay, "bye-alone").await;
        deferred_and_retried(&h, &mut relay, &alone, bye).await;
    })
    .await;
}
