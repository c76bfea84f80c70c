//! The queue manager, a scheduler: recovers the spool at start, keeps each
//! queued message's due time, starts deliveries (`delivery`) with bounded
//! concurrency, reschedules them with the time each returns, and answers
//! `queue flush` and `queue delete`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::queue::arrivals::Arrivals;
use crate::queue::delivery::{Delivery, next_due};
use crate::queue::{DELETED_IDS, FLUSH_REQUEST};
use crate::spool::{self, Spool};
use crate::tracking;

/// Messages delivered at the same time, in all.
const MAX_IN_FLIGHT: usize = 64;
/// How often the manager looks for a `queue flush` request.
const FLUSH_POLL: Duration = Duration::from_secs(1);

/// Runs until `shutdown`: recovers the spool, then delivers. Each delivery
/// uses the settings `delivery` holds when it starts (reloads replace them).
pub async fn run(
    spool: Spool,
    mut delivery: watch::Receiver<Arc<Delivery>>,
    Arrivals(mut new_messages): Arrivals,
    shutdown: CancellationToken,
) {
    let mut schedule = Schedule::default();
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
                tokio::spawn(async move {
                    let next = settings.deliver(&id).await;
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
            Some(id) = new_messages.recv() => schedule.add(id, 0),
            Some((id, next)) = done_rx.recv() => {
                schedule.in_flight.remove(&id);
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
                }
            }
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
