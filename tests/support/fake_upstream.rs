//! A scripted fake upstream SMTP server on 127.0.0.1 for tests.
//!
//! `FakeUpstream::start(Script { .. })` listens on a free port and answers as
//! the script says (switches: 421 greeting, no STARTTLS, a chosen certificate,
//! replies to MAIL / chosen RCPTs / the content, dropping the connection after
//! the final dot, slow replies, extension flags, required AUTH, bytes injected
//! after STARTTLS's 220, a reply of any size with or without a line end). It
//! records every command and every transaction (MAIL line, RCPT lines, the
//! exact content received after unstuffing, DATA or BDAT, TLS, AUTH user,
//! whether MAIL and the RCPTs were pipelined). Its certificates come from
//! `pki` (`TestCa::server_config`, `self_signed`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::wait::free_port;

/// How the fake behaves. `Script::default()` is a plain ESMTP server offering
/// PIPELINING, CHUNKING, 8BITMIME, SMTPUTF8, DSN and SIZE, accepting all.
#[derive(Clone)]
pub struct Script {
    /// The banner, e.g. `"421 4.3.2 busy"` to refuse at greeting.
    pub greeting: String,
    /// Accept, then close at once without a banner.
    pub close_on_connect: bool,
    /// Replaces the 250 to EHLO (e.g. `"502 5.5.1 no EHLO"`, forcing HELO).
    pub ehlo_reply: Option<String>,
    /// Offer STARTTLS with this server config (see `server_config`, `self_signed`).
    pub tls: Option<Arc<ServerConfig>>,
    /// Sent right after `220` to STARTTLS, in the same write, in plaintext.
    pub junk_after_starttls: Option<Vec<u8>>,
    pub pipelining: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    pub size: Option<u64>,
    /// Offer AUTH PLAIN LOGIN and require it (530 to MAIL without it).
    pub auth: Option<(String, String)>,
    /// The mechanisms offered with `auth` (default `"PLAIN LOGIN"`).
    pub auth_mechanisms: String,
    /// The reply to MAIL (default `250 2.1.0 ok`).
    pub mail_reply: Option<String>,
    /// (address, reply) for chosen RCPTs; others get `250 2.1.5 ok`.
    pub rcpt_replies: Vec<(String, String)>,
    /// The reply to the content (after the dot or BDAT LAST).
    pub data_reply: String,
    /// Close the connection after the content, without replying.
    pub drop_after_data: bool,
    /// Close each connection once it has answered this many contents, as a
    /// server does with a connection that idles; `close_notice` is sent
    /// first (e.g. `"421 4.4.2 idle timeout"`) or nothing.
    pub close_after: Option<usize>,
    pub close_notice: Option<String>,
    /// Answer DATA with 354 even when no RCPT was accepted (then 554 to the
    /// content), as RFC 2920 §3.1 warns a server might.
    pub data_without_recipients: bool,
    /// Wait this long before each reply.
    pub delay: Duration,
    /// More EHLO keywords, e.g. `"X-FOO"`.
    pub extra_ehlo: Vec<String>,
    /// A huge reply instead of the greeting or the reply to the content.
    pub flood: Option<Flood>,
}

/// A reply far over any line bound: `"250 "` then `bytes` of `x`, written
/// in 64 KiB pieces as long as the client reads, so the fake itself never
/// holds it (`Record::flood_sent` counts what went out).
#[derive(Clone, Debug)]
pub struct Flood {
    pub at: FloodAt,
    pub bytes: usize,
    /// End the line with CRLF; without, the fake then waits (30 s at most)
    /// for the client to give up and close.
    pub newline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodAt {
    Greeting,
    /// After the final dot (or BDAT LAST), once the content was recorded.
    Content,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 fake.test ESMTP ready".into(),
            close_on_connect: false,
            ehlo_reply: None,
            tls: None,
            junk_after_starttls: None,
            pipelining: true,
            chunking: true,
            dsn: true,
            smtputf8: true,
            eight_bit_mime: true,
            size: Some(10_000_000),
            auth: None,
            auth_mechanisms: "PLAIN LOGIN".into(),
            mail_reply: None,
            rcpt_replies: Vec::new(),
            data_reply: "250 2.0.0 queued as FAKE".into(),
            drop_after_data: false,
            close_after: None,
            close_notice: None,
            data_without_recipients: false,
            delay: Duration::ZERO,
            extra_ehlo: Vec::new(),
            flood: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Data,
    Bdat,
}

/// One MAIL transaction as the fake saw it.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// The MAIL command line, parameters included, without CRLF.
    pub mail_from: String,
    /// Every RCPT line, accepted or not.
    pub rcpt_to: Vec<String>,
    /// How the content came; `None` if none did (RSET, rejected MAIL, ...).
    pub method: Option<Method>,
    /// The content after unstuffing (DATA) or reassembly (BDAT).
    pub message: Vec<u8>,
    /// The content bytes as on the wire (DATA: through the final dot).
    pub raw: Vec<u8>,
    pub tls: bool,
    /// The user authenticated on this connection.
    pub auth: Option<String>,
    /// MAIL and every RCPT arrived before any reply to them was sent.
    pub pipelined: bool,
    /// DATA too arrived before any reply in the transaction was sent.
    pub data_in_group: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Record {
    pub connections: usize,
    /// Every command line received, in order, over all connections.
    pub commands: Vec<String>,
    pub transactions: Vec<Transaction>,
    /// Bytes of `Script::flood` written before the client stopped reading
    /// (or all of them).
    pub flood_sent: usize,
    /// The client closed the connection during (or after) a flood.
    pub flood_cut: bool,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start(script: Script) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, script).await
    }

    /// Like `start`, on a listener the caller bound (e.g. at the address of
    /// an upstream that was down and now comes up).
    pub async fn start_on(listener: TcpListener, script: Script) -> FakeUpstream {
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let script = Arc::new(script);
        let rec = record.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                rec.lock().unwrap().connections += 1;
                let session = Session {
                    script: script.clone(),
                    record: rec.clone(),
                    buf: Vec::new(),
                    pending: Vec::new(),
                    tls: false,
                    auth: None,
                    tx: None,
                    accepted: 0,
                    replied_in_tx: false,
                    contents: 0,
                };
                tokio::spawn(session.serve(tcp));
            }
        });
        FakeUpstream { addr, record, task }
    }

    /// `"127.0.0.1:port"`, for `Upstream::address`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    pub fn transactions(&self) -> Vec<Transaction> {
        self.record().transactions
    }

    pub fn commands(&self) -> Vec<String> {
        self.record().commands
    }

    pub fn connections(&self) -> usize {
        self.record().connections
    }

    /// True if any command starting with `prefix` (e.g. `"MAIL"`, any case) was received.
    pub fn saw(&self, prefix: &str) -> bool {
        let prefix = prefix.to_ascii_uppercase();
        self.commands()
            .iter()
            .any(|c| c.to_ascii_uppercase().starts_with(&prefix))
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address where nothing listens (connections are refused).
pub fn refused_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// How long an idle input must stay idle before held pipelined replies go out.
const PIPELINE_IDLE: Duration = Duration::from_millis(50);

struct Session {
    script: Arc<Script>,
    record: Arc<Mutex<Record>>,
    buf: Vec<u8>,
    /// Replies to MAIL/RCPT held back while pipelined commands may follow.
    pending: Vec<u8>,
    tls: bool,
    auth: Option<String>,
    tx: Option<Transaction>,
    accepted: usize,
    /// A reply was sent since this transaction's MAIL arrived.
    replied_in_tx: bool,
    /// Contents answered on this connection.
    contents: usize,
}

/// The reply to DATA or BDAT when no RCPT was accepted.
const NO_RECIPIENTS: &str = "554 5.5.1 no valid recipients";

enum Next<S> {
    Close,
    StartTls(S),
}

impl Session {
    async fn serve(mut self, tcp: TcpStream) {
        if self.script.close_on_connect {
            return;
        }
        let mut tcp = tcp;
        if self.flood_at(FloodAt::Greeting) {
            self.flood(&mut tcp).await;
            return;
        }
        let greeting = format!("{}\r\n", self.script.greeting);
        if tcp.write_all(greeting.as_bytes()).await.is_err() || !greeting.starts_with("220") {
            return;
        }
        // Boxed: the dialogue's future is too large for a test thread's stack.
        if let Next::StartTls(tcp) = Box::pin(self.run(tcp)).await {
            let acceptor = tokio_rustls::TlsAcceptor::from(self.script.tls.clone().unwrap());
            // RFC 3207 §4.2: forget everything, including buffered plaintext.
            self.buf.clear();
            self.tls = true;
            if let Ok(tls) = acceptor.accept(tcp).await {
                Box::pin(self.run(tls)).await;
            }
        }
        self.finish();
    }

    /// Ends the open transaction, recording it.
    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.record.lock().unwrap().transactions.push(tx);
        }
        self.accepted = 0;
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut io: S) -> Next<S> {
        loop {
            let Some(line) = self.line(&mut io).await else {
                return Next::Close;
            };
            self.record.lock().unwrap().commands.push(line.clone());
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("").to_owned();
            let ok = match verb.as_str() {
                "EHLO" => {
                    self.finish();
                    let reply = self.ehlo();
                    self.reply(&mut io, &reply, false).await
                }
                "HELO" => {
                    self.finish();
                    self.reply(&mut io, "250 fake.test", false).await
                }
                "STARTTLS" if self.script.tls.is_some() && !self.tls => {
                    let mut out = b"220 2.0.0 go ahead\r\n".to_vec();
                    if let Some(junk) = &self.script.junk_after_starttls {
                        out.extend_from_slice(junk);
                    }
                    if io.write_all(&out).await.is_err() {
                        return Next::Close;
                    }
                    return Next::StartTls(io);
                }
                "AUTH" if self.script.auth.is_some() => self.auth(&mut io, &line).await,
                "MAIL" => {
                    if self.script.auth.is_some() && self.auth.is_none() {
                        self.reply(&mut io, "530 5.7.0 authentication required", false)
                            .await
                    } else {
                        self.finish();
                        let reply = self
                            .script
                            .mail_reply
                            .clone()
                            .unwrap_or_else(|| "250 2.1.0 ok".into());
                        self.tx = Some(Transaction {
                            mail_from: line.clone(),
                            tls: self.tls,
                            auth: self.auth.clone(),
                            pipelined: true,
                            ..Transaction::default()
                        });
                        self.replied_in_tx = false;
                        if !reply.starts_with('2') {
                            self.finish();
                        }
                        self.reply(&mut io, &reply, true).await
                    }
                }
                "RCPT" => match &mut self.tx {
                    None => self.reply(&mut io, "503 5.5.1 MAIL first", false).await,
                    Some(tx) => {
                        tx.rcpt_to.push(line.clone());
                        tx.pipelined &= !self.replied_in_tx;
                        let address = line
                            .split_once('<')
                            .and_then(|(_, r)| r.split_once('>'))
                            .map(|(a, _)| a.to_owned())
                            .unwrap_or_default();
                        let reply = self
                            .script
                            .rcpt_replies
                            .iter()
                            .find(|(a, _)| a.eq_ignore_ascii_case(&address))
                            .map(|(_, r)| r.clone())
                            .unwrap_or_else(|| "250 2.1.5 ok".into());
                        if reply.starts_with('2') {
                            self.accepted += 1;
                        }
                        self.reply(&mut io, &reply, true).await
                    }
                },
                "DATA" => {
                    let in_group = !self.replied_in_tx;
                    if let Some(tx) = &mut self.tx {
                        tx.data_in_group = in_group;
                    }
                    if self.tx.is_some()
                        && self.accepted == 0
                        && self.script.data_without_recipients
                    {
                        self.data_refused(&mut io).await
                    } else if self.tx.is_none() || self.accepted == 0 {
                        self.reply(&mut io, NO_RECIPIENTS, false).await
                    } else if !self.reply(&mut io, "354 go ahead", false).await {
                        false
                    } else {
                        self.data(&mut io).await
                    }
                }
                "BDAT" => self.bdat(&mut io, &upper).await,
                "RSET" => {
                    self.finish();
                    self.reply(&mut io, "250 2.0.0 reset", false).await
                }
                "NOOP" => self.reply(&mut io, "250 2.0.0 ok", false).await,
                "QUIT" => {
                    self.reply(&mut io, "221 2.0.0 bye", false).await;
                    return Next::Close;
                }
                _ => {
                    self.reply(&mut io, "500 5.5.2 unknown command", false)
                        .await
                }
            };
            if !ok {
                return Next::Close;
            }
        }
    }

    fn ehlo(&self) -> String {
        if let Some(r) = &self.script.ehlo_reply {
            return r.clone();
        }
        let s = &self.script;
        let mut lines = vec!["fake.test greets you".to_owned()];
        let mut flag = |on: bool, word: &str| {
            if on {
                lines.push(word.to_owned());
            }
        };
        flag(s.pipelining, "PIPELINING");
        flag(s.chunking, "CHUNKING");
        flag(s.dsn, "DSN");
        flag(s.smtputf8, "SMTPUTF8");
        flag(s.eight_bit_mime, "8BITMIME");
        flag(s.tls.is_some() && !self.tls, "STARTTLS");
        flag(s.auth.is_some(), &format!("AUTH {}", s.auth_mechanisms));
        flag(true, "ENHANCEDSTATUSCODES");
        if let Some(size) = s.size {
            lines.push(format!("SIZE {size}"));
        }
        lines.extend(s.extra_ehlo.iter().cloned());
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S, line: &str) -> bool {
        let words: Vec<&str> = line.split(' ').collect();
        let decode = |s: &str| {
            String::from_utf8(BASE64.decode(s.trim()).unwrap_or_default()).unwrap_or_default()
        };
        let (user, password) = match words.get(1).map(|m| m.to_ascii_uppercase()).as_deref() {
            Some("PLAIN") => {
                let token = match words.get(2) {
                    Some(t) => t.to_string(),
                    None => {
                        if !self.reply(io, "334 ", false).await {
                            return false;
                        }
                        let Some(t) = self.line(io).await else {
                            return false;
                        };
                        t
                    }
                };
                let plain = decode(&token);
                let mut parts = plain.split('\0').skip(1);
                (
                    parts.next().unwrap_or("").to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                )
            }
            Some("LOGIN") => {
                let mut got = Vec::new();
                for prompt in ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"] {
                    if !self.reply(io, prompt, false).await {
                        return false;
                    }
                    let Some(t) = self.line(io).await else {
                        return false;
                    };
                    got.push(decode(&t));
                }
                (got[0].clone(), got[1].clone())
            }
            _ => return self.reply(io, "504 5.5.4 unknown mechanism", false).await,
        };
        if self.script.auth.as_ref() == Some(&(user.clone(), password)) {
            self.auth = Some(user);
            self.reply(io, "235 2.7.0 authenticated", false).await
        } else {
            self.reply(io, "535 5.7.8 bad credentials", false).await
        }
    }

    /// After 354: content through CRLF "." CRLF, unstuffed with the relay's
    /// own inbound reader.
    async fn data<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S) -> bool {
        match self.dot_content(io).await {
            Some((message, raw)) => self.content(io, Method::Data, message, raw, true).await,
            None => false,
        }
    }

    /// 354 with no recipient, the content read and dropped, then 554.
    async fn data_refused<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S) -> bool {
        if !self.reply(io, "354 go ahead", false).await || self.dot_content(io).await.is_none() {
            return false;
        }
        self.finish();
        self.reply(io, NO_RECIPIENTS, false).await
    }

    /// DATA content through the final dot: (unstuffed, as on the wire);
    /// `None` at EOF.
    async fn dot_content<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut reader = smarthost::dot::DotReader::default();
        let mut message = Vec::new();
        let mut raw = Vec::new();
        loop {
            if let Some(n) = reader.feed(&self.buf, &mut message) {
                raw.extend(self.buf.drain(..n));
                return Some((message, raw));
            }
            raw.append(&mut self.buf);
            if !self.fill(io).await {
                return None;
            }
        }
    }

    /// `BDAT <size> [LAST]` (RFC 3030): exactly `size` bytes follow.
    async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S, upper: &str) -> bool {
        let words: Vec<&str> = upper.split(' ').collect();
        let Some(size) = words.get(1).and_then(|s| s.parse::<usize>().ok()) else {
            return self.reply(io, "501 5.5.4 BDAT size", false).await;
        };
        let last = words.get(2) == Some(&"LAST");
        while self.buf.len() < size {
            if !self.fill(io).await {
                return false;
            }
        }
        let chunk: Vec<u8> = self.buf.drain(..size).collect();
        if self.tx.is_none() || self.accepted == 0 {
            return self.reply(io, NO_RECIPIENTS, false).await;
        }
        if !last {
            let tx = self.tx.as_mut().unwrap();
            tx.message.extend_from_slice(&chunk);
            tx.raw.extend_from_slice(&chunk);
            return self.reply(io, "250 2.0.0 chunk ok", false).await;
        }
        self.content(io, Method::Bdat, chunk.clone(), chunk, false)
            .await
    }

    async fn content<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        method: Method,
        message: Vec<u8>,
        raw: Vec<u8>,
        replace: bool,
    ) -> bool {
        let tx = self.tx.as_mut().unwrap();
        tx.method = Some(method);
        if replace {
            tx.message = message;
            tx.raw = raw;
        } else {
            tx.message.extend_from_slice(&message);
            tx.raw.extend_from_slice(&raw);
        }
        self.finish();
        if self.script.drop_after_data {
            return false;
        }
        if self.flood_at(FloodAt::Content) {
            self.flood(io).await;
            return false;
        }
        let reply = self.script.data_reply.clone();
        if !self.reply(io, &reply, false).await {
            return false;
        }
        self.contents += 1;
        if self.script.close_after.is_some_and(|n| self.contents >= n) {
            if let Some(notice) = &self.script.close_notice {
                let _ = io.write_all(format!("{notice}\r\n").as_bytes()).await;
                let _ = io.flush().await;
            }
            return false;
        }
        true
    }

    fn flood_at(&self, at: FloodAt) -> bool {
        self.script.flood.as_ref().is_some_and(|f| f.at == at)
    }

    /// Writes the flood reply while the client takes it; then, without a
    /// line end, waits for the client to close.
    async fn flood<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S) {
        let flood = self.script.flood.clone().unwrap();
        let piece = vec![b'x'; 64 * 1024];
        let mut left = flood.bytes;
        let mut ok = io.write_all(b"250 ").await.is_ok();
        while ok && left > 0 {
            let n = left.min(piece.len());
            ok = io.write_all(&piece[..n]).await.is_ok();
            if ok {
                left -= n;
                self.record.lock().unwrap().flood_sent += n;
            }
        }
        if ok && flood.newline {
            ok = io.write_all(b"\r\n").await.is_ok();
        }
        if ok {
            let _ = io.flush().await;
            let mut chunk = [0u8; 4096];
            let wait = async {
                loop {
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            ok = tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .is_err();
        }
        self.record.lock().unwrap().flood_cut = !ok;
    }

    /// Sends (or, for pipelinable MAIL/RCPT replies, holds) one reply.
    async fn reply<S: AsyncWrite + Unpin>(&mut self, io: &mut S, text: &str, hold: bool) -> bool {
        self.pending.extend_from_slice(text.as_bytes());
        self.pending.extend_from_slice(b"\r\n");
        if hold && self.script.pipelining {
            return true;
        }
        self.flush(io).await
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, io: &mut S) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        // A reply to this transaction goes out: later RCPTs were not pipelined.
        self.replied_in_tx |= self.tx.is_some();
        if !self.script.delay.is_zero() {
            tokio::time::sleep(self.script.delay).await;
        }
        let out = std::mem::take(&mut self.pending);
        io.write_all(&out).await.is_ok() && io.flush().await.is_ok()
    }

    /// The next command line (without CRLF); `None` at EOF. Held replies go
    /// out once the input stays idle (the client waits for them).
    async fn line<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if !self.pending.is_empty() {
                let mut chunk = [0u8; 65536];
                match tokio::time::timeout(PIPELINE_IDLE, io.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return None,
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(_) => {
                        if !self.flush(io).await {
                            return None;
                        }
                    }
                }
                continue;
            }
            if !self.fill(io).await {
                return None;
            }
        }
    }

    async fn fill<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> bool {
        let mut chunk = [0u8; 65536];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}
