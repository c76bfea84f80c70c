//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): receiving the content,
//! streaming it to the spool, and the verdict, sent only once the message is
//! durably spooled.

use smtp_proto::request::receiver::BdatReceiver;
use tracing::{error, info};

use super::{Flow, Session, State, Transaction};
use crate::body::{Content, Trace};
use crate::dot::DotReader;
use crate::error::SmtpError;
use crate::queue::arrivals::Hot;
use crate::reply::Reply;
use crate::spool::{self, Envelope, Incoming};

/// Canonical content held per session before it is written to the spool's
/// temporary file. A message under it (most mail; every 1 KiB one) is written
/// once, at the end, as before; a larger one costs one write per this much,
/// and the session reads no more input while a write is under way.
const WRITE_AT: usize = 128 * 1024;

/// Content is unstuffed (or cut from its BDAT chunk) this much at a time, so a
/// session's scratch buffer stays this small however much one read brought:
/// 100 sessions each holding a 64 KiB read's copy was 6 MB at the peak.
const PIECE: usize = 8 * 1024;

/// Runs `step` over `bytes` at most `PIECE` bytes at a time, until it says the
/// content ended or the input runs out; `bytes` is left after what it took.
fn in_pieces(
    bytes: &mut std::slice::Iter<'_, u8>,
    mut step: impl FnMut(&mut std::slice::Iter<'_, u8>) -> bool,
) -> bool {
    loop {
        let input = bytes.as_slice();
        let n = input.len().min(PIECE);
        let mut piece = input[..n].iter();
        let done = step(&mut piece);
        let used = n - piece.len();
        *bytes = input[used..].iter();
        if done || used < n || bytes.len() == 0 {
            return done;
        }
    }
}

/// A transaction's content from DATA or its first BDAT on.
pub(super) struct Body {
    id: String,
    content: Content,
    /// The message file being written: our Received header, then the content.
    file: Incoming,
}

impl Session {
    /// Starts the content of `txn`'s message. Our Received header comes first
    /// in the file, so it is made now: all it records is known (RCPT after
    /// content starts is refused), and its time is when the message started to
    /// arrive, as Postfix and Sendmail stamp theirs. It goes out with the first
    /// bytes of content, in the same write.
    fn start_body(&self, txn: &Transaction) -> Body {
        let id = spool::new_queue_id();
        let greeting = self.greeting.as_ref();
        let header = Trace {
            helo: greeting.map_or("unknown", |g| g.name.as_str()),
            client_ip: self.peer.ip(),
            hostname: &self.ctx.config.hostname,
            tls: self.tls.as_ref(),
            authenticated: self.auth.is_some(),
            esmtp: greeting.is_some_and(|g| g.esmtp),
            queue_id: &id,
            single_recipient: match txn.recipients.as_slice() {
                [one] => Some(one.address.as_str()),
                _ => None,
            },
            timestamp: spool::unix_now() as i64,
        }
        .received_header();
        let limits = &self.ctx.config.limits;
        Body {
            file: self.ctx.spool.incoming(&id, header.into_bytes()),
            id,
            content: Content::new(limits.max_message_size, limits.bare_line_endings),
        }
    }

    pub(super) fn data(&mut self) -> Result<Reply, SmtpError> {
        let txn = match self.txn.as_ref() {
            Some(t) if !t.recipients.is_empty() => t,
            _ => return Err(SmtpError::BadSequence("no valid recipients")),
        };
        if txn.chunking {
            // RFC 3030 §2: DATA cannot follow BDAT in one transaction.
            return Err(SmtpError::BadSequence("DATA after BDAT"));
        }
        let body = self.start_body(txn);
        if let Some(txn) = self.txn.as_mut() {
            txn.body = Some(body);
        }
        self.start_content_deadline();
        self.state = State::Data {
            reader: DotReader::default(),
            scratch: Vec::new(),
        };
        Ok(Reply::plain(
            354,
            vec!["Start mail input; end with <CRLF>.<CRLF>".into()],
        ))
    }

    /// Sets up reading one BDAT chunk; its reply is sent when the chunk is in.
    pub(super) fn bdat(&mut self, size: usize, last: bool) {
        let refusal = if self.listener.require_tls && self.tls.is_none() {
            Some(SmtpError::TlsRequired)
        } else {
            match self.txn.as_ref() {
                Some(t) if !t.recipients.is_empty() => None,
                _ => Some(SmtpError::BadSequence("no valid recipients")),
            }
        };
        if let Some(refusal) = refusal {
            // RFC 3030 §2: the chunk's bytes follow regardless and are consumed.
            if refusal.counts_as_error() {
                self.errors += 1;
            }
            self.start_content_deadline();
            let reply = refusal.reply();
            crate::tracking::refused(self.peer, &refusal, &reply, &mut self.refusals);
            self.state = State::SkipBdat {
                receiver: BdatReceiver::new(size, last),
                reply,
            };
            return;
        }
        // One deadline for all of a transaction's chunks, from the first.
        let txn = self.txn.as_ref().expect("checked above");
        if txn.body.is_none() {
            let body = self.start_body(txn);
            self.start_content_deadline();
            self.txn.as_mut().expect("checked above").body = Some(body);
        }
        self.txn.as_mut().expect("checked above").chunking = true;
        self.state = State::Bdat {
            receiver: BdatReceiver::new(size, last),
            scratch: Vec::new(),
            size,
        };
    }

    /// Feeds content bytes to the current DATA/BDAT receiver; true at its end.
    pub(super) fn ingest_content(&mut self, bytes: &mut std::slice::Iter<'_, u8>) -> bool {
        let content = self
            .txn
            .as_mut()
            .and_then(|t| t.body.as_mut())
            .map(|b| &mut b.content);
        match (&mut self.state, content) {
            (State::Data { reader, scratch }, Some(content)) => in_pieces(bytes, |piece| {
                let input = piece.as_slice();
                let end = reader.feed(input, scratch);
                *piece = input[end.unwrap_or(input.len())..].iter();
                content.push(scratch);
                scratch.clear();
                end.is_some()
            }),
            (
                State::Bdat {
                    receiver, scratch, ..
                },
                Some(content),
            ) => in_pieces(bytes, |piece| {
                let done = receiver.ingest(piece, scratch);
                content.push(scratch);
                scratch.clear();
                done
            }),
            (State::SkipBdat { receiver, .. }, _) => {
                let mut sink = Vec::new();
                let before = bytes.len();
                // Take at most what the chunk has left, without keeping it.
                let done = receiver.ingest(bytes, &mut sink);
                debug_assert_eq!(sink.len(), before - bytes.len());
                done
            }
            _ => unreachable!("content state without a transaction body"),
        }
    }

    /// Writes the content received so far to the spool once `WRITE_AT` bytes
    /// wait (the read loop waits for it), and removes a refused message's file
    /// at once: its rest is only counted.
    pub(super) async fn stream_content(&mut self) {
        let Some(body) = self.txn.as_mut().and_then(|t| t.body.as_mut()) else {
            return;
        };
        if body.content.refusal().is_some() {
            body.file.discard().await;
        } else if body.content.pending() >= WRITE_AT {
            let chunk = body.content.take();
            let chunk = body.file.write(chunk).await;
            body.content.reuse(chunk);
        }
    }

    /// The current DATA body or BDAT chunk is complete: reply to it.
    pub(super) async fn end_of_content(&mut self) -> Flow {
        match std::mem::replace(&mut self.state, State::Command) {
            State::Data { .. } => self.finish_message().await,
            State::SkipBdat { receiver, reply } => {
                self.reply(reply);
                if receiver.is_last {
                    self.txn = None;
                }
                self.check_error_budget()
            }
            State::Bdat { receiver, size, .. } => {
                let refusal = self
                    .txn
                    .as_ref()
                    .and_then(|t| t.body.as_ref())
                    .and_then(|b| {
                        b.content
                            .refusal()
                            .or_else(|| b.file.failure().map(SmtpError::Spool))
                    });
                if receiver.is_last {
                    return self.finish_message().await;
                }
                match refusal {
                    // Said now, and again for each later chunk; the transaction
                    // ends with the LAST one.
                    Some(e) => self.refuse(e),
                    None => {
                        self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
                        Flow::Continue
                    }
                }
            }
            other => {
                self.state = other;
                Flow::Continue
            }
        }
    }

    fn check_error_budget(&mut self) -> Flow {
        if self.errors >= self.ctx.config.limits.max_errors {
            return self.refuse(SmtpError::TooManyErrors);
        }
        Flow::Continue
    }

    /// Ends the transaction: checks the content, spools it, and replies. A 250
    /// is sent only after the spool says the message is durable.
    async fn finish_message(&mut self) -> Flow {
        let end_of_data = std::time::Instant::now();
        let Some(txn) = self.txn.take() else {
            return Flow::Continue;
        };
        let Some(Body {
            id,
            content,
            mut file,
        }) = txn.body
        else {
            return Flow::Continue;
        };
        let message_id = crate::tracking::message_id(content.start());
        let tail = match content.finish() {
            Ok(tail) => tail,
            Err(e) => {
                file.discard().await;
                return self.refuse(e);
            }
        };
        let envelope = Envelope {
            version: spool::FORMAT_VERSION,
            id: id.clone(),
            received_at: spool::unix_now(),
            client: spool::ClientInfo {
                address: self.peer,
                helo: self
                    .greeting
                    .as_ref()
                    .map_or("unknown", |g| g.name.as_str())
                    .to_owned(),
                tls: self.tls.clone(),
                auth: self.auth.clone(),
            },
            sender: txn.sender,
            params: txn.params,
            recipients: txn.recipients,
            size: file.size_with(tail.len()),
            route_domain: None,
        };
        let size = envelope.size;
        match file.commit(tail, &envelope).await {
            Ok(in_memory) => {
                use crate::tracking::{ACCEPTED, clean};
                info!(
                    event = ACCEPTED,
                    queue_id = id.as_str(),
                    client = %self.peer,
                    helo = &*clean(&envelope.client.helo),
                    tls = self.tls.as_ref().map(|t| t.version.as_str()),
                    user = self.auth.as_deref().map(clean).as_deref(),
                    sender = &*clean(&envelope.sender),
                    recipients = envelope.recipients.len(),
                    size,
                    message_id = message_id.as_deref(),
                    "message accepted"
                );
                self.junk = 0;
                self.ctx
                    .telemetry
                    .accepted(&envelope, end_of_data.elapsed());
                self.reply(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")));
                let hot = in_memory.map(|content| Hot { envelope, content });
                self.ctx.queue.submit(id, hot);
                Flow::Continue
            }
            Err(e) => {
                error!(queue_id = %id, client = %self.peer, "cannot spool message: {e}");
                self.refuse(SmtpError::Spool(e))
            }
        }
    }
}
