//! The queue manager: recovers the spool at start, delivers due messages with
//! bounded concurrency, records each recipient's fate durably after every
//! attempt, retries with backoff, bounces permanent failures, and removes a
//! message once no recipient is pending.
//!
//! Delivery is at least once: the upstream's 250 is recorded after it is
//! received, so a crash in between sends the message again (never loses it).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::Telemetry;
use crate::config::{Config, QueueConfig};
use crate::outbound::client::{ClientOptions, Connection, Upstream, UpstreamError, UpstreamReply};
use crate::policy::domain_of;
use crate::queue::dsn::{self, Action, RecipientReport};
use crate::queue::pool::{Health, Routes};
use crate::queue::{DELETED_IDS, FLUSH_REQUEST};
use crate::server::ServerContext;
use crate::spool::{self, Envelope, Recipient, RecipientStatus, Spool};
use crate::tracking::{self, clean};

/// Messages delivered at the same time, in all.
const MAX_IN_FLIGHT: usize = 64;
/// Connections to one upstream at the same time.
const PER_UPSTREAM: usize = 10;
/// A reused connection is retired after this many messages or this age.
const MAX_MESSAGES_PER_CONNECTION: usize = 100;
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Idle connections kept per upstream for reuse.
const MAX_IDLE: usize = 4;
/// How often the manager looks for a `queue flush` request.
const FLUSH_POLL: Duration = Duration::from_secs(1);

/// Tells the manager about new messages.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<String>,
}

impl QueueHandle {
    pub fn channel() -> (QueueHandle, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (QueueHandle { tx }, rx)
    }

    /// A message was just spooled: deliver it now.
    pub fn submit(&self, id: String) {
        let _ = self.tx.send(id);
    }
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
    idle: Vec<Mutex<Vec<Connection>>>,
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

/// Runs until `shutdown`: recovers the spool, then delivers. Each delivery
/// uses the configuration current when it starts.
pub async fn run(
    mut current: watch::Receiver<Arc<ServerContext>>,
    mut new_messages: mpsc::UnboundedReceiver<String>,
    shutdown: CancellationToken,
) {
    let spool = current.borrow().spool.clone();
    let mut schedule = Schedule::default();
    match spool.list() {
        Ok(ids) => {
            info!(messages = ids.len(), "queue recovered from the spool");
            for id in ids {
                let due = match spool.read(&id) {
                    Ok((env, _)) => next_due(&env),
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
        let delivery = current.borrow_and_update().delivery.clone();
        if !delivery.upstreams.is_empty() {
            while schedule.in_flight.len() < MAX_IN_FLIGHT {
                let Some(id) = schedule.pop_due() else {
                    break;
                };
                let (delivery, done) = (delivery.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let next = delivery.deliver(&id).await;
                    let _ = done.send((id, next));
                });
            }
        }
        // Without upstreams nothing is delivered: sleep until a reload brings some.
        let wake = if delivery.upstreams.is_empty() {
            None
        } else {
            schedule.next_wake()
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = current.changed(), if reloads => reloads = changed.is_ok(),
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

/// When a message next needs an attempt: now for pending recipients, else the
/// earliest deferred retry; `None` when nothing is left to do.
fn next_due(env: &Envelope) -> Option<u64> {
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
    /// One delivery attempt for the due recipients of message `id`; returns
    /// when it next needs an attempt (`None`: finished or unreadable).
    async fn deliver(&self, id: &str) -> Option<u64> {
        let (mut env, message) = match self.spool.read(id) {
            Ok(x) => x,
            Err(spool::SpoolError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                info!(
                    event = tracking::DELETED,
                    queue_id = id,
                    "no longer in the spool (queue delete); dropped from the schedule"
                );
                return None;
            }
            Err(e) => {
                error!(queue_id = %id, "cannot read queued message: {e}");
                return None;
            }
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
        let mut last_tried = None;
        let outcome = match self.routes.for_domain(domain.as_deref()) {
            None => Err("451 4.4.0 no route for this sender domain".to_owned()),
            Some(route) => {
                let recipients: Vec<&Recipient> = due.iter().map(|&i| &env.recipients[i]).collect();
                let mut last_error = String::from("no upstream tried");
                let mut result = None;
                for u in route.order(&self.health) {
                    let name = self.upstreams[u].name.as_str();
                    last_tried = Some(u);
                    let started = std::time::Instant::now();
                    let tried = self.attempt(u, &env, &recipients, &message).await;
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
                            result = Some((u, replies, dsn));
                            break;
                        }
                        Err(e) => {
                            let aside = self.health.failure(u);
                            let error = e.to_string();
                            warn!(event = tracking::ATTEMPT, queue_id = id, upstream = name, duration_ms, error = &*clean(&error), set_aside = ?aside, "attempt failed");
                            last_error = format!("upstream {name}: {e}");
                            self.telemetry.upstream_failed(id, name, &e.to_string());
                        }
                    }
                }
                result.ok_or(last_error)
            }
        };

        let now = spool::unix_now();
        let expired = now >= env.received_at + self.queue.max_lifetime.as_secs();
        // One retry time for the whole message (jitter included), from the
        // most-tried recipient.
        let attempts = due
            .iter()
            .map(|&i| match &env.recipients[i].status {
                RecipientStatus::Deferred { attempts, .. } => attempts + 1,
                _ => 1,
            })
            .max()
            .unwrap_or(1);
        let next_attempt = now + backoff(&self.queue, attempts).as_secs().max(1);
        // Notices to send: failures, and "relayed" for NOTIFY=SUCCESS recipients
        // handed to an upstream without DSN (RFC 3461 §6.2.3.1), which cannot
        // send the success notice itself.
        let mut notices = Vec::new();
        // Recipients failed for good (`true`: by max_lifetime), logged once
        // the notice's queue id is known.
        let mut failed = Vec::new();
        let mut attempts_of = vec![0; env.recipients.len()];
        for (k, &i) in due.iter().enumerate() {
            let r = &mut env.recipients[i];
            let attempts = match &r.status {
                RecipientStatus::Deferred { attempts, .. } => attempts + 1,
                _ => 1,
            };
            attempts_of[i] = attempts;
            let (upstream, reply, upstream_dsn) = match &outcome {
                Ok((u, replies, dsn)) => (Some(*u), replies[k].clone(), *dsn),
                Err(e) => (None, UpstreamReply::synthetic(451, "4.4.1", e), false),
            };
            let upstream_name = upstream.map(|u| self.upstreams[u].name.clone());
            r.status = if reply.is_positive() {
                info!(
                    event = tracking::DELIVERED,
                    queue_id = id,
                    rcpt = &*clean(&r.address),
                    upstream = upstream_name.as_deref().unwrap_or(""),
                    reply = &*clean(&reply.to_string()),
                    "delivered"
                );
                if !upstream_dsn {
                    notices.push((i, upstream_name.clone(), Action::Relayed));
                }
                RecipientStatus::Delivered {
                    upstream: upstream_name.unwrap_or_default(),
                    reply: reply.to_string(),
                    at: now,
                }
            } else if reply.is_permanent() || expired {
                failed.push((i, !reply.is_permanent()));
                let reply = if reply.is_permanent() {
                    reply.to_string()
                } else {
                    // RFC 3463 X.4.7: delivery time expired.
                    format!(
                        "554 5.4.7 expired after {} in the queue; last reply: {reply}",
                        humantime::format_duration(self.queue.max_lifetime)
                    )
                };
                notices.push((i, upstream_name.clone(), Action::Failed));
                RecipientStatus::Failed { reply, at: now }
            } else {
                let retry_at = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(next_attempt),
                )
                .to_string();
                info!(
                    event = tracking::DEFERRED,
                    queue_id = id,
                    rcpt = &*clean(&r.address),
                    reply = &*clean(&reply.to_string()),
                    attempts,
                    retry_at = retry_at.as_str(),
                    retry_in_secs = next_attempt - now,
                    "deferred"
                );
                RecipientStatus::Deferred {
                    reply: reply.to_string(),
                    attempts,
                    next_attempt,
                }
            };
        }

        self.telemetry.attempted(
            &env,
            &due,
            outcome
                .as_ref()
                .ok()
                .map(|(u, ..)| self.upstreams[*u].name.as_str()),
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
            for (i, _, action) in &notices {
                let r = &mut env.recipients[*i];
                let reply = match &r.status {
                    RecipientStatus::Failed { reply, .. }
                    | RecipientStatus::Delivered { reply, .. } => reply.clone(),
                    _ => continue,
                };
                if dsn::wants(r, action) {
                    info!(
                        event = tracking::DEFERRED,
                        queue_id = id,
                        rcpt = &*clean(&r.address),
                        reply = &*clean(&reply),
                        attempts = attempts_of[*i],
                        retry_in_secs = next_attempt - now,
                        "deferred: the notice to the sender could not be queued"
                    );
                    r.status = RecipientStatus::Deferred {
                        reply: format!("{reply} (notice to the sender not yet queued)"),
                        attempts: attempts_of[*i],
                        next_attempt,
                    };
                }
            }
        }
        for &(i, expired) in &failed {
            let r = &env.recipients[i];
            let RecipientStatus::Failed { reply, .. } = &r.status else {
                continue;
            };
            let (rcpt, reply) = (&*clean(&r.address), &*clean(reply));
            // The notice's id, if it speaks of this recipient (NOTIFY may say not).
            let bounce_id = notice
                .as_ref()
                .ok()
                .and_then(|n| n.as_deref())
                .filter(|_| dsn::wants(r, &Action::Failed));
            if expired {
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
        let next = next_due(&env);
        let saved = if next.is_none() {
            info!(
                event = tracking::COMPLETED,
                queue_id = id,
                "done; removed from the queue"
            );
            self.spool.remove(id).map_err(spool::SpoolError::from)
        } else {
            self.spool.update(&env).await
        };
        if let Err(e) = saved {
            // The next start reads the old state and tries again: a duplicate at worst.
            error!(queue_id = %id, "cannot record delivery state: {e}");
        }
        next
    }

    /// One transaction on a reused or new connection to upstream `u`.
    async fn attempt(
        &self,
        u: usize,
        env: &Envelope,
        recipients: &[&Recipient],
        message: &[u8],
    ) -> Result<(Vec<UpstreamReply>, bool), UpstreamError> {
        let _slot = self.slots[u].acquire().await;
        let mut conn = self.checkout(u).await?;
        let replies = conn.send(env, recipients, message).await?;
        let dsn = conn.capabilities().dsn;
        let reusable = conn.messages_sent() < MAX_MESSAGES_PER_CONNECTION
            && conn.opened_at().elapsed() < MAX_CONNECTION_AGE;
        let mut idle = self.idle[u].lock().unwrap_or_else(|e| e.into_inner());
        if reusable && idle.len() < MAX_IDLE {
            idle.push(conn);
        } else {
            drop(idle);
            tokio::spawn(conn.quit());
        }
        Ok((replies, dsn))
    }

    /// An idle connection that still answers RSET, or a new one.
    async fn checkout(&self, u: usize) -> Result<Connection, UpstreamError> {
        loop {
            let idle = self.idle[u].lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut conn) = idle else { break };
            // RFC 5321 §4.1.1.5: RSET between transactions; 421 means reconnect.
            if conn.reset().await.is_ok() {
                return Ok(conn);
            }
        }
        Connection::open(&self.upstreams[u], &self.options).await
    }

    /// Queues one RFC 3464 notification to the sender about these recipients
    /// (never to `<>`, and only for those whose NOTIFY asks for it): its
    /// queue id, `None` when none was due, `Err` when it could not be stored.
    async fn notify(
        &self,
        env: &Envelope,
        message: &[u8],
        notices: &[(usize, Option<String>, Action)],
        domain: Option<String>,
    ) -> Result<Option<String>, ()> {
        if env.sender.is_empty() {
            return Ok(None);
        }
        let reports: Vec<RecipientReport<'_>> = notices
            .iter()
            .filter(|(i, _, action)| dsn::wants(&env.recipients[*i], action))
            .map(|(i, upstream, action)| {
                let r = &env.recipients[*i];
                let (reply, status) = match &r.status {
                    RecipientStatus::Failed { reply, .. } => (reply.clone(), status_of(reply)),
                    RecipientStatus::Delivered { reply, .. } => (reply.clone(), "2.0.0".to_owned()),
                    _ => (String::new(), "4.0.0".to_owned()),
                };
                RecipientReport {
                    address: &r.address,
                    orcpt: r.orcpt.as_deref(),
                    action: *action,
                    status,
                    diagnostic: Some(reply),
                    remote_mta: upstream.as_deref().and_then(|name| {
                        self.upstreams
                            .iter()
                            .find(|u| u.name == name)
                            .map(|u| u.address.as_str())
                    }),
                }
            })
            .collect();
        if reports.is_empty() {
            return Ok(None);
        }
        let now = spool::unix_now();
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
                self.handle.submit(id.clone());
                Ok(Some(id))
            }
            Err(e) => {
                error!(original = %env.id, "cannot queue the bounce, the attempt will be repeated: {e}");
                Err(())
            }
        }
    }
}

/// The enhanced status code in a reply like "550 5.1.1 text", else a generic one.
fn status_of(reply: &str) -> String {
    reply
        .split_whitespace()
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or_else(|| "5.0.0".to_owned(), str::to_owned)
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

    #[test]
    fn status_codes_are_found_in_replies() {
        assert_eq!(status_of("550 5.1.1 no such user"), "5.1.1");
        assert_eq!(status_of("upstream eu: 451 4.7.500 throttled"), "4.7.500");
        assert_eq!(status_of("550 go away"), "5.0.0");
    }
}
