//! The delivery side of the command line, with the real binary
//! (shared/INTERFACE.md): `queue list` / `flush` / `delete` against a running
//! relay, `check-upstreams`, `sink`, and `demo`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use support::binary::{BIN, Proc, Relay, all_deferred, queue_list, run, wait_banner};
use support::client::{Client, send_data};
use support::harness::{Harness, verified_upstream_toml};
use support::message::{queue_id_of, strip_received};
use support::sink::{Sink, quick_retries_to, sidecar};
use support::wait::{eventually, free_port, holds_within, within};
use tokio::net::TcpStream;

const FROM: &str = "sender@tenant.example";

impl Relay {
    /// Sends `tag`-0 .. `tag`-(n-1) over one STARTTLS session; returns
    /// (queue id, body) per message.
    async fn send(&self, h: &Harness, tag: &str, to: &[&str], n: usize) -> Vec<(String, Vec<u8>)> {
        let mut c = self.tls(&h.ca).await;
        let mut out = Vec::new();
        for i in 0..n {
            let body = format!(
                "Subject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@cli.test>\r\n\r\nbody {i}\r\n"
            )
            .into_bytes();
            let r = send_data(&mut c, FROM, to, &body).await;
            let id = queue_id_of(&r).unwrap_or_else(|| panic!("not queued: {:?}", r.lines));
            out.push((id, body));
        }
        c.cmd("QUIT", "221").await;
        out
    }
}

fn config_arg(h: &Harness) -> String {
    h.config_path.to_str().unwrap().to_owned()
}

/// A relay whose only upstream is down (nothing listens on its port), with
/// retries an hour apart: whatever it accepts stays deferred.
fn harness_with_upstream_down(sink: &Sink) -> Harness {
    Harness::new(&format!(
        "retry_min = \"1h\"\nretry_max = \"1h\"\n\n{}",
        sink.upstream()
    ))
}

// ---------------------------------------------------------------------------
// queue list / flush / delete

#[tokio::test(flavor = "multi_thread")]
async fn queue_list_shows_ids_senders_recipient_states_and_last_reply() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let down = Sink::new(base.path(), "eu");
        let h = harness_with_upstream_down(&down);
        let relay = Relay::start(&h).await;
        let empty = run(&["queue", "list", "--config", &config_arg(&h)]);
        assert!(empty.status.success(), "{}", empty.stderr);
        assert_eq!(empty.stdout.trim(), "0 message(s) queued");
        assert_eq!(queue_list(&h.config_path).len(), 0);

        let mut sent = relay
            .send(&h, "one", &["a@partner.example", "b@partner.example"], 1)
            .await;
        sent.extend(relay.send(&h, "two", &["c@partner.example"], 1).await);
        eventually("both messages deferred", 20, || {
            all_deferred(&queue_list(&h.config_path), 2)
        })
        .await;

        // JSON: oldest first, with the ids the 250s named.
        let now = smarthost::spool::unix_now();
        let entries = queue_list(&h.config_path);
        let ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [sent[0].0.as_str(), sent[1].0.as_str()]);
        for (e, (_, body)) in entries.iter().zip(&sent) {
            assert_eq!(e["sender"], FROM);
            assert!(e["age_seconds"].as_u64().unwrap() < 60, "{e}");
            assert!(e["size"].as_u64().unwrap() > body.len() as u64, "{e}");
            for r in e["recipients"].as_array().unwrap() {
                assert_eq!(r["state"], "deferred", "{r}");
                let reply = r["last_reply"].as_str().unwrap();
                assert!(
                    reply.starts_with("451 4.4.1") && reply.contains("upstream eu"),
                    "{reply}"
                );
                // retry_min = 1h, with +-10 % jitter.
                let next = r["next_attempt"].as_u64().unwrap();
                assert!(next >= now + 3000 && next <= now + 4000, "{next} vs {now}");
            }
        }
        let addresses = |e: &serde_json::Value| -> Vec<String> {
            e["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["address"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            addresses(&entries[0]),
            ["a@partner.example", "b@partner.example"]
        );
        assert_eq!(addresses(&entries[1]), ["c@partner.example"]);

        // Human: one line per message, then the count.
        let out = run(&["queue", "list", "--config", &config_arg(&h)]);
        assert!(out.status.success(), "{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{}", out.stdout);
        assert!(lines[0].starts_with(&sent[0].0), "{}", lines[0]);
        assert!(lines[0].contains(&format!("<{FROM}>")), "{}", lines[0]);
        assert!(
            lines[0].contains("a@partner.example (deferred), b@partner.example (deferred)"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("451 4.4.1"), "{}", lines[0]);
        assert!(lines[1].starts_with(&sent[1].0), "{}", lines[1]);
        assert!(
            lines[1].contains("c@partner.example (deferred)"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "2 message(s) queued");

        // A config without a spool yet: an error, not an empty list.
        let other = Harness::new("");
        let out = run(&["queue", "list", "--config", &config_arg(&other)]);
        assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
        assert!(out.stderr.contains("error:"), "{}", out.stderr);
        drop(relay);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_flush_makes_the_running_relay_retry_at_once() {
    within(90, async {
        let base = tempfile::tempdir().unwrap();
        let mut eu = Sink::new(base.path(), "eu");
        let h = harness_with_upstream_down(&eu);
        let relay = Relay::start(&h).await;
        let sent = relay.send(&h, "flush", &["a@partner.example"], 3).await;
        eventually("3 deferred", 20, || {
            all_deferred(&queue_list(&h.config_path), 3)
        })
        .await;

        // The upstream is back, but the next retry is an hour away.
        eu.start().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(eu.files().is_empty(), "retried before the flush");

        let out = run(&["queue", "flush", "--config", &config_arg(&h)]);
        assert!(out.status.success(), "{}", out.stderr);
        assert!(out.stdout.contains("flush requested"), "{}", out.stdout);
        let flushed = Instant::now();
        assert!(
            holds_within(10, || eu.files().len() >= 3).await,
            "queue flush: {} of 3 delivered 10 s later; queue:\n{}\nrelay log:\n{}",
            eu.files().len(),
            run(&["queue", "list", "--config", &config_arg(&h)]).stdout,
            relay.log()
        );
        let took = flushed.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        eprintln!("delivered {took:?} after queue flush");
        eventually("an empty queue", 10, || h.spool_files() == 0).await;
        // The request was taken (and removed) by the relay.
        assert!(!h.spool_dir().join("flush-requested").exists());
        assert!(relay.log().contains("flush"), "{}", relay.log());
        let mut got: Vec<Vec<u8>> = eu
            .messages()
            .iter()
            .map(|m| strip_received(m).to_vec())
            .collect();
        got.sort();
        let mut want: Vec<Vec<u8>> = sent.into_iter().map(|(_, b)| b).collect();
        want.sort();
        assert_eq!(got, want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_delete_drops_one_message_which_is_never_delivered() {
    within(90, async {
        let base = tempfile::tempdir().unwrap();
        let mut eu = Sink::new(base.path(), "eu");
        // Quick retries: the kept message is delivered by an ordinary retry
        // once the upstream is back (no `queue flush` needed).
        let h = Harness::new(&quick_retries_to(&[&eu]));
        let relay = Relay::start(&h).await;
        let sent = relay.send(&h, "del", &["a@partner.example"], 2).await;
        let (gone, kept) = (&sent[0].0, &sent[1].0);
        eventually("2 deferred", 20, || {
            all_deferred(&queue_list(&h.config_path), 2)
        })
        .await;

        let out = run(&["queue", "delete", gone, "--config", &config_arg(&h)]);
        assert!(out.status.success(), "{}", out.stderr);
        assert!(
            out.stdout.contains(&format!("deleted {gone}")),
            "{}",
            out.stdout
        );
        let ids: Vec<String> = queue_list(&h.config_path)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(&ids[0], kept);
        let human = run(&["queue", "list", "--config", &config_arg(&h)]);
        assert!(!human.stdout.contains(gone.as_str()), "{}", human.stdout);
        assert!(
            human.stdout.contains("1 message(s) queued"),
            "{}",
            human.stdout
        );

        // Deleting it again, or something that is not a queue id: exit 1.
        let again = run(&["queue", "delete", gone, "--config", &config_arg(&h)]);
        assert_eq!(again.status.code(), Some(1));
        assert!(
            again.stderr.contains("no queued message"),
            "{}",
            again.stderr
        );
        for bad in ["../x", "../msg/x", "/etc/passwd", "0A1B/..", "xyz"] {
            let out = run(&["queue", "delete", bad, "--config", &config_arg(&h)]);
            assert_eq!(out.status.code(), Some(1), "{bad}: {}", out.stdout);
            assert!(
                out.stderr.contains("not a queue id"),
                "{bad}: {}",
                out.stderr
            );
        }
        assert_eq!(
            queue_list(&h.config_path).len(),
            1,
            "a bad delete touched the queue"
        );

        // The upstream returns and the queue is retried: only the kept one arrives.
        eu.start().await;
        eventually("the kept message delivered", 15, || !eu.files().is_empty()).await;
        eventually("an empty queue", 10, || h.spool_files() == 0).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = eu.messages();
        assert_eq!(got.len(), 1);
        assert_eq!(strip_received(&got[0]), sent[1].1.as_slice());
        assert!(String::from_utf8_lossy(&got[0]).contains(kept.as_str()));
        // Still running, and the spool holds no debris of the deleted message.
        assert!(files_named(&h.spool_dir().join("msg"), gone).is_empty());
        drop(relay);
    })
    .await;
}

/// Files in `dir` whose name contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(needle))
        .collect()
}

// ---------------------------------------------------------------------------
// check-upstreams

/// The table row for `name`, as columns.
fn row<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_upstreams_exit_0_with_a_table_when_all_answer() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let eu = Sink::started(base.path(), "eu").await;
        let us = Sink::started(base.path(), "us").await;
        let h = Harness::new(&format!("{}{}", eu.upstream(), us.upstream()));
        let out = run(&["check-upstreams", "--config", &config_arg(&h)]);
        assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
        let header: Vec<&str> = out
            .stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "upstream", "address", "connect", "starttls", "verified", "auth", "result"
            ]
        );
        for s in [&eu, &us] {
            let r = row(&out.stdout, &s.name);
            assert_eq!(
                r,
                [
                    s.name.as_str(),
                    &format!("127.0.0.1:{}", s.port),
                    "ok",
                    "no",
                    "no",
                    "-",
                    "ok"
                ],
                "{}",
                out.stdout
            );
        }
        assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_upstreams_exit_1_naming_the_one_that_is_down() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let mut eu = Sink::new(base.path(), "eu");
        let down = Sink::new(base.path(), "us");
        eu.start().await;
        let h = Harness::new(&format!("{}{}", eu.upstream(), down.upstream()));
        let out = run(&["check-upstreams", "--config", &config_arg(&h)]);
        assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
        assert_eq!(
            *row(&out.stdout, "eu").last().unwrap(),
            "ok",
            "{}",
            out.stdout
        );
        let failed = out.stdout.lines().find(|l| l.starts_with("us ")).unwrap();
        assert!(failed.contains("FAILED"), "{failed}");
        assert!(
            failed.contains(&format!("127.0.0.1:{}", down.port)),
            "{failed}"
        );
        assert!(!row(&out.stdout, "eu").join(" ").contains("FAILED"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_upstreams_verifies_starttls_to_a_sink_with_the_harness_certificate() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let h = Harness::new("");
        let mut secure = Sink::new(base.path(), "secure");
        secure.tls = Some((
            h.dir.path().join("server.crt"),
            h.dir.path().join("server.key"),
        ));
        secure.start().await;
        let upstream = |name: &str, tls_name: &str| {
            let address = format!("127.0.0.1:{}", secure.port);
            verified_upstream_toml(name, address, &h.ca_path(), tls_name)
        };
        let config = h.dir.path().join("tls.toml");
        let base_text = std::fs::read_to_string(&h.config_path).unwrap();
        std::fs::write(
            &config,
            format!("{base_text}{}", upstream("secure", "localhost")),
        )
        .unwrap();
        let out = run(&["check-upstreams", "--config", config.to_str().unwrap()]);
        assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
        let r = row(&out.stdout, "secure");
        assert_eq!(&r[2..], ["ok", "yes", "yes", "-", "ok"], "{}", out.stdout);

        // The same sink under a name its certificate does not carry: refused.
        std::fs::write(
            &config,
            format!(
                "{base_text}{}{}",
                upstream("secure", "localhost"),
                upstream("wrongname", "other.example")
            ),
        )
        .unwrap();
        let out = run(&["check-upstreams", "--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
        assert_eq!(*row(&out.stdout, "secure").last().unwrap(), "ok");
        let failed = row(&out.stdout, "wrongname").join(" ");
        assert!(failed.contains("FAILED"), "{failed}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// sink

#[tokio::test(flavor = "multi_thread")]
async fn sink_writes_each_message_to_a_file_with_its_envelope() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(base.path(), "inbox");
        sink.start().await;
        let mut c = Client::new(TcpStream::connect(("127.0.0.1", sink.port)).await.unwrap());
        c.hello().await;
        // A dot-stuffed line: the file holds it unstuffed.
        let wire =
            b"Subject: to the sink\r\nMessage-ID: <sink@cli.test>\r\n\r\n..leading dot\r\nend\r\n";
        let stored =
            b"Subject: to the sink\r\nMessage-ID: <sink@cli.test>\r\n\r\n.leading dot\r\nend\r\n";
        let r = send_data(
            &mut c,
            FROM,
            &["x@partner.example", "y@partner.example"],
            wire,
        )
        .await;
        assert_eq!(r.status(), "250 2.0.0", "{:?}", r.lines);
        c.cmd("QUIT", "221").await;
        eventually("the message file", 10, || sink.files().len() == 1).await;
        let file = &sink.files()[0];
        assert_eq!(std::fs::read(file).unwrap(), stored);
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let (millis, n) = stem.split_once('-').unwrap();
        assert!(
            millis.parse::<u64>().is_ok() && n.parse::<u64>().is_ok(),
            "{stem}"
        );
        let sidecar = sidecar(file);
        assert_eq!(sidecar["mail_from"], FROM);
        assert_eq!(
            sidecar["rcpt_to"],
            serde_json::json!(["x@partner.example", "y@partner.example"])
        );
        assert_eq!(sidecar["tls"], false);
    })
    .await;
}

// ---------------------------------------------------------------------------
// demo

/// Greeting, EHLO, STARTTLS trusting any certificate, EHLO again.
async fn starttls_any(port: u16) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut c = Client::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    c.hello().await;
    c.cmd("MAIL FROM:<early@example.com>", "530 5.7.0").await;
    c.cmd("STARTTLS", "220").await;
    // Any certificate (the demo's is self-signed); signatures still checked.
    let tls = tokio_rustls::TlsConnector::from(smarthost::outbound::tls::unverified_config())
        .connect(ServerName::try_from("localhost").unwrap(), c.stream)
        .await
        .expect("TLS handshake with the demo");
    let mut c = Client::new(tls);
    c.cmd("EHLO client.test", "250").await;
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_instructions_delivers_round_robin_and_stops_on_sigterm() {
    within(90, async {
        let cwd = tempfile::tempdir().unwrap();
        let port = free_port();
        let (out, err) = (cwd.path().join("demo.out"), cwd.path().join("demo.err"));
        let mut demo = Proc {
            child: Command::new(BIN)
                .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
                .current_dir(cwd.path())
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&err).unwrap())
                .spawn()
                .expect("spawn smarthost demo"),
        };
        wait_banner(&mut demo, port, &err).await.unwrap();

        let printed = std::fs::read_to_string(&out).unwrap();
        let state = cwd.path().join("smarthost-demo").canonicalize().unwrap();
        for needle in [
            format!("127.0.0.1:{port}"),
            format!("swaks --server 127.0.0.1 --port {port} --tls"),
            state.join("upstream-eu").display().to_string(),
            state.join("upstream-us").display().to_string(),
            "queue list --config".to_owned(),
        ] {
            assert!(printed.contains(&needle), "{needle:?} not in:\n{printed}");
        }

        let sinks = [state.join("upstream-eu"), state.join("upstream-us")];
        let emls = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "eml")
                        && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect()
        };
        let mut c = starttls_any(port).await;
        let mut bodies = Vec::new();
        for i in 0..2 {
            let body = format!(
                "Subject: demo {i}\r\nMessage-ID: <demo-{i}@cli.test>\r\n\r\nhello {i}\r\n"
            )
            .into_bytes();
            let r = send_data(&mut c, "you@example.com", &["someone@example.net"], &body).await;
            assert_eq!(r.status(), "250 2.0.0", "{:?}", r.lines);
            bodies.push(body);
            if i == 0 {
                // The first lands in one of the two before the second is sent.
                eventually("the first message at a sink", 20, || {
                    sinks.iter().map(|d| emls(d).len()).sum::<usize>() == 1
                })
                .await;
            }
        }
        c.cmd("QUIT", "221").await;
        eventually("both messages at the sinks", 20, || {
            sinks.iter().map(|d| emls(d).len()).sum::<usize>() == 2
        })
        .await;
        // Round-robin: one in each.
        let (eu, us) = (emls(&sinks[0]), emls(&sinks[1]));
        assert_eq!((eu.len(), us.len()), (1, 1), "eu {eu:?}, us {us:?}");
        let mut got: Vec<Vec<u8>> = [&eu[0], &us[0]]
            .iter()
            .map(|f| {
                let m = std::fs::read(f).unwrap();
                let header_len = m.len() - strip_received(&m).len();
                let header = String::from_utf8_lossy(&m[..header_len]).into_owned();
                assert!(
                    header.contains("by smarthost.demo (smarthost) with ESMTPS"),
                    "{header}"
                );
                m[header_len..].to_vec()
            })
            .collect();
        got.sort();
        assert_eq!(got, bodies);

        demo.signal(libc::SIGTERM);
        let status = demo
            .wait_for(Duration::from_secs(15))
            .expect("demo stops within 15 s of SIGTERM");
        assert_eq!(
            status.code(),
            Some(0),
            "{}",
            std::fs::read_to_string(&err).unwrap()
        );
    })
    .await;
}
