//! One inbound SMTP session: an explicit state machine over a byte stream.
//!
//! `Session::run` reads into a buffer and walks it across states (`State`), so
//! commands pipelined with message bytes in one packet (RFC 2920) are handled
//! in order; replies are batched and flushed whenever input runs dry. The
//! per-verb handlers live in the sibling files (`ehlo.rs`, `mail.rs`, ...).

mod auth;
pub mod command;
mod data;
mod ehlo;
mod mail;
mod rcpt;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use smtp_proto::Request;
use smtp_proto::request::receiver::BdatReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::{ListenerConfig, ListenerTls};
use crate::context::ServerContext;
use crate::dot::DotReader;
use crate::error::SmtpError;
use crate::reply::Reply;
use crate::spool::{MailParams, Recipient, TlsInfo};

pub use command::MAX_COMMAND_LINE;
pub use rcpt::notify_keywords;

/// Any byte stream a session can run on: TCP, TLS over TCP, or an in-memory pipe in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Sends the batched replies in `wbuf` (and empties it), giving up after
/// `timeout`: a client that does not read cannot hold the session.
pub async fn write_replies(
    stream: &mut BoxIo,
    wbuf: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let result = tokio::time::timeout(timeout, async {
        stream.write_all(wbuf).await?;
        stream.flush().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    wbuf.clear();
    result
}

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Replies held before input stops being consumed until they are written. A
/// pipelining client that never reads would otherwise make each read of short
/// commands (HELP, EHLO) cost many times its size in replies.
const MAX_PENDING_REPLIES: usize = 16 * 1024;

/// Message content must keep arriving at this average rate (bytes/second)
/// once `data_timeout` has passed since it started. RFC 5321 §4.5.3.2 only
/// bounds each wait; without an overall bound a client trickling a byte just
/// inside `data_timeout` holds its session (and a connection slot) forever.
const MIN_CONTENT_RATE: u64 = 500;

/// Commands that do no work (NOOP, RSET, HELP, VRFY, a repeated EHLO or HELO,
/// a cancelled AUTH exchange) allowed since the last accepted message before
/// each further one counts toward `max_errors`. A client sending a NOOP just
/// inside `command_timeout` would otherwise hold its session forever; a
/// session that delivers mail never gets near it.
/// (The same idea as Postfix's `smtpd_junk_command_limit`, default 100.)
pub const JUNK_COMMAND_LIMIT: u32 = 100;

/// Where the session is in the protocol.
enum State {
    /// Waiting for a command line.
    Command,
    /// Dropping the rest of an over-long command line (already answered).
    SkipLine,
    /// Message content after DATA, until CRLF.CRLF.
    Data {
        reader: DotReader,
        /// Unstuffed bytes on their way to `Content`.
        scratch: Vec<u8>,
    },
    /// One BDAT chunk for the current transaction.
    Bdat {
        receiver: BdatReceiver,
        scratch: Vec<u8>,
        size: usize,
    },
    /// Inside an AUTH exchange: the next line is a SASL response.
    Auth(auth::SaslStep),
    /// A refused BDAT chunk: its bytes are read and dropped (RFC 3030 §2), then
    /// `reply` is sent.
    SkipBdat {
        receiver: BdatReceiver,
        reply: Reply,
    },
}

/// What the read loop does after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    StartTls,
    Close,
}

/// The greeting the client gave.
struct Greeting {
    name: String,
    esmtp: bool,
}

/// One mail transaction: MAIL, RCPTs, and the content once DATA/BDAT starts.
struct Transaction {
    sender: String,
    params: MailParams,
    recipients: Vec<Recipient>,
    /// The content and where it is being written, from DATA or the first BDAT on.
    body: Option<data::Body>,
    /// Content is coming in BDAT chunks (DATA is then out of sequence).
    chunking: bool,
}

/// An SMTP session on one connection.
pub struct Session {
    ctx: Arc<ServerContext>,
    listener: ListenerConfig,
    peer: SocketAddr,
    stream: BoxIo,
    /// Input read but not yet consumed.
    rbuf: Vec<u8>,
    /// Replies not yet flushed.
    wbuf: Vec<u8>,
    state: State,
    greeting: Option<Greeting>,
    tls: Option<TlsInfo>,
    auth: Option<String>,
    txn: Option<Transaction>,
    errors: u32,
    /// Commands that did no work since the last accepted message.
    junk: u32,
    auth_failures: u32,
    /// Refusals logged so far (`tracking::refused` caps them per connection).
    refusals: u32,
    /// When the command being waited for must have arrived by.
    command_deadline: Instant,
    /// When the current content (the DATA body, or all of a transaction's BDAT
    /// chunks) must be complete by; moved later as bytes arrive.
    content_deadline: Instant,
    shutdown: CancellationToken,
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

impl Session {
    pub fn new(
        ctx: Arc<ServerContext>,
        listener: ListenerConfig,
        peer: SocketAddr,
        stream: BoxIo,
        shutdown: CancellationToken,
    ) -> Session {
        let command_deadline = Instant::now() + ctx.config.limits.command_timeout;
        Session {
            ctx,
            listener,
            peer,
            stream,
            rbuf: Vec::with_capacity(READ_CHUNK),
            wbuf: Vec::new(),
            state: State::Command,
            greeting: None,
            tls: None,
            auth: None,
            txn: None,
            errors: 0,
            junk: 0,
            auth_failures: 0,
            refusals: 0,
            command_deadline,
            content_deadline: command_deadline,
            shutdown,
        }
    }

    /// A number for log lines, unique within the process.
    pub fn next_id() -> u64 {
        SESSION_IDS.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs the session to its end. Never panics on input; every exit path
    /// closes the stream.
    pub async fn run(mut self) {
        if self.listener.tls == ListenerTls::Implicit && !self.start_tls().await {
            return;
        }
        if self.client_talks_first().await {
            return;
        }
        let banner = format!("{} ESMTP smarthost ready", self.ctx.config.hostname);
        self.reply(Reply::plain(220, vec![banner.into()]));
        self.command_deadline = Instant::now() + self.ctx.config.limits.command_timeout;

        loop {
            match self.process().await {
                Flow::Continue => {}
                Flow::Close => break,
                Flow::StartTls => {
                    if !self.rbuf.is_empty() {
                        // CVE-2011-0411: plaintext injected after STARTTLS must
                        // never run inside the TLS session.
                        self.refuse(SmtpError::PipelinedStartTls);
                        break;
                    }
                    self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
                    if self.flush().await.is_err() || !self.start_tls().await {
                        return;
                    }
                    continue;
                }
            }
            // Input left unconsumed for want of room for replies comes first.
            let backlog = self.wbuf.len() >= MAX_PENDING_REPLIES;
            if self.flush().await.is_err() {
                return;
            }
            if backlog {
                continue;
            }
            match self.read_more().await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    if e.closes_connection() {
                        self.refuse(e);
                    }
                    break;
                }
            }
        }
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }

    /// Waits `banner_delay` (at least one poll) for bytes the client should not
    /// have sent yet. Returns true when the session is over.
    async fn client_talks_first(&mut self) -> bool {
        let wait = self.ctx.config.limits.banner_delay;
        let read = self.stream.read_buf(&mut self.rbuf);
        let talked = if wait.is_zero() {
            // One poll and no timer: even a zero-length tokio sleep waits for
            // the timer wheel's next millisecond tick, which every connection
            // would pay before its banner (1.4 ms measured, more than the
            // whole transaction after it).
            tokio::select! {
                biased;
                r = read => Some(r),
                () = std::future::ready(()) => None,
            }
        } else {
            // `timeout` polls the read once before looking at the clock.
            tokio::time::timeout(wait, read).await.ok()
        };
        match talked {
            None => false,
            Some(Ok(0)) | Some(Err(_)) => true,
            Some(Ok(_)) => {
                self.refuse(SmtpError::Pregreet);
                let _ = self.flush().await;
                true
            }
        }
    }

    /// Performs the TLS handshake on the current stream. After it, every bit of
    /// session state is forgotten (RFC 3207 §4.2). Returns false on failure.
    async fn start_tls(&mut self) -> bool {
        let plain = std::mem::replace(
            &mut self.stream,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let timeout = self.ctx.config.limits.command_timeout;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.ctx.tls.clone());
        match tokio::time::timeout(timeout, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                let info = crate::tls::describe(tls.get_ref().1);
                self.ctx.telemetry.tls_handshake(&info.version);
                debug!(client = %self.peer, version = %info.version, cipher = %info.cipher, "TLS established");
                self.stream = Box::new(tls);
                self.tls = Some(info);
                self.greeting = None;
                self.auth = None;
                self.txn = None;
                self.rbuf.clear();
                self.state = State::Command;
                self.command_deadline = Instant::now() + timeout;
                true
            }
            Ok(Err(e)) => {
                let error = e.to_string();
                info!(client = %self.peer, error = &*crate::tracking::clean(&error), "TLS handshake failed");
                false
            }
            Err(_) => {
                info!(client = %self.peer, "TLS handshake timed out");
                false
            }
        }
    }

    /// Reads more input, within the deadline of the current state. Ok(false) on EOF.
    async fn read_more(&mut self) -> Result<bool, SmtpError> {
        let limits = &self.ctx.config.limits;
        let in_command = matches!(
            self.state,
            State::Command | State::SkipLine | State::Auth(_)
        );
        let deadline = if in_command {
            self.command_deadline
        } else {
            self.content_deadline
                .min(Instant::now() + limits.data_timeout)
        };
        self.rbuf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            // Idle between commands: end cleanly. Mid-message: finish it first.
            _ = self.shutdown.cancelled(), if in_command => Err(SmtpError::ShuttingDown),
            r = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)) => match r {
                Err(_) => Err(SmtpError::Timeout),
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => {
                    debug!(client = %self.peer, "read error: {e}");
                    Ok(false)
                }
            },
        }
    }

    /// Content starts now: it has `data_timeout`, plus time for each byte.
    fn start_content_deadline(&mut self) {
        self.content_deadline = Instant::now() + self.ctx.config.limits.data_timeout;
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let timeout = self.ctx.config.limits.command_timeout;
        write_replies(&mut self.stream, &mut self.wbuf, timeout).await
    }

    /// Consumes as much buffered input as the current state allows.
    async fn process(&mut self) -> Flow {
        let mut buf = std::mem::take(&mut self.rbuf);
        let mut pos = 0;
        let flow = loop {
            if pos == buf.len() || self.wbuf.len() >= MAX_PENDING_REPLIES {
                break Flow::Continue;
            }
            match &mut self.state {
                State::Command | State::Auth(_) => {
                    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                        if buf.len() - pos > MAX_COMMAND_LINE {
                            // Bounded memory: the line is answered now and its
                            // remainder dropped as it arrives.
                            pos = buf.len();
                            self.state = State::SkipLine;
                            let flow = self.refuse(SmtpError::LineTooLong);
                            if flow != Flow::Continue {
                                break flow;
                            }
                        }
                        break Flow::Continue;
                    };
                    let line = &buf[pos..pos + nl + 1];
                    pos += nl + 1;
                    self.command_deadline = Instant::now() + self.ctx.config.limits.command_timeout;
                    let flow = match std::mem::replace(&mut self.state, State::Command) {
                        State::Auth(step) if line.len() <= MAX_COMMAND_LINE => {
                            self.sasl_line(step, line).await
                        }
                        State::Auth(_) => self.refuse(SmtpError::LineTooLong),
                        _ => self.command(line).await,
                    };
                    if flow != Flow::Continue {
                        break flow;
                    }
                }
                State::SkipLine => match memchr::memchr(b'\n', &buf[pos..]) {
                    Some(nl) => {
                        pos += nl + 1;
                        self.state = State::Command;
                    }
                    None => pos = buf.len(),
                },
                State::Data { .. } | State::Bdat { .. } | State::SkipBdat { .. } => {
                    let mut bytes = buf[pos..].iter();
                    let done = self.ingest_content(&mut bytes);
                    self.stream_content().await;
                    let taken = buf.len() - bytes.as_slice().len() - pos;
                    pos += taken;
                    let credit = Duration::from_micros(taken as u64 * 1_000_000 / MIN_CONTENT_RATE);
                    self.content_deadline = self
                        .content_deadline
                        .checked_add(credit)
                        .unwrap_or(self.content_deadline);
                    if done {
                        let flow = self.end_of_content().await;
                        if flow != Flow::Continue {
                            break flow;
                        }
                    }
                }
            }
        };
        buf.drain(..pos);
        self.rbuf = buf;
        flow
    }

    /// Sends the reply for `error`, counts it, and says whether to go on.
    fn refuse(&mut self, error: SmtpError) -> Flow {
        let reply = error.reply();
        crate::tracking::refused(self.peer, &error, &reply, &mut self.refusals);
        self.ctx.telemetry.refused(&error);
        self.reply(reply);
        if error.closes_connection() {
            return Flow::Close;
        }
        if error.counts_as_error() {
            self.errors += 1;
            if self.errors >= self.ctx.config.limits.max_errors {
                self.refuse(SmtpError::TooManyErrors);
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Counts a command that did no work (see `JUNK_COMMAND_LIMIT`); past
    /// the limit each one counts toward `max_errors`, and the one that runs
    /// it out gets `421 4.7.0` instead of its reply.
    fn junk_command(&mut self) -> Flow {
        self.junk += 1;
        if self.junk > JUNK_COMMAND_LIMIT {
            self.errors += 1;
            if self.errors >= self.ctx.config.limits.max_errors {
                info!(client = %self.peer, junk = self.junk, "too many commands without mail");
                self.refuse(SmtpError::TooManyErrors);
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Parses and runs one command line.
    async fn command(&mut self, line: &[u8]) -> Flow {
        let (request, path) = match command::parse(line) {
            Ok(command::Parsed::Request(r)) => (r, None),
            Ok(command::Parsed::Mail(from, path)) => (Request::Mail { from }, Some(path)),
            Ok(command::Parsed::Rcpt(to, path)) => (Request::Rcpt { to }, Some(path)),
            Ok(command::Parsed::Http) => {
                info!(client = %self.peer, "HTTP request on the SMTP port; closing");
                return Flow::Close;
            }
            Err(e) => return self.refuse(e),
        };
        if let Request::Bdat {
            chunk_size,
            is_last,
        } = request
        {
            self.bdat(chunk_size, is_last);
            if chunk_size == 0 {
                // Nothing to read: the chunk (e.g. `BDAT 0 LAST`) is complete now.
                return self.end_of_content().await;
            }
            return Flow::Continue;
        }
        if self.needs_tls_first(&request) {
            return self.refuse(SmtpError::TlsRequired);
        }
        let junk = match request {
            Request::Noop { .. } | Request::Rset | Request::Help { .. } | Request::Vrfy { .. } => {
                true
            }
            // RFC 5321 §4.1.4 allows greeting again, but it does no work. The
            // first greeting after STARTTLS is required (RFC 3207 §4.2) and
            // finds `greeting` reset, so it is not counted.
            Request::Ehlo { .. } | Request::Helo { .. } => self.greeting.is_some(),
            _ => false,
        };
        if junk && self.junk_command() == Flow::Close {
            return Flow::Close;
        }
        let result = match request {
            Request::Ehlo { host } => Ok(self.ehlo(host, true)),
            Request::Helo { host } => Ok(self.ehlo(host, false)),
            // `command::parse` returns MAIL and RCPT with their parsed path.
            Request::Mail { from } => match path {
                Some(path) => self.mail(from, path),
                None => Err(SmtpError::BadSender),
            },
            Request::Rcpt { to } => match path {
                Some(path) => self.rcpt(to, path),
                None => Err(SmtpError::BadRecipient),
            },
            Request::Data => self.data(),
            Request::Rset => {
                self.txn = None;
                Ok(Reply::new(250, "2.0.0", "Ok"))
            }
            Request::Noop { .. } => Ok(Reply::new(250, "2.0.0", "Ok")),
            Request::Help { .. } => Ok(Reply::new(
                214,
                "2.0.0",
                "smarthost: see RFC 5321; commands EHLO HELO STARTTLS MAIL RCPT DATA BDAT RSET NOOP QUIT",
            )),
            // RFC 5321 §3.5.3: 252 when we will not verify but will try delivery.
            Request::Vrfy { .. } => Ok(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                return Flow::Close;
            }
            Request::StartTls => return self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => Ok(Reply::new(502, "5.5.1", "Command not implemented")),
            Request::Bdat { .. } => unreachable!("handled above"),
        };
        match result {
            Ok(reply) => {
                self.reply(reply);
                Flow::Continue
            }
            Err(e) => self.refuse(e),
        }
    }

    /// RFC 3207 §4: on a TLS-required listener, only these commands work before TLS.
    fn needs_tls_first(&self, request: &Request<String>) -> bool {
        self.listener.require_tls
            && self.tls.is_none()
            && !matches!(
                request,
                Request::Ehlo { .. }
                    | Request::Helo { .. }
                    | Request::Noop { .. }
                    | Request::Rset
                    | Request::Quit
                    | Request::Help { .. }
                    | Request::StartTls
            )
    }

    fn starttls(&mut self) -> Flow {
        if self.tls.is_some() {
            return self.refuse(SmtpError::AlreadyTls);
        }
        Flow::StartTls
    }

    /// The client's address as the access rules see it.
    fn client_ip(&self) -> std::net::IpAddr {
        self.peer.ip().to_canonical()
    }
}
