//! What the relay counts and remembers: Prometheus metrics (`metrics`) and
//! the recent-message ring (`recent`). One `Telemetry` per process, kept
//! across reloads and fed by the listener, the sessions and the queue
//! manager; the admin endpoint only reads it. It sits below all of them so
//! none imports the admin side.

pub mod metrics;
pub mod recent;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::SmtpError;
use crate::spool::{Envelope, RecipientStatus};
use metrics::{Metrics, label};
use recent::{Event, Message, RecipientState, Ring};

/// Counters and the recent-message ring; one per process (kept by reloads).
pub struct Telemetry {
    pub metrics: Metrics,
    pub recent: Ring,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Holds one connection in `smarthost_connections_active` until dropped.
pub struct ConnectionGuard<'a>(&'a Metrics);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

impl Telemetry {
    pub fn new(recent_messages: usize) -> Telemetry {
        Telemetry {
            metrics: Metrics::default(),
            recent: Ring::new(recent_messages),
        }
    }

    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.metrics.connections_active.inc();
        ConnectionGuard(&self.metrics)
    }

    /// A refusal the client was told about (only those with a metric reason count).
    pub fn refused(&self, error: &SmtpError) {
        if let Some(reason) = error.metric_reason() {
            self.metrics
                .refused
                .get_or_create(&label("reason", reason))
                .inc();
        }
    }

    pub fn tls_handshake(&self, version: &str) {
        self.metrics
            .tls_handshakes
            .get_or_create(&label("version", version))
            .inc();
    }

    /// A message was durably spooled and is about to get its 250.
    pub fn accepted(&self, env: &Envelope, spooling: Duration) {
        self.metrics.accepted.inc();
        self.metrics.accept_latency.observe(spooling.as_secs_f64());
        let at_ms = now_ms();
        self.recent.insert(Message {
            id: env.id.clone(),
            received_at: env.received_at,
            client: Some(env.client.address.to_string()),
            auth_user: env.client.auth.clone(),
            tls_version: env.client.tls.as_ref().map(|t| t.version.clone()),
            sender: env.sender.clone(),
            size: env.size,
            recipients: env
                .recipients
                .iter()
                .map(|r| RecipientState {
                    address: r.address.clone(),
                    state: "queued",
                    upstream: None,
                    last_reply: None,
                    attempts: 0,
                })
                .collect(),
            attempts: 0,
            trail: vec![Event {
                at_ms,
                what: "accepted",
                upstream: None,
                recipient: None,
                reply: Some(format!("250 2.0.0 queued as {}", env.id)),
            }],
        });
    }

    /// A transaction with `upstream` failed as a whole (the next one is tried).
    pub fn upstream_failed(&self, id: &str, upstream: &str, error: &str) {
        self.metrics
            .upstream_failures
            .get_or_create(&label("upstream", upstream))
            .inc();
        self.recent.update(id, |m| {
            m.attempts += 1;
            m.trail.push(Event {
                at_ms: now_ms(),
                what: "attempt_failed",
                upstream: Some(upstream.to_owned()),
                recipient: None,
                reply: Some(error.to_owned()),
            });
        });
    }

    /// The recipients `due` of `env` have their new status from one attempt;
    /// `upstream` took the transaction (`None`: no upstream did), `last_tried`
    /// is the upstream a temporary failure is blamed on.
    pub fn attempted(
        &self,
        env: &Envelope,
        due: &[usize],
        upstream: Option<&str>,
        last_tried: Option<&str>,
    ) {
        let statuses = || due.iter().map(|&i| &env.recipients[i].status);
        let delivered = statuses().any(|s| matches!(s, RecipientStatus::Delivered { .. }));
        let failed = statuses().any(|s| matches!(s, RecipientStatus::Failed { .. }));
        let deferred = statuses().any(|s| matches!(s, RecipientStatus::Deferred { .. }));
        let accepted_ms = self
            .recent
            .get(&env.id)
            .and_then(|m| m.trail.first().map(|e| e.at_ms))
            .unwrap_or(env.received_at * 1000);
        let at_ms = now_ms();
        if let (true, Some(u)) = (delivered, upstream) {
            self.metrics
                .delivered
                .get_or_create(&label("upstream", u))
                .inc();
            self.metrics
                .delivery_latency
                .observe(at_ms.saturating_sub(accepted_ms) as f64 / 1000.0);
        }
        if failed {
            self.metrics.bounced.inc();
        }
        if deferred {
            let blamed = upstream.or(last_tried).unwrap_or("none");
            self.metrics
                .deferred
                .get_or_create(&label("upstream", blamed))
                .inc();
        }
        self.recent.update(&env.id, |m| {
            if upstream.is_some() {
                m.attempts += 1;
            }
            for &i in due {
                let r = &env.recipients[i];
                let (state, reply, what) = match &r.status {
                    RecipientStatus::Delivered { reply, .. } => ("delivered", reply, "delivered"),
                    RecipientStatus::Failed { reply, .. } => ("bounced", reply, "bounced"),
                    RecipientStatus::Deferred { reply, .. } => ("deferred", reply, "deferred"),
                    RecipientStatus::Pending => continue,
                };
                if let Some(rs) = m.recipients.iter_mut().find(|x| x.address == r.address) {
                    rs.state = state;
                    rs.last_reply = Some(reply.clone());
                    rs.upstream = upstream.or(last_tried).map(str::to_owned);
                    rs.attempts += 1;
                }
                m.trail.push(Event {
                    at_ms,
                    what,
                    upstream: upstream.or(last_tried).map(str::to_owned),
                    recipient: Some(r.address.clone()),
                    reply: Some(reply.clone()),
                });
            }
        });
    }
}
