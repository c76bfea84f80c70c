//! Delivery end to end on loopback: the relay in-process, `smarthost sink`
//! instances as upstreams. Round-robin, failover, recovery, routes, and the
//! bytes an upstream receives.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";

/// A sink upstream on a fixed loopback port, stoppable and restartable.
struct Sink {
    port: u16,
    dir: PathBuf,
    stop: Option<(
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
}

impl Sink {
    async fn start(dir: &Path, name: &str) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Sink {
            port,
            dir,
            stop: None,
        };
        s.run(listener);
        s
    }

    fn run(&mut self, listener: tokio::net::TcpListener) {
        let token = CancellationToken::new();
        let task = tokio::spawn(smarthost::sink::run(
            listener,
            self.dir.clone(),
            None,
            "sink.test".into(),
            token.clone(),
        ));
        self.stop = Some((token, task));
    }

    async fn stop(&mut self) {
        if let Some((token, task)) = self.stop.take() {
            token.cancel();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.run(listener);
    }

    /// Messages received so far (the .eml files).
    fn messages(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    fn upstream(&self, name: &str) -> String {
        format!(
            "[[upstream]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\ntls = \"none\"\n\n",
            self.port
        )
    }
}

/// Waits until `pred` holds (20 s at most).
async fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    for _ in 0..400 {
        if pred() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

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
    let eu = Sink::start(dir.path(), "eu").await;
    let us = Sink::start(dir.path(), "us").await;
    let h = Harness::new(&format!("{}{}", eu.upstream("eu"), us.upstream("us")));
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 100, "rr").await;
    eventually("100 deliveries", || {
        eu.messages().len() + us.messages().len() == 100
    })
    .await;
    let (a, b) = (eu.messages().len(), us.messages().len());
    assert!(a.abs_diff(b) <= 10, "uneven split {a}/{b}");
    eventually("an empty queue", || h.spool_files() == 0).await;
    // What the upstream got is what we spooled: our Received header, then the body.
    let got = &eu.messages()[0];
    assert!(got.starts_with(b"Received: from client.test"));
    assert!(String::from_utf8_lossy(strip_received(got)).starts_with("Subject: rr "));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_upstream_down_all_go_to_the_other_none_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Sink::start(dir.path(), "eu").await;
    let us = Sink::start(dir.path(), "us").await;
    eu.stop().await;
    let h = Harness::new(&format!("{}{}", eu.upstream("eu"), us.upstream("us")));
    let relay = h.start().await;
    send_messages(&relay, &h, FROM, 30, "failover").await;
    eventually("30 at us", || us.messages().len() == 30).await;
    assert_eq!(eu.messages().len(), 0);
    eventually("an empty queue", || h.spool_files() == 0).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn both_down_then_one_returns_and_everything_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Sink::start(dir.path(), "eu").await;
    let mut us = Sink::start(dir.path(), "us").await;
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
    eventually("deferred state on disk", || {
        h.spooled().iter().all(|(e, _)| {
            matches!(
                e.recipients[0].status,
                smarthost::spool::RecipientStatus::Deferred { .. }
            )
        }) && h.spooled().len() == 10
    })
    .await;
    us.restart().await;
    eventually("10 delivered after recovery", || us.messages().len() == 10).await;
    eventually("an empty queue", || h.spool_files() == 0).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_send_each_tenant_only_to_its_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sink::start(dir.path(), "a").await;
    let b = Sink::start(dir.path(), "b").await;
    let h = Harness::new(&format!(
        "{}{}[[route]]\nsender_domains = [\"tenant-a.example\"]\nupstreams = [\"a\"]\n\n[[route]]\nupstreams = [\"b\"]\n",
        a.upstream("a"),
        b.upstream("b")
    ));
    let relay = h.start().await;
    send_messages(&relay, &h, "x@tenant-a.example", 10, "ta").await;
    send_messages(&relay, &h, "y@tenant-b.example", 10, "tb").await;
    eventually("20 delivered", || {
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
