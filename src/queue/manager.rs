//! The queue manager, a scheduler: recovers the spool at start, keeps each
//! queued message's due time, starts deliveries (`delivery`) with bounded
//! concurrency, reschedules them with the time each returns, and answers
//! `queue flush` and `queue delete`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::queue::arrivals::{Arrivals, Hot};
use crate::queue::delivery::{Delivery, next_due};
use crate::queue::{DELETED_IDS, FLUSH_REQUEST};
use crate::spool::{self, Spool};
use crate::tracking;

/// Messages delivered at the same time, in all.
const MAX_IN_FLIGHT: usize = 64;
/// How often the manager looks for a `queue flush` request.
const FLUSH_POLL: Duration = Duration::from_secs(1);
/// Content of just-accepted messages kept in memory for their first
/// delivery, in all (buffer capacity, waiting or being delivered); beyond
/// it, delivery reads them back from the spool's page-cached journal. 2 MiB
/// holds over a thousand 1 KiB messages, more than wait at full load; at
/// 100 KiB, about twenty.
const HOT_BUDGET: usize = 2 << 20;

/// Runs until `shutdown`: recovers the spool, then delivers. Each delivery
/// uses the settings `delivery` holds when it starts (reloads replace them).
pub async fn run(
    spool: Spool,
    mut delivery: watch::Receiver<Arc<Delivery>>,
    Arrivals(mut new_messages): Arrivals,
    shutdown: CancellationToken,
) {
    let mut schedule = Schedule::default();
    let mut hot = HotCache::new(HOT_BUDGET);
    // Notes left while no relay ran: `Spool::open` already dropped those
    // still in the journal; the rest were removed by `queue delete` itself.
    for id in take_deleted(&spool) {
        info!(
            event = tracking::DELETED,
            queue_id = id.as_str(),
            "deleted by queue delete"
        );
    }
    match spool.list_async().await {
        Ok(ids) => {
            info!(messages = ids.len(), "queue recovered from the spool");
            for id in ids {
                // The envelope says when; the content is read at delivery.
                let due = match spool.read_envelope_async(&id).await {
                    Ok(env) => next_due(&env),
                    Err(e) => {
                        error!(queue_id = %id, "unreadable spool entry left in place: {e}");
                        continue;
                    }
                };
                if let Some(due) = due {
                    schedule.add(id, due);
                }
            }
        }
        Err(e) => error!("cannot list the spool: {e}"),
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Option<u64>)>();
    let mut flush_poll = tokio::time::interval(FLUSH_POLL);
    // False once the sender of new configurations is gone.
    let mut reloads = true;
    loop {
        // Start what is due, up to the in-flight limit, with the newest config.
        let settings = delivery.borrow_and_update().clone();
        if settings.has_upstreams() {
            while schedule.in_flight.len() < MAX_IN_FLIGHT {
                let Some(id) = schedule.pop_due() else {
                    break;
                };
                let (settings, done) = (settings.clone(), done_tx.clone());
                let from_memory = hot.take(&id);
                tokio::spawn(async move {
                    let next = settings.deliver(&id, from_memory).await;
                    let _ = done.send((id, next));
                });
            }
        }
        // Without upstreams nothing is delivered: sleep until a reload brings some.
        let wake = if settings.has_upstreams() {
            schedule.next_wake()
        } else {
            None
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = delivery.changed(), if reloads => reloads = changed.is_ok(),
            Some(arrival) = new_messages.recv() => {
                if settings.has_upstreams() {
                    if let Some(h) = arrival.hot {
                        hot.insert(&arrival.id, h);
                    }
                } else {
                    // It waits for a reload: in its own file, not in memory,
                    // and not keeping a journal segment alive meanwhile.
                    let (spool, id) = (spool.clone(), arrival.id.clone());
                    tokio::spawn(async move {
                        if let Err(e) = spool.move_to_file(&id).await {
                            error!(queue_id = %id, "cannot move a waiting message out of the journal: {e}");
                        }
                    });
                }
                schedule.add(arrival.id, 0);
            }
            Some((id, next)) = done_rx.recv() => {
                schedule.in_flight.remove(&id);
                hot.release(&id);
                if let Some(next) = next {
                    schedule.add(id, next);
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))) => {}
            _ = flush_poll.tick() => {
                let request = spool.root().join(FLUSH_REQUEST);
                if std::fs::remove_file(&request).is_ok() {
                    info!("queue flush requested: retrying everything now");
                    schedule.flush();
                }
                for id in take_deleted(&spool) {
                    info!(event = tracking::DELETED, queue_id = id.as_str(), "deleted by queue delete");
                    schedule.remove(&id);
                    hot.discard(&id);
                    // Still in the journal, where only this process can close it.
                    spool.forget(&id);
                }
            }
        }
    }
}

/// Just-accepted messages in memory, by id, within a byte budget; each is
/// taken by its first delivery (or dropped by `queue delete`).
struct HotCache {
    messages: HashMap<String, Hot>,
    /// Content handed to deliveries still running: it is in memory until
    /// they end, so it still counts.
    lent: HashMap<String, usize>,
    bytes: usize,
    budget: usize,
}

impl HotCache {
    fn new(budget: usize) -> HotCache {
        HotCache {
            messages: HashMap::new(),
            lent: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// Keeps `hot` unless that would exceed the budget (then delivery reads
    /// the spool, as for any other message).
    fn insert(&mut self, id: &str, hot: Hot) {
        // What the buffer holds in memory, not just what it is filled with.
        let size = hot.content.capacity();
        if self.bytes + size > self.budget {
            return;
        }
        self.bytes += size;
        if let Some(old) = self.messages.insert(id.to_owned(), hot) {
            self.bytes -= old.content.capacity();
        }
    }

    /// The message for its delivery; its bytes count until `release`.
    fn take(&mut self, id: &str) -> Option<Hot> {
        let hot = self.messages.remove(id)?;
        self.lent.insert(id.to_owned(), hot.content.capacity());
        Some(hot)
    }

    /// Drops `id` (deleted before its delivery took it).
    fn discard(&mut self, id: &str) {
        if let Some(hot) = self.messages.remove(id) {
            self.bytes -= hot.content.capacity();
        }
    }

    /// The delivery of `id` ended.
    fn release(&mut self, id: &str) {
        if let Some(size) = self.lent.remove(id) {
            self.bytes -= size;
        }
    }
}

/// Due times (unix seconds) of the queued messages not being delivered now.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(u64, String)>,
    in_flight: HashSet<String>,
}

impl Schedule {
    fn add(&mut self, id: String, due: u64) {
        if self.in_flight.contains(&id) {
            return;
        }
        self.due.retain(|(_, i)| *i != id);
        self.due.insert((due, id));
    }

    fn pop_due(&mut self) -> Option<String> {
        let now = spool::unix_now();
        let first = self.due.first()?.clone();
        if first.0 > now {
            return None;
        }
        self.due.remove(&first);
        self.in_flight.insert(first.1.clone());
        Some(first.1)
    }

    fn next_wake(&self) -> Option<Instant> {
        let (due, _) = self.due.first()?;
        let wait = due.saturating_sub(spool::unix_now());
        Some(Instant::now() + Duration::from_secs(wait))
    }

    fn remove(&mut self, id: &str) {
        self.due.retain(|(_, i)| i != id);
    }

    fn flush(&mut self) {
        let ids: Vec<String> = self.due.iter().map(|(_, id)| id.clone()).collect();
        self.due = ids.into_iter().map(|id| (0, id)).collect();
    }
}

/// The ids `queue delete` noted since the last look (see `DELETED_IDS`).
/// Renamed before reading, so a note appended meanwhile waits for the next look.
fn take_deleted(spool: &Spool) -> Vec<String> {
    let notes = spool.root().join(DELETED_IDS);
    let taking = spool.root().join(format!("{DELETED_IDS}.taking"));
    if std::fs::rename(&notes, &taking).is_err() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(&taking).unwrap_or_default();
    let _ = std::fs::remove_file(&taking);
    text.lines()
        // Only what `queue delete` writes: queue ids are hex.
        .filter(|l| !l.is_empty() && l.len() <= 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{ClientInfo, Envelope, FORMAT_VERSION, MailParams};

    fn hot(id: &str, size: usize) -> Hot {
        Hot {
            envelope: Envelope {
                version: FORMAT_VERSION,
                id: id.into(),
                received_at: 0,
                client: ClientInfo {
                    address: "127.0.0.1:1".parse().unwrap(),
                    helo: "h".into(),
                    tls: None,
                    auth: None,
                },
                sender: String::new(),
                params: MailParams::default(),
                recipients: Vec::new(),
                size: size as u64,
                route_domain: None,
            },
            content: vec![b'x'; size],
        }
    }

    #[test]
    fn the_hot_cache_keeps_to_its_budget_and_gives_each_message_once() {
        let mut c = HotCache::new(100);
        c.insert("a", hot("a", 60));
        c.insert("b", hot("b", 50)); // over budget: not kept
        c.insert("c", hot("c", 40));
        assert_eq!(c.bytes, 100);
        assert!(c.take("b").is_none());
        assert_eq!(c.take("a").map(|h| h.content.len()), Some(60));
        assert!(c.take("a").is_none(), "taken once");
        // Lent to its delivery: still in memory, still counted.
        assert_eq!(c.bytes, 100);
        c.insert("b", hot("b", 50));
        assert_eq!(c.messages.len(), 1, "no room while a is delivered");
        c.release("a");
        assert_eq!(c.bytes, 40);
        c.release("a");
        assert_eq!(c.bytes, 40, "released once");
        c.insert("b", hot("b", 50));
        assert_eq!((c.bytes, c.messages.len()), (90, 2));
        c.discard("b");
        assert_eq!((c.bytes, c.messages.len()), (40, 1));
    }
}
