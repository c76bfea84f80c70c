//! Who may relay: allow-lists from several source addresses, SMTP AUTH as
//! Exchange speaks it, sender rules, per-address limits and PROXY headers.

mod support;

use std::time::{Duration, Instant};

use support::auth::{auth_plain, base64, hash};
use support::client::{connect_from, send_data, tls_session};
use support::harness::Harness;
use support::pki::HOSTNAME;
use tokio::io::AsyncWriteExt;

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";
const PASSWORD: &str = "correct horse battery staple";

/// A relay where only 127.0.0.2 and ::1 may relay unauthenticated, with two
/// users: `exchange01` (any sender) and `tenant-a` (only tenant-a.example).
fn auth_harness(extra: &str) -> Harness {
    let h = Harness::new(&format!(
        "[[user]]\nname = \"exchange01\"\npassword_hash = \"{}\"\n\n[[user]]\nname = \"tenant-a\"\npassword_hash = \"{}\"\nallowed_sender_domains = [\"tenant-a.example\"]\n\n{extra}",
        hash(PASSWORD),
        hash(PASSWORD)
    ));
    h.replace_access_line("relay_networks = [\"127.0.0.2/32\", \"::1/128\"]");
    h
}

#[tokio::test]
async fn exchange_basic_auth_transcript_relays_from_anywhere() {
    let h = auth_harness("");
    let ctx = h.context();
    let mut c = h.session(&ctx, "198.51.100.20:50000");
    let ehlo = c.hello().await;
    assert!(!ehlo.text().contains("AUTH"), "AUTH offered before TLS");
    let mut c = c.starttls_no_ehlo(&h.ca).await;
    let ehlo = c.cmd("EHLO EXCH01.corp.tenant.example", "250").await;
    assert!(
        ehlo.text().contains("250-AUTH PLAIN LOGIN")
            || ehlo.text().contains("250 AUTH PLAIN LOGIN")
    );
    // Exchange's "Basic authentication": AUTH LOGIN, username, password.
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd(&base64("exchange01"), "334 UGFzc3dvcmQ6").await;
    c.cmd(&base64(PASSWORD), "235 2.7.0").await;
    c.cmd("AUTH LOGIN", "503 5.5.1").await;
    let r = send_data(&mut c, FROM, &[TO], b"Subject: authenticated\r\n\r\nx\r\n").await;
    assert_eq!(r.status(), "250 2.0.0");
    let (env, msg) = &h.spooled()[0];
    assert_eq!(env.client.auth.as_deref(), Some("exchange01"));
    assert!(String::from_utf8_lossy(msg).contains("with ESMTPSA"));
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response() {
    let h = auth_harness("");
    let ctx = h.context();
    let c = h.session(&ctx, "198.51.100.21:50000");
    let mut c = tls_session(c, &h.ca).await;
    c.cmd(&auth_plain("exchange01", PASSWORD), "235 2.7.0")
        .await;
    let c = h.session(&ctx, "198.51.100.22:50000");
    let mut c = tls_session(c, &h.ca).await;
    c.cmd("AUTH PLAIN", "334").await;
    c.cmd(
        &base64(&format!("exchange01\0exchange01\0{PASSWORD}")),
        "235 2.7.0",
    )
    .await;
    // Acting as another identity (authzid) is refused.
    let c = h.session(&ctx, "198.51.100.23:50000");
    let mut c = tls_session(c, &h.ca).await;
    c.cmd(
        &format!(
            "AUTH PLAIN {}",
            base64(&format!("tenant-a\0exchange01\0{PASSWORD}"))
        ),
        "535 5.7.8",
    )
    .await;
}

#[tokio::test]
async fn auth_protocol_errors() {
    let h = auth_harness("[limits]\nmax_auth_failures = 10\n");
    let ctx = h.context();
    // Before TLS on a TLS-required listener: 530, and the credentials are not checked.
    let mut c = h.session(&ctx, "198.51.100.30:1");
    c.hello().await;
    c.cmd(&auth_plain("exchange01", PASSWORD), "530 5.7.0")
        .await;
    let mut c = c.starttls(&h.ca).await;
    c.cmd("AUTH LOGIN", "334").await;
    c.cmd("*", "501 5.7.0").await;
    c.cmd("AUTH PLAIN", "334").await;
    c.cmd("not base64 !!", "501 5.5.2").await;
    c.cmd("AUTH CRAM-MD5", "504 5.5.4").await;
    c.cmd("AUTH", "501 5.5.4").await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd("AUTH LOGIN", "503 5.5.1").await;
    // Not authenticated and not in relay_networks: nothing is relayed.
    c.cmd(&format!("RCPT TO:<{TO}>"), "554 5.7.1").await;
    assert_eq!(h.spool_files(), 0);
}

#[tokio::test]
async fn auth_before_tls_on_an_optional_tls_listener_is_538() {
    let h = auth_harness("");
    h.edit_config(
        "tls = \"starttls\"\n",
        "tls = \"starttls\"\nrequire_tls = false\n",
    );
    let ctx = h.context();
    let mut c = h.session(&ctx, "198.51.100.31:1");
    let ehlo = c.hello().await;
    assert!(!ehlo.text().contains("AUTH"));
    c.cmd("AUTH LOGIN", "538 5.7.11").await;
}

#[tokio::test]
async fn no_users_means_no_auth() {
    let h = Harness::new("");
    let ctx = h.context();
    let c = h.session(&ctx, "127.0.0.1:1");
    let mut c = tls_session(c, &h.ca).await;
    let ehlo = c.cmd("EHLO again.example", "250").await;
    assert!(!ehlo.text().contains("AUTH"));
    c.cmd("AUTH LOGIN", "502 5.5.1").await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_alike_then_421() {
    let h = auth_harness("");
    let ctx = h.context();
    let c = h.session(&ctx, "198.51.100.40:1");
    let mut c = tls_session(c, &h.ca).await;
    c.cmd("AUTH LOGIN", "334").await;
    c.cmd(&base64("exchange01"), "334").await;
    c.cmd(&base64("wrong"), "535 5.7.8").await;
    c.cmd("AUTH LOGIN", "334").await;
    c.cmd(&base64("nobody"), "334").await;
    c.cmd(&base64(PASSWORD), "535 5.7.8").await;
    c.cmd(&auth_plain("exchange01", "wrong"), "421 4.7.0").await;
    assert!(c.closed().await);

    // Same work for a known and an unknown name: each attempt from a fresh
    // address (so the throttle adds nothing), medians compared in one run.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..5 {
        for (user, times) in [("exchange01", &mut known), ("nobody", &mut unknown)] {
            let peer = format!("203.0.113.{}:1", 10 + i * 2 + times.len() % 2);
            let peer = if user == "nobody" {
                format!("203.0.113.{}:2", 100 + i)
            } else {
                peer
            };
            let c = h.session(&ctx, &peer);
            let mut c = tls_session(c, &h.ca).await;
            let start = Instant::now();
            c.cmd(&auth_plain(user, "guess"), "535 5.7.8").await;
            times.push(start.elapsed());
        }
    }
    known.sort();
    unknown.sort();
    let ratio = unknown[2].as_secs_f64() / known[2].as_secs_f64();
    assert!(
        (0.4..2.5).contains(&ratio),
        "unknown user {:?} vs wrong password {:?}",
        unknown[2],
        known[2]
    );
}

#[tokio::test]
async fn failures_from_one_address_slow_down_its_next_attempts() {
    let h = auth_harness("[limits]\nmax_auth_failures = 10\n");
    let ctx = h.context();
    let c = h.session(&ctx, "198.51.100.50:1");
    let mut c = tls_session(c, &h.ca).await;
    let mut times = Vec::new();
    for _ in 0..4 {
        let start = Instant::now();
        c.cmd(&auth_plain("exchange01", "wrong"), "535 5.7.8").await;
        times.push(start.elapsed());
    }
    // The throttle waits 0.5 s, 1 s, 2 s before the 2nd, 3rd and 4th checks.
    assert!(times[3] >= Duration::from_secs(2), "{times:?}");
    assert!(times[3] > times[1], "{times:?}");
    // A new connection from the same address waits too; another address does not.
    let c = h.session(&ctx, "198.51.100.50:2");
    let mut c = tls_session(c, &h.ca).await;
    let start = Instant::now();
    c.cmd(&auth_plain("exchange01", PASSWORD), "235").await;
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let c = h.session(&ctx, "198.51.100.51:1");
    let mut c = tls_session(c, &h.ca).await;
    let start = Instant::now();
    c.cmd(&auth_plain("exchange01", PASSWORD), "235").await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn user_sender_domains_and_global_sender_domains() {
    let h = auth_harness("");
    let ctx = h.context();
    let c = h.session(&ctx, "198.51.100.60:1");
    let mut c = tls_session(c, &h.ca).await;
    c.cmd(&auth_plain("tenant-a", PASSWORD), "235").await;
    c.cmd("MAIL FROM:<ceo@tenant-b.example>", "553 5.7.1").await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<ceo@Tenant-A.example>", "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
}

/// A TCP client bound to a chosen loopback source address.
#[tokio::test]
async fn relay_networks_decide_per_source_address_on_loopback() {
    let h = auth_harness("");
    let relay = h.start().await;
    let c = connect_from("127.0.0.2", relay.addr().port()).await;
    let mut c = tls_session(c, &h.ca).await;
    let r = send_data(&mut c, FROM, &[TO], b"Subject: allowed\r\n\r\nx\r\n").await;
    assert_eq!(r.status(), "250 2.0.0");
    let c = connect_from("127.0.0.3", relay.addr().port()).await;
    let mut c = tls_session(c, &h.ca).await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "554 5.7.1").await;
    c.cmd("DATA", "503").await;
    // IPv6 loopback is listed too (when the machine has ::1).
    assert_eq!(h.spooled().len(), 1);
    relay.stop().await;
}

/// The recipient forms of nmap's smtp-open-relay script, for relay.test at
/// [127.0.0.1], probing from an unlisted, unauthenticated address.
#[tokio::test]
async fn open_relay_probe_is_refused_for_every_form() {
    // A prober is cut off after max_errors refusals; raise it to see every form.
    let h = auth_harness("[limits]\nmax_errors = 1000\n");
    let relay = h.start().await;
    let ip = "[127.0.0.1]";
    let d = HOSTNAME;
    let target = "nmap.scanme.org";
    let forms = [
        format!("<relaytest@{target}>"),
        format!("<relaytest%{target}@{ip}>"),
        format!("<relaytest%{target}@{d}>"),
        format!("<\"relaytest@{target}\">"),
        format!("<\"relaytest%{target}\">"),
        format!("<{target}!relaytest>"),
        format!("<\"{target}!relaytest\">"),
        format!("<relaytest@{target}@{ip}>"),
        format!("<@{ip}:relaytest@{target}>"),
        format!("<@{d}:relaytest@{target}>"),
        format!("<{target}!relaytest@{d}>"),
        format!("<{target}!relaytest@{ip}>"),
        format!("<relaytest@{target}@{d}>"),
        format!("<relaytest@{d}>"),
        "<postmaster>".to_owned(),
    ];
    let senders = [
        "<>",
        "<antispam@[127.0.0.1]>",
        "<antispam@relay.test>",
        "<antispam@nmap.scanme.org>",
    ];
    let c = connect_from("127.0.0.3", relay.addr().port()).await;
    let mut c = tls_session(c, &h.ca).await;
    for from in senders {
        for to in &forms {
            c.cmd(&format!("MAIL FROM:{from}"), "250").await;
            c.send(format!("RCPT TO:{to}\r\n")).await;
            let r = c.reply().await;
            assert!(r.code >= 500, "{from} -> {to}: {r:?}");
            c.cmd("DATA", "503").await;
            c.cmd("RSET", "250").await;
        }
    }
    assert_eq!(h.spool_files(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let h = Harness::new("[limits]\nmax_connections_per_ip = 2\n");
    let relay = h.start().await;
    let mut a = connect_from("127.0.0.4", relay.addr().port()).await;
    a.hello().await;
    let mut b = connect_from("127.0.0.4", relay.addr().port()).await;
    b.hello().await;
    let mut c = connect_from("127.0.0.4", relay.addr().port()).await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await);
    let mut other = connect_from("127.0.0.5", relay.addr().port()).await;
    other.hello().await;
    relay.stop().await;
}

#[tokio::test]
async fn proxy_header_address_is_the_one_the_rules_use() {
    let h = Harness::behind_proxy("192.0.2.0/24");
    let relay = h.start().await;
    // v1 from the trusted proxy, for a client in relay_networks: relays.
    let mut c = connect_from("127.0.0.1", relay.addr().port()).await;
    c.stream
        .write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 51000 25\r\n")
        .await
        .unwrap();
    let mut c = tls_session(c, &h.ca).await;
    let r = send_data(&mut c, FROM, &[TO], b"Subject: via proxy\r\n\r\nx\r\n").await;
    assert_eq!(r.status(), "250 2.0.0");
    let (env, msg) = &h.spooled()[0];
    assert_eq!(env.client.address, "192.0.2.44:51000".parse().unwrap());
    assert!(String::from_utf8_lossy(msg).contains("[192.0.2.44]"));
    // v2 for a client outside relay_networks: refused at RCPT.
    let mut c = connect_from("127.0.0.1", relay.addr().port()).await;
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0xc8, 0x00, 0, 25,
    ]);
    c.stream.write_all(&v2).await.unwrap();
    let mut c = tls_session(c, &h.ca).await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "554 5.7.1").await;
    relay.stop().await;
}

#[tokio::test]
async fn proxy_header_from_untrusted_or_missing_closes_without_a_banner() {
    let h = Harness::behind_proxy("192.0.2.0/24");
    let relay = h.start().await;
    let mut c = connect_from("127.0.0.2", relay.addr().port()).await;
    c.stream
        .write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 51000 25\r\n")
        .await
        .unwrap();
    assert!(
        c.try_reply().await.is_none(),
        "untrusted source got a reply"
    );
    let mut c = connect_from("127.0.0.1", relay.addr().port()).await;
    c.stream
        .write_all(b"EHLO no-header.example\r\n")
        .await
        .unwrap();
    assert!(c.try_reply().await.is_none(), "missing header got a reply");
    assert_eq!(h.spool_files(), 0);
    relay.stop().await;
}

/// The figure for the notes: how many AUTH attempts one address gets in a
/// minute, reconnecting after every refusal (run with `--ignored`; 60 s).
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn brute_force_rate_from_one_address() {
    let h = auth_harness("");
    let relay = h.start().await;
    let start = Instant::now();
    let mut attempts = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let c = connect_from("127.0.0.9", relay.addr().port()).await;
        let mut c = tls_session(c, &h.ca).await;
        c.reply_timeout = Duration::from_secs(120);
        for _ in 0..3 {
            let left = Duration::from_secs(60).saturating_sub(start.elapsed());
            let line = auth_plain("exchange01", "guess");
            let attempt = c.cmd(&line, "");
            match tokio::time::timeout(left, attempt).await {
                Ok(r) if r.code == 535 || r.code == 421 => attempts += 1,
                Ok(r) => panic!("{r:?}"),
                Err(_) => break,
            }
        }
    }
    println!("AUTH attempts from one address in 60 s: {attempts}");
    assert!(attempts <= 10, "{attempts}");
    relay.stop().await;
}
