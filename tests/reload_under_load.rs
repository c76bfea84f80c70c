//! SIGHUP under load, with the real binaries: four STARTTLS clients send
//! continuously to `smarthost serve` while its config is rewritten and
//! reloaded every few hundred milliseconds (upstreams swapped, a user added,
//! once a broken file). No connection may be dropped or refused because of a
//! reload, every message gets its `250`, and every acknowledged message
//! reaches an upstream byte for byte.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::auth::hash;
use support::binary::Relay;
use support::client::{Client, tls_session};
use support::deliveries::{Sent, check_deliveries};
use support::harness::Harness;
use support::message::{message, queue_id_of};
use support::sink::Sink;
use support::wait::{eventually, within};

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 40;
const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";

/// One client: one connection, messages one after another.
async fn client(relay_port: u16, h: Arc<Harness>, n: usize, sent: Arc<Mutex<Vec<Sent>>>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", relay_port))
        .await
        .unwrap();
    let mut c = tls_session(Client::new(tcp), &h.ca).await;
    for i in 0..PER_CLIENT {
        let mid = format!("reload-{n}-{i}@test");
        let body = message(&mid, FROM, "reload under load", 2_000);
        c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
        c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
        c.cmd("DATA", "354").await;
        c.send(&body).await;
        let reply = c.cmd(".", "250 2.0.0").await;
        sent.lock().unwrap().push(Sent {
            message_id: mid,
            from: FROM.into(),
            to: vec![TO.into()],
            body,
            fully_sent: true,
            queued_as: queue_id_of(&reply),
        });
    }
    c.cmd("QUIT", "221").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_drop_no_connection_and_lose_nothing() {
    within(120, async {
        let h = Arc::new(Harness::new(""));
        let mut eu = Sink::new(h.dir.path(), "eu");
        let mut us = Sink::new(h.dir.path(), "us");
        eu.start().await;
        us.start().await;
        // The base config names no upstream; each variant below adds some.
        let base = std::fs::read_to_string(&h.config_path).unwrap();
        let both = format!("{base}{}{}", eu.upstream(), us.upstream());
        std::fs::write(&h.config_path, &both).unwrap();
        let relay = Relay::start(&h).await;
        let running = std::fs::read_to_string(&relay.config).unwrap();
        let port = relay.port;
        let with_listener =
            |text: &str| text.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
        let variants = [
            with_listener(&format!("{base}{}", eu.upstream())),
            with_listener(&format!("{base}{}", us.upstream())),
            with_listener(&format!(
                "{base}{}{}[[user]]\nname = \"late\"\npassword_hash = \"{}\"\n",
                eu.upstream(),
                us.upstream(),
                hash("late password")
            )),
            format!("{running}\n[limits]\nmax_mesage_size = 1\n"),
            running.clone(),
        ];

        let sent = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| tokio::spawn(client(relay.port, h.clone(), n, sent.clone())))
            .collect();
        let mut reloads = 0;
        while !clients.iter().all(|c| c.is_finished()) && reloads < 200 {
            std::fs::write(&relay.config, &variants[reloads % variants.len()]).unwrap();
            relay.proc.signal(libc::SIGHUP);
            reloads += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for c in clients {
            c.await.expect("a client failed: a reload dropped or refused it");
        }
        // Both upstreams again, so whatever waits for one goes out.
        std::fs::write(&relay.config, &running).unwrap();
        relay.proc.signal(libc::SIGHUP);

        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), CLIENTS * PER_CLIENT);
        assert!(sent.iter().all(|s| s.queued_as.is_some()));
        eventually("every acknowledged message at an upstream", 60, || {
            eu.count() + us.count() >= sent.len()
        })
        .await;
        let tally = check_deliveries(&[&eu, &us], &sent);
        assert_eq!(tally.messages, sent.len());
        let log = relay.log();
        let reloaded = log.matches("reloaded").count();
        let refused = log.matches("reload_refused").count();
        eprintln!(
            "{} messages, {reloads} reloads ({reloaded} logged as reloaded, {refused} refused), eu {} us {}, duplicates {}",
            sent.len(),
            eu.count(),
            us.count(),
            tally.duplicates
        );
        assert!(reloads >= 5, "only {reloads} reloads happened during the load");
        assert!(refused >= 1, "the broken config was not refused:\n{log}");
    })
    .await;
}
