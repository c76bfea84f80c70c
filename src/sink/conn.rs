//! One sink connection: the SMTP dialogue, from the banner to QUIT, with
//! STARTTLS, DATA and BDAT. Replies are batched and flushed when input runs dry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::store::{Sidecar, write_message};
use crate::dot::DotReader;
use crate::reply::Reply;
use crate::session::{BoxIo, command, write_replies};

/// Largest message accepted; advertised in `SIZE` (RFC 1870).
pub const MAX_MESSAGE_SIZE: usize = 200 * 1024 * 1024;
/// Recipients per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
const MAX_RECIPIENTS: usize = 10_000;
/// Every read, write and TLS handshake must progress within this (RFC 5321 §4.5.3.2).
const TIMEOUT: Duration = Duration::from_secs(300);
const READ_CHUNK: usize = 64 * 1024;

/// What every connection of one sink shares.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(super) name: String,
}

enum State {
    Command,
    /// Dropping the rest of an over-long line (already answered).
    SkipLine,
    Data(DotReader),
    /// A BDAT chunk (RFC 3030): `left` bytes still to come. When refused
    /// (`accept` false) its bytes are still read, then dropped (RFC 3030 §2).
    Bdat {
        left: usize,
        last: bool,
        accept: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    StartTls,
    Close,
}

/// The current mail transaction, raw as the client sent it.
#[derive(Default)]
struct Txn {
    mail_from: String,
    mail_params: String,
    rcpt_to: Vec<String>,
    rcpt_params: Vec<String>,
    body: Vec<u8>,
    chunking: bool,
    /// Over `MAX_MESSAGE_SIZE`: the body is read to its end, dropped, and refused.
    oversize: bool,
}

pub(super) struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    stream: BoxIo,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    state: State,
    tls: bool,
    txn: Option<Txn>,
    shutdown: CancellationToken,
}

impl Conn {
    pub(super) fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        stream: BoxIo,
        shutdown: CancellationToken,
    ) -> Conn {
        Conn {
            shared,
            peer,
            stream,
            rbuf: Vec::with_capacity(READ_CHUNK),
            wbuf: Vec::new(),
            state: State::Command,
            tls: false,
            txn: None,
            shutdown,
        }
    }

    pub(super) async fn serve(mut self) {
        let banner = format!("{} smarthost sink", self.shared.name);
        self.reply(Reply::plain(220, vec![banner.into()]));
        loop {
            match self.process().await {
                Flow::Continue => {}
                Flow::Close => break,
                Flow::StartTls => {
                    self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
                    if self.flush().await.is_err() || !self.start_tls().await {
                        return;
                    }
                    continue;
                }
            }
            if self.flush().await.is_err() {
                return;
            }
            self.rbuf.reserve(READ_CHUNK);
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    self.reply(Reply::new(421, "4.3.2", "Sink shutting down"));
                    break;
                }
                r = tokio::time::timeout(TIMEOUT, self.stream.read_buf(&mut self.rbuf)) => r,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => break,
                Err(_) => {
                    self.reply(Reply::new(421, "4.4.2", "Timeout; closing"));
                    break;
                }
            }
        }
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }

    /// RFC 3207 §4.2: after the handshake the session starts over; plaintext
    /// pipelined behind STARTTLS is discarded, never run inside TLS.
    async fn start_tls(&mut self) -> bool {
        let Some(acceptor) = self.shared.tls.clone() else {
            return false;
        };
        if !self.rbuf.is_empty() {
            warn!(client = %self.peer, "sink: discarding bytes pipelined after STARTTLS");
            self.rbuf.clear();
        }
        let plain = std::mem::replace(
            &mut self.stream,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        match tokio::time::timeout(TIMEOUT, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                self.stream = Box::new(tls);
                self.tls = true;
                self.txn = None;
                true
            }
            Ok(Err(e)) => {
                debug!(client = %self.peer, "sink: TLS handshake failed: {e}");
                false
            }
            Err(_) => false,
        }
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        write_replies(&mut self.stream, &mut self.wbuf, TIMEOUT).await
    }

    /// Consumes as much buffered input as the current state allows; replies
    /// are batched in `wbuf` (flushed by the caller once input runs dry).
    async fn process(&mut self) -> Flow {
        let mut buf = std::mem::take(&mut self.rbuf);
        let mut pos = 0;
        let flow = loop {
            if pos == buf.len() {
                break Flow::Continue;
            }
            let flow = match &mut self.state {
                State::Command => {
                    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                        if buf.len() - pos > command::MAX_COMMAND_LINE {
                            pos = buf.len();
                            self.state = State::SkipLine;
                            self.reply(Reply::new(500, "5.5.2", "Line too long"));
                        }
                        break Flow::Continue;
                    };
                    let line = &buf[pos..=pos + nl];
                    pos += nl + 1;
                    if line.len() > command::MAX_COMMAND_LINE {
                        self.reply(Reply::new(500, "5.5.2", "Line too long"));
                        Flow::Continue
                    } else {
                        self.command(line).await
                    }
                }
                State::SkipLine => {
                    match memchr::memchr(b'\n', &buf[pos..]) {
                        Some(nl) => {
                            pos += nl + 1;
                            self.state = State::Command;
                        }
                        None => pos = buf.len(),
                    }
                    Flow::Continue
                }
                State::Data(reader) => {
                    let mut content = Vec::new();
                    let end = reader.feed(&buf[pos..], &mut content);
                    pos = end.map_or(buf.len(), |n| pos + n);
                    self.append(&content);
                    if end.is_some() {
                        self.state = State::Command;
                        self.finish().await
                    } else {
                        Flow::Continue
                    }
                }
                State::Bdat { left, last, accept } => {
                    let n = (*left).min(buf.len() - pos);
                    *left -= n;
                    let (done, last, accept) = (*left == 0, *last, *accept);
                    if accept {
                        self.append(&buf[pos..pos + n]);
                    }
                    pos += n;
                    if done {
                        self.state = State::Command;
                        self.end_chunk(n, last, accept).await
                    } else {
                        Flow::Continue
                    }
                }
            };
            if flow != Flow::Continue {
                break flow;
            }
        };
        buf.drain(..pos);
        self.rbuf = buf;
        flow
    }

    /// Adds content to the transaction, dropping it once over the limit.
    fn append(&mut self, bytes: &[u8]) {
        if let Some(t) = self.txn.as_mut().filter(|t| !t.oversize) {
            if t.body.len() + bytes.len() > MAX_MESSAGE_SIZE {
                t.oversize = true;
                t.body = Vec::new();
            } else {
                t.body.extend_from_slice(bytes);
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        if huge_chunk(line) {
            // The chunk's bytes follow and cannot be skipped reliably: close.
            self.reply(Reply::new(552, "5.3.4", "Chunk size exceeds fixed limit"));
            return Flow::Close;
        }
        // The relay's own parser, with its guards for smtp-proto's quirks
        // (RFC 5321 paths, NUL and bare CR); the path is kept as written.
        let request = match command::parse(line) {
            Ok(command::Parsed::Request(r)) => r,
            Ok(command::Parsed::Mail(from, _)) => Request::Mail { from },
            Ok(command::Parsed::Rcpt(to, _)) => Request::Rcpt { to },
            Ok(command::Parsed::Http) => return Flow::Close,
            Err(e) => {
                self.reply(e.reply());
                return Flow::Continue;
            }
        };
        let has_rcpt = self.txn.as_ref().is_some_and(|t| !t.rcpt_to.is_empty());
        let reply = match request {
            Request::Ehlo { host } => {
                self.txn = None;
                let mut lines = vec![
                    format!("{} Hello {host}", self.shared.name).into(),
                    "PIPELINING".into(),
                    format!("SIZE {MAX_MESSAGE_SIZE}").into(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "CHUNKING".into(),
                    "DSN".into(),
                ];
                if self.shared.tls.is_some() && !self.tls {
                    lines.push("STARTTLS".into());
                }
                Reply::plain(250, lines)
            }
            Request::Helo { host } => {
                self.txn = None;
                Reply::plain(
                    250,
                    vec![format!("{} Hello {host}", self.shared.name).into()],
                )
            }
            Request::Mail { from } => {
                if self.txn.is_some() {
                    bad_sequence("nested MAIL command")
                } else if from.size > MAX_MESSAGE_SIZE {
                    Reply::new(552, "5.3.4", "Message size exceeds fixed limit")
                } else {
                    let (mail_from, mail_params) = raw_path(line);
                    self.txn = Some(Txn {
                        mail_from,
                        mail_params,
                        ..Txn::default()
                    });
                    Reply::new(250, "2.1.0", "Ok")
                }
            }
            Request::Rcpt { .. } => match self.txn.as_mut() {
                None => bad_sequence("need MAIL before RCPT"),
                Some(t) if t.rcpt_to.len() >= MAX_RECIPIENTS => {
                    Reply::new(452, "4.5.3", "Too many recipients")
                }
                Some(t) => {
                    let (address, params) = raw_path(line);
                    t.rcpt_to.push(address);
                    t.rcpt_params.push(params);
                    Reply::new(250, "2.1.5", "Ok")
                }
            },
            Request::Data => match self.txn.as_mut() {
                _ if !has_rcpt => bad_sequence("need RCPT before DATA"),
                Some(t) if t.chunking => bad_sequence("DATA after BDAT"),
                _ => {
                    self.state = State::Data(DotReader::default());
                    Reply::plain(354, vec!["End data with <CR><LF>.<CR><LF>".into()])
                }
            },
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                if let Some(t) = self.txn.as_mut().filter(|_| has_rcpt) {
                    t.chunking = true;
                }
                self.state = State::Bdat {
                    left: chunk_size,
                    last: is_last,
                    accept: has_rcpt,
                };
                if chunk_size > 0 {
                    return Flow::Continue;
                }
                // `BDAT 0 LAST`: nothing follows, the chunk is complete now.
                self.state = State::Command;
                return self.end_chunk(0, is_last, has_rcpt).await;
            }
            Request::Rset => {
                self.txn = None;
                Reply::new(250, "2.0.0", "Ok")
            }
            Request::Noop { .. } => Reply::new(250, "2.0.0", "Ok"),
            Request::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                return Flow::Close;
            }
            Request::StartTls if self.shared.tls.is_none() => {
                Reply::new(502, "5.5.1", "STARTTLS not available")
            }
            Request::StartTls if self.tls => bad_sequence("TLS already active"),
            Request::StartTls => return Flow::StartTls,
            Request::Vrfy { .. } => Reply::new(252, "2.5.0", "Cannot VRFY user"),
            Request::Help { .. } => Reply::new(214, "2.0.0", "smarthost sink"),
            _ => Reply::new(502, "5.5.1", "Command not implemented"),
        };
        self.reply(reply);
        Flow::Continue
    }

    /// A BDAT chunk is in: the last one ends the message (RFC 3030 §2).
    async fn end_chunk(&mut self, size: usize, last: bool, accepted: bool) -> Flow {
        if !accepted {
            self.reply(bad_sequence("need RCPT before BDAT"));
            if last {
                self.txn = None;
            }
            return Flow::Continue;
        }
        if last {
            return self.finish().await;
        }
        self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
        Flow::Continue
    }

    /// Ends the transaction: writes the message and replies.
    async fn finish(&mut self) -> Flow {
        let Some(txn) = self.txn.take() else {
            return Flow::Continue;
        };
        if txn.oversize {
            self.reply(Reply::new(552, "5.3.4", "Message size exceeds fixed limit"));
            return Flow::Continue;
        }
        let sidecar = Sidecar {
            mail_from: &txn.mail_from,
            mail_params: &txn.mail_params,
            rcpt_to: &txn.rcpt_to,
            rcpt_params: &txn.rcpt_params,
            tls: self.tls,
            chunking: txn.chunking,
            received_at: crate::spool::unix_now(),
            client: self.peer.to_string(),
        };
        let json = serde_json::to_vec_pretty(&sidecar).unwrap_or_default();
        let dir = self.shared.dir.clone();
        let size = txn.body.len();
        let body = txn.body;
        let written = tokio::task::spawn_blocking(move || write_message(&dir, &body, &json))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(file) => {
                info!(
                    file = %file,
                    client = %self.peer,
                    from = %txn.mail_from,
                    recipients = txn.rcpt_to.len(),
                    size,
                    tls = self.tls,
                    "sink: message written"
                );
                self.reply(Reply::new(250, "2.0.0", format!("Ok: {file}")));
            }
            Err(e) => {
                warn!(dir = %self.shared.dir.display(), "sink: cannot write message: {e}");
                self.reply(Reply::new(451, "4.3.0", "Cannot store the message"));
            }
        }
        Flow::Continue
    }
}

fn bad_sequence(why: &str) -> Reply {
    Reply::new(503, "5.5.1", format!("Bad sequence of commands: {why}"))
}

/// A `BDAT` whose size has more digits than any chunk we take. smtp-proto's
/// size parser saturates and wraps past `usize::MAX`, so the digits are
/// checked before it: a wrong size would desynchronise the stream.
fn huge_chunk(line: &[u8]) -> bool {
    let mut words = line.split(|&b| b == b' ' || b == b'\r' || b == b'\n');
    words
        .next()
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && words.next().is_some_and(|n| n.len() > 12)
}

/// The path (without angle brackets) and the raw parameter text of a
/// `MAIL FROM:` or `RCPT TO:` line, as sent.
fn raw_path(line: &[u8]) -> (String, String) {
    let line = String::from_utf8_lossy(line);
    let args = line
        .split_once(':')
        .map_or("", |(_, a)| a)
        .trim_start()
        .trim_end_matches(['\r', '\n']);
    let (path, params) = match args.strip_prefix('<').and_then(|a| a.split_once('>')) {
        Some((path, params)) => (path, params),
        None => args.split_once(' ').unwrap_or((args, "")),
    };
    (path.to_owned(), params.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_paths_and_params() {
        assert_eq!(
            raw_path(b"MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\n"),
            ("a@b.example".into(), "SIZE=10 BODY=8BITMIME".into())
        );
        assert_eq!(
            raw_path(b"RCPT TO: <x@[192.0.2.1]>\r\n"),
            ("x@[192.0.2.1]".into(), "".into())
        );
        assert_eq!(raw_path(b"MAIL FROM:<>\r\n"), ("".into(), "".into()));
    }

    #[test]
    fn address_literals_and_huge_chunks() {
        assert!(command::parse(b"RCPT TO:<x@[192.0.2.1]>\r\n").is_ok());
        assert!(huge_chunk(b"BDAT 99999999999999999999999 LAST\r\n"));
        assert!(!huge_chunk(b"bdat 1000 LAST\r\n"));
    }
}
