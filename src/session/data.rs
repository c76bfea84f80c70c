//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): receiving the content, and
//! the verdict, sent only once the message is durably spooled.

use smtp_proto::request::receiver::BdatReceiver;
use tracing::{error, info};

use super::{Flow, Session, State};
use crate::body::{Content, Trace};
use crate::dot::DotReader;
use crate::error::SmtpError;
use crate::reply::Reply;
use crate::spool::{self, Envelope};

impl Session {
    pub(super) fn data(&mut self) -> Result<Reply, SmtpError> {
        let txn = match self.txn.as_mut() {
            Some(t) if !t.recipients.is_empty() => t,
            _ => return Err(SmtpError::BadSequence("no valid recipients")),
        };
        if txn.chunking {
            // RFC 3030 §2: DATA cannot follow BDAT in one transaction.
            return Err(SmtpError::BadSequence("DATA after BDAT"));
        }
        let limits = &self.ctx.config.limits;
        txn.body = Some((
            spool::new_queue_id(),
            Content::new(limits.max_message_size, limits.bare_line_endings),
        ));
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
            self.state = State::SkipBdat {
                receiver: BdatReceiver::new(size, last),
                reply: refusal.reply(),
            };
            return;
        }
        // One deadline for all of a transaction's chunks, from the first.
        if self.txn.as_ref().is_some_and(|t| t.body.is_none()) {
            self.start_content_deadline();
        }
        let limits = &self.ctx.config.limits;
        let txn = self.txn.as_mut().expect("checked above");
        txn.chunking = true;
        txn.body.get_or_insert_with(|| {
            (
                spool::new_queue_id(),
                Content::new(limits.max_message_size, limits.bare_line_endings),
            )
        });
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
            .map(|(_, c)| c);
        match (&mut self.state, content) {
            (State::Data { reader, scratch }, Some(content)) => {
                let input = bytes.as_slice();
                let end = reader.feed(input, scratch);
                *bytes = input[end.unwrap_or(input.len())..].iter();
                content.push(scratch);
                scratch.clear();
                end.is_some()
            }
            (
                State::Bdat {
                    receiver, scratch, ..
                },
                Some(content),
            ) => {
                let done = receiver.ingest(bytes, scratch);
                content.push(scratch);
                scratch.clear();
                done
            }
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
                    .and_then(|(_, c)| c.refusal());
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
            self.reply(SmtpError::TooManyErrors.reply());
            return Flow::Close;
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
        let Some((id, content)) = txn.body else {
            return Flow::Continue;
        };
        let content = match content.finish() {
            Ok(c) => c,
            Err(e) => {
                info!(queue_id = %id, client = %self.peer, "message refused: {e}");
                return self.refuse(e);
            }
        };
        let now = spool::unix_now();
        let single = match txn.recipients.as_slice() {
            [one] => Some(one.address.as_str()),
            _ => None,
        };
        let greeting = self.greeting.as_ref();
        let helo = greeting.map_or("unknown", |g| g.name.as_str());
        let trace = Trace {
            helo,
            client_ip: self.peer.ip(),
            hostname: &self.ctx.config.hostname,
            tls: self.tls.as_ref(),
            authenticated: self.auth.is_some(),
            esmtp: greeting.is_some_and(|g| g.esmtp),
            queue_id: &id,
            single_recipient: single,
            timestamp: now as i64,
        };
        let header = trace.received_header();
        let mut message = Vec::with_capacity(header.len() + content.len());
        message.extend_from_slice(header.as_bytes());
        message.extend_from_slice(&content);
        drop(content);
        let envelope = Envelope {
            version: spool::FORMAT_VERSION,
            id: id.clone(),
            received_at: now,
            client: spool::ClientInfo {
                address: self.peer,
                helo: helo.to_owned(),
                tls: self.tls.clone(),
                auth: self.auth.clone(),
            },
            sender: txn.sender,
            params: txn.params,
            recipients: txn.recipients,
            size: message.len() as u64,
            route_domain: None,
        };
        let size = envelope.size;
        match self.ctx.spool.store(&envelope, message).await {
            Ok(()) => {
                info!(
                    queue_id = %id,
                    client = %self.peer,
                    sender = %envelope.sender,
                    recipients = envelope.recipients.len(),
                    size,
                    tls = self.tls.is_some(),
                    "message accepted"
                );
                self.junk = 0;
                self.ctx
                    .telemetry
                    .accepted(&envelope, end_of_data.elapsed());
                self.reply(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")));
                self.ctx.queue.submit(id);
                Flow::Continue
            }
            Err(e) => {
                error!(queue_id = %id, client = %self.peer, "cannot spool message: {e}");
                self.refuse(SmtpError::Spool(e))
            }
        }
    }
}
