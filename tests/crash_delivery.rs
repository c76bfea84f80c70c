//! Crash safety of delivery, with the real binaries: `smarthost serve` relays
//! to two `smarthost sink` processes and is SIGKILLed while it delivers, then
//! restarted on the same spool. Every message that got a `250` must reach an
//! upstream at least once (duplicates are allowed: delivery is at least
//! once), byte for byte what was sent plus our one Received header; and the
//! queue must drain. Also: with both upstreams down, mail is accepted and
//! deferred, and delivered once one comes back.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{Output, Relay, all_deferred, queue_list, run, sigkill};
use support::client::{TlsClient, step};
use support::deliveries::{Sent, check_deliveries, received, send_tracked};
use support::harness::Harness;
use support::message::queue_id_of;
use support::sink::{Sink, quick_retries_to, sidecar};
use support::wait::{eventually, within};

// ---------------------------------------------------------------------------
// Messages.

/// Sends one message, filling in `sent` as it goes.
async fn send_message(c: &mut TlsClient, sent: &mut Sent) -> Result<(), String> {
    let r = send_tracked(c, sent).await?;
    sent.queued_as = Some(queue_id_of(&r).ok_or_else(|| format!("dot: {:?}", r.lines))?);
    Ok(())
}

/// `sessions` concurrent STARTTLS sessions, `per_session` messages each,
/// until done or the relay dies; everything tried is appended to `results`.
async fn send_burst(
    relay: &Relay,
    h: &Harness,
    tag: &str,
    sessions: usize,
    per_session: usize,
    extra_rcpts: usize,
    results: Arc<Mutex<Vec<Sent>>>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..sessions {
        let mut c = relay.tls(&h.ca).await;
        let (results, tag) = (results.clone(), tag.to_owned());
        tasks.spawn(async move {
            for n in 0..per_session {
                let from = format!("s{t}@tenant.example");
                let message_id = format!("{tag}-s{t}-m{n}@crash-delivery.test");
                let mut to = vec![format!("r{n}@partner.example")];
                if n % 4 == 0 {
                    to.push(format!("cc{n}@other.example"));
                }
                to.extend((0..extra_rcpts).map(|k| format!("x{k}-{n}@partner.example")));
                let size = 2_000 + (t * 7 + n * 13) % 10 * 30_000;
                let mut sent = Sent::new(&message_id, &from, to, "delivery crash test", size);
                let r = send_message(&mut c, &mut sent).await;
                results.lock().unwrap().push(sent);
                if r.is_err() {
                    return; // the relay is gone
                }
            }
            let _ = step(&mut c, "QUIT", "221").await;
        });
    }
    tasks
}

// ---------------------------------------------------------------------------
// The tests.

const SESSIONS: usize = 3;
const PER_SESSION: usize = 20;
const ROUNDS: usize = 6;

/// Rounds of: 60 messages from 3 STARTTLS sessions, SIGKILL of the relay
/// once the sinks hold about a third of them, restart on the same spool,
/// drain. Even rounds kill while the clients are still sending (live
/// traffic); odd rounds queue everything with both sinks down first, then
/// start them and kill in the middle of the backlog's delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_delivery_loses_nothing_acknowledged() {
    within(300, async {
        let base = tempfile::tempdir().unwrap();
        let mut eu = Sink::started(base.path(), "eu").await;
        let mut us = Sink::started(base.path(), "us").await;
        let h = Harness::new(&quick_retries_to(&[&eu, &us]));
        let mut relay = Relay::start(&h).await;
        let all = Arc::new(Mutex::new(Vec::<Sent>::new()));
        let started = Instant::now();
        let mut undelivered_at_kills = 0;
        let mut rounds_done = 0;
        for round in 0..ROUNDS {
            // Bounded: stop early rather than run into the scenario timeout.
            if round >= 2 && started.elapsed() > Duration::from_secs(150) {
                break;
            }
            let backlog = round % 2 == 1;
            let tag = format!("r{round}");
            let results = Arc::new(Mutex::new(Vec::<Sent>::new()));
            let before = eu.count() + us.count();
            let target = before + SESSIONS * PER_SESSION / 3;
            if backlog {
                eu.stop();
                us.stop();
            }
            let mut senders =
                send_burst(&relay, &h, &tag, SESSIONS, PER_SESSION, 0, results.clone()).await;
            if backlog {
                // Everything accepted and waiting: both upstreams are down.
                while let Some(r) = senders.join_next().await {
                    r.unwrap();
                }
                let acked = results
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.queued_as.is_some())
                    .count();
                assert_eq!(acked, SESSIONS * PER_SESSION, "the relay refused mail");
                assert_eq!(eu.count() + us.count(), before);
                eu.start().await;
                us.start().await;
            }
            // Kill once the sinks hold about a third of this round.
            let pid = relay.proc.pid();
            let deadline = Instant::now() + Duration::from_secs(30);
            while eu.count() + us.count() < target {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: sinks got {} of {target} in 30 s\n{}",
                    eu.count() + us.count(),
                    relay.log()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sigkill(pid);
            let at_kill = eu.count() + us.count() - before;
            let _ = relay.proc.child.wait();
            while let Some(r) = tokio::time::timeout(Duration::from_secs(20), senders.join_next())
                .await
                .expect("senders stop once the relay is gone")
            {
                r.unwrap();
            }
            let round_sent = results.lock().unwrap().clone();
            let acked = round_sent.iter().filter(|s| s.queued_as.is_some()).count();
            let delivered_at_kill = {
                let got = received(&[&eu, &us]);
                round_sent
                    .iter()
                    .filter(|s| s.queued_as.is_some() && got.contains_key(&s.message_id))
                    .count()
            };
            undelivered_at_kills += acked - delivered_at_kill;
            all.lock().unwrap().extend(round_sent);

            relay = Relay::start(&h).await;
            eventually("an empty queue after the restart", 60, || {
                h.spool_files() == 0
            })
            .await;
            let sent = all.lock().unwrap().clone();
            let t = check_deliveries(&[&eu, &us], &sent);
            eprintln!(
                "round {round} ({}): killed with {at_kill} files at the sinks, {acked} acknowledged, {} of them not yet delivered; after the restart: {} distinct messages delivered so far, {} duplicate(s) and {} split message(s) in all, {:.1?} elapsed",
                if backlog { "backlog" } else { "live" },
                acked - delivered_at_kill,
                t.messages,
                t.duplicates,
                t.split,
                started.elapsed()
            );
            rounds_done += 1;
        }
        // The kills landed while deliveries were outstanding.
        assert!(
            undelivered_at_kills > 0,
            "every kill came after all acknowledged mail was delivered"
        );
        let sent = all.lock().unwrap().clone();
        let t = check_deliveries(&[&eu, &us], &sent);
        let acked = sent.iter().filter(|s| s.queued_as.is_some()).count();
        eprintln!(
            "{rounds_done} kill rounds: {} messages tried, {acked} acknowledged, {} delivered, {} duplicate(s), {} split message(s), {} acknowledged-but-undelivered at the kills",
            sent.len(),
            t.messages,
            t.duplicates,
            t.split,
            undelivered_at_kills
        );
        assert!(eu.count() > 0 && us.count() > 0, "round-robin used one sink only");
    })
    .await;
}

/// Both upstreams down: messages are accepted and queued (`queue list`
/// shows each recipient deferred with the upstream failure); one upstream
/// starts: all are delivered to it, once each, and the queue empties. No
/// crash here, so no duplicate is acceptable, and each message, whose
/// recipients all failed and were retried together, should reach the
/// upstream as one transaction with all its recipients.
#[tokio::test(flavor = "multi_thread")]
async fn both_upstreams_down_then_one_returns_delivers_everything() {
    within(120, async {
        let base = tempfile::tempdir().unwrap();
        let eu = Sink::new(base.path(), "eu");
        let mut us = Sink::new(base.path(), "us");
        let h = Harness::new(&quick_retries_to(&[&eu, &us]));
        let relay = Relay::start(&h).await;
        let config = h.config_path.to_str().unwrap().to_owned();
        let results = Arc::new(Mutex::new(Vec::new()));
        let mut senders = send_burst(&relay, &h, "outage", 1, 10, 2, results.clone()).await;
        while let Some(r) = senders.join_next().await {
            r.unwrap();
        }
        let sent = results.lock().unwrap().clone();
        assert!(
            sent.iter().all(|s| s.queued_as.is_some()),
            "refused with both upstreams down"
        );

        // Deferred, each recipient, with the failure as the last reply.
        let mut listing = Vec::new();
        eventually("all 10 deferred in queue list --json", 20, || {
            listing = queue_list(&h.config_path);
            all_deferred(&listing, 10)
        })
        .await;
        for e in &listing {
            let id = e["id"].as_str().unwrap();
            let s = sent
                .iter()
                .find(|s| s.queued_as.as_deref() == Some(id))
                .unwrap_or_else(|| panic!("{id} listed but never acknowledged"));
            let rcpts: Vec<&str> = e["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["address"].as_str().unwrap())
                .collect();
            assert_eq!(rcpts, s.to, "{id}");
            for r in e["recipients"].as_array().unwrap() {
                let reply = r["last_reply"].as_str().unwrap();
                assert!(reply.starts_with("451 4.4.1"), "{reply}");
            }
        }
        let Output {
            status,
            stdout: out,
            ..
        } = run(&["queue", "list", "--config", &config]);
        assert!(status.success());
        assert!(out.contains("(deferred)"), "{out}");
        assert!(out.contains("10 message(s) queued"), "{out}");

        // A few more retries while both are down (attempts 2 and 3 back off
        // 2 s +-10 %), then record each message's per-recipient retry times.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Output { stdout: out, .. } = run(&["queue", "list", "--config", &config, "--json"]);
        let listing: serde_json::Value = serde_json::from_str(&out).unwrap();
        let diverged: Vec<String> = listing
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                let times: Vec<u64> = e["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|r| r["next_attempt"].as_u64())
                    .collect();
                times
                    .windows(2)
                    .any(|w| w[0] != w[1])
                    .then(|| format!("{} next_attempt {times:?}", e["id"]))
            })
            .collect();
        assert_eq!(eu.count() + us.count(), 0);

        us.start().await;
        eventually("every recipient delivered", 30, || {
            let got = received(&[&us]);
            sent.iter().all(|s| {
                got.get(&s.message_id).is_some_and(|copies| {
                    let n: usize = copies
                        .iter()
                        .map(|(_, f, _)| sidecar(f)["rcpt_to"].as_array().unwrap().len())
                        .sum();
                    n >= s.to.len()
                })
            })
        })
        .await;
        eventually("an empty queue", 30, || h.spool_files() == 0).await;
        let t = check_deliveries(&[&eu, &us], &sent);
        assert_eq!(eu.count(), 0);
        let Output {
            status,
            stdout: out,
            ..
        } = run(&["queue", "list", "--config", &config]);
        assert!(status.success());
        assert!(out.contains("0 message(s) queued"), "{out}");
        assert_eq!(t.duplicates, 0, "duplicates without a crash");
        assert!(
            t.split == 0,
            "{} of 10 messages reached the upstream as several transactions, each with \
             only some of the recipients; the recipients' retry times had drifted apart \
             during the outage: {diverged:?}",
            t.split
        );
        drop(relay);
    })
    .await;
}
