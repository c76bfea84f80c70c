//! The admin HTTP endpoint, black box: the real `smarthost serve` with
//! `[admin]`, real `smarthost sink` upstreams, mail sent over STARTTLS on
//! loopback. `/metrics` is read by the reference Prometheus text parser
//! (Python's prometheus_client) and checked against what the wire saw; the
//! page is rendered by headless Chromium.
//!
//! Needs python3 with prometheus-client and chromium
//! (scripts/install-test-deps.sh installs both).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::binary::{Output, Relay, check_config, run};
use support::client::{send_data, tls_session};
use support::deliveries::received;
use support::harness::Harness;
use support::message::{message, queue_id_of};
use support::pki::TestCa;
use support::sink::{Sink, quick_retries_to};
use support::wait::{eventually, free_port, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP response: status, headers (lower-case names), body.
struct Http {
    status: u16,
    headers: String,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on 127.0.0.1:port, HTTP/1.1 with `Connection: close`.
async fn get(port: u16, path: &str, token: Option<&str>) -> Http {
    let mut s = within(10, TcpStream::connect(("127.0.0.1", port)))
        .await
        .unwrap_or_else(|e| panic!("admin port {port}: {e}"));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within(10, s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Http {
        status: status_line.split(' ').nth(1).unwrap().parse().unwrap(),
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

/// Samples as the Prometheus text parser reads them: (name, labels) -> value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// The exposition is OpenMetrics (what the content type says): its strict
/// parser checks the format (HELP on every family, `_total`, units, `# EOF`)
/// and gives the values; the classic Prometheus text parser must read the
/// same values too (a scraper that asks for text/plain).
const PARSE: &str = r##"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
out = []
for family in openmetrics(text):
    if not family.documentation:
        sys.exit("family %s has no HELP" % family.name)
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
again = sorted([s.name, sorted(s.labels.items()), s.value]
               for f in classic(text.replace("# EOF\n", "")) for s in f.samples)
if again != sorted([n, sorted(l.items()), v] for n, l, v in out):
    sys.exit("the classic parser reads other values: %r" % again)
print(json.dumps(out))
"##;

fn parse_metrics(text: &str) -> Samples {
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-deps.sh)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter().map(|(n, l, v)| ((n, l), v)).collect()
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .get(&(name.to_owned(), labels.clone()))
        .copied()
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:#?}"))
}

async fn scrape(port: u16) -> Samples {
    let r = get(port, "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    parse_metrics(&r.body)
}

/// Scrapes every 50 ms until `done` holds (5 s at most; the last scrape is
/// returned either way, for the assertions to say what it shows).
async fn scrape_until(port: u16, done: impl Fn(&Samples) -> bool) -> Samples {
    let mut m = scrape(port).await;
    for _ in 0..100 {
        if done(&m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = scrape(port).await;
    }
    m
}

/// A relay with `[admin]` on its own port, delivering to `sinks`.
struct Setup {
    h: Harness,
    admin: u16,
}

fn setup(sinks: &[&Sink], admin_extra: &str) -> Setup {
    let admin = free_port();
    let h = Harness::new(&format!(
        "{}[admin]\naddress = \"127.0.0.1:{admin}\"\n{admin_extra}\n",
        quick_retries_to(sinks)
    ));
    Setup { h, admin }
}

/// Sends one message over STARTTLS; returns the queue id from the 250.
async fn send(relay: &Relay, ca: &TestCa, from: &str, to: &str, tag: &str) -> String {
    let mut c = relay.tls(ca).await;
    let body = message(tag, "sender@corp.test", tag, 300);
    let reply = send_data(&mut c, from, &[to], &body).await;
    c.cmd("QUIT", "221").await;
    queue_id_of(&reply).unwrap_or_else(|| panic!("not queued: {:?}", reply.lines))
}

#[tokio::test]
async fn metrics_and_api_follow_the_wire() {
    within(120, async {
        let base = tempfile::tempdir().unwrap();
        let eu = Sink::started(base.path(), "eu").await;
        let mut us = Sink::started(base.path(), "us").await;
        let s = setup(&[&eu, &us], "");
        let relay = Relay::start(&s.h).await;

        let before = scrape(s.admin).await;
        assert_eq!(
            value(&before, "smarthost_messages_accepted_total", &[]),
            0.0
        );

        // A refusal with a reason: MAIL before STARTTLS on a require_tls listener.
        let mut plain = relay.connect().await;
        plain.expect("220").await;
        plain.cmd("EHLO client.test", "250").await;
        plain.cmd("MAIL FROM:<a@corp.test>", "530").await;
        plain.cmd("QUIT", "221").await;

        const N: usize = 6;
        let mut ids = Vec::new();
        for i in 0..N {
            let tag = format!("m{i}@corp.test");
            ids.push(
                send(
                    &relay,
                    &s.h.ca,
                    "sender@corp.test",
                    "rcpt@partner.example",
                    &tag,
                )
                .await,
            );
        }
        eventually("every message at a sink", 30, || {
            eu.count() + us.count() == N
        })
        .await;
        // The removal from the spool follows the sink's 250.
        let m = scrape_until(s.admin, |m| {
            value(m, "smarthost_queue_messages", &[]) == 0.0
        })
        .await;
        assert_eq!(
            value(&m, "smarthost_messages_accepted_total", &[]),
            N as f64
        );
        assert_eq!(
            value(
                &m,
                "smarthost_messages_delivered_total",
                &[("upstream", "eu")]
            ),
            eu.count() as f64
        );
        assert_eq!(
            value(
                &m,
                "smarthost_messages_delivered_total",
                &[("upstream", "us")]
            ),
            us.count() as f64
        );
        assert!(eu.count() > 0 && us.count() > 0, "round-robin used both");
        assert_eq!(value(&m, "smarthost_queue_messages", &[]), 0.0);
        assert_eq!(
            value(&m, "smarthost_queue_oldest_message_age_seconds", &[]),
            0.0
        );
        assert_eq!(
            value(&m, "smarthost_refused_total", &[("reason", "tls_required")]),
            1.0
        );
        assert_eq!(
            value(
                &m,
                "smarthost_tls_handshakes_total",
                &[("version", "TLSv1_3")]
            ),
            N as f64
        );
        assert_eq!(
            value(&m, "smarthost_accept_latency_seconds_count", &[]),
            N as f64
        );
        assert_eq!(
            value(&m, "smarthost_delivery_latency_seconds_count", &[]),
            N as f64
        );
        assert_eq!(
            value(&m, "smarthost_upstream_up", &[("upstream", "eu")]),
            1.0
        );
        assert_eq!(
            value(&m, "smarthost_upstream_up", &[("upstream", "us")]),
            1.0
        );
        assert_eq!(value(&m, "smarthost_messages_bounced_total", &[]), 0.0);

        // The API: every id from the 250s, delivered, by the upstream whose sink has it.
        let api = get(s.admin, "/api/messages", None).await;
        assert_eq!(api.status, 200);
        assert!(
            api.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        let list: Vec<serde_json::Value> = serde_json::from_str(&api.body).unwrap();
        let listed: Vec<&str> = list.iter().map(|m| m["id"].as_str().unwrap()).collect();
        let mut newest_first = ids.clone();
        newest_first.reverse();
        assert_eq!(
            listed, newest_first,
            "newest first, the ids of the 250 replies"
        );
        let got = received(&[&eu, &us]);
        for (i, m) in list.iter().enumerate() {
            assert_eq!(m["sender"], "sender@corp.test");
            assert_eq!(m["tls_version"], "TLSv1_3");
            assert!(m["client"].as_str().unwrap().starts_with("127.0.0.1:"));
            let r = &m["recipients"][0];
            assert_eq!(r["address"], "rcpt@partner.example");
            assert_eq!(r["state"], "delivered", "{m}");
            assert!(r["last_reply"].as_str().unwrap().starts_with("250"), "{m}");
            let tag = format!("m{}@corp.test", N - 1 - i);
            let sink = &got[&tag][0].0;
            assert_eq!(r["upstream"].as_str().unwrap(), sink, "{m}");
            let trail: Vec<&str> = m["trail"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["what"].as_str().unwrap())
                .collect();
            assert_eq!(trail, ["accepted", "delivered"], "{m}");
        }
        let one = get(s.admin, &format!("/api/messages?q={}", &ids[2][8..]), None).await;
        let one: Vec<serde_json::Value> = serde_json::from_str(&one.body).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0]["id"], ids[2].as_str());
        let none = get(s.admin, "/api/messages?state=bounced", None).await;
        assert_eq!(none.body, "[]");

        // An upstream goes away: it is marked down, mail fails over, and it
        // comes back up once it answers again.
        us.stop();
        let mut k = 0;
        let mut down = false;
        for _ in 0..40 {
            k += 1;
            send(
                &relay,
                &s.h.ca,
                "sender@corp.test",
                "rcpt@partner.example",
                &format!("d{k}@corp.test"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let m = scrape(s.admin).await;
            if value(&m, "smarthost_upstream_up", &[("upstream", "us")]) == 0.0 {
                assert_eq!(
                    value(&m, "smarthost_upstream_up", &[("upstream", "eu")]),
                    1.0
                );
                assert!(
                    value(
                        &m,
                        "smarthost_upstream_failures_total",
                        &[("upstream", "us")]
                    ) >= 1.0
                );
                down = true;
                break;
            }
        }
        assert!(
            down,
            "upstream_up{{us}} never went to 0 while its sink was stopped"
        );
        us.start().await;
        let mut up = false;
        for _ in 0..60 {
            k += 1;
            send(
                &relay,
                &s.h.ca,
                "sender@corp.test",
                "rcpt@partner.example",
                &format!("d{k}@corp.test"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            let m = scrape(s.admin).await;
            if value(&m, "smarthost_upstream_up", &[("upstream", "us")]) == 1.0 {
                up = true;
                break;
            }
        }
        assert!(up, "upstream_up{{us}} never came back to 1");
        let total = N + k;
        eventually("every message at a sink", 30, || {
            eu.count() + us.count() >= total
        })
        .await;
        let m = scrape_until(s.admin, |m| {
            value(m, "smarthost_queue_messages", &[]) == 0.0
        })
        .await;
        assert_eq!(
            value(&m, "smarthost_messages_accepted_total", &[]),
            total as f64
        );
        assert_eq!(eu.count() + us.count(), total, "no duplicates here");
        assert_eq!(
            value(
                &m,
                "smarthost_messages_delivered_total",
                &[("upstream", "eu")]
            ),
            eu.count() as f64
        );
        assert_eq!(
            value(
                &m,
                "smarthost_messages_delivered_total",
                &[("upstream", "us")]
            ),
            us.count() as f64
        );
        assert_eq!(value(&m, "smarthost_connections_active", &[]), 0.0);
        drop(relay);
    })
    .await;
}

#[tokio::test]
async fn healthz_turns_503_while_draining_after_sigterm() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let eu = Sink::started(base.path(), "eu").await;
        let s = setup(&[&eu], "");
        let mut relay = Relay::start(&s.h).await;
        let r = get(s.admin, "/healthz", None).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

        // A message half sent keeps the relay draining.
        let mut c = relay.tls(&s.h.ca).await;
        c.cmd("MAIL FROM:<a@corp.test>", "250").await;
        c.cmd("RCPT TO:<b@partner.example>", "250").await;
        c.cmd("DATA", "354").await;
        c.send(b"Subject: draining\r\nMessage-ID: <drain@corp.test>\r\n\r\nhalf")
            .await;

        relay.proc.signal(libc::SIGTERM);
        let mut saw_503 = false;
        for _ in 0..100 {
            let r = get(s.admin, "/healthz", None).await;
            if r.status == 503 {
                saw_503 = true;
                break;
            }
            assert_eq!(r.status, 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(saw_503, "/healthz never said 503 after SIGTERM");
        assert!(relay.proc.exited().is_none(), "the relay is still draining");
        // Still answering 503 (not refusing connections) during the drain.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(s.admin, "/healthz", None).await.status, 503);

        // The message in flight is finished and acknowledged; then it exits 0.
        c.send(b" and done\r\n.\r\n").await;
        let reply = c.reply().await;
        assert!(queue_id_of(&reply).is_some(), "{:?}", reply.lines);
        c.send(b"QUIT\r\n").await;
        let status = relay
            .proc
            .wait_for(Duration::from_secs(20))
            .expect("exits after the drain");
        assert!(status.success(), "{status}");
        assert!(TcpStream::connect(("127.0.0.1", s.admin)).await.is_err());
    })
    .await;
}

/// The TCP ports process `pid` listens on (its sockets in LISTEN state).
fn listening_ports(pid: i32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort();
    ports
}

#[tokio::test]
async fn admin_listens_only_when_configured() {
    within(30, async {
        let h = Harness::new("");
        let relay = Relay::start(&h).await;
        assert_eq!(
            listening_ports(relay.pid()),
            [relay.port],
            "only SMTP without [admin]"
        );
        drop(relay);
        let s = setup(&[], "");
        let relay = Relay::start(&s.h).await;
        let mut expected = vec![relay.port, s.admin];
        expected.sort();
        assert_eq!(listening_ports(relay.pid()), expected);
    })
    .await;
}

#[tokio::test]
async fn metrics_and_recent_messages_survive_a_reload() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let eu = Sink::started(base.path(), "eu").await;
        let s = setup(&[&eu], "");
        let relay = Relay::start(&s.h).await;
        let first = send(
            &relay,
            &s.h.ca,
            "a@corp.test",
            "b@partner.example",
            "r1@corp.test",
        )
        .await;
        eventually("delivered", 20, || eu.count() == 1).await;
        relay.proc.signal(libc::SIGHUP);
        eventually("the reload", 20, || {
            relay.log().contains("configuration reloaded")
        })
        .await;
        let second = send(
            &relay,
            &s.h.ca,
            "a@corp.test",
            "b@partner.example",
            "r2@corp.test",
        )
        .await;
        eventually("delivered", 20, || eu.count() == 2).await;
        let m = scrape_until(s.admin, |m| {
            value(
                m,
                "smarthost_messages_delivered_total",
                &[("upstream", "eu")],
            ) == 2.0
        })
        .await;
        assert_eq!(value(&m, "smarthost_messages_accepted_total", &[]), 2.0);
        assert_eq!(
            value(
                &m,
                "smarthost_messages_delivered_total",
                &[("upstream", "eu")]
            ),
            2.0
        );
        let api = get(s.admin, "/api/messages", None).await;
        let list: Vec<serde_json::Value> = serde_json::from_str(&api.body).unwrap();
        let ids: Vec<&str> = list.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [second.as_str(), first.as_str()]);
        for m in &list {
            assert_eq!(m["recipients"][0]["state"], "delivered", "{m}");
        }
    })
    .await;
}

#[tokio::test]
async fn the_token_is_enforced_but_not_for_healthz() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin-token");
        std::fs::write(&token, "s3cret-token-value\n").unwrap();
        let s = setup(
            &[],
            &format!("token_file = {:?}\n", token.to_str().unwrap()),
        );
        let relay = Relay::start(&s.h).await;
        for path in ["/metrics", "/api/messages", "/", "/message/00AB"] {
            let r = get(s.admin, path, None).await;
            assert_eq!(r.status, 401, "{path} without a token");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            let r = get(s.admin, path, Some("s3cret-token-valuX")).await;
            assert_eq!(r.status, 401, "{path} with a wrong token");
            let r = get(s.admin, path, Some("s3cret-token-value-and-more")).await;
            assert_eq!(r.status, 401, "{path} with a longer token");
        }
        assert_eq!(
            get(s.admin, "/metrics", Some("s3cret-token-value"))
                .await
                .status,
            200
        );
        assert_eq!(
            get(s.admin, "/api/messages", Some("s3cret-token-value"))
                .await
                .status,
            200
        );
        assert_eq!(
            get(s.admin, "/", Some("s3cret-token-value")).await.status,
            200
        );
        assert_eq!(get(s.admin, "/healthz", None).await.status, 200);
        drop(relay);
    })
    .await;
}

/// `check-config` on a config file holding `text`.
fn check_text(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smarthost.toml");
    std::fs::write(&path, text).unwrap();
    check_config(&path)
}

const BASE: &str = "hostname = \"relay.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"starttls\"\n[access]\nrelay_networks = [\"10.0.0.0/8\"]\n[queue]\npath = \"spool\"\n";

#[test]
fn check_config_judges_the_admin_section() {
    let open = check_text(&format!("{BASE}[admin]\naddress = \"0.0.0.0:8025\"\n"));
    assert_eq!(open.status.code(), Some(1), "{}", open.stdout);
    assert!(
        open.stderr.contains("admin.address") && open.stderr.contains("token_file"),
        "{}",
        open.stderr
    );
    let bad = check_text(&format!("{BASE}[admin]\naddress = \"localhost:80x\"\n"));
    assert_eq!(bad.status.code(), Some(1), "{}", bad.stdout);
    assert!(
        bad.stderr.contains("address") && bad.stderr.contains("admin"),
        "{}",
        bad.stderr
    );
    let missing = check_text(&format!(
        "{BASE}[admin]\naddress = \"0.0.0.0:8025\"\ntoken_file = \"/nonexistent/token\"\n"
    ));
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        missing.stderr.contains("admin.token_file"),
        "{}",
        missing.stderr
    );
    let loopback = check_text(&format!("{BASE}[admin]\naddress = \"127.0.0.1:8025\"\n"));
    assert_eq!(loopback.status.code(), Some(0), "{}", loopback.stderr);
    let v6 = check_text(&format!(
        "{BASE}[admin]\naddress = \"[::1]:8025\"\nrecent_messages = 5\n"
    ));
    assert_eq!(v6.status.code(), Some(0), "{}", v6.stderr);
}

/// Headless Chromium's screenshot of `url`; the PNG's size.
fn screenshot(url: &str, png: &Path) -> u64 {
    let _ = std::fs::remove_file(png);
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
            url,
        ])
        .output()
        .expect("chromium (scripts/install-test-deps.sh)");
    assert!(
        png.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    bytes.len() as u64
}

fn target_dir() -> PathBuf {
    // tests run with the package root as the working directory
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/admin");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_page_escapes_everything_and_renders_in_chromium() {
    within(90, async {
        let base = tempfile::tempdir().unwrap();
        let eu = Sink::started(base.path(), "eu").await;
        let s = setup(&[&eu], "");
        let relay = Relay::start(&s.h).await;
        let evil = "\"<script>alert(1)</script>\"@x.test";
        let id = send(
            &relay,
            &s.h.ca,
            evil,
            "rcpt@partner.example",
            "evil@corp.test",
        )
        .await;
        let mut ids = vec![id.clone()];
        for i in 0..4 {
            ids.push(
                send(
                    &relay,
                    &s.h.ca,
                    &format!("user{i}@corp.test"),
                    "rcpt@partner.example",
                    &format!("p{i}@corp.test"),
                )
                .await,
            );
        }
        eventually("delivered", 30, || eu.count() == 5).await;

        let page = get(s.admin, "/", None).await;
        assert_eq!(page.status, 200);
        let csp = page.header("content-security-policy").unwrap();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'unsafe-inline'"),
            "{csp}"
        );
        assert!(
            page.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        for id in &ids {
            assert!(
                page.body.contains(&format!("/message/{id}")),
                "raw GET / lists {id}"
            );
        }
        assert!(!page.body.contains("<script"), "unescaped: {}", page.body);
        assert!(
            page.body
                .contains("&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;@x.test")
        );
        assert!(!page.body.contains("src=\"http"), "no external assets");

        let detail = get(s.admin, &format!("/message/{id}"), None).await;
        assert_eq!(detail.status, 200);
        assert!(!detail.body.contains("<script"));
        for what in ["accepted", "delivered", "250 2.0.0 queued as", "eu"] {
            assert!(
                detail.body.contains(what),
                "{what} in the trail: {}",
                detail.body
            );
        }
        assert_eq!(get(s.admin, "/message/not-an-id", None).await.status, 404);
        assert_eq!(get(s.admin, "/message/00AB", None).await.status, 404);
        // The search form filters on the server.
        let found = get(s.admin, "/?q=user2%40corp&state=delivered", None).await;
        assert!(
            found.body.contains(&ids[3]) && !found.body.contains(&ids[1]),
            "{}",
            found.body
        );

        let dir = target_dir();
        let list_png = dir.join("admin-page.png");
        let size = screenshot(&format!("http://127.0.0.1:{}/", s.admin), &list_png);
        println!("screenshot {} ({size} bytes)", list_png.display());
        assert!(size > 20_000, "a near-empty screenshot: {size} bytes");
        let detail_png = dir.join("admin-message.png");
        let size = screenshot(
            &format!("http://127.0.0.1:{}/message/{id}", s.admin),
            &detail_png,
        );
        println!("screenshot {} ({size} bytes)", detail_png.display());
        assert!(size > 20_000, "a near-empty screenshot: {size} bytes");
        drop(relay);
    })
    .await;
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    within(30, async {
        let h = Harness::new("[limits]\nmax_message_size = 1000\n");
        let ctx = h.context();
        // Not in relay_networks: 554 5.7.1 at RCPT.
        let mut c = tls_session(h.session(&ctx, "192.0.2.7:4000"), &h.ca).await;
        c.cmd("MAIL FROM:<a@corp.test>", "250").await;
        c.cmd("RCPT TO:<b@partner.example>", "554 5.7.1").await;
        // Over max_message_size as declared: 552 5.3.4.
        let mut c = tls_session(h.session(&ctx, "127.0.0.1:4001"), &h.ca).await;
        c.cmd("MAIL FROM:<a@corp.test> SIZE=5000", "552 5.3.4")
            .await;
        // Before STARTTLS on a TLS-required listener: 530 5.7.0, twice.
        let mut c = h.session(&ctx, "127.0.0.1:4002");
        c.hello().await;
        c.cmd("MAIL FROM:<a@corp.test>", "530 5.7.0").await;
        c.cmd("MAIL FROM:<a@corp.test>", "530 5.7.0").await;
        // Protocol mistakes are not refusals an operator graphs.
        c.cmd("FOO", "500").await;
        let m = parse_metrics(&ctx.telemetry.metrics.encode());
        let refused = |reason| value(&m, "smarthost_refused_total", &[("reason", reason)]);
        assert_eq!(refused("relay_denied"), 1.0);
        assert_eq!(refused("size"), 1.0);
        assert_eq!(refused("tls_required"), 2.0);
        let reasons = m
            .keys()
            .filter(|(n, _)| n == "smarthost_refused_total")
            .count();
        assert_eq!(reasons, 3, "{m:#?}");
        assert_eq!(
            value(
                &m,
                "smarthost_tls_handshakes_total",
                &[("version", "TLSv1_3")]
            ),
            2.0
        );
    })
    .await;
}

#[tokio::test]
async fn a_deleted_message_shows_as_deleted() {
    within(30, async {
        // No upstream: accepted mail stays queued.
        let s = setup(&[], "");
        let relay = Relay::start(&s.h).await;
        let kept = send(
            &relay,
            &s.h.ca,
            "a@corp.test",
            "b@partner.example",
            "k@corp.test",
        )
        .await;
        let gone = send(
            &relay,
            &s.h.ca,
            "a@corp.test",
            "b@partner.example",
            "g@corp.test",
        )
        .await;
        let states = |body: &str| -> Vec<(String, String)> {
            let list: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
            list.iter()
                .map(|m| {
                    let state = m["recipients"][0]["state"].as_str().unwrap().to_owned();
                    (m["id"].as_str().unwrap().to_owned(), state)
                })
                .collect()
        };
        let before = get(s.admin, "/api/messages", None).await;
        assert_eq!(
            states(&before.body),
            [
                (gone.clone(), "queued".into()),
                (kept.clone(), "queued".into())
            ]
        );
        let m = parse_metrics(&get(s.admin, "/metrics", None).await.body);
        assert_eq!(value(&m, "smarthost_queue_messages", &[]), 2.0);
        assert!(value(&m, "smarthost_queue_oldest_message_age_seconds", &[]) > 0.0);

        let out = run(&[
            "queue",
            "delete",
            &gone,
            "--config",
            relay.config.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", out.stderr);
        // A message still in the journal is dropped by the relay when it
        // takes the note, within a second.
        let expected = [
            (gone.clone(), "deleted".to_owned()),
            (kept.clone(), "queued".to_owned()),
        ];
        let mut after = get(s.admin, "/api/messages", None).await;
        for _ in 0..30 {
            if states(&after.body) == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = get(s.admin, "/api/messages", None).await;
        }
        assert_eq!(states(&after.body), expected);
        let page = get(s.admin, &format!("/message/{gone}"), None).await;
        assert!(page.body.contains("deleted"), "{}", page.body);
        let m = parse_metrics(&get(s.admin, "/metrics", None).await.body);
        assert_eq!(value(&m, "smarthost_queue_messages", &[]), 1.0);
    })
    .await;
}
