//! Delivery end to end on loopback: the relay in-process, `smarthost sink`
//! instances as upstreams. Round-robin, failover, recovery, routes, and the
//! bytes an upstream receives.

mod support;

use std::time::Duration;

use mail_parser::MimeHeaders;
use support::client::{send_data, tls_session};
use support::fake_upstream::{FakeUpstream, Method, Script};
use support::harness::{Harness, Running, upstream_toml, verified_upstream_toml};
use support::message::strip_received;
use support::pki::{TestCa, server_config};
use support::sink::LocalSink;
use support::wait::eventually;

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";

async fn send_messages(relay: &Running, h: &Harness, from: &str, n: usize, tag: &str) {
    let c = relay.connect().await;
    let mut c = tls_session(c, &h.ca).await;
    for i in 0..n {
        let body =
            format!("Subject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@test>\r\n\r\nbody {i}\r\n");
        let r = send_data(&mut c, from, &[TO], body.as_bytes()).await;
        assert_eq!(r.status(), "250 2.0.0");
    }
    c.cmd("QUIT", "221").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_splits_evenly_and_bytes_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let eu = LocalSink::start(dir.path(), "eu", None).await;
    let us = LocalSink::start(dir.path(), "us", None).await;
    let h = Harness::new(&format!("{}{}", eu.upstream("eu"), us.upstream("us")));
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 100, "rr").await;
    eventually("100 deliveries", 20, || {
        eu.messages().len() + us.messages().len() == 100
    })
    .await;
    let (a, b) = (eu.messages().len(), us.messages().len());
    assert!(a.abs_diff(b) <= 10, "uneven split {a}/{b}");
    eventually("an empty queue", 20, || h.spool_files() == 0).await;
    // What the upstream got is what we spooled: our Received header, then the body.
    let got = &eu.messages()[0];
    assert!(got.starts_with(b"Received: from client.test"));
    assert!(String::from_utf8_lossy(strip_received(got)).starts_with("Subject: rr "));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_upstream_down_all_go_to_the_other_none_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = LocalSink::start(dir.path(), "eu", None).await;
    let us = LocalSink::start(dir.path(), "us", None).await;
    eu.stop().await;
    let h = Harness::new(&format!("{}{}", eu.upstream("eu"), us.upstream("us")));
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 30, "failover").await;
    eventually("30 at us", 20, || us.messages().len() == 30).await;
    assert_eq!(eu.messages().len(), 0);
    eventually("an empty queue", 20, || h.spool_files() == 0).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn both_down_then_one_returns_and_everything_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = LocalSink::start(dir.path(), "eu", None).await;
    let mut us = LocalSink::start(dir.path(), "us", None).await;
    eu.stop().await;
    us.stop().await;
    let h = Harness::new(&format!(
        "retry_min = \"1s\"\nretry_max = \"2s\"\n\n{}{}",
        eu.upstream("eu"),
        us.upstream("us")
    ));
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 10, "outage").await;
    // Accepted and deferred, nothing lost.
    eventually("deferred state on disk", 20, || {
        h.spooled().iter().all(|(e, _)| {
            matches!(
                e.recipients[0].status,
                smarthost::spool::RecipientStatus::Deferred { .. }
            )
        }) && h.spooled().len() == 10
    })
    .await;
    us.restart().await;
    eventually("10 delivered after recovery", 20, || {
        us.messages().len() == 10
    })
    .await;
    eventually("an empty queue", 20, || h.spool_files() == 0).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_send_each_tenant_only_to_its_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalSink::start(dir.path(), "a", None).await;
    let b = LocalSink::start(dir.path(), "b", None).await;
    let h = Harness::new(&format!(
        "{}{}[[route]]\nsender_domains = [\"tenant-a.example\"]\nupstreams = [\"a\"]\n\n[[route]]\nupstreams = [\"b\"]\n",
        a.upstream("a"),
        b.upstream("b")
    ));
    let relay = h.start().await;
    send_messages(&relay, &h, "x@tenant-a.example", 10, "ta").await;
    send_messages(&relay, &h, "y@tenant-b.example", 10, "tb").await;
    eventually("20 delivered", 20, || {
        a.messages().len() + b.messages().len() == 20
    })
    .await;
    for m in a.messages() {
        assert!(String::from_utf8_lossy(&m).contains("Subject: ta "));
    }
    for m in b.messages() {
        assert!(String::from_utf8_lossy(&m).contains("Subject: tb "));
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_with_the_wrong_certificate_gets_nothing() {
    // The upstreams' CA: the good one has a certificate from it, the bad one not.
    let upstream_ca = Harness::new("");
    let stranger = TestCa::new();
    let bad = FakeUpstream::start(Script {
        tls: Some(server_config(&stranger.cert_pem, &stranger.key_pem)),
        ..Script::default()
    })
    .await;
    let good = FakeUpstream::start(Script {
        tls: Some(server_config(
            &upstream_ca.ca.cert_pem,
            &upstream_ca.ca.key_pem,
        )),
        ..Script::default()
    })
    .await;
    let extra = format!(
        "{}{}",
        verified_upstream_toml("bad", bad.address(), &upstream_ca.ca_path(), "localhost"),
        verified_upstream_toml("good", good.address(), &upstream_ca.ca_path(), "localhost")
    );
    let h = Harness::new(&extra);
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 10, "tls").await;
    eventually("10 at the good upstream", 20, || {
        good.transactions().len() == 10
    })
    .await;
    assert!(good.transactions().iter().all(|t| t.tls));
    assert!(
        !bad.saw("MAIL"),
        "nothing may be sent after a failed verification"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_recipient_refused_others_delivered_and_one_dsn_to_the_sender() {
    let fake = FakeUpstream::start(Script {
        rcpt_replies: vec![(
            "bad@partner.example".into(),
            "550 5.1.1 <bad@partner.example> no such user".into(),
        )],
        ..Script::default()
    })
    .await;
    let h = Harness::new(&upstream_toml("only", fake.address(), "none"));
    let relay = h.start().await;
    let c = relay.connect().await;
    let mut c = tls_session(c, &h.ca).await;
    let r = send_data(
        &mut c,
        FROM,
        &[
            "good@partner.example",
            "bad@partner.example",
            "also@partner.example",
        ],
        b"Subject: partly\r\nMessage-ID: <partly@test>\r\n\r\nhello\r\n",
    )
    .await;
    assert_eq!(r.status(), "250 2.0.0");
    eventually("the message and its bounce", 20, || {
        fake.transactions().len() == 2
    })
    .await;
    let t = fake.transactions();
    let (original, bounce) = if t[0].mail_from.contains("<>") {
        (&t[1], &t[0])
    } else {
        (&t[0], &t[1])
    };
    assert!(original.mail_from.contains(FROM));
    assert!(String::from_utf8_lossy(&original.message).contains("Subject: partly"));
    assert!(
        bounce.mail_from.starts_with("MAIL FROM:<>"),
        "{}",
        bounce.mail_from
    );
    assert_eq!(bounce.rcpt_to.len(), 1);
    assert!(bounce.rcpt_to[0].contains(FROM));
    let parsed = mail_parser::MessageParser::default()
        .parse(&bounce.message)
        .unwrap();
    let ct = parsed.content_type().unwrap();
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let text = String::from_utf8_lossy(&bounce.message);
    assert!(
        text.contains("Final-Recipient: rfc822; bad@partner.example"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("no such user"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822; good@"), "{text}");
    assert!(text.contains("Message-ID: <partly@test>"), "{text}");
    eventually("an empty queue", 20, || h.spool_files() == 0).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_never_means_no_bounce() {
    let fake = FakeUpstream::start(Script {
        rcpt_replies: vec![("bad@partner.example".into(), "550 5.1.1 no".into())],
        ..Script::default()
    })
    .await;
    let h = Harness::new(&upstream_toml("only", fake.address(), "none"));
    let relay = h.start().await;
    let c = relay.connect().await;
    let mut c = tls_session(c, &h.ca).await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd("RCPT TO:<bad@partner.example> NOTIFY=NEVER", "250")
        .await;
    c.cmd("DATA", "354").await;
    c.send("Subject: quiet\r\n\r\nx\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    eventually("an empty queue", 20, || h.spool_files() == 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fake.transactions()
            .iter()
            .all(|t| !t.mail_from.contains("<>")),
        "bounced"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn temporary_failure_then_recovery_delivers_exactly_once() {
    // 421 at the greeting: a temporary failure that leaves no connection to reuse.
    let fake = FakeUpstream::start(Script {
        greeting: "421 4.3.2 busy, try again later".into(),
        ..Script::default()
    })
    .await;
    let addr = fake.addr;
    let h = Harness::new(&format!(
        "retry_min = \"1s\"\nretry_max = \"1s\"\n\n{}",
        upstream_toml("only", fake.address(), "none")
    ));
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 1, "retry").await;
    eventually("the 421 seen", 20, || fake.connections() >= 1).await;
    eventually("deferred on disk", 20, || {
        h.spooled().iter().any(|(e, _)| {
            matches!(&e.recipients[0].status, smarthost::spool::RecipientStatus::Deferred { reply, .. } if reply.contains("421"))
        })
    })
    .await;
    drop(fake);
    // The same address now answers 250: the retry delivers, once.
    let dir = tempfile::tempdir().unwrap();
    let mut sink = LocalSink::start_at(addr, dir.path(), "sink", None).await;
    let count = || sink.files().len();
    eventually("the retry", 20, || count() == 1).await;
    eventually("an empty queue", 20, || h.spool_files() == 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(), 1, "delivered exactly once");
    sink.stop().await;
    relay.stop().await;
}

/// Pooled upstream connections are reused without a RSET first. One the
/// upstream closed while it idled (silently, or with a 421) fails the next
/// transaction before MAIL is answered; the message then goes over a new
/// connection at once, not after a deferral (retry_min is 60 s here).
#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_upstream_closed_costs_no_deferral() {
    for notice in [None, Some("421 4.4.2 idle timeout")] {
        let fake = FakeUpstream::start(Script {
            chunking: false,
            close_after: Some(1),
            close_notice: notice.map(str::to_owned),
            ..Script::default()
        })
        .await;
        let h = Harness::new(&format!(
            "retry_min = \"60s\"\n\n{}",
            upstream_toml("only", fake.address(), "none")
        ));
        let relay = h.start().await;
        for i in 1..=3 {
            send_messages(&relay, &h, FROM, 1, &format!("idle{i}")).await;
            eventually("delivered at once", 10, || fake.transactions().len() == i).await;
            // Let the upstream's close arrive while the connection idles.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eventually("an empty queue", 10, || h.spool_files() == 0).await;
        let txs = fake.transactions();
        for (i, tx) in txs.iter().enumerate() {
            let subject = format!("Subject: idle{} 0", i + 1);
            assert!(String::from_utf8_lossy(strip_received(&tx.message)).starts_with(&subject));
            assert!(tx.data_in_group, "MAIL, RCPT and DATA in one write");
        }
        assert_eq!(fake.connections(), 3, "{notice:?}");
        assert!(!fake.saw("RSET"), "no RSET before a reuse");
        relay.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_arrive_intact_over_data_and_over_bdat() {
    let bdat = FakeUpstream::start(Script::default()).await;
    let data = FakeUpstream::start(Script {
        chunking: false,
        ..Script::default()
    })
    .await;
    let body: &[u8] = b"From: <a@tenant.example>\r\nSubject: bytes\r\n\r\n.\r\n..two\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9 8-bit\r\nlast line\r\n";
    for (fake, method) in [(&bdat, Method::Bdat), (&data, Method::Data)] {
        let h = Harness::new(&upstream_toml("u", fake.address(), "none"));
        let relay = h.start().await;
        let c = relay.connect().await;
        let mut c = tls_session(c, &h.ca).await;
        let stuffed = body
            .split(|&b| b == b'\n')
            .map(|l| {
                if l.starts_with(b".") {
                    [b".", l].concat()
                } else {
                    l.to_vec()
                }
            })
            .collect::<Vec<_>>()
            .join(&b'\n');
        c.cmd(&format!("MAIL FROM:<{FROM}> BODY=8BITMIME"), "250")
            .await;
        c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
        c.cmd("DATA", "354").await;
        c.send(&stuffed).await;
        c.send(".\r\n").await;
        c.expect("250 2.0.0").await;
        eventually("delivery", 20, || fake.transactions().len() == 1).await;
        let t = &fake.transactions()[0];
        assert_eq!(t.method, Some(method));
        assert_eq!(strip_received(&t.message), body, "{method:?}");
        assert!(t.mail_from.contains("BODY=8BITMIME"), "{}", t.mail_from);
        relay.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_to_the_body_defers_with_the_reply_recorded() {
    let fake = FakeUpstream::start(Script {
        data_reply: "451 4.7.500 Server busy, try later".into(),
        ..Script::default()
    })
    .await;
    let h = Harness::new(&upstream_toml("only", fake.address(), "none"));
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 1, "busy").await;
    eventually("deferred with the upstream's reply", 20, || {
        h.spooled().iter().any(|(e, _)| {
            matches!(&e.recipients[0].status,
                smarthost::spool::RecipientStatus::Deferred { reply, attempts: 1, .. } if reply.starts_with("451 4.7.500"))
        })
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_success_passes_upstream_or_yields_a_relayed_notice() {
    for upstream_dsn in [true, false] {
        let fake = FakeUpstream::start(Script {
            dsn: upstream_dsn,
            ..Script::default()
        })
        .await;
        let h = Harness::new(&upstream_toml("only", fake.address(), "none"));
        let relay = h.start().await;
        let c = relay.connect().await;
        let mut c = tls_session(c, &h.ca).await;
        c.cmd(&format!("MAIL FROM:<{FROM}> RET=HDRS ENVID=env42"), "250")
            .await;
        c.cmd(
            &format!("RCPT TO:<{TO}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{TO}"),
            "250",
        )
        .await;
        c.cmd("DATA", "354").await;
        c.send("Subject: notify\r\n\r\nx\r\n.\r\n").await;
        c.expect("250 2.0.0").await;
        eventually("an empty queue", 20, || h.spool_files() == 0).await;
        let t = fake.transactions();
        if upstream_dsn {
            // The upstream offers DSN: the parameters travel; it will notify.
            assert_eq!(t.len(), 1, "{t:?}");
            assert!(
                t[0].mail_from.contains("RET=HDRS") && t[0].mail_from.contains("ENVID=env42"),
                "{}",
                t[0].mail_from
            );
            assert!(
                t[0].rcpt_to[0].contains("NOTIFY=SUCCESS,FAILURE"),
                "{:?}",
                t[0].rcpt_to
            );
            assert!(
                t[0].rcpt_to[0].contains("ORCPT=rfc822;"),
                "{:?}",
                t[0].rcpt_to
            );
        } else {
            // It does not: we tell the sender the message was relayed.
            eventually("the relayed notice", 20, || fake.transactions().len() == 2).await;
            let t = fake.transactions();
            assert!(!t[0].mail_from.contains("NOTIFY") && !t[0].rcpt_to[0].contains("NOTIFY"));
            let notice = String::from_utf8_lossy(&t[1].message).into_owned();
            assert!(t[1].mail_from.starts_with("MAIL FROM:<>"));
            assert!(notice.contains("Action: relayed"), "{notice}");
            assert!(notice.contains("Original-Envelope-Id: env42"), "{notice}");
        }
        relay.stop().await;
    }
}

#[tokio::test]
async fn a_sender_no_route_takes_is_refused_at_mail() {
    let h = Harness::new(
        "[[upstream]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\ntls = \"none\"\n\n[[route]]\nsender_domains = [\"tenant-a.example\"]\nupstreams = [\"a\"]\n",
    );
    let ctx = h.context();
    let c = h.session(&ctx, "127.0.0.1:4000");
    let mut c = tls_session(c, &h.ca).await;
    c.cmd("MAIL FROM:<x@tenant-b.example>", "553 5.7.1").await;
    c.cmd("MAIL FROM:<x@tenant-a.example>", "250").await;
}
