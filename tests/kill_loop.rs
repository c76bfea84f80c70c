//! The kill -9 loop, with the real binaries: eight STARTTLS clients send
//! continuously (each on its own connection, every message with a unique
//! Message-ID) to `smarthost serve`, which relays to two `smarthost sink`
//! upstreams; the relay is SIGKILLed at random moments (while it accepts,
//! while it delivers, while it recovers the spool at start, just after its
//! banner) and restarted on the same spool; the clients reconnect and go on.
//! At the end the relay drains the queue, and:
//!
//! - every message that got a `250` is at an upstream, for each recipient,
//!   byte for byte what was sent plus our one Received header (nothing lost,
//!   split across transactions, or merged);
//! - nothing reached an upstream that was not completely sent, and nothing
//!   that got a refusal; a message delivered without a `250` is one whose
//!   final dot went out and whose reply the kill swallowed (counted);
//! - duplicates (at-least-once delivery after a kill) are counted.
//!
//! The kill moments come from a seeded RNG; the seed is printed and
//! `SMARTHOST_KILL_SEED` replays it. By default a short run (about 30-45 s);
//! `SMARTHOST_KILL_ROUNDS=N` runs N rounds (within `SMARTHOST_KILL_SECS`,
//! default 25 min).

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::pki_types::ServerName;
use support::binary::{Proc, Relay};
use support::client::{Client, TlsClient, step};
use support::deliveries::{Sent, check_deliveries, received, send_tracked};
use support::harness::Harness;
use support::message::{message_id_in, queue_id_of, strip_received};
use support::sink::{Sink, quick_retries_to};
use support::wait::{eventually, within};
use tokio::net::TcpStream;

/// Concurrent clients.
const SENDERS: usize = 8;
/// Default rounds (one kill each, plus the extra startup kills).
const ROUNDS: usize = 40;
/// Default time budget for the rounds; the drain and the checks come after.
const BUDGET: Duration = Duration::from_secs(35);

/// One message a client tried to send, and how the relay answered its final dot.
#[derive(Debug, Clone)]
struct Attempt {
    sent: Sent,
    /// The reply to the final dot, when one came (`None`: the kill came first).
    final_reply: Option<String>,
}

/// What the clients and the kill loop share.
struct Shared {
    /// The relay's port; 0 while it is down or being killed.
    port: AtomicU16,
    stop: AtomicBool,
    attempts: Mutex<Vec<Attempt>>,
}

/// Greeting, EHLO, STARTTLS, handshake, EHLO: an error (not a panic) when
/// the relay dies on the way.
async fn open_session(port: u16, tls: Arc<rustls::ClientConfig>) -> Result<TlsClient, String> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| format!("connect: {e}"))?;
    let mut c = Client::new(tcp);
    // A slow reply on a loaded CI machine is not a failure; a hang still is.
    c.reply_timeout = Duration::from_secs(60);
    match c.try_reply().await {
        Some(r) if r.code == 220 => {}
        other => return Err(format!("banner: {other:?}")),
    }
    step(&mut c, "EHLO client.test", "250").await?;
    step(&mut c, "STARTTLS", "220").await?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), c.stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut c = Client::new(tls);
    c.reply_timeout = Duration::from_secs(60);
    step(&mut c, "EHLO client.test", "250").await?;
    Ok(c)
}

/// One transaction, its final reply recorded.
async fn send_one(c: &mut TlsClient, a: &mut Attempt) -> Result<(), String> {
    let r = send_tracked(c, &mut a.sent).await?;
    a.final_reply = Some(r.lines.last().unwrap().clone());
    a.sent.queued_as = queue_id_of(&r);
    match &a.sent.queued_as {
        Some(_) => Ok(()),
        None => Err(format!("dot: {:?}", r.lines)),
    }
}

/// Client `t`: sends until told to stop, reconnecting whenever the relay
/// goes away; every attempt (complete or cut off) is recorded.
async fn sender(t: usize, seed: u64, shared: Arc<Shared>, tls: Arc<rustls::ClientConfig>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1 + t as u64));
    let mut n = 0usize;
    // Bounded in count as well as by the stop flag.
    while !shared.stop.load(Ordering::SeqCst) && n < 1_000_000 {
        let port = shared.port.load(Ordering::SeqCst);
        if port == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let Ok(mut c) = open_session(port, tls.clone()).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Some sessions send one message, some many.
        let per_session = rng.random_range(1..=25);
        let mut alive = true;
        for _ in 0..per_session {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            n += 1;
            let from = format!("s{t}@tenant.example");
            let message_id = format!("k{t}-m{n}@kill-loop.test");
            let mut to = vec![format!("r{n}@partner.example")];
            if rng.random_ratio(1, 4) {
                to.push(format!("cc{n}@other.example"));
            }
            // Mostly small, sometimes large enough to span many TLS records
            // and several writes to the spool and the upstream.
            let size = if rng.random_ratio(1, 8) {
                rng.random_range(40_000..160_000)
            } else {
                rng.random_range(300..6_000)
            };
            let mut a = Attempt {
                sent: Sent::new(&message_id, &from, to, "kill loop", size),
                final_reply: None,
            };
            let r = send_one(&mut c, &mut a).await;
            shared.attempts.lock().unwrap().push(a);
            if r.is_err() {
                alive = false;
                break;
            }
        }
        if alive {
            let _ = step(&mut c, "QUIT", "221").await;
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// When in a round the relay is killed.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// A random time into live traffic: mostly mid-transaction or mid-store.
    Accepting,
    /// Just after the sinks received some more messages: mid-delivery.
    Delivering,
    /// With the sinks down, so acknowledged mail piles up deferred; the
    /// sinks return before the restart, whose recovery then has a backlog.
    Backlog,
}

/// Counts for the summary.
#[derive(Default, Debug)]
struct Figures {
    kills: usize,
    startup_kills: usize,
    /// Startup kills before the relay logged that it started.
    killed_before_serving: usize,
    /// Startup kills after it had delivered some of the recovered queue.
    killed_delivering_recovered: usize,
    after_banner_kills: usize,
    /// Summed over the kills: acknowledged messages not yet at a sink.
    undelivered_at_kills: usize,
    /// Summed over the kills: spool files at the kill.
    spooled_at_kills: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loop_loses_nothing_acknowledged() {
    let seed = env_u64("SMARTHOST_KILL_SEED").unwrap_or_else(rand::random);
    let long = env_u64("SMARTHOST_KILL_ROUNDS");
    let rounds = long.map_or(ROUNDS, |n| n as usize);
    let budget = env_u64("SMARTHOST_KILL_SECS").map_or(
        if long.is_some() {
            Duration::from_secs(25 * 60)
        } else {
            BUDGET
        },
        Duration::from_secs,
    );
    eprintln!(
        "kill loop: seed {seed} (replay with SMARTHOST_KILL_SEED={seed}), {rounds} rounds, budget {budget:?}"
    );
    within(budget.as_secs() + 300, async {
        let mut rng = StdRng::seed_from_u64(seed);
        let base = tempfile::tempdir().unwrap();
        let mut eu = Sink::started(base.path(), "eu").await;
        let mut us = Sink::started(base.path(), "us").await;
        let h = Harness::new(&quick_retries_to(&[&eu, &us]));
        let tls = h.ca.client_config();
        let mut relay = Relay::start(&h).await;
        let shared = Arc::new(Shared {
            port: AtomicU16::new(relay.port),
            stop: AtomicBool::new(false),
            attempts: Mutex::new(Vec::new()),
        });
        let mut senders = tokio::task::JoinSet::new();
        for t in 0..SENDERS {
            senders.spawn(sender(t, seed, shared.clone(), tls.clone()));
        }

        let started = Instant::now();
        let mut f = Figures::default();
        let mut index = Index::default();
        let mut done = 0;
        for round in 0..rounds {
            if started.elapsed() > budget && round >= 3 {
                break;
            }
            // Round 1 always builds a backlog with both sinks down, so even
            // a short run kills with acknowledged mail still queued.
            let moment = match rng.random_range(0..10) {
                _ if round == 1 => Moment::Backlog,
                0..=3 => Moment::Accepting,
                4..=7 => Moment::Delivering,
                _ => Moment::Backlog,
            };
            let at_start = eu.count() + us.count();
            let mut both_down = false;
            let detail = match moment {
                Moment::Accepting => {
                    let ms = rng.random_range(20..1_200);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    format!("{ms} ms into traffic")
                }
                Moment::Delivering => {
                    let more = rng.random_range(1..30);
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while eu.count() + us.count() < at_start + more && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    format!("after {} more deliveries", eu.count() + us.count() - at_start)
                }
                Moment::Backlog => {
                    let both = round == 1 || rng.random_bool(0.5);
                    both_down = both;
                    eu.stop();
                    if both {
                        us.stop();
                    }
                    let ms = rng.random_range(300..1_500);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    format!("{ms} ms with {} sink(s) down", if both { 2 } else { 1 })
                }
            };
            let backlog = matches!(moment, Moment::Backlog);
            let undelivered = index.acked_undelivered(&shared, &[&eu, &us]);
            let spooled = h.spool_files();
            shared.port.store(0, Ordering::SeqCst);
            relay.kill();
            f.kills += 1;
            f.undelivered_at_kills += undelivered;
            f.spooled_at_kills += spooled;
            if backlog {
                eu.start().await;
                if both_down {
                    us.start().await;
                }
            }

            // Kills during startup: the spool is being opened and recovered
            // (and the backlog delivered), before or around the banner.
            let mut restart = String::new();
            for _ in 0..rng.random_range(if backlog { 1..=2 } else { 0..=2 }) {
                // Half of them within the first moments (config, certificates,
                // spool sweep), half later: the recovered messages were
                // deferred for 1-2 s, so a backlog's delivery starts then.
                let ms = if rng.random_bool(0.5) {
                    rng.random_range(0..60)
                } else if backlog {
                    rng.random_range(60..2_500)
                } else {
                    rng.random_range(60..400)
                };
                let log = h.dir.path().join(format!("startup-kill-{}.log", f.startup_kills));
                let mut p = Proc::spawn(
                    &["serve", "--config", h.config_path.to_str().unwrap()],
                    &log,
                );
                tokio::time::sleep(Duration::from_millis(ms)).await;
                p.kill();
                f.startup_kills += 1;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let stage = if !text.contains("started") {
                    f.killed_before_serving += 1;
                    "before serving"
                } else if text.contains("delivered") {
                    f.killed_delivering_recovered += 1;
                    "while delivering the recovered queue"
                } else {
                    "serving"
                };
                restart.push_str(&format!(", startup kill at {ms} ms ({stage})"));
            }
            relay = Relay::start(&h).await;
            // Killed again just after its banner: recovery under new traffic.
            if rng.random_ratio(1, 4) {
                shared.port.store(relay.port, Ordering::SeqCst);
                let ms = rng.random_range(0..150);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                shared.port.store(0, Ordering::SeqCst);
                relay.kill();
                f.after_banner_kills += 1;
                restart.push_str(&format!(", killed {ms} ms after the banner"));
                relay = Relay::start(&h).await;
            }
            shared.port.store(relay.port, Ordering::SeqCst);
            done += 1;
            eprintln!(
                "round {round}: {moment:?} ({detail}): {spooled} spool files, {undelivered} acknowledged but undelivered{restart}; {} attempts so far, {:.1?}",
                shared.attempts.lock().unwrap().len(),
                started.elapsed()
            );
        }

        // Drain: the clients stop, the relay delivers everything.
        shared.stop.store(true, Ordering::SeqCst);
        while let Some(r) = tokio::time::timeout(Duration::from_secs(120), senders.join_next())
            .await
            .expect("clients stop")
        {
            r.unwrap();
        }
        let drain = Instant::now();
        eventually("an empty queue", 180, || h.spool_files() == 0).await;
        let drained_in = drain.elapsed();
        let relay_log = relay.log();
        relay.kill();

        let attempts = shared.attempts.lock().unwrap().clone();
        let sinks = [&eu, &us];
        let got = received(&sinks);
        let acked: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.sent.queued_as.is_some())
            .collect();
        let lost: Vec<&str> = acked
            .iter()
            .filter(|a| !got.contains_key(&a.sent.message_id))
            .map(|a| a.sent.message_id.as_str())
            .collect();
        let unacked_delivered: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.sent.queued_as.is_none() && got.contains_key(&a.sent.message_id))
            .collect();
        let refused_delivered: Vec<&Attempt> = unacked_delivered
            .iter()
            .copied()
            .filter(|a| a.final_reply.is_some())
            .collect();
        let cut_after_dot = attempts
            .iter()
            .filter(|a| a.sent.fully_sent && a.final_reply.is_none())
            .count();
        let cut_before_dot = attempts.iter().filter(|a| !a.sent.fully_sent).count();
        let refused = attempts
            .iter()
            .filter(|a| a.final_reply.is_some() && a.sent.queued_as.is_none())
            .count();
        let copies: usize = got.values().map(Vec::len).sum();
        let logs: Vec<(PathBuf, String)> = std::fs::read_dir(h.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                (p, text)
            })
            .collect();
        let swept: usize = logs
            .iter()
            .map(|(_, l)| l.matches("removing unacknowledged spool file").count())
            .sum();
        eprintln!(
            "kill loop, seed {seed}: {done} rounds in {:.1?} ({} kills while running, {} during startup ({} before serving, {} while delivering the recovered queue), {} just after the banner; {} acknowledged-undelivered and {} spool files at those kills; {} lone spool halves swept at starts), drained in {drained_in:.1?}\n\
             {} transactions tried: {} acknowledged, {} refused, {} cut off before the final dot, {cut_after_dot} cut off after it\n\
             upstreams hold {} distinct messages in {copies} transactions; lost: {}; delivered without ack: {} (of {cut_after_dot} cut off after the dot)",
            started.elapsed(),
            f.kills,
            f.startup_kills,
            f.killed_before_serving,
            f.killed_delivering_recovered,
            f.after_banner_kills,
            f.undelivered_at_kills,
            f.spooled_at_kills,
            swept,
            attempts.len(),
            acked.len(),
            refused,
            cut_before_dot,
            got.len(),
            lost.len(),
            unacked_delivered.len(),
        );
        assert!(
            lost.is_empty(),
            "{} acknowledged message(s) never reached an upstream (seed {seed}): {:?}\nlast relay log:\n{relay_log}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        assert!(
            refused_delivered.is_empty(),
            "refused but delivered: {:?}",
            refused_delivered
                .iter()
                .map(|a| (&a.sent.message_id, &a.final_reply))
                .collect::<Vec<_>>()
        );
        // Bytes, Received header, queue id, recipients; nothing unknown or
        // incompletely sent at an upstream; every recipient of every
        // acknowledged message reached.
        let sent: Vec<Sent> = attempts.iter().map(|a| a.sent.clone()).collect();
        let t = check_deliveries(&sinks, &sent);
        eprintln!(
            "duplicates: {} (copies of a message and recipient beyond the first); split: {}",
            t.duplicates, t.split
        );
        assert_eq!(t.split, 0, "messages split across transactions");
        assert_eq!(refused, 0, "the relay refused mail while running");
        assert!(acked.len() >= SENDERS, "hardly any mail was accepted");
        assert!(
            cut_before_dot + cut_after_dot > 0,
            "no kill interrupted a transaction"
        );
        assert!(
            f.undelivered_at_kills > 0,
            "every kill came after all acknowledged mail was delivered"
        );
        // No relay panicked along the way (a panic would also be a way to lose mail).
        for (path, log) in &logs {
            assert!(!log.contains("panicked"), "{}:\n{log}", path.display());
        }
    })
    .await;
}

/// The Message-IDs at the sinks, read incrementally (sinks only add files).
#[derive(Default)]
struct Index {
    files: HashSet<PathBuf>,
    ids: HashSet<String>,
}

impl Index {
    /// Messages acknowledged before the call and still not at a sink after
    /// reading the sinks (a lower bound: the relay goes on meanwhile).
    fn acked_undelivered(&mut self, shared: &Shared, sinks: &[&Sink]) -> usize {
        let acked: Vec<String> = shared
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.sent.queued_as.is_some())
            .map(|a| a.sent.message_id.clone())
            .collect();
        for s in sinks {
            for f in s.files() {
                if self.files.insert(f.clone()) {
                    let bytes = std::fs::read(&f).unwrap();
                    self.ids.insert(message_id_in(strip_received(&bytes)));
                }
            }
        }
        acked.iter().filter(|id| !self.ids.contains(*id)).count()
    }
}
