//! The Prometheus metric families, registered once and encoded per scrape.
//!
//! Names follow OpenMetrics conventions: counters end in `_total` (the crate
//! appends it), durations are in seconds (`_seconds`), every family has HELP.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// One label, e.g. `upstream="eu-1"`.
pub type Label = Vec<(&'static str, String)>;

/// Every metric the relay keeps; cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    pub accepted: Counter,
    pub delivered: Family<Label, Counter>,
    pub bounced: Counter,
    pub deferred: Family<Label, Counter>,
    pub upstream_failures: Family<Label, Counter>,
    pub refused: Family<Label, Counter>,
    pub tls_handshakes: Family<Label, Counter>,
    pub connections_active: Gauge,
    /// Set at scrape time from the spool.
    pub queue_messages: Gauge,
    /// Set at scrape time from the spool; f64 seconds.
    pub oldest_queued_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Set at scrape time from the running configuration's health.
    pub upstream_up: Family<Label, Gauge>,
    pub accept_latency: Histogram,
    pub delivery_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("smarthost");
        let m = Metrics {
            accepted: Counter::default(),
            delivered: Family::default(),
            bounced: Counter::default(),
            deferred: Family::default(),
            upstream_failures: Family::default(),
            refused: Family::default(),
            tls_handshakes: Family::default(),
            connections_active: Gauge::default(),
            queue_messages: Gauge::default(),
            oldest_queued_age: Gauge::default(),
            upstream_up: Family::default(),
            // 1 ms .. ~33 s: spooling is an fsync or two.
            accept_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 0.1 s .. ~1.9 days: a delivery may wait out retries.
            delivery_latency: Histogram::new(exponential_buckets(0.1, 4.0, 13)),
            registry: Registry::default(),
        };
        registry.register(
            "messages_accepted",
            "Messages answered 250 after DATA/BDAT (durably spooled)",
            m.accepted.clone(),
        );
        registry.register(
            "messages_delivered",
            "Message transactions an upstream accepted at least one recipient of, by upstream",
            m.delivered.clone(),
        );
        registry.register(
            "messages_bounced",
            "Delivery attempts that ended in a permanent failure (or expiry) for at least one recipient",
            m.bounced.clone(),
        );
        registry.register(
            "messages_deferred",
            "Delivery attempts that left at least one recipient for a retry, by the upstream last tried",
            m.deferred.clone(),
        );
        registry.register(
            "upstream_failures",
            "Failed transactions (connection, TLS, or a refused envelope) per upstream",
            m.upstream_failures.clone(),
        );
        registry.register(
            "refused",
            "SMTP refusals by reason: relay_denied, auth_failed, tls_required, sender_domain, size, rate",
            m.refused.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Completed inbound TLS handshakes by protocol version",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "connections_active",
            "Open inbound SMTP connections",
            m.connections_active.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in the spool",
            m.queue_messages.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_message_age",
            "Age of the oldest message in the spool (0 when empty)",
            Unit::Seconds,
            m.oldest_queued_age.clone(),
        );
        registry.register(
            "upstream_up",
            "1 while the upstream's last transaction worked, 0 while it is failing (set aside)",
            m.upstream_up.clone(),
        );
        registry.register_with_unit(
            "accept_latency",
            "From the end of the message content to the 250 reply (spooling)",
            Unit::Seconds,
            m.accept_latency.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "From the 250 to the client to the upstream's 250",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The label set `name="value"`.
pub fn label(name: &'static str, value: &str) -> Label {
    vec![(name, value.to_owned())]
}
