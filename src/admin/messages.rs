//! Recent messages for the API and the web page: the telemetry's ring of
//! what this process accepted (with each message's trail), merged with what
//! the spool holds (which survives restarts but has no trail).

use crate::queue::listing;
use crate::spool::Spool;
pub use crate::telemetry::recent::Message;
use crate::telemetry::recent::{RecipientState, Ring};
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
    if !pending(m) || spool.contains(&m.id) {
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
