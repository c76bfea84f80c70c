//! The recent-message ring: what this process accepted, with each message's
//! trail of attempts, bounded in memory. The admin endpoint merges it with
//! the spool listing (which survives restarts but has no trail).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

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

    pub fn snapshot(&self) -> Vec<Message> {
        self.with(|r| {
            r.order
                .iter()
                .filter_map(|id| r.by_id.get(id).cloned())
                .collect()
        })
    }
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
