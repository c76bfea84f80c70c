//! The outbound SMTP client against a scripted fake upstream on loopback,
//! with real TLS (the rcgen test CA).

mod support;

use std::time::Duration;

use smarthost::config::{UpstreamConfig, UpstreamTls};
use smarthost::outbound::{
    ClientOptions, Connection, Stage, Upstream, UpstreamError, UpstreamReply,
};
use smarthost::spool::{Envelope, Recipient};
use support::envelope::envelope;
use support::fake_upstream::{FakeUpstream, Method, Script, refused_address};
use support::pki::{TestCa, self_signed};

fn options() -> ClientOptions {
    let t = Duration::from_secs(5);
    ClientOptions {
        helo_name: "relay.test".into(),
        connect_timeout: t,
        greeting_timeout: t,
        command_timeout: t,
        data_init_timeout: t,
        data_block_timeout: t,
        data_end_timeout: t,
    }
}

fn upstream(address: String, tls: UpstreamTls, ca: Option<&TestCa>) -> Upstream {
    Upstream {
        name: "fake".into(),
        address,
        tls,
        tls_name: None,
        tls_config: match ca {
            Some(ca) => ca.client_config(),
            None => smarthost::outbound::tls::client_config(None).unwrap(),
        },
        credentials: None,
    }
}

fn plain(fake: &FakeUpstream) -> Upstream {
    upstream(fake.address(), UpstreamTls::None, None)
}

/// Opens, sends one transaction to every recipient, quits.
async fn deliver(
    up: &Upstream,
    env: &Envelope,
    message: &[u8],
) -> Result<Vec<UpstreamReply>, UpstreamError> {
    let mut c = Connection::open(up, &options()).await?;
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    let result = c.send(env, &rcpts, message).await;
    c.quit().await;
    result
}

fn codes(replies: &[UpstreamReply]) -> Vec<u16> {
    replies.iter().map(|r| r.code).collect()
}

/// Dots at line starts, 8-bit bytes, a lone-dot line, a CRLF.CRLF inside.
const TRICKY: &[u8] = b"Subject: dots \xc3\xa9\r\n\r\n.leading\r\n..two\r\n.\r\nmid . dot\r\n\xff\xfe 8-bit\r\n.\r\n\r\n";

#[tokio::test]
async fn data_and_bdat_deliver_byte_for_byte() {
    for chunking in [false, true] {
        let fake = FakeUpstream::start(Script {
            chunking,
            ..Script::default()
        })
        .await;
        let mut env = envelope("a@example.com", &["b@example.net"]);
        env.params.body = Some("8BITMIME".into());
        let replies = deliver(&plain(&fake), &env, TRICKY).await.unwrap();
        assert_eq!(replies[0].to_string(), "250 2.0.0 queued as FAKE");
        let tx = &fake.transactions()[0];
        assert_eq!(tx.message, TRICKY, "chunking={chunking}");
        assert_eq!(
            tx.method,
            Some(if chunking { Method::Bdat } else { Method::Data })
        );
        assert_eq!(
            tx.mail_from,
            format!(
                "MAIL FROM:<a@example.com> SIZE={} BODY=8BITMIME",
                TRICKY.len()
            )
        );
        assert_eq!(tx.rcpt_to, ["RCPT TO:<b@example.net>"]);
        assert!(tx.pipelined && !tx.tls);
        if !chunking {
            assert!(tx.raw.starts_with(b"Subject"));
            assert!(
                tx.raw.ends_with(b"\r\n..\r\n\r\n.\r\n"),
                "{:?}",
                String::from_utf8_lossy(&tx.raw)
            );
        }
    }
}

#[tokio::test]
async fn bare_line_endings_and_missing_final_crlf_are_repaired() {
    // "\n.\n" must not end the data early: the rest is not a new command.
    let message = b"Subject: x\n\nline\rtwo\n.\nMAIL FROM:<evil@example>\r\nlast";
    let expected = b"Subject: x\r\n\r\nline\r\ntwo\r\n.\r\nMAIL FROM:<evil@example>\r\nlast\r\n";
    for chunking in [false, true] {
        let fake = FakeUpstream::start(Script {
            chunking,
            ..Script::default()
        })
        .await;
        let env = envelope("a@example.com", &["b@example.net"]);
        assert_eq!(
            codes(&deliver(&plain(&fake), &env, message).await.unwrap()),
            [250]
        );
        let txs = fake.transactions();
        assert_eq!(txs.len(), 1);
        assert_eq!(txs[0].message, expected);
        assert!(
            txs[0]
                .mail_from
                .contains(&format!("SIZE={}", expected.len()))
        );
        assert_eq!(
            fake.commands()
                .iter()
                .filter(|c| c.starts_with("MAIL"))
                .count(),
            1
        );
    }
}

#[tokio::test]
async fn per_recipient_results_in_order() {
    let fake = FakeUpstream::start(Script {
        rcpt_replies: vec![
            ("bad@example.net".into(), "550 5.1.1 no such user".into()),
            ("later@example.net".into(), "451 4.2.0 greylisted".into()),
        ],
        ..Script::default()
    })
    .await;
    let env = envelope(
        "a@example.com",
        &[
            "ok@example.net",
            "bad@example.net",
            "later@example.net",
            "ok2@example.net",
        ],
    );
    let r = deliver(&plain(&fake), &env, b"x\r\n").await.unwrap();
    assert_eq!(codes(&r), [250, 550, 451, 250]);
    assert!(r[0].is_positive() && r[1].is_permanent() && r[2].is_transient());
    assert_eq!(r[1].status.as_deref(), Some("5.1.1"));
    assert_eq!(r[1].text, "no such user");
    assert_eq!(fake.transactions()[0].rcpt_to.len(), 4);
}

#[tokio::test]
async fn content_rejection_applies_to_accepted_recipients_only() {
    for chunking in [false, true] {
        let fake = FakeUpstream::start(Script {
            chunking,
            rcpt_replies: vec![("bad@example.net".into(), "550 5.1.1 unknown".into())],
            data_reply: "554 5.6.0 content rejected".into(),
            ..Script::default()
        })
        .await;
        let env = envelope("a@example.com", &["ok@example.net", "bad@example.net"]);
        let r = deliver(&plain(&fake), &env, b"x\r\n").await.unwrap();
        assert_eq!(r[0].to_string(), "554 5.6.0 content rejected");
        assert_eq!(r[1].to_string(), "550 5.1.1 unknown");
    }
    let fake = FakeUpstream::start(Script {
        data_reply: "452 4.3.1 full".into(),
        ..Script::default()
    })
    .await;
    let r = deliver(
        &plain(&fake),
        &envelope("a@x.example", &["b@y.example"]),
        b"x\r\n",
    )
    .await
    .unwrap();
    assert!(r[0].is_transient());
}

#[tokio::test]
async fn data_joins_the_mail_rcpt_group_only_with_pipelining() {
    let env = envelope("a@example.com", &["b@example.net", "c@example.net"]);
    for pipelining in [true, false] {
        let fake = FakeUpstream::start(Script {
            pipelining,
            chunking: false,
            ..Script::default()
        })
        .await;
        let r = deliver(&plain(&fake), &env, TRICKY).await.unwrap();
        assert_eq!(codes(&r), [250, 250]);
        let tx = &fake.transactions()[0];
        assert_eq!(tx.method, Some(Method::Data));
        assert_eq!(tx.message, TRICKY);
        assert_eq!((tx.pipelined, tx.data_in_group), (pipelining, pipelining));
    }
}

/// No RCPT accepted: no content goes out, the transaction is reset and the
/// connection carries the next message. With CHUNKING, BDAT is never sent;
/// without, DATA went in the pipelined group and is refused (554), or taken
/// (354) by a lax server and ended by a lone dot (RFC 2920 §3.1).
#[tokio::test]
async fn no_accepted_recipient_sends_no_content_and_the_connection_stays_usable() {
    for (chunking, data_without_recipients) in [(true, false), (false, false), (false, true)] {
        let fake = FakeUpstream::start(Script {
            chunking,
            data_without_recipients,
            rcpt_replies: vec![("bad@example.net".into(), "550 5.1.1 unknown".into())],
            ..Script::default()
        })
        .await;
        let mut c = Connection::open(&plain(&fake), &options()).await.unwrap();
        let env = envelope("a@example.com", &["bad@example.net"]);
        let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
        assert_eq!(codes(&c.send(&env, &rcpts, b"x\r\n").await.unwrap()), [550]);
        assert_eq!(fake.saw("DATA"), !chunking);
        assert!(!fake.saw("BDAT") && fake.saw("RSET"));
        assert_eq!(c.messages_sent(), 0);
        let env = envelope("a@example.com", &["good@example.net"]);
        let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
        assert_eq!(codes(&c.send(&env, &rcpts, b"y\r\n").await.unwrap()), [250]);
        assert!(c.is_usable() && c.messages_sent() == 1);
        c.quit().await;
        let txs = fake.transactions();
        let delivered: Vec<_> = txs.iter().filter(|t| t.method.is_some()).collect();
        assert_eq!(delivered.len(), 1, "{chunking} {data_without_recipients}");
        assert_eq!(delivered[0].message, b"y\r\n");
        assert_eq!(fake.connections(), 1);
    }
}

/// A connection the upstream closed after its last transaction (with a 421
/// or without a word) fails the next one before MAIL is answered, and says
/// so: the caller may retry elsewhere, as nothing was taken.
#[tokio::test]
async fn a_connection_closed_while_idle_says_so_at_the_next_mail() {
    for notice in [None, Some("421 4.4.2 idle timeout")] {
        let fake = FakeUpstream::start(Script {
            close_after: Some(1),
            close_notice: notice.map(str::to_owned),
            ..Script::default()
        })
        .await;
        let mut c = Connection::open(&plain(&fake), &options()).await.unwrap();
        let env = envelope("a@example.com", &["b@example.net"]);
        let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
        assert_eq!(codes(&c.send(&env, &rcpts, b"1\r\n").await.unwrap()), [250]);
        assert!(!c.closed_before_mail());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(c.send(&env, &rcpts, b"2\r\n").await.is_err());
        assert!(c.closed_before_mail(), "{notice:?}");
        assert!(!c.is_usable());
        assert_eq!(fake.transactions().len(), 1);
    }
    // A server that refuses MAIL for its own reasons is not a closed connection.
    let fake = FakeUpstream::start(Script {
        mail_reply: Some("451 4.3.0 try later".into()),
        ..Script::default()
    })
    .await;
    let mut c = Connection::open(&plain(&fake), &options()).await.unwrap();
    let env = envelope("a@example.com", &["b@example.net"]);
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    assert!(c.send(&env, &rcpts, b"x\r\n").await.is_err());
    assert!(!c.closed_before_mail());
}

#[tokio::test]
async fn mail_5xx_is_every_recipients_reply_and_4xx_is_an_error() {
    let env = envelope("a@example.com", &["b@example.net", "c@example.net"]);
    for pipelining in [true, false] {
        let fake = FakeUpstream::start(Script {
            pipelining,
            mail_reply: Some("553 5.7.1 sender refused".into()),
            ..Script::default()
        })
        .await;
        let mut c = Connection::open(&plain(&fake), &options()).await.unwrap();
        let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
        let r = c.send(&env, &rcpts, b"x\r\n").await.unwrap();
        assert_eq!(codes(&r), [553, 553]);
        assert!(!fake.saw("DATA") && !fake.saw("BDAT"));
        // Pipelined RCPT replies were drained: the connection is in step.
        c.reset().await.unwrap();
        c.quit().await;

        let fake = FakeUpstream::start(Script {
            pipelining,
            mail_reply: Some("451 4.3.0 try later".into()),
            ..Script::default()
        })
        .await;
        match deliver(&plain(&fake), &env, b"x\r\n").await {
            Err(UpstreamError::Rejected {
                stage: Stage::Mail,
                reply,
            }) => assert_eq!(reply.code, 451),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_421_anywhere_ends_the_attempt() {
    let env = envelope("a@example.com", &["b@example.net", "c@example.net"]);
    for pipelining in [true, false] {
        let fake = FakeUpstream::start(Script {
            pipelining,
            rcpt_replies: vec![("b@example.net".into(), "421 4.3.2 shutting down".into())],
            ..Script::default()
        })
        .await;
        assert!(matches!(
            deliver(&plain(&fake), &env, b"x\r\n").await,
            Err(UpstreamError::Rejected {
                stage: Stage::Rcpt,
                ..
            })
        ));
    }
    let fake = FakeUpstream::start(Script {
        data_reply: "421 4.3.2 bye".into(),
        ..Script::default()
    })
    .await;
    assert!(matches!(
        deliver(&plain(&fake), &env, b"x\r\n").await,
        Err(UpstreamError::Rejected {
            stage: Stage::Data,
            ..
        })
    ));
}

#[tokio::test]
async fn connection_failures_are_errors() {
    let env = envelope("a@example.com", &["b@example.net"]);
    let refused = upstream(refused_address(), UpstreamTls::None, None);
    assert!(matches!(
        deliver(&refused, &env, b"x").await,
        Err(UpstreamError::Connect(_))
    ));

    let fake = FakeUpstream::start(Script {
        greeting: "421 4.3.2 busy".into(),
        ..Script::default()
    })
    .await;
    match deliver(&plain(&fake), &env, b"x").await {
        Err(UpstreamError::Rejected {
            stage: Stage::Greeting,
            reply,
        }) => assert_eq!(reply.to_string(), "421 4.3.2 busy"),
        other => panic!("{other:?}"),
    }

    let fake = FakeUpstream::start(Script {
        close_on_connect: true,
        ..Script::default()
    })
    .await;
    assert!(matches!(
        deliver(&plain(&fake), &env, b"x").await,
        Err(UpstreamError::Protocol(_))
    ));

    // Garbage, an over-long line, too many lines.
    for greeting in [
        "hello there".to_owned(),
        format!("220 {}", "x".repeat(5000)),
        "220-x\r\n".repeat(150) + "220 end",
    ] {
        let fake = FakeUpstream::start(Script {
            greeting,
            ..Script::default()
        })
        .await;
        assert!(matches!(
            deliver(&plain(&fake), &env, b"x").await,
            Err(UpstreamError::Protocol(_))
        ));
    }
}

#[tokio::test]
async fn lost_after_the_final_dot_or_too_slow_is_an_error() {
    let env = envelope("a@example.com", &["b@example.net"]);
    for chunking in [false, true] {
        let fake = FakeUpstream::start(Script {
            chunking,
            drop_after_data: true,
            ..Script::default()
        })
        .await;
        assert!(matches!(
            deliver(&plain(&fake), &env, b"x\r\n").await,
            Err(UpstreamError::Protocol(_))
        ));
        assert_eq!(
            fake.transactions()[0].message,
            b"x\r\n",
            "the content did arrive"
        );
    }
    // Slow but within the limits: fine.
    let fake = FakeUpstream::start(Script {
        delay: Duration::from_millis(30),
        ..Script::default()
    })
    .await;
    assert_eq!(
        codes(&deliver(&plain(&fake), &env, b"x\r\n").await.unwrap()),
        [250]
    );
    // Slower than the greeting timeout.
    let fake = FakeUpstream::start(Script {
        delay: Duration::from_millis(500),
        ..Script::default()
    })
    .await;
    let opts = ClientOptions {
        command_timeout: Duration::from_millis(200),
        ..options()
    };
    assert!(matches!(
        Connection::open(&plain(&fake), &opts).await,
        Err(UpstreamError::Timeout(Stage::Ehlo))
    ));
}

#[tokio::test]
async fn pipelining_only_when_offered() {
    let env = envelope("a@example.com", &["b@example.net", "c@example.net"]);
    for pipelining in [true, false] {
        let fake = FakeUpstream::start(Script {
            pipelining,
            ..Script::default()
        })
        .await;
        assert_eq!(
            codes(&deliver(&plain(&fake), &env, b"x\r\n").await.unwrap()),
            [250, 250]
        );
        assert_eq!(fake.transactions()[0].pipelined, pipelining);
    }
}

#[tokio::test]
async fn helo_fallback_uses_no_extensions() {
    let fake = FakeUpstream::start(Script {
        ehlo_reply: Some("502 5.5.1 EHLO not here".into()),
        ..Script::default()
    })
    .await;
    let mut env = envelope("a@example.com", &["b@example.net"]);
    env.params.body = Some("8BITMIME".into());
    assert_eq!(
        codes(&deliver(&plain(&fake), &env, TRICKY).await.unwrap()),
        [250]
    );
    let tx = &fake.transactions()[0];
    assert_eq!(tx.mail_from, "MAIL FROM:<a@example.com>");
    assert_eq!((tx.method, &tx.message[..]), (Some(Method::Data), TRICKY));
    assert!(fake.saw("HELO relay.test"));
}

#[tokio::test]
async fn required_tls_verifies_and_never_falls_back() {
    let ca = TestCa::new();
    let env = envelope("a@example.com", &["b@example.net"]);
    let good = ca.server_config();

    // The right CA: encrypted, verified, then delivered.
    let fake = FakeUpstream::start(Script {
        tls: Some(good.clone()),
        ..Script::default()
    })
    .await;
    let up = upstream(fake.address(), UpstreamTls::Required, Some(&ca));
    let mut c = Connection::open(&up, &options()).await.unwrap();
    let caps = c.capabilities().clone();
    assert!(caps.starttls_offered && caps.tls_verified && caps.tls.is_some() && caps.pipelining);
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    assert_eq!(codes(&c.send(&env, &rcpts, TRICKY).await.unwrap()), [250]);
    c.quit().await;
    let tx = &fake.transactions()[0];
    assert!(tx.tls);
    assert_eq!(tx.message, TRICKY);

    // A certificate from another CA: Err(Tls), and no MAIL ever sent.
    let other = TestCa::new();
    let wrong = other.server_config();
    let fake = FakeUpstream::start(Script {
        tls: Some(wrong),
        ..Script::default()
    })
    .await;
    let up = upstream(fake.address(), UpstreamTls::Required, Some(&ca));
    assert!(matches!(
        deliver(&up, &env, b"x").await,
        Err(UpstreamError::Tls(_))
    ));
    assert!(!fake.saw("MAIL"));
    assert_eq!(fake.connections(), 1, "no plaintext retry");

    // The right CA but a name the certificate does not carry.
    let fake = FakeUpstream::start(Script {
        tls: Some(good.clone()),
        ..Script::default()
    })
    .await;
    let mut up = upstream(fake.address(), UpstreamTls::Required, Some(&ca));
    up.tls_name = Some("other.test".into());
    assert!(matches!(
        deliver(&up, &env, b"x").await,
        Err(UpstreamError::Tls(_))
    ));
    up.tls_name = Some("relay.test".into());
    assert!(deliver(&up, &env, b"x").await.is_ok());

    // No STARTTLS offered.
    let fake = FakeUpstream::start(Script::default()).await;
    let up = upstream(fake.address(), UpstreamTls::Required, Some(&ca));
    assert!(matches!(
        deliver(&up, &env, b"x").await,
        Err(UpstreamError::NoStartTls)
    ));
    assert!(!fake.saw("MAIL"));
}

#[tokio::test]
async fn opportunistic_tls_takes_any_certificate_or_none() {
    let env = envelope("a@example.com", &["b@example.net"]);
    let fake = FakeUpstream::start(Script {
        tls: Some(self_signed()),
        ..Script::default()
    })
    .await;
    let up = upstream(fake.address(), UpstreamTls::Opportunistic, None);
    let c = Connection::open(&up, &options()).await.unwrap();
    assert!(c.capabilities().tls.is_some() && !c.capabilities().tls_verified);
    c.quit().await;
    assert!(deliver(&up, &env, b"x\r\n").await.is_ok());
    assert!(fake.transactions()[0].tls);

    let fake = FakeUpstream::start(Script::default()).await;
    let up = upstream(fake.address(), UpstreamTls::Opportunistic, None);
    assert!(deliver(&up, &env, b"x\r\n").await.is_ok());
    assert!(!fake.transactions()[0].tls);
}

#[tokio::test]
async fn bytes_after_the_starttls_220_are_refused() {
    let env = envelope("a@example.com", &["b@example.net"]);
    let fake = FakeUpstream::start(Script {
        tls: Some(self_signed()),
        junk_after_starttls: Some(b"250-injected\r\n250 PIPELINING\r\n".to_vec()),
        ..Script::default()
    })
    .await;
    for tls in [UpstreamTls::Opportunistic, UpstreamTls::Required] {
        let up = upstream(fake.address(), tls, None);
        match deliver(&up, &env, b"x").await {
            Err(UpstreamError::Protocol(e)) => assert!(e.contains("after the 220"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(!fake.saw("MAIL"));
}

#[tokio::test]
async fn auth_plain_login_and_refusals() {
    let ca = TestCa::new();
    let tls = ca.server_config();
    let env = envelope("a@example.com", &["b@example.net"]);
    for (mechanisms, used) in [("LOGIN PLAIN", "PLAIN"), ("LOGIN", "LOGIN")] {
        let fake = FakeUpstream::start(Script {
            tls: Some(tls.clone()),
            auth: Some(("user".into(), "pass word".into())),
            auth_mechanisms: mechanisms.into(),
            ..Script::default()
        })
        .await;
        let mut up = upstream(fake.address(), UpstreamTls::Required, Some(&ca));
        up.credentials = Some(("user".into(), "pass word".into()));
        let c = Connection::open(&up, &options()).await.unwrap();
        assert_eq!(c.capabilities().auth_used, Some(used));
        c.quit().await;
        assert!(deliver(&up, &env, b"x\r\n").await.is_ok());
        assert_eq!(fake.transactions()[0].auth.as_deref(), Some("user"));

        up.credentials = Some(("user".into(), "wrong".into()));
        match deliver(&up, &env, b"x\r\n").await {
            Err(UpstreamError::Rejected {
                stage: Stage::Auth,
                reply,
            }) => assert_eq!(reply.code, 535),
            other => panic!("{other:?}"),
        }
    }
    // Opportunistic without STARTTLS: the password stays home.
    let fake = FakeUpstream::start(Script {
        auth: Some(("user".into(), "pw".into())),
        ..Script::default()
    })
    .await;
    let mut up = upstream(fake.address(), UpstreamTls::Opportunistic, None);
    up.credentials = Some(("user".into(), "pw".into()));
    assert!(matches!(
        deliver(&up, &env, b"x").await,
        Err(UpstreamError::NoStartTls)
    ));
    assert!(!fake.saw("AUTH"));
}

#[tokio::test]
async fn smtputf8_is_used_or_the_message_fails_with_5_6_7() {
    let mut env = envelope("j\u{f6}rg@example.com", &["b@example.net", "c@example.net"]);
    env.params.smtputf8 = true;
    let fake = FakeUpstream::start(Script {
        smtputf8: false,
        ..Script::default()
    })
    .await;
    let r = deliver(&plain(&fake), &env, b"x\r\n").await.unwrap();
    assert_eq!(r.len(), 2);
    assert!(
        r.iter()
            .all(|r| r.code == 553 && r.status.as_deref() == Some("5.6.7"))
    );
    assert!(!fake.saw("MAIL"));

    let fake = FakeUpstream::start(Script::default()).await;
    assert_eq!(
        codes(&deliver(&plain(&fake), &env, b"x\r\n").await.unwrap()),
        [250, 250]
    );
    assert!(fake.transactions()[0].mail_from.ends_with(" SMTPUTF8"));
}

#[tokio::test]
async fn dsn_parameters_only_when_offered() {
    let mut env = envelope("a@example.com", &["b@example.net"]);
    env.params.ret = Some("HDRS".into());
    env.params.envid = Some("id+1=2".into());
    env.recipients[0].notify = Some(vec!["FAILURE".into(), "DELAY".into()]);
    env.recipients[0].orcpt = Some("rfc822;b+x@example.net".into());
    for dsn in [true, false] {
        let fake = FakeUpstream::start(Script {
            dsn,
            ..Script::default()
        })
        .await;
        deliver(&plain(&fake), &env, b"x\r\n").await.unwrap();
        let tx = &fake.transactions()[0];
        if dsn {
            assert!(
                tx.mail_from.ends_with(" RET=HDRS ENVID=id+2B1+3D2"),
                "{}",
                tx.mail_from
            );
            assert_eq!(
                tx.rcpt_to,
                ["RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+2Bx@example.net"]
            );
        } else {
            assert!(!tx.mail_from.contains("RET=") && !tx.mail_from.contains("ENVID="));
            assert_eq!(tx.rcpt_to, ["RCPT TO:<b@example.net>"]);
        }
    }
}

#[tokio::test]
async fn microsoft_style_status_codes_survive() {
    let fake = FakeUpstream::start(Script {
        rcpt_replies: vec![(
            "b@example.net".into(),
            "450-4.7.500 Server busy.\r\n450 4.7.500 Please try again later. [AM0PR01]".into(),
        )],
        ..Script::default()
    })
    .await;
    let env = envelope("a@example.com", &["b@example.net"]);
    let r = deliver(&plain(&fake), &env, b"x\r\n").await.unwrap();
    assert_eq!(r[0].status.as_deref(), Some("4.7.500"));
    assert_eq!(
        r[0].to_string(),
        "450 4.7.500 Server busy. Please try again later. [AM0PR01]"
    );
}

#[tokio::test]
async fn a_connection_carries_several_messages_with_reset_between() {
    let fake = FakeUpstream::start(Script::default()).await;
    let mut c = Connection::open(&plain(&fake), &options()).await.unwrap();
    for i in 0..3 {
        let env = envelope("a@example.com", &["b@example.net"]);
        let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
        let body = format!("message {i}\r\n");
        assert_eq!(
            codes(&c.send(&env, &rcpts, body.as_bytes()).await.unwrap()),
            [250]
        );
        c.reset().await.unwrap();
    }
    assert_eq!(c.messages_sent(), 3);
    assert!(c.opened_at().elapsed() < Duration::from_secs(5));
    c.quit().await;
    assert_eq!(fake.connections(), 1);
    let txs = fake.transactions();
    assert_eq!(txs.len(), 3);
    assert_eq!(txs[2].message, b"message 2\r\n");
    assert!(fake.saw("QUIT"));

    // After an error the connection refuses further use; the caller reconnects.
    let fake = FakeUpstream::start(Script {
        drop_after_data: true,
        ..Script::default()
    })
    .await;
    let mut c = Connection::open(&plain(&fake), &options()).await.unwrap();
    let env = envelope("a@example.com", &["b@example.net"]);
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    assert!(c.send(&env, &rcpts, b"x\r\n").await.is_err());
    assert!(c.reset().await.is_err());
}

#[tokio::test]
async fn upstream_from_config_reads_the_password_and_ca() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret \n").unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
    let tls = ca.server_config();
    let fake = FakeUpstream::start(Script {
        tls: Some(tls),
        auth: Some(("u".into(), "s3cret ".into())),
        ..Script::default()
    })
    .await;
    let config = UpstreamConfig {
        name: "fake".into(),
        address: format!("localhost:{}", fake.addr.port()),
        tls: UpstreamTls::Required,
        ca_file: Some(dir.path().join("ca.pem")),
        tls_name: None,
        username: Some("u".into()),
        password_file: Some(dir.path().join("pw")),
    };
    let up = Upstream::from_config(&config).unwrap();
    assert_eq!(up.credentials, Some(("u".into(), "s3cret ".into())));
    // "localhost" may resolve to ::1 first, where nothing listens: the next address is tried.
    let env = envelope("a@example.com", &["b@example.net"]);
    assert_eq!(codes(&deliver(&up, &env, b"x\r\n").await.unwrap()), [250]);
    assert_eq!(fake.transactions()[0].auth.as_deref(), Some("u"));

    let missing = UpstreamConfig {
        password_file: Some(dir.path().join("nope")),
        ..config.clone()
    };
    assert!(
        Upstream::from_config(&missing)
            .unwrap_err()
            .contains("password_file")
    );
    let bad_ca = UpstreamConfig {
        ca_file: Some(dir.path().join("pw")),
        ..config
    };
    assert!(Upstream::from_config(&bad_ca).is_err());
}

/// aiosmtpd (Python) as a real upstream: STARTTLS verified against the test
/// CA, then DATA; the content must land byte for byte.
#[tokio::test]
async fn aiosmtpd_receives_the_message_byte_for_byte() {
    use tokio::io::AsyncBufReadExt;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write_certificate(dir.path(), "server");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/aiosmtpd/server.py"
    );
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args([&cert, &key, &out])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is required");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("aiosmtpd starts in time")
        .unwrap()
        .expect("aiosmtpd is required: pip install aiosmtpd (or apt-get install python3-aiosmtpd)");
    let port = line.strip_prefix("PORT ").unwrap();

    let mut up = upstream(
        format!("127.0.0.1:{port}"),
        UpstreamTls::Required,
        Some(&ca),
    );
    up.tls_name = Some("relay.test".into());
    let mut c = Connection::open(&up, &options()).await.unwrap();
    assert!(c.capabilities().tls_verified && !c.capabilities().chunking);
    let mut env = envelope("a@example.com", &["b@example.net", "c@example.net"]);
    env.params.body = Some("8BITMIME".into());
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    let r = c.send(&env, &rcpts, TRICKY).await.unwrap();
    assert_eq!(r[0].to_string(), "250 2.0.0 stored");
    assert_eq!(codes(&r), [250, 250]);
    c.quit().await;

    assert_eq!(std::fs::read(out.join("msg1.eml")).unwrap(), TRICKY);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("msg1.json")).unwrap()).unwrap();
    assert_eq!(meta["tls"], true);
    assert_eq!(
        meta["rcpt_to"],
        serde_json::json!(["b@example.net", "c@example.net"])
    );
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
