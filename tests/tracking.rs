//! Message tracking and refusals in the logs of the real binary: each
//! message's trail (accepted, attempt, delivered, completed) carries its
//! queue id; every refusal is an INFO line with its reason and reply; hostile
//! EHLO names, AUTH identities and Message-IDs never split or forge a line;
//! SIGHUP reloads say what changed, and a bad config is refused with its
//! file:line while the relay keeps serving.

mod support;

use std::path::Path;

use serde_json::Value;
use support::auth::auth_plain;
use support::binary::{Relay, run_with_stdin};
use support::client::{connect_from, send_data, tls_session};
use support::harness::{Harness, upstream_toml};
use support::message::queue_id_of;
use support::pki::TestCa;
use support::sink::Sink;
use support::wait::{eventually, free_port, within};

/// An EHLO name with an ESC sequence, a C1 control (NEL), a line separator
/// and a bidirectional override: each could start a line or drive a terminal.
const HOSTILE_HELO: &str = "evil\u{1b}[2J\u{85}\u{2028}\u{202e}.example";
/// An AUTH identity that tries to end the log line and forge the next one.
const HOSTILE_USER: &str = "mallory\r\nFORGED {\"event\":\"accepted\",\"queue_id\":\"0\"}\n";
const PASSWORD: &str = "correct horse";

/// A relay whose only relay network is 127.0.0.1/32 (so 127.0.0.2 must
/// authenticate), one user, sender domains limited to tenant.example, a
/// small size limit and one `smarthost sink` upstream.
struct Setup {
    h: Harness,
    sink: Sink,
    _sinks: tempfile::TempDir,
}

async fn setup(log: &str, upstream: Option<&str>) -> Setup {
    let sinks = tempfile::tempdir().unwrap();
    let mut sink = Sink::new(sinks.path(), "eu-1");
    let hash = run_with_stdin(&["hash-password"], format!("{PASSWORD}\n").as_bytes());
    assert!(hash.status.success(), "{}", hash.stderr);
    let upstream = upstream.map_or_else(|| sink.upstream(), str::to_owned);
    let h = Harness::new(&format!(
        "{log}\n[limits]\nmax_message_size = 100000\n\n[[user]]\nname = \"exchange01\"\npassword_hash = \"{}\"\n\n{upstream}",
        hash.stdout.trim()
    ));
    h.replace_access_line(
        "relay_networks = [\"127.0.0.1/32\"]\nsender_domains = [\"tenant.example\"]",
    );
    sink.start().await;
    Setup {
        h,
        sink,
        _sinks: sinks,
    }
}

fn message(message_id: &str) -> Vec<u8> {
    format!(
        "From: <alice@tenant.example>\r\nSubject: tracking\r\nMessage-ID: {message_id}\r\n\r\nhello\r\n"
    )
    .into_bytes()
}

/// What the test did, to be found in the log.
struct Traffic {
    /// (queue id, client port, Message-ID sent, authenticated user).
    accepted: Vec<(String, u16, String, Option<&'static str>)>,
    /// (reason, reply prefix) of each refusal provoked.
    refused: Vec<(&'static str, &'static str)>,
}

/// Two messages (one from a relay network, one authenticated from outside
/// it with a hostile EHLO name and Message-ID), and one refusal of each kind.
async fn drive(port: u16, ca: &TestCa) -> Traffic {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();

    // Relayed by network, over STARTTLS.
    let c = connect_from("127.0.0.1", port).await;
    let local = c.stream.local_addr().unwrap().port();
    let mut c = tls_session(c, ca).await;
    let r = send_data(
        &mut c,
        "alice@tenant.example",
        &["bob@partner.example", "carol@partner.example"],
        &message("<track-1@tenant.example>"),
    )
    .await;
    let id = queue_id_of(&r).unwrap_or_else(|| panic!("{r:?}"));
    accepted.push((id, local, "<track-1@tenant.example>".to_owned(), None));
    // 553: a sender domain outside sender_domains.
    c.cmd("MAIL FROM:<alice@elsewhere.example>", "553 5.7.1")
        .await;
    refused.push(("sender_domain", "553 5.7.1"));
    // 552: a declared size over max_message_size.
    c.cmd("MAIL FROM:<alice@tenant.example> SIZE=200000", "552 5.3.4")
        .await;
    refused.push(("size", "552 5.3.4"));
    c.cmd("QUIT", "221").await;

    // 530: mail before STARTTLS.
    let mut c = connect_from("127.0.0.1", port).await;
    c.hello().await;
    c.cmd("MAIL FROM:<alice@tenant.example>", "530 5.7.0").await;
    refused.push(("tls_required", "530 5.7.0"));
    c.cmd("QUIT", "221").await;

    // From 127.0.0.2, outside relay_networks: 554 without AUTH, 535 with a
    // hostile wrong identity, then AUTH and a message with a hostile EHLO
    // name and Message-ID.
    let mut c = connect_from("127.0.0.2", port).await;
    let local = c.stream.local_addr().unwrap().port();
    c.expect("220").await;
    c.cmd(&format!("EHLO {HOSTILE_HELO}"), "250").await;
    let mut c = c.starttls_no_ehlo(ca).await;
    c.cmd(&format!("EHLO {HOSTILE_HELO}"), "250").await;
    c.cmd("MAIL FROM:<alice@tenant.example>", "250").await;
    c.cmd("RCPT TO:<bob@partner.example>", "554 5.7.1").await;
    refused.push(("relay_denied", "554 5.7.1"));
    c.cmd("RSET", "250").await;
    c.cmd(&auth_plain(HOSTILE_USER, "wrong"), "535 5.7.8").await;
    refused.push(("auth_failed", "535 5.7.8"));
    c.cmd(&auth_plain("exchange01", PASSWORD), "235").await;
    let hostile_id = "<x\u{1b}]0;pwned\u{7}\u{85}@tenant.example>";
    let r = send_data(
        &mut c,
        "alice@tenant.example",
        &["dave@partner.example"],
        &message(hostile_id),
    )
    .await;
    let id = queue_id_of(&r).unwrap_or_else(|| panic!("{r:?}"));
    accepted.push((id, local, hostile_id.to_owned(), Some("exchange01")));
    c.cmd("QUIT", "221").await;
    Traffic { accepted, refused }
}

/// The lines of `log`, each parsed as one JSON object (a line that is not
/// one fails the test: nothing may split a log line).
fn json_lines(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

fn events<'a>(lines: &'a [Value], event: &str, queue_id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == event && l["queue_id"] == queue_id)
        .collect()
}

/// No raw control or bidirectional character anywhere in the log bytes.
fn assert_no_raw_controls(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    for (n, line) in text.lines().enumerate() {
        let bad: Vec<char> = line
            .chars()
            .filter(|&c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}'))
            .collect();
        assert!(bad.is_empty(), "line {n} carries raw {bad:?}: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_tracks_each_message_and_every_refusal() {
    within(120, async {
        let s = setup("[log]\nformat = \"json\"\n", None).await;
        let relay = Relay::start(&s.h).await;
        let (port, log) = (relay.port, relay.log.clone());
        let traffic = drive(port, &s.h.ca).await;
        eventually("both messages at the sink", 30, || s.sink.count() == 2).await;
        eventually("both messages completed", 30, || {
            let lines = json_lines(&log);
            traffic
                .accepted
                .iter()
                .all(|(id, ..)| !events(&lines, "completed", id).is_empty())
        })
        .await;

        let lines = json_lines(&log);
        assert_no_raw_controls(&log);
        for (id, client_port, message_id, user) in &traffic.accepted {
            let acc = events(&lines, "accepted", id);
            assert_eq!(acc.len(), 1, "{id}: {acc:?}");
            let a = acc[0];
            assert_eq!(a["level"], "INFO", "{a}");
            assert!(
                a["client"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{client_port}")),
                "{a}"
            );
            assert_eq!(a["tls"], "TLSv1_3", "{a}");
            assert_eq!(a["sender"], "alice@tenant.example", "{a}");
            assert!(a["size"].as_u64().unwrap() > 100, "{a}");
            match user {
                Some(u) => assert_eq!(a["user"], *u, "{a}"),
                None => assert!(a.get("user").is_none(), "{a}"),
            }
            let logged_id = a["message_id"].as_str().unwrap();
            if message_id.chars().any(char::is_control) {
                // Escaped, never raw.
                assert!(
                    logged_id.contains("\\u{1b}") && logged_id.contains("\\u{85}"),
                    "{a}"
                );
                assert!(!logged_id.chars().any(char::is_control), "{a}");
                let helo = a["helo"].as_str().unwrap();
                assert!(
                    helo.starts_with("evil\\u{1b}[2J\\u{85}\\u{2028}\\u{202e}"),
                    "{a}"
                );
            } else {
                assert_eq!(logged_id, message_id, "{a}");
                assert_eq!(a["helo"], "client.test", "{a}");
            }
            let rcpts = a["recipients"].as_u64().unwrap() as usize;
            let attempts = events(&lines, "attempt", id);
            assert_eq!(attempts.len(), 1, "{id}: {attempts:?}");
            assert_eq!(attempts[0]["upstream"], "eu-1");
            assert!(attempts[0]["duration_ms"].is_u64(), "{}", attempts[0]);
            assert_eq!(
                attempts[0]["replies"]
                    .as_str()
                    .unwrap()
                    .matches("> 250")
                    .count(),
                rcpts,
                "{}",
                attempts[0]
            );
            let delivered = events(&lines, "delivered", id);
            assert_eq!(delivered.len(), rcpts, "{id}: {delivered:?}");
            assert!(delivered.iter().all(|d| d["upstream"] == "eu-1"));
        }
        assert_eq!(traffic.accepted[0].0.len(), traffic.accepted[1].0.len());
        assert_eq!(
            events(&lines, "accepted", &traffic.accepted[0].0)[0]["recipients"],
            2
        );

        for (reason, reply) in &traffic.refused {
            let found: Vec<&Value> = lines
                .iter()
                .filter(|l| l["event"] == "refused" && l["reason"] == *reason)
                .collect();
            assert_eq!(found.len(), 1, "{reason}: {found:?}");
            let l = found[0];
            assert_eq!(l["level"], "INFO", "{l}");
            assert!(l["reply"].as_str().unwrap().starts_with(reply), "{l}");
            assert!(l["client"].as_str().unwrap().starts_with("127.0.0."), "{l}");
        }
        // The hostile identity is in the auth failure line, escaped.
        let failed: Vec<&Value> = lines
            .iter()
            .filter(|l| l["message"] == "authentication failed")
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0]["user"]
                .as_str()
                .unwrap()
                .starts_with("mallory\\u{d}\\u{a}FORGED"),
            "{}",
            failed[0]
        );
    })
    .await;
}

/// `--log-format text` wins over `[log] format = "json"`; string fields are
/// quoted, and no line starts with anything but a timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_quotes_fields_and_cannot_be_forged() {
    within(120, async {
        let s = setup("[log]\nformat = \"json\"\n", None).await;
        let relay = Relay::start_with(&s.h, &["--log-format", "text"]).await;
        let (port, log) = (relay.port, relay.log.clone());
        let traffic = drive(port, &s.h.ca).await;
        eventually("both messages delivered", 30, || {
            let text = std::fs::read_to_string(&log).unwrap();
            traffic
                .accepted
                .iter()
                .all(|(id, ..)| text.contains(&format!("event=\"completed\" queue_id=\"{id}\"")))
        })
        .await;
        assert_no_raw_controls(&log);
        let text = std::fs::read_to_string(&log).unwrap();
        for line in text.lines() {
            let stamp = line.split(' ').next().unwrap();
            assert!(
                stamp.len() > 20 && stamp.starts_with("20") && stamp.ends_with('Z'),
                "a line that is not a log line: {line:?}"
            );
            assert!(
                !line.contains("FORGED {") || line.contains("authentication failed"),
                "{line}"
            );
        }
        let (id, ..) = &traffic.accepted[0];
        let accepted = text
            .lines()
            .find(|l| l.contains(&format!("event=\"accepted\" queue_id=\"{id}\"")))
            .unwrap_or_else(|| panic!("no accepted line for {id}:\n{text}"));
        for field in [
            "helo=\"client.test\"",
            "sender=\"alice@tenant.example\"",
            "tls=\"TLSv1_3\"",
            "recipients=2",
            "message_id=\"<track-1@tenant.example>\"",
        ] {
            assert!(accepted.contains(field), "{field} missing: {accepted}");
        }
        let refused = text
            .lines()
            .find(|l| l.contains("event=\"refused\"") && l.contains("reason=\"relay_denied\""))
            .unwrap_or_else(|| panic!("no relay_denied line:\n{text}"));
        assert!(refused.contains(" INFO "), "{refused}");
        assert!(refused.contains("reply=\"554 5.7.1 "), "{refused}");

        // A client repeating a refused command: INFO lines stop at the cap.
        let mut c = tls_session(connect_from("127.0.0.1", port).await, &s.h.ca).await;
        let flood = 150;
        c.send("MAIL FROM:<a@elsewhere.example>\r\n".repeat(flood))
            .await;
        for _ in 0..flood {
            c.expect("553 5.7.1").await;
        }
        c.cmd("QUIT", "221").await;
        let local = c.stream.get_ref().0.local_addr().unwrap().to_string();
        let text = std::fs::read_to_string(&log).unwrap();
        let logged = text
            .lines()
            .filter(|l| {
                l.contains(&format!("client={local} ")) && l.contains("reason=\"sender_domain\"")
            })
            .count();
        assert_eq!(logged, 100, "refusals logged at INFO for one connection");
        assert!(text.contains("further refusals on this connection are logged at debug level"));
    })
    .await;
}

/// SIGHUP: a new user and a new upstream are summed up in the reload line,
/// and the queued message (deferred: its only upstream was down) goes out
/// through the new one. A broken config is refused with file:line, and the
/// relay keeps serving with the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_says_what_changed_and_refuses_a_broken_config() {
    within(120, async {
        let down = free_port();
        let dead = upstream_toml("eu-0", format!("127.0.0.1:{down}"), "none");
        // Written right after the harness's `[queue]` table, so they are its keys.
        let log = "retry_min = \"1s\"\nretry_max = \"2s\"\n\n[log]\nformat = \"json\"\n";
        let s = setup(log, Some(&dead)).await;
        let relay = Relay::start(&s.h).await;
        let (port, log) = (relay.port, relay.log.clone());

        let mut c = tls_session(connect_from("127.0.0.1", port).await, &s.h.ca).await;
        let r = send_data(
            &mut c,
            "alice@tenant.example",
            &["bob@partner.example"],
            &message("<r@x>"),
        )
        .await;
        let id = queue_id_of(&r).unwrap();
        eventually("a deferral", 20, || {
            !events(&json_lines(&log), "deferred", &id).is_empty()
        })
        .await;
        let deferred = events(&json_lines(&log), "deferred", &id)[0].clone();
        assert!(
            deferred["retry_at"].as_str().unwrap().ends_with('Z'),
            "{deferred}"
        );
        assert!(!events(&json_lines(&log), "attempt", &id).is_empty());

        // A second message, deleted from the queue: the relay logs it.
        let r = send_data(
            &mut c,
            "alice@tenant.example",
            &["eve@partner.example"],
            &message("<d@x>"),
        )
        .await;
        let doomed = queue_id_of(&r).unwrap();
        let out = run_with_stdin(
            &[
                "queue",
                "delete",
                &doomed,
                "--config",
                s.h.config_path.to_str().unwrap(),
            ],
            b"",
        );
        assert!(out.status.success(), "{}", out.stderr);
        eventually("the deleted line", 20, || {
            !events(&json_lines(&log), "deleted", &doomed).is_empty()
        })
        .await;

        // A second user, and the sink in place of the dead upstream.
        let current = std::fs::read_to_string(&s.h.config_path).unwrap();
        let hash = current
            .lines()
            .find(|l| l.starts_with("password_hash"))
            .unwrap()
            .to_owned();
        let reloaded = current.replace(
            &format!("name = \"eu-0\"\naddress = \"127.0.0.1:{down}\""),
            &format!("name = \"eu-1\"\naddress = \"127.0.0.1:{}\"", s.sink.port),
        ) + &format!("\n[[user]]\nname = \"exchange02\"\n{hash}\n");
        std::fs::write(&s.h.config_path, &reloaded).unwrap();
        relay.proc.signal(libc::SIGHUP);
        eventually("the reload line", 20, || {
            json_lines(&log).iter().any(|l| l["event"] == "reloaded")
        })
        .await;
        let lines = json_lines(&log);
        let line = lines.iter().find(|l| l["event"] == "reloaded").unwrap();
        assert_eq!(
            line["changes"], "users +1 -0, upstreams added: eu-1, upstreams removed: eu-0",
            "{line}"
        );
        eventually("the queued message at the new upstream", 30, || {
            s.sink.count() == 1
        })
        .await;
        eventually("its delivered line", 10, || {
            events(&json_lines(&log), "delivered", &id)
                .iter()
                .any(|l| l["upstream"] == "eu-1")
        })
        .await;

        // A broken config: a word where a number belongs, on a known line.
        let broken = reloaded.replace("max_message_size = 100000", "max_message_size = \"lots\"");
        let line_no = broken.lines().position(|l| l.contains("\"lots\"")).unwrap() + 1;
        std::fs::write(&s.h.config_path, &broken).unwrap();
        relay.proc.signal(libc::SIGHUP);
        eventually("the refusal line", 20, || {
            json_lines(&log)
                .iter()
                .any(|l| l["event"] == "reload_refused")
        })
        .await;
        let lines = json_lines(&log);
        let refused = lines
            .iter()
            .find(|l| l["event"] == "reload_refused")
            .unwrap();
        assert_eq!(refused["level"], "ERROR", "{refused}");
        let location = format!("smarthost.toml:{line_no}");
        assert!(
            refused["error"].as_str().unwrap().contains(&location),
            "{location}: {refused}"
        );
        // Still serving, with the config before the broken one.
        let mut c = tls_session(connect_from("127.0.0.1", port).await, &s.h.ca).await;
        let r = send_data(
            &mut c,
            "alice@tenant.example",
            &["bob@partner.example"],
            &message("<r2@x>"),
        )
        .await;
        assert!(queue_id_of(&r).is_some(), "{r:?}");
        eventually("the second message at the sink", 30, || s.sink.count() == 2).await;
        // The deleted message never went out.
        assert!(events(&json_lines(&log), "delivered", &doomed).is_empty());
        assert_no_raw_controls(&log);
    })
    .await;
}

/// An upstream that refuses `nobody@...` at RCPT with `550 5.1.1` and
/// accepts everything else (no extensions, one command at a time).
async fn refusing_upstream() -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                let _ = write.write_all(b"220 scripted ESMTP\r\n").await;
                let mut line = String::new();
                let mut in_data = false;
                while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            b"250 2.0.0 taken\r\n"
                        } else {
                            b""
                        }
                    } else if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 scripted\r\n"
                    } else if upper.starts_with("RCPT") && upper.contains("NOBODY@") {
                        b"550 5.1.1 no such user\r\n"
                    } else if upper.starts_with("DATA") {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
                        break;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

/// A recipient refused for good is `bounced` with the notice's own queue
/// id, and that notice has its own trail (accepted as `source="dsn"`,
/// delivered); a message whose upstream stays down past `max_lifetime` is
/// `expired`, and so is its notice, which (to `<>`) gets no notice itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_and_expiry_name_the_notice() {
    within(120, async {
        let scripted = refusing_upstream().await;
        let upstream = upstream_toml("scripted", format!("127.0.0.1:{scripted}"), "none");
        let s = setup("[log]\nformat = \"json\"\n", Some(&upstream)).await;
        let relay = Relay::start(&s.h).await;
        let (port, log) = (relay.port, relay.log.clone());
        let mut c = tls_session(connect_from("127.0.0.1", port).await, &s.h.ca).await;
        let r = send_data(
            &mut c,
            "alice@tenant.example",
            &["bob@partner.example", "nobody@partner.example"],
            &message("<b@x>"),
        )
        .await;
        let id = queue_id_of(&r).unwrap();
        eventually("the bounce line", 20, || {
            !events(&json_lines(&log), "bounced", &id).is_empty()
        })
        .await;
        let lines = json_lines(&log);
        let bounced = events(&lines, "bounced", &id)[0];
        assert_eq!(bounced["rcpt"], "nobody@partner.example", "{bounced}");
        assert!(
            bounced["reply"].as_str().unwrap().starts_with("550 5.1.1"),
            "{bounced}"
        );
        let notice = bounced["bounce_id"].as_str().unwrap().to_owned();
        assert_eq!(events(&lines, "delivered", &id).len(), 1);
        let accepted = events(&lines, "accepted", &notice);
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        assert_eq!(accepted[0]["source"], "dsn");
        assert_eq!(accepted[0]["original"], id.as_str());
        assert_eq!(accepted[0]["to"], "alice@tenant.example");
        eventually("the notice delivered", 20, || {
            !events(&json_lines(&log), "delivered", &notice).is_empty()
        })
        .await;
    })
    .await;

    within(120, async {
        let down = free_port();
        let dead = upstream_toml("eu-0", format!("127.0.0.1:{down}"), "none");
        let queue = "retry_min = \"1s\"\nretry_max = \"1s\"\nmax_lifetime = \"2s\"\n\n[log]\nformat = \"json\"\n";
        let s = setup(queue, Some(&dead)).await;
        let relay = Relay::start(&s.h).await;
        let (port, log) = (relay.port, relay.log.clone());
        let mut c = tls_session(connect_from("127.0.0.1", port).await, &s.h.ca).await;
        let r = send_data(&mut c, "alice@tenant.example", &["bob@partner.example"], &message("<e@x>")).await;
        let id = queue_id_of(&r).unwrap();
        eventually("the expiry line", 30, || {
            !events(&json_lines(&log), "expired", &id).is_empty()
        })
        .await;
        let lines = json_lines(&log);
        let expired = events(&lines, "expired", &id)[0];
        assert!(expired["reply"].as_str().unwrap().starts_with("554 5.4.7"), "{expired}");
        let notice = expired["bounce_id"].as_str().unwrap().to_owned();
        assert_eq!(events(&lines, "accepted", &notice)[0]["source"], "dsn");
        eventually("the notice's own expiry", 30, || {
            !events(&json_lines(&log), "expired", &notice).is_empty()
        })
        .await;
        let lines = json_lines(&log);
        let last = events(&lines, "expired", &notice)[0];
        assert!(last.get("bounce_id").is_none(), "no notice about a notice: {last}");
    })
    .await;
}
