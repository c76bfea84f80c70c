//! One SMTP client connection to an upstream smart host (RFC 5321 §3, §4):
//! connect, greeting, EHLO, STARTTLS (RFC 3207), AUTH (RFC 4954), then
//! transactions with PIPELINING (RFC 2920), CHUNKING (RFC 3030), SIZE
//! (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531) and DSN (RFC 3461).
//!
//! An `Err` from `open`, `send` or `reset` means "this upstream, now, did not
//! work": every one is temporary, the caller fails over to the next upstream,
//! and the connection must not be used again. Per-recipient verdicts, good or
//! bad, come back as `Ok` replies.

use std::io;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

pub use super::capabilities::Capabilities;
pub use super::error::{Stage, UpstreamError};
pub use super::reply::UpstreamReply;
use super::stuffing;
use super::wire::Wire;
use crate::address::Mailbox;
use crate::config::{UpstreamConfig, UpstreamTls};
use crate::spool::{Envelope, Recipient};

/// Timeouts (RFC 5321 §4.5.3.2) and our name.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Sent in EHLO/HELO: our host name.
    pub helo_name: String,
    pub connect_timeout: Duration,
    pub greeting_timeout: Duration,
    /// EHLO, STARTTLS (and its handshake), AUTH, MAIL, RCPT, RSET.
    pub command_timeout: Duration,
    /// For the 354 to DATA.
    pub data_init_timeout: Duration,
    /// For each block of message content written.
    pub data_block_timeout: Duration,
    /// For the reply after the final dot (or BDAT LAST).
    pub data_end_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        ClientOptions {
            helo_name: "localhost".into(),
            connect_timeout: Duration::from_secs(30),
            greeting_timeout: minutes(5),
            command_timeout: minutes(5),
            data_init_timeout: minutes(2),
            data_block_timeout: minutes(3),
            data_end_timeout: minutes(10),
        }
    }
}

/// One configured upstream, ready to connect to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// `host:port`, resolved at each connection.
    pub address: String,
    pub tls: UpstreamTls,
    /// The name the certificate must carry; default: the host in `address`.
    pub tls_name: Option<String>,
    /// Verifying client TLS (public roots + `ca_file`), for `required`.
    pub tls_config: std::sync::Arc<rustls::ClientConfig>,
    /// (username, password) for AUTH.
    pub credentials: Option<(String, String)>,
}

impl Upstream {
    /// Reads `password_file` (one trailing newline removed) and builds the TLS config.
    pub fn from_config(c: &UpstreamConfig) -> Result<Upstream, String> {
        let credentials = match (&c.username, &c.password_file) {
            (Some(user), Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "upstream {}: cannot read password_file {}: {e}",
                        c.name,
                        path.display()
                    )
                })?;
                let password = text
                    .strip_suffix('\n')
                    .map(|p| p.strip_suffix('\r').unwrap_or(p))
                    .unwrap_or(&text);
                Some((user.clone(), password.to_owned()))
            }
            (None, None) => None,
            _ => {
                return Err(format!(
                    "upstream {}: username and password_file must be set together",
                    c.name
                ));
            }
        };
        let tls_config = super::tls::client_config(c.ca_file.as_deref())
            .map_err(|e| format!("upstream {}: {e}", c.name))?;
        Ok(Upstream {
            name: c.name.clone(),
            address: c.address.clone(),
            tls: c.tls,
            tls_name: c.tls_name.clone(),
            tls_config,
            credentials,
        })
    }

    /// The host part of `address` (`[::1]:25` → `::1`).
    fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// An open, greeted (and possibly encrypted and authenticated) connection.
pub struct Connection {
    wire: Wire,
    options: ClientOptions,
    capabilities: Capabilities,
    opened_at: Instant,
    messages_sent: usize,
    /// Set after an error: the conversation state is unknown.
    broken: bool,
    /// The last transaction found the connection closed before MAIL was
    /// answered (see `opening`).
    closed_before_mail: bool,
}

impl Connection {
    /// Connects (resolving `address` each time, trying every address in order),
    /// reads the greeting, says EHLO (HELO if EHLO gets 5xx), STARTTLS per
    /// `upstream.tls`, EHLO again, and AUTH PLAIN or LOGIN when credentials are set.
    pub async fn open(
        upstream: &Upstream,
        options: &ClientOptions,
    ) -> Result<Connection, UpstreamError> {
        let opened_at = Instant::now();
        let tcp = connect(&upstream.address, options.connect_timeout).await?;
        let mut wire = Wire::new(tcp);
        let greeting = wire
            .reply(options.greeting_timeout, Stage::Greeting)
            .await?;
        if greeting.code != 220 {
            // 421 or 554 (RFC 5321 §3.1): nothing will be accepted here.
            return Err(UpstreamError::Rejected {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        let mut capabilities = hello(&mut wire, options).await?;
        let starttls_offered = capabilities.starttls_offered;
        let mut verified = false;
        if upstream.tls != UpstreamTls::None {
            if starttls_offered {
                let t = options.command_timeout;
                wire.send(b"STARTTLS\r\n", t, Stage::StartTls).await?;
                let reply = wire.reply(t, Stage::StartTls).await?;
                if reply.code == 220 {
                    let (config, name) = match upstream.tls {
                        UpstreamTls::Required => {
                            verified = true;
                            (upstream.tls_config.clone(), upstream.tls_name.as_deref())
                        }
                        _ => (
                            super::tls::unverified_config(),
                            upstream.tls_name.as_deref(),
                        ),
                    };
                    let name = name.unwrap_or_else(|| upstream.host()).to_owned();
                    let name = ServerName::try_from(name)
                        .map_err(|e| UpstreamError::Tls(format!("invalid TLS name: {e}")))?;
                    wire = wire.start_tls(config, name, t).await?;
                    // RFC 3207 §4.2: forget everything learnt before TLS.
                    capabilities = hello(&mut wire, options).await?;
                } else if upstream.tls == UpstreamTls::Required {
                    return Err(UpstreamError::Rejected {
                        stage: Stage::StartTls,
                        reply,
                    });
                }
                // Opportunistic and refused (e.g. 454): go on in plaintext.
            } else if upstream.tls == UpstreamTls::Required {
                return Err(UpstreamError::NoStartTls);
            }
        }
        capabilities.starttls_offered = starttls_offered;
        capabilities.tls = wire.tls_info();
        capabilities.tls_verified = verified && capabilities.tls.is_some();
        if let Some((user, password)) = &upstream.credentials {
            // Opportunistic TLS that did not happen could be an attacker
            // stripping STARTTLS: never send the password in the clear then.
            if upstream.tls == UpstreamTls::Opportunistic && !wire.is_tls() {
                return Err(UpstreamError::NoStartTls);
            }
            capabilities.auth_used =
                Some(authenticate(&mut wire, options, &capabilities, user, password).await?);
        }
        Ok(Connection {
            wire,
            options: options.clone(),
            capabilities,
            opened_at,
            messages_sent: 0,
            broken: false,
            closed_before_mail: false,
        })
    }

    /// One transaction for `recipients` (a subset of `envelope.recipients`).
    /// Returns one reply per recipient, in order: the RCPT reply for those
    /// refused, the reply to the content for those accepted. A 5xx to MAIL is
    /// every recipient's reply; a 4xx to MAIL is `Err` (try another upstream).
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        message: &[u8],
    ) -> Result<Vec<UpstreamReply>, UpstreamError> {
        if self.broken {
            return Err(UpstreamError::Protocol(
                "connection unusable after an earlier error".into(),
            ));
        }
        self.closed_before_mail = false;
        // Boxed: its many await points make a large future, too large for
        // the stack of the callers' own futures in debug builds.
        let result = Box::pin(self.transaction(envelope, recipients, message)).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn transaction(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        message: &[u8],
    ) -> Result<Vec<UpstreamReply>, UpstreamError> {
        let all = |reply: UpstreamReply| Ok(vec![reply; recipients.len()]);
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let caps = &self.capabilities;
        let needs_utf8 = envelope.params.smtputf8
            || !envelope.sender.is_ascii()
            || recipients.iter().any(|r| !r.address.is_ascii());
        if needs_utf8 && !caps.smtputf8 {
            // RFC 6531 §3.4: no downgrade; permanent for this message.
            return all(UpstreamReply::synthetic(
                553,
                "5.6.7",
                "the message needs SMTPUTF8, which the upstream does not support",
            ));
        }
        let Some(sender) = wire_path(&envelope.sender) else {
            return all(UpstreamReply::synthetic(
                553,
                "5.1.7",
                "invalid sender address",
            ));
        };
        let message = stuffing::canonical(message);
        let mail = mail_command(&sender, envelope, caps, message.len(), needs_utf8);
        let rcpts: Vec<Option<String>> = recipients
            .iter()
            .map(|r| {
                wire_path(&r.address)
                    .filter(|a| !a.is_empty())
                    .map(|a| rcpt_command(&a, r, caps.dsn))
            })
            .collect();
        let t = self.options.command_timeout;

        // With PIPELINING, MAIL, the RCPTs and (when the content goes by
        // DATA) DATA go in one write, and the replies are read in order
        // (RFC 2920 §3.1: DATA may end a group). BDAT is not added: its
        // content would follow before the recipients were known.
        let mut results: Vec<Option<UpstreamReply>> = vec![None; recipients.len()];
        let mut go = None;
        let mail_reply;
        if self.capabilities.pipelining {
            let with_data = !self.capabilities.chunking;
            let mut batch = mail.into_bytes();
            for cmd in rcpts.iter().flatten() {
                batch.extend_from_slice(cmd.as_bytes());
            }
            if with_data {
                batch.extend_from_slice(b"DATA\r\n");
            }
            mail_reply = self.opening(&batch).await?;
            let mail_ok = mail_reply.code / 100 == 2;
            let mut in_step = true;
            for (i, cmd) in rcpts.iter().enumerate() {
                if cmd.is_some() {
                    match self.wire.reply(t, Stage::Rcpt).await {
                        Ok(reply) if mail_ok => results[i] = Some(closing(Stage::Rcpt, reply)?),
                        Ok(reply) if reply.code != 421 => results[i] = Some(reply),
                        Err(e) if mail_ok => return Err(e),
                        // MAIL's refusal stands; the connection is closing or lost.
                        _ => {
                            self.broken = true;
                            in_step = false;
                            break;
                        }
                    }
                }
            }
            if with_data && in_step {
                let limit = self.options.data_init_timeout;
                match self.wire.reply(limit, Stage::Data).await {
                    Ok(reply) if mail_ok => go = Some(closing(Stage::Data, reply)?),
                    // No transaction, so DATA is refused (503); a 354 would
                    // leave the upstream reading content nobody sends.
                    Ok(reply) => self.broken |= reply.code == 354 || reply.code == 421,
                    Err(e) if mail_ok => return Err(e),
                    Err(_) => self.broken = true,
                }
            }
        } else {
            mail_reply = self.opening(mail.as_bytes()).await?;
            if mail_reply.code / 100 == 2 {
                for (i, cmd) in rcpts.iter().enumerate() {
                    if let Some(cmd) = cmd {
                        self.wire.send(cmd.as_bytes(), t, Stage::Rcpt).await?;
                        let reply = self.wire.reply(t, Stage::Rcpt).await?;
                        results[i] = Some(closing(Stage::Rcpt, reply)?);
                    }
                }
            }
        }
        match mail_reply.code / 100 {
            2 => {}
            5 => return all(mail_reply),
            4 => {
                return Err(UpstreamError::Rejected {
                    stage: Stage::Mail,
                    reply: mail_reply,
                });
            }
            _ => return Err(unexpected(Stage::Mail, &mail_reply)),
        }
        let mut accepted = Vec::new();
        for (i, r) in results.iter_mut().enumerate() {
            match r {
                None => {
                    *r = Some(UpstreamReply::synthetic(
                        553,
                        "5.1.3",
                        "invalid recipient address",
                    ))
                }
                Some(reply) if reply.code / 100 == 2 => accepted.push(i),
                Some(reply) if matches!(reply.code / 100, 4 | 5) => {}
                Some(reply) => return Err(unexpected(Stage::Rcpt, reply)),
            }
        }
        let mut results: Vec<UpstreamReply> = results.into_iter().flatten().collect();
        if accepted.is_empty() {
            if go.is_some_and(|reply| reply.code == 354) {
                // RFC 2920 §3.1: a pipelined DATA taken although no RCPT was:
                // a lone dot ends it, and the transaction fails.
                let o = &self.options;
                let (block, end) = (o.data_block_timeout, o.data_end_timeout);
                self.wire.send(b".\r\n", block, Stage::Data).await?;
                self.wire.reply(end, Stage::Data).await?;
            }
            // Nobody to send to: end the transaction (RFC 5321 §4.1.1.5).
            self.reset().await?;
            return Ok(results);
        }

        let verdict = if self.capabilities.chunking {
            self.bdat(&message).await?
        } else {
            self.data(&message, go).await?
        };
        let verdict = closing(Stage::Data, verdict)?;
        if !matches!(verdict.code / 100, 2 | 4 | 5) {
            return Err(unexpected(Stage::Data, &verdict));
        }
        self.messages_sent += 1;
        for i in accepted {
            results[i] = verdict.clone();
        }
        Ok(results)
    }

    /// RFC 3030: `BDAT <size> LAST` and the bytes as they are (no stuffing).
    async fn bdat(&mut self, message: &[u8]) -> Result<UpstreamReply, UpstreamError> {
        let o = &self.options;
        let (block, end) = (o.data_block_timeout, o.data_end_timeout);
        let command = format!("BDAT {} LAST\r\n", message.len());
        self.wire
            .send(command.as_bytes(), block, Stage::Data)
            .await?;
        for piece in message.chunks(stuffing::BLOCK) {
            self.wire.send(piece, block, Stage::Data).await?;
        }
        self.wire.reply(end, Stage::Data).await
    }

    /// RFC 5321 §4.1.1.4: DATA, 354, the dot-stuffed content, CRLF "." CRLF.
    /// `go`: the reply to a DATA already sent in the MAIL/RCPT group.
    async fn data(
        &mut self,
        message: &[u8],
        go: Option<UpstreamReply>,
    ) -> Result<UpstreamReply, UpstreamError> {
        let o = self.options.clone();
        let go = match go {
            Some(reply) => reply,
            None => {
                self.wire
                    .send(b"DATA\r\n", o.command_timeout, Stage::Data)
                    .await?;
                self.wire.reply(o.data_init_timeout, Stage::Data).await?
            }
        };
        if go.code != 354 {
            // A refusal applies to every accepted recipient; anything else is nonsense.
            return match go.code / 100 {
                4 | 5 => Ok(go),
                _ => Err(unexpected(Stage::Data, &go)),
            };
        }
        for block in stuffing::data_blocks(message) {
            self.wire
                .send(&block, o.data_block_timeout, Stage::Data)
                .await?;
        }
        self.wire.reply(o.data_end_timeout, Stage::Data).await
    }

    /// A transaction's first write, and the reply to its MAIL. A server may
    /// close a connection that idles between transactions (RFC 5321
    /// §4.5.3.2.7), some with a 421 first; then nothing of this transaction
    /// was taken, and `closed_before_mail` lets a caller that reused the
    /// connection try a new one instead of probing each reuse with RSET.
    async fn opening(&mut self, batch: &[u8]) -> Result<UpstreamReply, UpstreamError> {
        let t = self.options.command_timeout;
        let first = match self.wire.send(batch, t, Stage::Mail).await {
            Ok(()) => self.wire.reply(t, Stage::Mail).await,
            Err(e) => Err(e),
        };
        self.closed_before_mail = match &first {
            Err(UpstreamError::Protocol(_)) => true,
            Ok(reply) => reply.code == 421,
            Err(_) => false,
        };
        first
    }

    /// Whether the last `send` failed because the connection was found
    /// closed (or closing, 421) before its MAIL was answered: nothing of
    /// that transaction reached the upstream's queue.
    pub fn closed_before_mail(&self) -> bool {
        self.closed_before_mail
    }

    /// Whether another transaction may follow on this connection.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// RSET, to end a transaction with no recipient or to check a connection;
    /// anything but 250 is `Err`.
    pub async fn reset(&mut self) -> Result<(), UpstreamError> {
        if self.broken {
            return Err(UpstreamError::Protocol(
                "connection unusable after an earlier error".into(),
            ));
        }
        let t = self.options.command_timeout;
        let result = async {
            self.wire.send(b"RSET\r\n", t, Stage::Reset).await?;
            let reply = self.wire.reply(t, Stage::Reset).await?;
            if reply.code / 100 == 2 {
                Ok(())
            } else {
                Err(UpstreamError::Rejected {
                    stage: Stage::Reset,
                    reply,
                })
            }
        }
        .await;
        self.broken = result.is_err();
        result
    }

    /// QUIT politely (a short wait for the 221), then close.
    pub async fn quit(mut self) {
        let t = self.options.command_timeout.min(Duration::from_secs(10));
        if !self.broken && self.wire.send(b"QUIT\r\n", t, Stage::Reset).await.is_ok() {
            let _ = self.wire.reply(t, Stage::Reset).await;
        }
        let _ = tokio::time::timeout(t, tokio::io::AsyncWriteExt::shutdown(&mut self.wire.stream))
            .await;
    }

    /// Transactions whose content was sent and answered on this connection.
    pub fn messages_sent(&self) -> usize {
        self.messages_sent
    }

    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// What the upstream offered and what this connection used.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
}

/// Resolves `address` and tries each result in order, each within `limit`.
async fn connect(address: &str, limit: Duration) -> Result<TcpStream, UpstreamError> {
    let addrs = tokio::time::timeout(limit, tokio::net::lookup_host(address))
        .await
        .map_err(|_| UpstreamError::Timeout(Stage::Connect))?
        .map_err(UpstreamError::Connect)?;
    let mut last = UpstreamError::Connect(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{address} resolves to no address"),
    ));
    for addr in addrs {
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => last = UpstreamError::Connect(e),
            Err(_) => last = UpstreamError::Timeout(Stage::Connect),
        }
    }
    Err(last)
}

/// EHLO, or HELO when EHLO gets a 5xx (RFC 5321 §3.2).
async fn hello(wire: &mut Wire, options: &ClientOptions) -> Result<Capabilities, UpstreamError> {
    let t = options.command_timeout;
    wire.send(
        format!("EHLO {}\r\n", options.helo_name).as_bytes(),
        t,
        Stage::Ehlo,
    )
    .await?;
    let raw = wire.raw_reply(t, Stage::Ehlo).await?;
    let reply = UpstreamReply::parse(&raw).map_err(UpstreamError::Protocol)?;
    if reply.code == 250 {
        return Ok(Capabilities::from_ehlo(&raw));
    }
    if reply.code / 100 != 5 {
        return Err(UpstreamError::Rejected {
            stage: Stage::Ehlo,
            reply,
        });
    }
    wire.send(
        format!("HELO {}\r\n", options.helo_name).as_bytes(),
        t,
        Stage::Ehlo,
    )
    .await?;
    let reply = wire.reply(t, Stage::Ehlo).await?;
    if reply.code != 250 {
        return Err(UpstreamError::Rejected {
            stage: Stage::Ehlo,
            reply,
        });
    }
    Ok(Capabilities {
        hostname: reply.text.split(' ').next().unwrap_or("").to_owned(),
        ..Capabilities::default()
    })
}

/// AUTH PLAIN (RFC 4616, with an initial response, RFC 4954 §4) or LOGIN.
async fn authenticate(
    wire: &mut Wire,
    options: &ClientOptions,
    caps: &Capabilities,
    user: &str,
    password: &str,
) -> Result<&'static str, UpstreamError> {
    let t = options.command_timeout;
    let rejected = |reply| UpstreamError::Rejected {
        stage: Stage::Auth,
        reply,
    };
    let (mechanism, reply) = if caps.auth_plain {
        let token = BASE64.encode(format!("\0{user}\0{password}"));
        wire.send(format!("AUTH PLAIN {token}\r\n").as_bytes(), t, Stage::Auth)
            .await?;
        ("PLAIN", wire.reply(t, Stage::Auth).await?)
    } else if caps.auth_login {
        wire.send(b"AUTH LOGIN\r\n", t, Stage::Auth).await?;
        let mut reply = wire.reply(t, Stage::Auth).await?;
        for secret in [user, password] {
            if reply.code != 334 {
                return Err(rejected(reply));
            }
            wire.send(
                format!("{}\r\n", BASE64.encode(secret)).as_bytes(),
                t,
                Stage::Auth,
            )
            .await?;
            reply = wire.reply(t, Stage::Auth).await?;
        }
        ("LOGIN", reply)
    } else {
        return Err(UpstreamError::Protocol(
            "credentials are configured but the upstream offers neither AUTH PLAIN nor AUTH LOGIN"
                .into(),
        ));
    };
    if reply.code == 235 {
        Ok(mechanism)
    } else {
        Err(rejected(reply))
    }
}

/// `MAIL FROM:<sender>` and the parameters the upstream understands;
/// `sender` is a `wire_path`.
pub fn mail_command(
    sender: &str,
    envelope: &Envelope,
    caps: &Capabilities,
    size: usize,
    utf8: bool,
) -> String {
    let mut cmd = format!("MAIL FROM:<{sender}>");
    if caps.size.is_some() {
        cmd += &format!(" SIZE={size}");
    }
    // Without 8BITMIME the content goes as it is: nearly every server takes
    // 8-bit mail, and downgrading (RFC 6152 §3) would rewrite a signed message.
    let eight_bit = envelope
        .params
        .body
        .as_deref()
        .is_some_and(|b| b.eq_ignore_ascii_case("8BITMIME"));
    if eight_bit && caps.eight_bit_mime {
        cmd += " BODY=8BITMIME";
    }
    if utf8 {
        cmd += " SMTPUTF8";
    }
    if caps.dsn {
        if let Some(ret) = envelope.params.ret.as_deref().filter(|r| is_keyword(r)) {
            cmd += &format!(" RET={ret}");
        }
        if let Some(envid) = &envelope.params.envid {
            cmd += &format!(" ENVID={}", xtext(envid));
        }
    }
    cmd + "\r\n"
}

/// `RCPT TO:<address>` with NOTIFY and ORCPT when the upstream offers DSN;
/// `address` is a `wire_path`.
pub fn rcpt_command(address: &str, r: &Recipient, dsn: bool) -> String {
    let mut cmd = format!("RCPT TO:<{address}>");
    if dsn {
        if let Some(notify) = &r.notify {
            let notify: Vec<&str> = notify
                .iter()
                .map(String::as_str)
                .filter(|n| is_keyword(n))
                .collect();
            if !notify.is_empty() {
                cmd += &format!(" NOTIFY={}", notify.join(","));
            }
        }
        if let Some(orcpt) = &r.orcpt {
            // Stored decoded as `type;address` (RFC 3461 §4.2); xtext on the wire.
            let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
            if is_keyword(kind) {
                cmd += &format!(" ORCPT={kind};{}", xtext(addr));
            }
        }
    }
    cmd + "\r\n"
}

/// RFC 3461 §4: xtext, "+" and "=" and anything outside "!".."~" as "+HH".
fn xtext(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => (b as char).to_string(),
            _ => format!("+{b:02X}"),
        })
        .collect()
}

fn is_keyword(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What goes between `<` and `>` for a stored address: the mailbox parsed
/// again and written in its wire form, so nothing but one mailbox reaches the
/// upstream there (no `>`, space, CRLF or parameter), whatever the spool
/// holds. A spool written before local parts kept their quotes holds
/// `john smith@example.com`: quoted again here. `None`: unusable.
pub fn wire_path(stored: &str) -> Option<String> {
    if stored.is_empty() {
        return Some(String::new());
    }
    if let Ok(m) = Mailbox::parse(stored) {
        return Some(m.to_string());
    }
    let (local, domain) = stored.rsplit_once('@')?;
    Mailbox::from_parts(local, domain)
        .ok()
        .map(|m| m.to_string())
}

/// 421 (RFC 5321 §3.8): the upstream is closing the connection. Whatever it
/// was a reply to, the attempt is over; another upstream may do better.
fn closing(stage: Stage, reply: UpstreamReply) -> Result<UpstreamReply, UpstreamError> {
    if reply.code == 421 {
        Err(UpstreamError::Rejected { stage, reply })
    } else {
        Ok(reply)
    }
}

fn unexpected(stage: Stage, reply: &UpstreamReply) -> UpstreamError {
    UpstreamError::Protocol(format!("unexpected reply to {stage}: {reply}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_and_hosts() {
        assert_eq!(xtext("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
        let up = |address: &str| Upstream {
            name: "u".into(),
            address: address.into(),
            tls: UpstreamTls::None,
            tls_name: None,
            tls_config: super::super::tls::unverified_config(),
            credentials: None,
        };
        assert_eq!(up("[::1]:25").host(), "::1");
        assert_eq!(up("mx.example:587").host(), "mx.example");
    }
}
