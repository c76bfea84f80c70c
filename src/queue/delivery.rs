//! One delivery attempt of one queued message: route → attempt (on a reused
//! or new upstream connection) → classify each recipient (`verdict`) →
//! notify the sender (`dsn`) → save the new state or remove the message.
//!
//! Delivery is at least once: the upstream's 250 is recorded after it is
//! received, so a crash in between sends the message again (never loses it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use crate::config::{Config, QueueConfig};
use crate::outbound::{ClientOptions, Connection, Upstream, UpstreamError, UpstreamReply};
use crate::policy::domain_of;
use crate::queue::arrivals::{Hot, QueueHandle};
use crate::queue::dsn::{self, Action, RecipientReport};
use crate::queue::pool::{Health, Routes};
use crate::queue::verdict::{self, AttemptError, Verdict};
use crate::spool::{self, Envelope, Recipient, RecipientStatus, Spool};
use crate::telemetry::Telemetry;
use crate::tracking::{self, clean};

/// Connections to one upstream at the same time.
const PER_UPSTREAM: usize = 10;
/// A reused connection is retired after this many messages or this age.
const MAX_MESSAGES_PER_CONNECTION: usize = 100;
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Idle connections kept per upstream for reuse: as many as may be busy,
/// so a burst's connections are not closed and opened again (a new one
/// costs a TCP and often a TLS handshake, a greeting and EHLO).
const MAX_IDLE_PER_UPSTREAM: usize = PER_UPSTREAM;
/// An idle connection older than this is closed, not reused: servers close
/// idle connections themselves (Postfix's smtpd after 300 s, some far
/// sooner), and one found closed costs a wasted write.
const MAX_IDLE_TIME: Duration = Duration::from_secs(10);

/// The content of the message being delivered: in memory when it came hot,
/// else read from the spool when an attempt first holds an upstream slot (or
/// a notice needs it). Up to 64 deliveries are in flight but only 10 send per
/// upstream: the rest wait without their content (at 100 sessions × 100 KiB
/// that was 5 MB held by waiting tasks).
struct Content<'a> {
    spool: &'a Spool,
    id: &'a str,
    size: u64,
    bytes: tokio::sync::OnceCell<Vec<u8>>,
}

impl Content<'_> {
    async fn get(&self) -> Result<&[u8], spool::SpoolError> {
        let bytes = self
            .bytes
            .get_or_try_init(|| self.spool.read_content_async(self.id, self.size))
            .await?;
        Ok(bytes)
    }
}

/// Why an attempt sent nothing: the upstream failed, or the message could
/// not be read.
enum Unsent {
    Upstream(UpstreamError),
    Unreadable(spool::SpoolError),
}

impl From<UpstreamError> for Unsent {
    fn from(e: UpstreamError) -> Unsent {
        Unsent::Upstream(e)
    }
}

/// A message that cannot be read is dropped from the schedule: removed by
/// `queue delete`, or damaged (left in the spool for an administrator).
fn unreadable(id: &str, e: spool::SpoolError) -> Option<u64> {
    match e {
        spool::SpoolError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(
                event = tracking::DELETED,
                queue_id = id,
                "no longer in the spool (queue delete); dropped from the schedule"
            );
        }
        e => error!(queue_id = %id, "cannot read queued message: {e}"),
    }
    None
}

/// What delivery needs from one configuration; rebuilt on reload.
pub struct Delivery {
    hostname: String,
    spool: Spool,
    queue: QueueConfig,
    upstreams: Vec<Upstream>,
    routes: Routes,
    pub health: Health,
    slots: Vec<Semaphore>,
    /// Per upstream: idle connections and since when each idles.
    idle: Vec<Mutex<Vec<(Connection, Instant)>>>,
    options: ClientOptions,
    handle: QueueHandle,
    telemetry: Arc<Telemetry>,
}

impl Delivery {
    pub fn new(
        config: &Config,
        spool: Spool,
        handle: QueueHandle,
        telemetry: Arc<Telemetry>,
    ) -> Result<Delivery, String> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::from_config(u).map_err(|e| format!("upstream {}: {e}", u.name)))
            .collect::<Result<Vec<_>, _>>()?;
        let n = upstreams.len();
        Ok(Delivery {
            hostname: config.hostname.clone(),
            spool,
            queue: config.queue.clone(),
            routes: Routes::new(config),
            health: Health::new(n),
            slots: (0..n).map(|_| Semaphore::new(PER_UPSTREAM)).collect(),
            idle: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            options: ClientOptions {
                helo_name: config.hostname.clone(),
                connect_timeout: config.queue.connect_timeout,
                greeting_timeout: config.queue.command_timeout,
                command_timeout: config.queue.command_timeout,
                // RFC 5321 §4.5.3.2: 2 min for the 354, 3 min per data block,
                // 10 min for the final reply; the block limit follows data_timeout
                // only downwards.
                data_init_timeout: config.queue.command_timeout.min(Duration::from_secs(120)),
                data_block_timeout: config.queue.data_timeout.min(Duration::from_secs(180)),
                data_end_timeout: config.queue.data_timeout,
            },
            upstreams,
            handle,
            telemetry,
        })
    }

    /// Without upstreams nothing is delivered; mail stays queued.
    pub fn has_upstreams(&self) -> bool {
        !self.upstreams.is_empty()
    }

    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.upstreams.iter().map(|u| u.name.as_str())
    }

    /// Whether mail from a sender in `domain` (lower case; `None` for `<>`)
    /// has somewhere to go: a route for its domain or a default route (or no
    /// upstreams at all, when mail is kept queued).
    pub fn routable(&self, domain: Option<&str>) -> bool {
        self.upstreams.is_empty() || self.routes.for_domain(domain).is_some()
    }
}

/// The upstream that took the transaction, its reply for each recipient (in
/// order), and whether it offered DSN.
struct Accepted {
    upstream: usize,
    replies: Vec<UpstreamReply>,
    dsn: bool,
}

/// A notice the sender may be due about one recipient.
struct Notice {
    recipient: usize,
    upstream: Option<usize>,
    action: Action,
    verdict: Verdict,
    attempts: u32,
}

/// When a message next needs an attempt: now for pending recipients, else the
/// earliest deferred retry; `None` when nothing is left to do.
pub fn next_due(env: &Envelope) -> Option<u64> {
    env.recipients
        .iter()
        .filter_map(|r| match r.status {
            RecipientStatus::Pending => Some(0),
            RecipientStatus::Deferred { next_attempt, .. } => Some(next_attempt),
            _ => None,
        })
        .min()
}

/// `retry_min`, doubling per attempt up to `retry_max`, with ±10 % jitter so
/// a queue that built up during an outage does not retry in lockstep.
fn backoff(queue: &QueueConfig, attempts: u32) -> Duration {
    let base = queue
        .retry_min
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(queue.retry_max);
    base.mul_f64(rand::random_range(0.9..1.1))
}

impl Delivery {
    /// One delivery attempt for the due recipients of message `id`: route →
    /// attempt → classify → notify → save. Returns when it next needs an
    /// attempt (`None`: finished or unreadable).
    /// `hot`: the message as just accepted, when the session still had it
    /// (its first attempt then reads nothing back from the spool).
    pub async fn deliver(&self, id: &str, hot: Option<Hot>) -> Option<u64> {
        let loaded = match hot {
            Some(h) => Ok((h.envelope, Some(h.content))),
            None => self.spool.read_envelope_async(id).await.map(|e| (e, None)),
        };
        let (mut env, content) = match loaded {
            Ok(x) => x,
            Err(e) => return unreadable(id, e),
        };
        let message = Content {
            spool: &self.spool,
            id,
            size: env.size,
            bytes: tokio::sync::OnceCell::new_with(content),
        };
        // The schedule decided it is time: every recipient still to do goes in
        // this attempt, so a message's recipients never drift into separate
        // transactions (and `queue flush` really retries).
        let due: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| {
                matches!(
                    env.recipients[i].status,
                    RecipientStatus::Pending | RecipientStatus::Deferred { .. }
                )
            })
            .collect();
        if due.is_empty() {
            return next_due(&env);
        }
        let domain = env.route_domain.clone().or_else(|| domain_of(&env.sender));
        let recipients: Vec<&Recipient> = due.iter().map(|&i| &env.recipients[i]).collect();
        let (outcome, last_tried) = match self
            .try_route(id, domain.as_deref(), &env, &recipients, &message)
            .await
        {
            Ok(tried) => tried,
            Err(e) => return unreadable(id, e),
        };

        let now = spool::unix_now();
        let expired = now >= env.received_at + self.queue.max_lifetime.as_secs();
        // One retry time for the whole message (jitter included), from the
        // most-tried recipient.
        let attempts_of = |r: &Recipient| match &r.status {
            RecipientStatus::Deferred { attempts, .. } => attempts + 1,
            _ => 1,
        };
        let attempts = recipients.iter().map(|r| attempts_of(r)).max().unwrap_or(1);
        let next_attempt = now + backoff(&self.queue, attempts).as_secs().max(1);
        let (upstream, upstream_has_dsn) = match &outcome {
            Ok(accepted) => (Some(accepted.upstream), accepted.dsn),
            Err(_) => (None, false),
        };
        // Each recipient's reply: the upstream's own, or the one the whole
        // attempt failed with.
        let replies = match &outcome {
            Ok(accepted) => accepted.replies.clone(),
            Err(e) => vec![e.reply(); due.len()],
        };
        let verdicts: Vec<Verdict> = replies
            .into_iter()
            .map(|reply| verdict::classify(reply, expired, self.queue.max_lifetime))
            .collect();

        let upstream_name = upstream.map(|u| self.upstreams[u].name.as_str());
        let mut notices = Vec::new();
        for (&i, verdict) in due.iter().zip(&verdicts) {
            let r = &mut env.recipients[i];
            let attempts = attempts_of(r);
            r.status = self.record(id, r, verdict, upstream_name, attempts, now, next_attempt);
            if let Some(action) = verdict.notice(upstream_has_dsn) {
                notices.push(Notice {
                    recipient: i,
                    upstream,
                    action,
                    verdict: verdict.clone(),
                    attempts,
                });
            }
        }
        self.telemetry.attempted(
            &env,
            &due,
            upstream_name,
            last_tried.map(|u: usize| self.upstreams[u].name.as_str()),
        );

        let notice = if notices.is_empty() {
            Ok(None)
        } else {
            self.notify(&env, &message, &notices, domain).await
        };
        if notice.is_err() {
            // The notice could not be queued (a full disk): the recipients it
            // was for are not finished but tried again later, so the message
            // is not removed with its bounce untold. A duplicate at worst.
            for n in &notices {
                let r = &mut env.recipients[n.recipient];
                if dsn::wants(r, &n.action) {
                    let reply = n.verdict.reply().to_string();
                    info!(
                        event = tracking::DEFERRED,
                        queue_id = id,
                        rcpt = &*clean(&r.address),
                        reply = &*clean(&reply),
                        attempts = n.attempts,
                        retry_in_secs = next_attempt - now,
                        "deferred: the notice to the sender could not be queued"
                    );
                    r.status = RecipientStatus::Deferred {
                        reply: format!("{reply} (notice to the sender not yet queued)"),
                        attempts: n.attempts,
                        next_attempt,
                    };
                }
            }
        }
        for (&i, verdict) in due.iter().zip(&verdicts) {
            let r = &env.recipients[i];
            // Still failed (not deferred for want of its notice).
            if !matches!(r.status, RecipientStatus::Failed { .. }) {
                continue;
            }
            let reply = verdict.reply().to_string();
            let (rcpt, reply) = (&*clean(&r.address), &*clean(&reply));
            // The notice's id, if it speaks of this recipient (NOTIFY may say not).
            let bounce_id = notice
                .as_ref()
                .ok()
                .and_then(|n| n.as_deref())
                .filter(|_| dsn::wants(r, &Action::Failed));
            if matches!(verdict, Verdict::Expired(_)) {
                warn!(
                    event = tracking::EXPIRED,
                    queue_id = id,
                    rcpt,
                    reply,
                    bounce_id,
                    "expired"
                );
            } else {
                warn!(
                    event = tracking::BOUNCED,
                    queue_id = id,
                    rcpt,
                    reply,
                    bounce_id,
                    "bounced"
                );
            }
        }
        self.save(&env).await
    }

    /// Tries the route's upstreams in order until one takes the transaction:
    /// its replies, or why there are none; and the last upstream tried.
    async fn try_route(
        &self,
        id: &str,
        domain: Option<&str>,
        env: &Envelope,
        recipients: &[&Recipient],
        message: &Content<'_>,
    ) -> Result<(Result<Accepted, AttemptError>, Option<usize>), spool::SpoolError> {
        let Some(route) = self.routes.for_domain(domain) else {
            return Ok((Err(AttemptError::NoRoute), None));
        };
        let mut failure = None;
        let mut last_tried = None;
        for u in route.order(&self.health) {
            let name = self.upstreams[u].name.as_str();
            last_tried = Some(u);
            let started = std::time::Instant::now();
            let tried = match self.attempt(u, env, recipients, message).await {
                Ok(sent) => Ok(sent),
                Err(Unsent::Unreadable(e)) => return Err(e),
                Err(Unsent::Upstream(e)) => Err(e),
            };
            let duration_ms = started.elapsed().as_millis() as u64;
            match tried {
                Ok((replies, dsn)) => {
                    self.health.success(u);
                    let listed = recipients
                        .iter()
                        .zip(&replies)
                        .map(|(r, reply)| {
                            format!("<{}> {}", clean(&r.address), clean(&reply.to_string()))
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    info!(
                        event = tracking::ATTEMPT,
                        queue_id = id,
                        upstream = name,
                        duration_ms,
                        replies = listed.as_str(),
                        "attempt"
                    );
                    let accepted = Accepted {
                        upstream: u,
                        replies,
                        dsn,
                    };
                    return Ok((Ok(accepted), last_tried));
                }
                Err(error) => {
                    let aside = self.health.failure(u);
                    let text = error.to_string();
                    warn!(event = tracking::ATTEMPT, queue_id = id, upstream = name, duration_ms, error = &*clean(&text), set_aside = ?aside, "attempt failed");
                    self.telemetry.upstream_failed(id, name, &text);
                    failure = Some(AttemptError::Upstream {
                        name: name.to_owned(),
                        error,
                    });
                }
            }
        }
        // A route always names at least one upstream (the config checks it).
        let failure = failure.unwrap_or(AttemptError::NoRoute);
        Ok((Err(failure), last_tried))
    }

    /// Logs one recipient's verdict and returns the status to store.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        id: &str,
        r: &Recipient,
        verdict: &Verdict,
        upstream: Option<&str>,
        attempts: u32,
        now: u64,
        next_attempt: u64,
    ) -> RecipientStatus {
        let reply = verdict.reply().to_string();
        match verdict {
            Verdict::Delivered(_) => {
                info!(
                    event = tracking::DELIVERED,
                    queue_id = id,
                    rcpt = &*clean(&r.address),
                    upstream = upstream.unwrap_or(""),
                    reply = &*clean(&reply),
                    "delivered"
                );
                RecipientStatus::Delivered {
                    upstream: upstream.unwrap_or_default().to_owned(),
                    reply,
                    at: now,
                }
            }
            // Logged once the notice's queue id is known.
            Verdict::Failed(_) | Verdict::Expired(_) => RecipientStatus::Failed { reply, at: now },
            Verdict::Deferred(_) => {
                let retry_at = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(next_attempt),
                )
                .to_string();
                info!(
                    event = tracking::DEFERRED,
                    queue_id = id,
                    rcpt = &*clean(&r.address),
                    reply = &*clean(&reply),
                    attempts,
                    retry_at = retry_at.as_str(),
                    retry_in_secs = next_attempt - now,
                    "deferred"
                );
                RecipientStatus::Deferred {
                    reply,
                    attempts,
                    next_attempt,
                }
            }
        }
    }

    /// Stores the new delivery state, or removes the message when nothing is
    /// left to do; returns when it next needs an attempt.
    async fn save(&self, env: &Envelope) -> Option<u64> {
        let next = next_due(env);
        let saved = if next.is_none() {
            info!(
                event = tracking::COMPLETED,
                queue_id = env.id.as_str(),
                "done; removed from the queue"
            );
            self.spool.remove_async(&env.id).await
        } else {
            self.spool.update(env).await
        };
        if let Err(e) = saved {
            // The next start reads the old state and tries again: a duplicate at worst.
            error!(queue_id = %env.id, "cannot record delivery state: {e}");
        }
        next
    }

    /// One transaction on a reused or new connection to upstream `u`.
    async fn attempt(
        &self,
        u: usize,
        env: &Envelope,
        recipients: &[&Recipient],
        message: &Content<'_>,
    ) -> Result<(Vec<UpstreamReply>, bool), Unsent> {
        let _slot = self.slots[u].acquire().await;
        let message = message.get().await.map_err(Unsent::Unreadable)?;
        let (conn, replies) = loop {
            let (mut conn, reused) = self.checkout(u).await?;
            match conn.send(env, recipients, message).await {
                // Closed while it idled here: nothing was taken; the next
                // idle connection or a new one carries the message.
                Err(_) if reused && conn.closed_before_mail() => continue,
                result => break (conn, result?),
            }
        };
        let dsn = conn.capabilities().dsn;
        let reusable = conn.is_usable()
            && conn.messages_sent() < MAX_MESSAGES_PER_CONNECTION
            && conn.opened_at().elapsed() < MAX_CONNECTION_AGE;
        let mut idle = self.idle[u].lock().unwrap_or_else(|e| e.into_inner());
        if reusable && idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push((conn, Instant::now()));
        } else {
            drop(idle);
            tokio::spawn(conn.quit());
        }
        Ok((replies, dsn))
    }

    /// An idle connection (and `true`), or a new one. A transaction ends in
    /// a reset state (RFC 5321 §4.1.1.4), so the next begins with MAIL
    /// without a RSET first; one that finds the connection closed is
    /// tried again by `attempt`.
    async fn checkout(&self, u: usize) -> Result<(Connection, bool), UpstreamError> {
        loop {
            let idle = self.idle[u].lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some((conn, since)) if since.elapsed() < MAX_IDLE_TIME => return Ok((conn, true)),
                Some((conn, _)) => drop(tokio::spawn(conn.quit())),
                None => {
                    let conn = Connection::open(&self.upstreams[u], &self.options).await?;
                    return Ok((conn, false));
                }
            }
        }
    }

    /// Queues one RFC 3464 notification to the sender about these recipients
    /// (never to `<>`, and only for those whose NOTIFY asks for it): its
    /// queue id, `None` when none was due, `Err` when it could not be stored.
    async fn notify(
        &self,
        env: &Envelope,
        message: &Content<'_>,
        notices: &[Notice],
        domain: Option<String>,
    ) -> Result<Option<String>, ()> {
        if env.sender.is_empty() {
            return Ok(None);
        }
        let reports: Vec<RecipientReport<'_>> = notices
            .iter()
            .filter(|n| dsn::wants(&env.recipients[n.recipient], &n.action))
            .map(|n| {
                let r = &env.recipients[n.recipient];
                RecipientReport {
                    address: &r.address,
                    orcpt: r.orcpt.as_deref(),
                    action: n.action,
                    status: n.verdict.status(),
                    diagnostic: Some(n.verdict.reply().to_string()),
                    remote_mta: n.upstream.map(|u| self.upstreams[u].address.as_str()),
                }
            })
            .collect();
        if reports.is_empty() {
            return Ok(None);
        }
        let now = spool::unix_now();
        let message = message.get().await.map_err(|e| {
            error!(queue_id = %env.id, "cannot read the message for its notice: {e}");
        })?;
        let body = dsn::build(&self.hostname, env, message, &reports, now);
        let id = spool::new_queue_id();
        let bounce = Envelope {
            version: spool::FORMAT_VERSION,
            id: id.clone(),
            received_at: now,
            client: env.client.clone(),
            sender: String::new(),
            params: spool::MailParams {
                // A UTF-8 explanation or 8-bit original headers make it 8-bit.
                body: (!body.is_ascii()).then(|| "8BITMIME".to_owned()),
                ..spool::MailParams::default()
            },
            recipients: vec![Recipient {
                address: env.sender.clone(),
                orcpt: None,
                notify: None,
                status: RecipientStatus::Pending,
            }],
            size: body.len() as u64,
            route_domain: domain,
        };
        match self.spool.store(&bounce, body).await {
            Ok(()) => {
                info!(
                    event = tracking::ACCEPTED,
                    queue_id = id.as_str(),
                    source = "dsn",
                    original = env.id.as_str(),
                    sender = "",
                    to = &*clean(&env.sender),
                    recipients = 1,
                    size = bounce.size,
                    "delivery notice queued"
                );
                self.handle.submit(id.clone(), None);
                Ok(Some(id))
            }
            Err(e) => {
                error!(original = %env.id, "cannot queue the bounce, the attempt will be repeated: {e}");
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let q = QueueConfig {
            path: "q".into(),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(86400),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
        };
        for (attempts, base) in [(1, 60.0), (2, 120.0), (3, 240.0), (10, 3600.0)] {
            let b = backoff(&q, attempts).as_secs_f64();
            assert!((base * 0.9..=base * 1.1).contains(&b), "{attempts}: {b}");
        }
    }
}
