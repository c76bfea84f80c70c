//! Recent messages for the API and the web page: a bounded in-memory ring of
//! what this process accepted (with each message's trail), merged with what
//! the spool holds (which survives restarts but has no trail).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::queue::listing;
use crate::spool::Spool;

/// One message as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// The queue id of the `250 2.0.0 ... queued as ID` reply.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub received_at: u64,
    /// `None` for entries known only from the spool listing.
    pub client: Option<String>,
    pub auth_user: Option<String>,
    pub tls_version: Option<String>,
    pub sender: String,
    pub size: u64,
    pub recipients: Vec<RecipientState>,
    /// Delivery attempts so far (each try of an upstream counts).
    pub attempts: u32,
    /// Accepted, each attempt, and the outcome, oldest first.
    pub trail: Vec<Event>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientState {
    pub address: String,
    /// queued, deferred, delivered or bounced; `deleted` when `queue delete`
    /// removed it before it was done.
    pub state: &'static str,
    pub upstream: Option<String>,
    pub last_reply: Option<String>,
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// accepted, attempt_failed, delivered, deferred or bounced.
    pub what: &'static str,
    pub upstream: Option<String>,
    pub recipient: Option<String>,
    pub reply: Option<String>,
}

pub const STATES: [&str; 5] = ["queued", "deferred", "delivered", "bounced", "deleted"];

/// The most recent `capacity` messages accepted by this process.
pub struct Ring {
    capacity: usize,
    inner: Mutex<RingInner>,
}

#[derive(Default)]
struct RingInner {
    order: VecDeque<String>,
    by_id: HashMap<String, Message>,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            capacity,
            inner: Mutex::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut RingInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adds a just-accepted message, forgetting the oldest beyond capacity.
    pub fn insert(&self, message: Message) {
        if self.capacity == 0 {
            return;
        }
        self.with(|r| {
            while r.order.len() >= self.capacity {
                if let Some(old) = r.order.pop_front() {
                    r.by_id.remove(&old);
                }
            }
            r.order.push_back(message.id.clone());
            r.by_id.insert(message.id.clone(), message);
        });
    }

    /// Changes a message still in the ring (no-op for others, e.g. bounces).
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Message)) {
        self.with(|r| {
            if let Some(m) = r.by_id.get_mut(id) {
                f(m);
            }
        });
    }

    pub fn get(&self, id: &str) -> Option<Message> {
        self.with(|r| r.by_id.get(id).cloned())
    }

    fn snapshot(&self) -> Vec<Message> {
        self.with(|r| {
            r.order
                .iter()
                .filter_map(|id| r.by_id.get(id).cloned())
                .collect()
        })
    }
}

/// The spool state names, in the API's words.
fn state_of(spool_state: &str) -> &'static str {
    match spool_state {
        "delivered" => "delivered",
        "deferred" => "deferred",
        "failed" => "bounced",
        _ => "queued",
    }
}

fn from_listing(e: listing::Entry) -> Message {
    Message {
        id: e.id,
        received_at: e.received_at,
        client: None,
        auth_user: None,
        tls_version: None,
        sender: e.sender,
        size: e.size,
        recipients: e
            .recipients
            .into_iter()
            .map(|r| RecipientState {
                address: r.address,
                state: state_of(r.state),
                upstream: r.upstream,
                last_reply: r.last_reply,
                attempts: 0,
            })
            .collect(),
        attempts: 0,
        trail: Vec::new(),
    }
}

/// What `?q=` and `?state=` ask for.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Filter {
    pub q: Option<String>,
    pub state: Option<String>,
}

impl Filter {
    fn matches(&self, m: &Message) -> bool {
        let q_ok = match self.q.as_deref().map(str::trim) {
            None | Some("") => true,
            Some(q) => {
                let q = q.to_lowercase();
                m.id.to_lowercase().contains(&q)
                    || m.sender.to_lowercase().contains(&q)
                    || m.recipients
                        .iter()
                        .any(|r| r.address.to_lowercase().contains(&q))
            }
        };
        let state_ok = match self.state.as_deref() {
            None | Some("") => true,
            Some(s) => m.recipients.iter().any(|r| r.state == s),
        };
        q_ok && state_ok
    }
}

/// The ring and the spool together, newest first. A message in both is taken
/// from the ring (it has the trail); the spool adds what was queued before
/// this process started. Blocking (reads the spool): run off the runtime.
pub fn list(ring: &Ring, spool: &Spool, filter: &Filter) -> Vec<Message> {
    let mut all = ring.snapshot();
    let known: std::collections::HashSet<String> = all.iter().map(|m| m.id.clone()).collect();
    if let Ok((entries, _problems)) = listing::entries(spool) {
        let queued: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.id.as_str()).collect();
        for m in &mut all {
            if !queued.contains(m.id.as_str()) {
                settle(ring, spool, m);
            }
        }
        all.extend(
            entries
                .into_iter()
                .filter(|e| !known.contains(&e.id))
                .map(from_listing),
        );
    }
    all.retain(|m| filter.matches(m));
    // Queue ids start with the time in microseconds, fixed-width hex.
    all.sort_by(|a, b| (b.received_at, &b.id).cmp(&(a.received_at, &a.id)));
    all
}

/// A message of the ring that may have left the spool. The queue manager
/// records every final state in the ring before it removes a message, so one
/// that is gone from the spool and, read again after that, still has
/// recipients to do was removed by `queue delete`.
fn settle(ring: &Ring, spool: &Spool, m: &mut Message) {
    let pending = |m: &Message| {
        m.recipients
            .iter()
            .any(|r| matches!(r.state, "queued" | "deferred"))
    };
    if !pending(m) || spool.envelope_path(&m.id).exists() {
        return;
    }
    if let Some(now) = ring.get(&m.id) {
        *m = now;
    }
    for r in &mut m.recipients {
        if matches!(r.state, "queued" | "deferred") {
            r.state = "deleted";
        }
    }
}

/// One message by id: from the ring, else from the spool.
pub fn find(ring: &Ring, spool: &Spool, id: &str) -> Option<Message> {
    if let Some(mut m) = ring.get(id) {
        settle(ring, spool, &mut m);
        return Some(m);
    }
    let (entries, _) = listing::entries(spool).ok()?;
    entries.into_iter().find(|e| e.id == id).map(from_listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> Message {
        Message {
            id: id.into(),
            received_at: 0,
            client: None,
            auth_user: None,
            tls_version: None,
            sender: "a@b".into(),
            size: 1,
            recipients: vec![],
            attempts: 0,
            trail: vec![],
        }
    }

    #[test]
    fn the_ring_forgets_the_oldest() {
        let r = Ring::new(2);
        for id in ["1", "2", "3"] {
            r.insert(msg(id));
        }
        assert!(r.get("1").is_none());
        assert_eq!(r.snapshot().len(), 2);
        r.update("3", |m| m.attempts = 7);
        assert_eq!(r.get("3").unwrap().attempts, 7);
    }
}
