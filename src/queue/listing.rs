//! What `smarthost queue list` shows: one line per queued message, or JSON.

use serde::Serialize;

use crate::spool::{self, RecipientStatus, Spool};

#[derive(Debug, Serialize)]
pub struct Entry {
    pub id: String,
    pub received_at: u64,
    pub age_seconds: u64,
    pub sender: String,
    pub size: u64,
    pub recipients: Vec<RecipientEntry>,
}

#[derive(Debug, Serialize)]
pub struct RecipientEntry {
    pub address: String,
    /// pending, delivered, deferred or failed.
    pub state: &'static str,
    pub last_reply: Option<String>,
    pub next_attempt: Option<u64>,
    pub upstream: Option<String>,
}

/// Every queued message, oldest first; unreadable entries are reported, not skipped silently.
pub fn entries(spool: &Spool) -> std::io::Result<(Vec<Entry>, Vec<String>)> {
    let now = spool::unix_now();
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for id in spool.list()? {
        let env = match spool.read_envelope(&id) {
            Ok(env) => env,
            Err(e) => {
                problems.push(format!("{id}: {e}"));
                continue;
            }
        };
        let recipients = env
            .recipients
            .iter()
            .map(|r| {
                let (state, last_reply, next_attempt, upstream) = match &r.status {
                    RecipientStatus::Pending => ("pending", None, None, None),
                    RecipientStatus::Delivered {
                        upstream, reply, ..
                    } => (
                        "delivered",
                        Some(reply.clone()),
                        None,
                        Some(upstream.clone()),
                    ),
                    RecipientStatus::Deferred {
                        reply,
                        next_attempt,
                        ..
                    } => ("deferred", Some(reply.clone()), Some(*next_attempt), None),
                    RecipientStatus::Failed { reply, .. } => {
                        ("failed", Some(reply.clone()), None, None)
                    }
                };
                RecipientEntry {
                    address: r.address.clone(),
                    state,
                    last_reply,
                    next_attempt,
                    upstream,
                }
            })
            .collect();
        entries.push(Entry {
            age_seconds: now.saturating_sub(env.received_at),
            id: env.id,
            received_at: env.received_at,
            sender: env.sender,
            size: env.size,
            recipients,
        });
    }
    Ok((entries, problems))
}

/// The human form: `id  age  <sender>  rcpt (state) ...  last reply`.
pub fn format_line(e: &Entry) -> String {
    let age = humantime::format_duration(std::time::Duration::from_secs(e.age_seconds));
    let rcpts: Vec<String> = e
        .recipients
        .iter()
        .map(|r| format!("{} ({})", r.address, r.state))
        .collect();
    let last = e
        .recipients
        .iter()
        .filter_map(|r| r.last_reply.as_deref())
        .next_back()
        .unwrap_or("-");
    format!(
        "{}  {age}  <{}>  {}  {last}",
        e.id,
        e.sender,
        rcpts.join(", ")
    )
}
