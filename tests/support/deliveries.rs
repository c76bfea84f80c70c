//! Messages sent while the relay may be killed or reloaded, and what the
//! sinks got, checked against them: nothing acknowledged lost, nothing
//! delivered that was not completely sent, copies counted.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{Client, Reply, step};
use super::message::{message, message_id_in, strip_received};
use super::sink::{Sink, sidecar};

/// One message a client tried to send.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub from: String,
    pub to: Vec<String>,
    pub body: Vec<u8>,
    /// The final "." went out (the relay may have stored it without our seeing a 250).
    pub fully_sent: bool,
    /// The queue id from `250 2.0.0 ... queued as <id>`.
    pub queued_as: Option<String>,
}

impl Sent {
    /// `message` of about `size` bytes from `from` to `to`, not sent yet.
    pub fn new(message_id: &str, from: &str, to: Vec<String>, subject: &str, size: usize) -> Sent {
        Sent {
            message_id: message_id.to_owned(),
            from: from.to_owned(),
            to,
            body: message(message_id, from, subject, size),
            fully_sent: false,
            queued_as: None,
        }
    }
}

/// Sends `sent` as one transaction, an error (not a panic) when the relay
/// goes away; the reply to the final dot. `fully_sent` is set before the dot
/// is written: from then on the relay may have the whole message even if no
/// reply comes.
pub async fn send_tracked<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    sent: &mut Sent,
) -> Result<Reply, String> {
    step(c, &format!("MAIL FROM:<{}>", sent.from), "250").await?;
    for r in &sent.to {
        step(c, &format!("RCPT TO:<{r}>"), "250").await?;
    }
    step(c, "DATA", "354").await?;
    if !c.try_send(&sent.body).await {
        return Err("body: send failed".into());
    }
    sent.fully_sent = true;
    if !c.try_send(b".\r\n").await {
        return Err("dot: send failed".into());
    }
    c.try_reply()
        .await
        .ok_or_else(|| "dot: connection closed".into())
}

/// What the sinks received, by Message-ID: (sink, file, bytes) per copy.
pub type Received = BTreeMap<String, Vec<(String, PathBuf, Vec<u8>)>>;

pub fn received(sinks: &[&Sink]) -> Received {
    let mut got = Received::new();
    for s in sinks {
        for f in s.files() {
            let bytes = std::fs::read(&f).unwrap();
            let mid = message_id_in(strip_received(&bytes));
            got.entry(mid).or_default().push((s.name.clone(), f, bytes));
        }
    }
    got
}

/// What the sinks got, summed up by `check_deliveries`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct messages (by Message-ID) at the sinks.
    pub messages: usize,
    /// Copies of a (message, recipient) beyond the first: at-least-once duplicates.
    pub duplicates: usize,
    /// Messages that arrived as more than one transaction (each with only
    /// some of their recipients).
    pub split: usize,
}

/// Every acknowledged message reached a sink for each of its recipients;
/// every copy at a sink is a message that was completely sent, equal to it
/// plus exactly one Received header of ours, for some of its recipients
/// (sidecar); copies of one message are byte-identical.
pub fn check_deliveries(sinks: &[&Sink], sent: &[Sent]) -> Tally {
    let got = received(sinks);
    let by_id: HashMap<&str, &Sent> = sent.iter().map(|s| (s.message_id.as_str(), s)).collect();
    let mut tally = Tally {
        messages: got.len(),
        ..Tally::default()
    };
    let mut reached: HashMap<&str, BTreeMap<String, usize>> = HashMap::new();
    for (mid, copies) in &got {
        let s = by_id
            .get(mid.as_str())
            .unwrap_or_else(|| panic!("a sink received unknown message {mid}"));
        assert!(
            s.fully_sent,
            "{mid} reached a sink but its content was never completely sent"
        );
        let per_rcpt = reached.entry(s.message_id.as_str()).or_default();
        for (sink, file, bytes) in copies {
            let content = strip_received(bytes);
            let header = String::from_utf8_lossy(&bytes[..bytes.len() - content.len()]);
            assert!(
                header.starts_with("Received: from client.test (")
                    && header.contains("by relay.test (smarthost) with ESMTPS"),
                "{sink} {}: not our Received header: {header}",
                file.display()
            );
            if let Some(q) = &s.queued_as {
                assert!(header.contains(q.as_str()), "{mid}: {header}");
            }
            assert!(
                content == s.body.as_slice(),
                "{sink} {}: content of {mid} ({} bytes) differs from what was sent ({} bytes)",
                file.display(),
                content.len(),
                s.body.len()
            );
            assert!(
                !content.starts_with(b"Received:"),
                "{mid}: more than one Received header"
            );
            assert!(
                bytes == &copies[0].2,
                "{mid}: copies differ ({} vs {})",
                file.display(),
                copies[0].1.display()
            );
            let sidecar = sidecar(file);
            assert_eq!(sidecar["mail_from"], s.from.as_str(), "{mid}");
            let rcpts: Vec<String> = serde_json::from_value(sidecar["rcpt_to"].clone()).unwrap();
            assert!(!rcpts.is_empty(), "{mid}: no recipients");
            for r in rcpts {
                assert!(s.to.contains(&r), "{mid} delivered to {r}, not a recipient");
                *per_rcpt.entry(r).or_default() += 1;
            }
        }
        let transactions = copies.len();
        let most = per_rcpt.values().copied().max().unwrap_or(0);
        if transactions > most {
            tally.split += 1;
        }
        tally.duplicates += per_rcpt.values().map(|n| n - 1).sum::<usize>();
    }
    for s in sent {
        if s.queued_as.is_none() {
            continue;
        }
        let per_rcpt = reached.get(s.message_id.as_str());
        for r in &s.to {
            assert!(
                per_rcpt.is_some_and(|m| m.contains_key(r)),
                "{} was acknowledged as {:?} but never reached an upstream for {r}",
                s.message_id,
                s.queued_as
            );
        }
    }
    tally
}
