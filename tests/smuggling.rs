//! The SMTP smuggling corpus (CVE-2023-51764 and kin), inbound and outbound,
//! end to end: a client on loopback over real STARTTLS, the relay in-process,
//! and two REAL upstreams behind a wire tap.
//!
//! Each end-of-data lookalike published by the smuggling research (SEC
//! Consult, Dec 2023; the `smtpsmug` test set; a few more) is sent inside a
//! message, followed by a smuggled `MAIL`/`RCPT`/`DATA` and a second message,
//! then the real end CRLF "." CRLF. Only CRLF "." CRLF ends DATA (RFC 5321
//! §4.1.1.4, §4.5.2), and content with a bare CR or LF is either repaired
//! (`bare_line_endings = "normalize"`) or refused with `550 5.5.2` (`"reject"`),
//! and a NUL is dropped or refused with `554 5.6.0` likewise,
//! so each attempt yields exactly one reply to the end of data, the smuggled
//! commands are never answered, and what reaches an upstream is one message
//! holding the smuggled text as content (or nothing), with CRLF line ends only
//! and every line-leading dot stuffed (RFC 5321 §2.3.8, §4.5.2).
//!
//! Upstreams (routed by sender domain):
//! - `smarthost sink` (the real binary): offers CHUNKING, so the relay sends
//!   `BDAT n LAST` (RFC 3030), where a "." line is plain content;
//! - Postfix's `smtp-sink`: no CHUNKING, so the relay sends DATA with
//!   dot-stuffing, read by an independent parser that takes a bare LF as a
//!   line end (what would split a leaked `\n.\n` into two messages).
//!
//! A tap between the relay and each upstream records the bytes the relay
//! sent, which are parsed here strictly (CRLF lines, a DATA section ends at
//! the first "." line, BDAT by count): what reached the upstream is checked
//! byte for byte, not only what the upstream made of it.
//!
//! Run time: a few seconds (the sessions of a mode run 16 at a time).

mod support;

use std::fs;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smarthost::spool::{Envelope, Spool};
use support::client::{Client, Reply, tls_session};
use support::envelope::envelope;
use support::harness::{Harness, Running, upstream_toml};
use support::message::crlf_to_lf;
use support::pki::TestCa;
use support::sink::{Sink, sidecar};
use support::smtp_sink::{SmtpSink, path_of};
use support::wait::{free_port, within};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RCPT: &str = "rcpt@partner.example";
const VICTIM: &str = "victim@partner.example";
/// Sender domain routed to `smarthost sink` (BDAT from the relay).
const VIA_SINK: &str = "via-sink.example";
/// Sender domain routed to Postfix's smtp-sink (DATA from the relay).
const VIA_POSTFIX: &str = "via-postfix.example";

/// One end-of-data lookalike.
struct Variant {
    name: &'static str,
    eod: &'static [u8],
    /// Holds a CR not followed by LF or an LF not preceded by CR, as sent
    /// (a letter before and after it): refused in reject mode.
    bare: bool,
}

const fn v(name: &'static str, eod: &'static [u8], bare: bool) -> Variant {
    Variant { name, eod, bare }
}

/// smtpsmug's set first (lflf, crcr, crlf, lfcr, lfcrlf, crlflf, crcrlf,
/// crlfcr, nullbefore, nullafter), then more from the research and its
/// follow-ups: smtp-proto 0.2.5's own `CRLF . CR CR LF`, doubled CRs,
/// whitespace or NUL around the dot, and stuffed dots.
const VARIANTS: &[Variant] = &[
    v("lf.lf", b"\n.\n", true),
    v("cr.cr", b"\r.\r", true),
    v("cr.lf", b"\r.\n", true),
    v("lf.cr", b"\n.\r", true),
    v("lf.crlf", b"\n.\r\n", true),
    v("crlf.lf", b"\r\n.\n", true),
    v("cr.crlf", b"\r.\r\n", true),
    v("crlf.cr", b"\r\n.\r", true),
    v("crlf-nul.crlf", b"\r\n\x00.\r\n", false),
    v("crlf.nul-crlf", b"\r\n.\x00\r\n", false),
    v("crlf.crcrlf", b"\r\n.\r\r\n", true),
    v("crcrlf.crcrlf", b"\r\r\n.\r\r\n", true),
    v("crlf-sp.crlf", b"\r\n .\r\n", false),
    v("crlf.sp-crlf", b"\r\n. \r\n", false),
    v("crlf-tab.crlf", b"\r\n\t.\r\n", false),
    v("crlf..crlf", b"\r\n..\r\n", false),
    v("lf..lf", b"\n..\n", true),
    v("lf.lf-crlf", b"\n.\n\r\n", true),
];

/// Whether `bytes` hold a CR not followed by LF or an LF not preceded by CR.
fn has_bare(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

#[test]
fn the_table_says_which_variants_hold_bare_line_endings() {
    for v in VARIANTS {
        // As sent: after a letter, before a letter.
        let mut sent = b"x".to_vec();
        sent.extend_from_slice(v.eod);
        sent.push(b'M');
        assert_eq!(has_bare(&sent), v.bare, "{}", v.name);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Normalize,
    Reject,
}

impl Mode {
    fn toml(self) -> &'static str {
        match self {
            Mode::Normalize => "normalize",
            Mode::Reject => "reject",
        }
    }

    /// The reply to the end of the message: one of them, exactly once. In
    /// normalize mode a NUL is dropped; in reject mode it is refused
    /// (RFC 3030 §3: no NUL without BINARYMIME).
    fn verdict(self, eod: &[u8], bare: bool) -> &'static str {
        match (self, bare) {
            (Mode::Reject, true) => "550 5.5.2",
            (Mode::Reject, false) if eod.contains(&0) => "554 5.6.0",
            _ => "250 2.0.0",
        }
    }
}

/// How the client sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Style {
    /// Everything after EHLO in one write, as a smuggler pipelines it.
    Pipelined,
    /// Each command waited for; the variant and the real end one byte per
    /// write (separate TLS records and TCP segments); the body line before
    /// the variant ends in CRLF (smtpsmug's framing).
    Segments,
    /// `BDAT n LAST` (RFC 3030): no end marker at all, the variant and the
    /// smuggled commands are counted content.
    Bdat,
    /// BDAT chunks cut at every byte of the variant: a CR ending one chunk
    /// and the LF starting the next are one CRLF, not two bare ones.
    BdatSplit,
}

/// One attempt: a variant, sent one way, routed to one upstream.
#[derive(Clone)]
struct Case {
    tag: String,
    domain: &'static str,
    eod: &'static [u8],
    bare: bool,
    style: Style,
}

impl Case {
    fn sender(&self) -> String {
        format!("sender@{}", self.domain)
    }

    fn evil(&self) -> String {
        format!("evil@{}", self.domain)
    }

    /// The outer message up to the variant.
    fn head(&self) -> Vec<u8> {
        let mut m = format!(
            "From: <{s}>\r\nTo: <{RCPT}>\r\nSubject: outer {t}\r\nMessage-ID: <{t}@{d}>\r\n\r\nouter body {t}",
            s = self.sender(),
            t = self.tag,
            d = self.domain
        )
        .into_bytes();
        if self.style == Style::Segments {
            m.extend_from_slice(b"\r\n");
        }
        m
    }

    /// What a server that took the variant as the end would run: a second
    /// transaction from a sender the client never used, to another
    /// recipient. Ends in CRLF; the real end follows.
    fn smuggled(&self) -> Vec<u8> {
        format!(
            "MAIL FROM:<{e}>\r\nRCPT TO:<{VICTIM}>\r\nDATA\r\nFrom: <{e}>\r\nTo: <{VICTIM}>\r\nSubject: smuggled {t}\r\n\r\nsmuggled body {t}\r\n",
            e = self.evil(),
            t = self.tag
        )
        .into_bytes()
    }

    /// The whole content after DATA's 354, without the final ".\r\n".
    fn content(&self) -> Vec<u8> {
        let mut m = self.head();
        m.extend_from_slice(self.eod);
        m.extend_from_slice(&self.smuggled());
        m
    }
}

fn cases(mode: Mode) -> Vec<Case> {
    let mut out = Vec::new();
    for v in VARIANTS {
        for style in [
            Style::Pipelined,
            Style::Segments,
            Style::Bdat,
            Style::BdatSplit,
        ] {
            for domain in [VIA_SINK, VIA_POSTFIX] {
                let up = if domain == VIA_SINK {
                    "sink"
                } else {
                    "postfix"
                };
                if style == Style::BdatSplit && v.eod.len() < 3 {
                    continue;
                }
                out.push(Case {
                    tag: format!("{}.{}.{style:?}.{up}", mode.toml(), v.name),
                    domain,
                    eod: v.eod,
                    bare: v.bare,
                    style,
                });
            }
        }
    }
    // In BDAT even the real end marker is content.
    for style in [Style::Bdat, Style::BdatSplit] {
        for domain in [VIA_SINK, VIA_POSTFIX] {
            let up = if domain == VIA_SINK {
                "sink"
            } else {
                "postfix"
            };
            out.push(Case {
                tag: format!("{}.crlf.crlf.{style:?}.{up}", mode.toml()),
                domain,
                eod: b"\r\n.\r\n",
                bare: false,
                style,
            });
        }
    }
    out
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Every reply until the server closes the connection.
async fn replies_to_eof<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) -> Vec<Reply> {
    let mut out = Vec::new();
    for _ in 0..50 {
        match c.try_reply().await {
            Some(r) => out.push(r),
            None => return out,
        }
    }
    panic!("more than 50 replies: {out:?}");
}

fn statuses(replies: &[Reply]) -> Vec<String> {
    replies.iter().map(Reply::status).collect()
}

/// Nothing arrives within `wait` (the server is still reading content).
async fn silent(c: &mut Client<Tls>, wait: Duration) -> Result<(), String> {
    match tokio::time::timeout(wait, c.try_reply()).await {
        Err(_) => Ok(()),
        Ok(r) => Err(format!("reply before the real end: {r:?}")),
    }
}

/// Runs one case over a fresh STARTTLS session; Err says what went wrong.
async fn run_case(relay: SocketAddr, ca: &TestCa, mode: Mode, case: &Case) -> Result<(), String> {
    let tcp = TcpStream::connect(relay).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).unwrap();
    let mut c = tls_session(Client::new(tcp), ca).await;
    let verdict = mode.verdict(case.eod, case.bare);
    let envelope = format!("MAIL FROM:<{}>\r\nRCPT TO:<{RCPT}>\r\n", case.sender());
    match case.style {
        Style::Pipelined => {
            let mut all = envelope.into_bytes();
            all.extend_from_slice(b"DATA\r\n");
            all.extend_from_slice(&case.content());
            all.extend_from_slice(b".\r\nQUIT\r\n");
            c.send(&all).await;
            let got = statuses(&replies_to_eof(&mut c).await);
            let want = ["250 2.1.0", "250 2.1.5", "354 Start", verdict, "221 2.0.0"];
            if got != want {
                return Err(format!("replies {got:?}, want {want:?}"));
            }
        }
        Style::Bdat => {
            let content = case.content();
            let mut all = envelope.into_bytes();
            all.extend_from_slice(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
            all.extend_from_slice(&content);
            all.extend_from_slice(b"QUIT\r\n");
            c.send(&all).await;
            let got = statuses(&replies_to_eof(&mut c).await);
            let want = ["250 2.1.0", "250 2.1.5", verdict, "221 2.0.0"];
            if got != want {
                return Err(format!("replies {got:?}, want {want:?}"));
            }
        }
        Style::BdatSplit => {
            // Chunks: up to the variant, each of its bytes, the rest.
            let head = case.head();
            let mut chunks = vec![head.clone()];
            chunks.extend(case.eod.iter().map(|&b| vec![b]));
            chunks.push(case.smuggled());
            c.send(envelope).await;
            c.expect("250 2.1.0").await;
            c.expect("250 2.1.5").await;
            for (i, chunk) in chunks.iter().enumerate() {
                let last = i + 1 == chunks.len();
                let mut bytes = format!(
                    "BDAT {}{}\r\n",
                    chunk.len(),
                    if last { " LAST" } else { "" }
                )
                .into_bytes();
                bytes.extend_from_slice(chunk);
                c.send(&bytes).await;
                let r = c.reply().await;
                // RFC 3030 §2: a refusal known early is said for that chunk
                // and each later one; the transaction ends with LAST.
                let ok = if last {
                    r.status() == verdict
                } else {
                    r.status() == "250 2.0.0" || r.status() == verdict
                };
                if !ok {
                    return Err(format!("chunk {i} of {}: {:?}", chunks.len(), r.lines));
                }
            }
            let r = c.cmd("NOOP", "250").await;
            if r.status() != "250 2.0.0" {
                return Err(format!("reply to NOOP: {:?}", r.lines));
            }
            c.send(b"QUIT\r\n").await;
            let got = statuses(&replies_to_eof(&mut c).await);
            if got != ["221 2.0.0"] {
                return Err(format!("replies to QUIT {got:?}"));
            }
        }
        Style::Segments => {
            c.cmd(&format!("MAIL FROM:<{}>", case.sender()), "250 2.1.0")
                .await;
            c.cmd(&format!("RCPT TO:<{RCPT}>"), "250 2.1.5").await;
            c.cmd("DATA", "354").await;
            c.send(case.head()).await;
            for &b in case.eod {
                c.send([b]).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // smtpsmug's test: a server that took the variant as the end
            // answers now.
            silent(&mut c, Duration::from_millis(300)).await?;
            c.send(case.smuggled()).await;
            silent(&mut c, Duration::from_millis(100)).await?;
            for &b in b".\r\n" {
                c.send([b]).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let r = c.reply().await;
            if r.status() != verdict {
                return Err(format!("verdict {:?}, want {verdict}", r.lines));
            }
            // The next reply is NOOP's: nothing smuggled was answered.
            let r = c.cmd("NOOP", "250").await;
            if r.status() != "250 2.0.0" || !r.text().contains("Ok") {
                return Err(format!("reply to NOOP: {:?}", r.lines));
            }
            c.send(b"QUIT\r\n").await;
            let got = statuses(&replies_to_eof(&mut c).await);
            if got != ["221 2.0.0"] {
                return Err(format!("replies to QUIT {got:?}"));
            }
        }
    }
    Ok(())
}

/// Runs every case, `parallel` sessions at a time; returns the failures.
async fn run_all(relay: SocketAddr, h: &Arc<Harness>, mode: Mode, cases: &[Case]) -> Vec<String> {
    let permits = Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    let mut tags = std::collections::HashMap::new();
    for case in cases.iter().cloned() {
        let (h, permits) = (h.clone(), permits.clone());
        let tag = case.tag.clone();
        let task = set.spawn(async move {
            let _p = permits.acquire_owned().await.unwrap();
            let r =
                tokio::time::timeout(Duration::from_secs(60), run_case(relay, &h.ca, mode, &case))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
            r.err().map(|e| format!("{}: {e}", case.tag))
        });
        tags.insert(task.id(), tag);
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next_with_id().await {
        match r {
            Ok((_, Some(f))) => failures.push(f),
            Ok((_, None)) => {}
            // A panic in the client (e.g. no reply within 10 s).
            Err(e) => failures.push(format!("{}: {e}", tags[&e.id()])),
        }
    }
    failures.sort();
    failures
}

// ------------------------------------------------------------------ the tap

/// Bytes one connection carried, appended as they pass.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A TCP forwarder between the relay and an upstream that records, per
/// connection, every byte the relay sent.
struct Tap {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<Recording>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    async fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let record = streams.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let log: Recording = Arc::default();
                record.lock().unwrap().push(log.clone());
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut down_r, mut down_w) = down.into_split();
                    let (mut up_r, mut up_w) = up.into_split();
                    let replies = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
                        let _ = down_w.shutdown().await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = down_r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        if up_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = up_w.shutdown().await;
                    let _ = replies.await;
                });
            }
        });
        Tap {
            addr,
            streams,
            task,
        }
    }

    fn upstream(&self, name: &str) -> String {
        upstream_toml(name, self.addr, "none")
    }

    /// What the relay sent, one entry per connection.
    fn streams(&self) -> Vec<Vec<u8>> {
        self.streams
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }

    /// Every transaction the relay sent, parsed strictly.
    fn transactions(&self) -> Vec<WireTxn> {
        let mut out = Vec::new();
        for (i, s) in self.streams().iter().enumerate() {
            match parse_wire(s) {
                Ok(t) => out.extend(t),
                Err(e) => panic!(
                    "connection {i} to the upstream: {e}\n{}",
                    String::from_utf8_lossy(s).escape_debug()
                ),
            }
        }
        out
    }
}

/// One transaction as the relay put it on the wire.
#[derive(Debug)]
struct WireTxn {
    mail: String,
    rcpts: Vec<String>,
    /// After unstuffing (DATA) or as counted (BDAT).
    content: Vec<u8>,
    bdat: bool,
}

/// Where `bytes` hold a bare CR or LF, if anywhere.
fn bare_at(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&i| match bytes[i] {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

/// Reads what a client sent as a strict RFC 5321 server would: CRLF lines
/// only; DATA content ends at the first line that is exactly "." and every
/// other line that starts with "." must be stuffed (§4.5.2: a sender doubles
/// every leading dot, so a single one means the sender did not stuff);
/// BDAT takes its count of bytes. Stops at an incomplete last line.
fn parse_wire(bytes: &[u8]) -> Result<Vec<WireTxn>, String> {
    if let Some(i) = bare_at(bytes) {
        let from = i.saturating_sub(40);
        return Err(format!(
            "bare CR or LF at byte {i}: {:?}",
            String::from_utf8_lossy(&bytes[from..(i + 40).min(bytes.len())])
        ));
    }
    let line_at = |pos: usize| -> Option<(&[u8], usize)> {
        let n = memchr_crlf(&bytes[pos..])?;
        Some((&bytes[pos..pos + n], pos + n + 2))
    };
    let mut txns = Vec::new();
    let mut cur: Option<WireTxn> = None;
    let mut pos = 0;
    while let Some((line, next)) = line_at(pos) {
        pos = next;
        let text = String::from_utf8_lossy(line).into_owned();
        let upper = text.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or_default().to_owned();
        if upper.starts_with("MAIL FROM:") {
            if cur.is_some() {
                return Err(format!("MAIL inside a transaction: {text}"));
            }
            cur = Some(WireTxn {
                mail: path_of(&text["MAIL FROM:".len()..]),
                rcpts: Vec::new(),
                content: Vec::new(),
                bdat: false,
            });
        } else if upper.starts_with("RCPT TO:") {
            let t = cur.as_mut().ok_or("RCPT without MAIL")?;
            t.rcpts.push(path_of(&text["RCPT TO:".len()..]));
        } else if upper == "DATA" {
            let mut t = cur.take().ok_or("DATA without MAIL")?;
            loop {
                let (l, next) = line_at(pos).ok_or("DATA content without its end")?;
                pos = next;
                if l == b"." {
                    break;
                }
                let l = match l.strip_prefix(b".") {
                    Some(rest) if rest.starts_with(b".") => rest,
                    Some(_) => {
                        return Err(format!(
                            "unstuffed leading dot: {:?}",
                            String::from_utf8_lossy(l)
                        ));
                    }
                    None => l,
                };
                t.content.extend_from_slice(l);
                t.content.extend_from_slice(b"\r\n");
            }
            txns.push(t);
        } else if verb == "BDAT" {
            let mut words = upper.split_whitespace().skip(1);
            let size: usize = words
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad BDAT: {text}"))?;
            let last = words.next() == Some("LAST");
            let t = cur.as_mut().ok_or("BDAT without MAIL")?;
            t.bdat = true;
            let chunk = bytes.get(pos..pos + size).ok_or("BDAT chunk cut short")?;
            t.content.extend_from_slice(chunk);
            pos += size;
            if last {
                txns.push(cur.take().unwrap());
            }
        } else if verb == "RSET" {
            cur = None;
        } else if !["EHLO", "HELO", "NOOP", "QUIT"].contains(&verb.as_str()) {
            return Err(format!("unexpected command {text:?}"));
        }
    }
    Ok(txns)
}

fn memchr_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

// ------------------------------------------------------------------ the rig

/// Both upstreams, each behind a tap, and a relay routing to them.
struct Rig {
    h: Arc<Harness>,
    relay: Running,
    sink: Sink,
    sink_tap: Tap,
    postfix: SmtpSink,
    postfix_tap: Tap,
    _base: tempfile::TempDir,
}

impl Rig {
    /// `preload` is spooled before the relay starts.
    async fn start(mode: Mode, preload: &[(Envelope, Vec<u8>)]) -> Rig {
        let base = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(base.path(), "sink");
        sink.start().await;
        let postfix = SmtpSink::start(free_port(), &[]).await;
        let sink_tap = Tap::start(([127, 0, 0, 1], sink.port).into()).await;
        let postfix_tap = Tap::start(postfix.addr()).await;
        let h = Harness::new(&format!(
            "retry_min = \"1s\"\nretry_max = \"1s\"\n\n\
             [limits]\nbare_line_endings = \"{}\"\n\n{}{}\
             [[route]]\nsender_domains = [\"{VIA_SINK}\"]\nupstreams = [\"sink\"]\n\n\
             [[route]]\nsender_domains = [\"{VIA_POSTFIX}\"]\nupstreams = [\"postfix\"]\n",
            mode.toml(),
            sink_tap.upstream("sink"),
            postfix_tap.upstream("postfix"),
        ));
        if !preload.is_empty() {
            let spool = Spool::open(&h.spool_dir()).unwrap();
            for (envelope, message) in preload {
                spool.store(envelope, message.clone()).await.unwrap();
            }
        }
        let relay = h.start().await;
        Rig {
            h: Arc::new(h),
            relay,
            sink,
            sink_tap,
            postfix,
            postfix_tap,
            _base: base,
        }
    }

    /// Waits until the queue is empty and each upstream holds `want` messages.
    async fn delivered(&self, want_sink: usize, want_postfix: usize) {
        for _ in 0..1200 {
            // A bare line ending on the wire fails at once, with the bytes.
            for tap in [&self.sink_tap, &self.postfix_tap] {
                if tap.streams().iter().any(|s| bare_at(s).is_some()) {
                    tap.transactions();
                }
            }
            if self.h.spool_files() == 0
                && self.sink.count() >= want_sink
                && self.postfix.dumps().len() >= want_postfix
            {
                // Anything more (a duplicate, a second message) would show by now.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "not delivered within 60 s: spool {} files, sink {}/{want_sink}, smtp-sink {}/{want_postfix}",
            self.h.spool_files(),
            self.sink.count(),
            self.postfix.dumps().len()
        );
    }

    /// What each upstream got, from every vantage point: (wire, stored).
    /// For the sink the stored bytes are exact; for smtp-sink they have LF
    /// line ends and are compared as such.
    fn sink_messages(&self) -> Vec<(String, Vec<String>, Vec<u8>)> {
        self.sink
            .files()
            .iter()
            .map(|eml| {
                let json = sidecar(eml);
                let rcpts = json["rcpt_to"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect();
                (
                    json["mail_from"].as_str().unwrap().to_owned(),
                    rcpts,
                    fs::read(eml).unwrap(),
                )
            })
            .collect()
    }
}

// ------------------------------------------------------------ verification

/// (envelope sender, envelope recipients, message) as one vantage point saw
/// a message.
type Seen = (String, Vec<String>, Vec<u8>);

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn accepted(mode: Mode, case: &Case) -> bool {
    mode.verdict(case.eod, case.bare).starts_with("250")
}

/// One vantage point: exactly one message per accepted case, from its sender
/// to RCPT only, holding the smuggled commands as content lines; nothing for
/// a refused case; no bare CR or LF (`lf`: the view has LF line ends, as
/// smtp-sink's dumps do, and bare ones cannot be told apart there).
fn check_view(view: &str, seen: &[Seen], cases: &[&Case], mode: Mode, lf: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let want = cases.iter().filter(|c| accepted(mode, c)).count();
    if seen.len() != want {
        errs.push(format!("{view}: {} messages, want {want}", seen.len()));
    }
    for (mail, rcpts, body) in seen {
        if rcpts != &[RCPT] || !mail.starts_with("sender@") {
            errs.push(format!("{view}: envelope {mail} -> {rcpts:?}"));
        }
        if let Some(i) = bare_at(body).filter(|_| !lf) {
            errs.push(format!("{view}: bare CR or LF at {i} of a message"));
        }
        if let Some(i) = body.iter().position(|&b| b == 0) {
            errs.push(format!("{view}: NUL at {i} of a message"));
        }
    }
    let nl = if lf { "\n" } else { "\r\n" };
    for case in cases {
        let marker = format!("Message-ID: <{}@", case.tag);
        let holding: Vec<&Seen> = seen
            .iter()
            .filter(|(_, _, b)| contains(b, marker.as_bytes()))
            .collect();
        if !accepted(mode, case) {
            if !holding.is_empty() {
                errs.push(format!("{view}: {}: refused, yet delivered", case.tag));
            }
            continue;
        }
        let [(mail, _, body)] = holding.as_slice() else {
            errs.push(format!(
                "{view}: {}: delivered {} times",
                case.tag,
                holding.len()
            ));
            continue;
        };
        if *mail != case.sender() {
            errs.push(format!("{view}: {}: sender {mail}", case.tag));
        }
        let smuggled = format!(
            "{nl}MAIL FROM:<{}>{nl}RCPT TO:<{VICTIM}>{nl}DATA{nl}",
            case.evil()
        );
        let tail = format!("smuggled body {}{nl}", case.tag);
        if !contains(body, smuggled.as_bytes()) || !body.ends_with(tail.as_bytes()) {
            errs.push(format!(
                "{view}: {}: the smuggled transaction is not content lines of the message: {:?}",
                case.tag,
                String::from_utf8_lossy(body)
            ));
        }
    }
    errs
}

/// Every vantage point of both upstreams; the list of what is wrong.
fn verify(rig: &Rig, mode: Mode, cases: &[Case]) -> Vec<String> {
    let mut errs = Vec::new();
    let of = |d: &str| -> Vec<&Case> { cases.iter().filter(|c| c.domain == d).collect() };
    let (to_sink, to_postfix) = (of(VIA_SINK), of(VIA_POSTFIX));
    let wire = |tap: &Tap, bdat: bool, errs: &mut Vec<String>| -> Vec<Seen> {
        tap.transactions()
            .into_iter()
            .map(|t| {
                if t.bdat != bdat {
                    errs.push(format!("sent with BDAT: {}, want {bdat}", t.bdat));
                }
                (t.mail, t.rcpts, t.content)
            })
            .collect()
    };

    // smarthost sink: the relay sends BDAT; the sink stores the exact bytes.
    let sink_wire = wire(&rig.sink_tap, true, &mut errs);
    errs.extend(check_view(
        "wire to sink",
        &sink_wire,
        &to_sink,
        mode,
        false,
    ));
    let stored: Vec<Seen> = rig
        .sink_messages()
        .into_iter()
        .map(|(m, r, b)| (path_of(&m), r.iter().map(|r| path_of(r)).collect(), b))
        .collect();
    errs.extend(check_view("sink", &stored, &to_sink, mode, false));
    let mut a: Vec<&Vec<u8>> = sink_wire.iter().map(|s| &s.2).collect();
    let mut b: Vec<&Vec<u8>> = stored.iter().map(|s| &s.2).collect();
    a.sort();
    b.sort();
    if a != b {
        errs.push("the sink stored other bytes than the relay sent".into());
    }

    // Postfix smtp-sink: the relay sends DATA, dot-stuffed.
    let postfix_wire = wire(&rig.postfix_tap, false, &mut errs);
    errs.extend(check_view(
        "wire to smtp-sink",
        &postfix_wire,
        &to_postfix,
        mode,
        false,
    ));
    let dumps: Vec<Seen> = rig
        .postfix
        .dumps()
        .into_iter()
        .map(|d| (d.mail(), d.rcpts(), d.message))
        .collect();
    errs.extend(check_view("smtp-sink", &dumps, &to_postfix, mode, true));
    let mut a: Vec<Vec<u8>> = postfix_wire.iter().map(|s| crlf_to_lf(&s.2)).collect();
    let mut b: Vec<Vec<u8>> = dumps.iter().map(|s| s.2.clone()).collect();
    a.sort();
    b.sort();
    if a != b {
        errs.push("smtp-sink read other messages than the relay sent".into());
    }
    // smtp-sink's own command log: one MAIL per message, nothing smuggled.
    let commands = rig.postfix.commands();
    let mails = commands
        .iter()
        .filter(|c| c.starts_with("MAIL FROM:"))
        .count();
    if mails != dumps.len() {
        errs.push(format!("smtp-sink read {mails} MAIL commands"));
    }
    if let Some(c) = commands
        .iter()
        .find(|c| c.contains("evil@") || c.contains(VICTIM))
    {
        errs.push(format!("smtp-sink ran a smuggled command: {c}"));
    }
    errs
}

/// One line per variant for the log: the reply each session got (asserted
/// above) and the messages that arrived, counted at each upstream.
fn table(rig: &Rig, mode: Mode, cases: &[Case]) {
    let sink = rig.sink_messages();
    let dumps = rig.postfix.dumps();
    let mut names: Vec<(&str, &[u8], bool)> =
        VARIANTS.iter().map(|v| (v.name, v.eod, v.bare)).collect();
    names.push(("crlf.crlf (BDAT)", b"\r\n.\r\n", false));
    for (name, eod, bare) in names {
        let mine: Vec<&Case> = cases.iter().filter(|c| c.eod == eod).collect();
        let held = |body: &[u8]| {
            mine.iter()
                .any(|c| contains(body, format!("Message-ID: <{}@", c.tag).as_bytes()))
        };
        let at_sink = sink.iter().filter(|m| held(&m.2)).count();
        let at_postfix = dumps.iter().filter(|d| held(&d.message)).count();
        let per = |d: &str| mine.iter().filter(|c| c.domain == d).count();
        eprintln!(
            "{:<9} {:<17} {:<22} reply {} | sink {at_sink}/{} msgs | smtp-sink {at_postfix}/{} msgs",
            mode.toml(),
            name,
            format!("{:?}", String::from_utf8_lossy(eod)),
            mode.verdict(eod, bare),
            per(VIA_SINK),
            per(VIA_POSTFIX),
        );
    }
}

async fn corpus(mode: Mode) {
    within(300, async {
        let started = std::time::Instant::now();
        let rig = Rig::start(mode, &[]).await;
        let cases = cases(mode);
        let failures = run_all(rig.relay.addr(), &rig.h, mode, &cases).await;
        assert!(
            failures.is_empty(),
            "{} of {} sessions went wrong:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        let count = |d: &str| {
            cases
                .iter()
                .filter(|c| c.domain == d && accepted(mode, c))
                .count()
        };
        rig.delivered(count(VIA_SINK), count(VIA_POSTFIX)).await;
        let errs = verify(&rig, mode, &cases);
        assert!(errs.is_empty(), "{}", errs.join("\n"));
        table(&rig, mode, &cases);
        eprintln!("{} sessions in {:?}", cases.len(), started.elapsed());
        let Rig { relay, .. } = rig;
        relay.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_variant_is_one_message_when_normalising() {
    corpus(Mode::Normalize).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_variant_with_a_bare_line_ending_is_refused_in_reject_mode() {
    corpus(Mode::Reject).await;
}

// ----------------------------------------------------------------- outbound

/// (name, the body as stored in the spool, the body as it must reach an
/// upstream). Inbound normalisation keeps bare CR/LF out of the spool, but
/// the outbound side must not rely on it (a spool written by an older
/// version, by hand, or by a bug): every bare CR or LF goes out as CRLF, and
/// every "." line is stuffed, so no upstream can see a second message.
const STORED: &[(&str, &str, &str)] = &[
    (
        "lf.lf",
        "x\n.\nMAIL FROM:<EVIL>\nRCPT TO:<victim@partner.example>\nDATA\n\nsmuggled\n.\n",
        "x\r\n.\r\nMAIL FROM:<EVIL>\r\nRCPT TO:<victim@partner.example>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n",
    ),
    (
        "cr.cr",
        "x\r.\rMAIL FROM:<EVIL>\rRCPT TO:<victim@partner.example>\rDATA\r\rsmuggled\r.\r",
        "x\r\n.\r\nMAIL FROM:<EVIL>\r\nRCPT TO:<victim@partner.example>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n",
    ),
    (
        "lf.crlf",
        "x\n.\r\nMAIL FROM:<EVIL>\r\n",
        "x\r\n.\r\nMAIL FROM:<EVIL>\r\n",
    ),
    (
        "crlf.crcrlf",
        "x\r\n.\r\r\nMAIL FROM:<EVIL>\r\n",
        "x\r\n.\r\n\r\nMAIL FROM:<EVIL>\r\n",
    ),
    (
        "crlf.crlf (a legitimately stored dot line)",
        "x\r\n.\r\nMAIL FROM:<EVIL>\r\n..\r\n.\r\n",
        "x\r\n.\r\nMAIL FROM:<EVIL>\r\n..\r\n.\r\n",
    ),
    ("ends in crlf.cr", "x\r\n.\r", "x\r\n.\r\n"),
    ("ends in a dot, no line end", "x\r\n.", "x\r\n.\r\n"),
];

#[tokio::test(flavor = "multi_thread")]
async fn stored_bare_line_endings_go_out_as_one_message_each() {
    within(120, async {
        let mut preload = Vec::new();
        let mut expected: Vec<(&str, Vec<u8>)> = Vec::new();
        for (i, (name, stored, out)) in STORED.iter().enumerate() {
            for domain in [VIA_SINK, VIA_POSTFIX] {
                let header =
                    format!("Subject: stored {name}\r\nMessage-ID: <stored.{i}@{domain}>\r\n\r\n");
                let evil = format!("evil@{domain}");
                let message = format!("{header}{}", stored.replace("EVIL", &evil)).into_bytes();
                expected.push((
                    domain,
                    format!("{header}{}", out.replace("EVIL", &evil)).into_bytes(),
                ));
                let envelope = Envelope {
                    size: message.len() as u64,
                    ..envelope(&format!("sender@{domain}"), &[RCPT])
                };
                preload.push((envelope, message));
            }
        }
        let rig = Rig::start(Mode::Normalize, &preload).await;
        rig.delivered(STORED.len(), STORED.len()).await;
        let sorted = |mut v: Vec<Vec<u8>>| {
            v.sort();
            v
        };
        let want = |d: &str| {
            sorted(
                expected
                    .iter()
                    .filter(|(dom, _)| *dom == d)
                    .map(|(_, m)| m.clone())
                    .collect(),
            )
        };
        let show = |v: &[Vec<u8>]| -> Vec<String> {
            v.iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect()
        };
        // On the wire (parsed strictly: CRLF only, stuffed dots), as stored
        // by the sink, and as smtp-sink read it: exactly the canonical bytes.
        for (tap, bdat, d) in [
            (&rig.sink_tap, true, VIA_SINK),
            (&rig.postfix_tap, false, VIA_POSTFIX),
        ] {
            let txns = tap.transactions();
            assert!(
                txns.iter().all(|t| t.bdat == bdat
                    && t.mail == format!("sender@{d}")
                    && t.rcpts == [RCPT]),
                "{txns:?}"
            );
            let got = sorted(txns.into_iter().map(|t| t.content).collect());
            assert_eq!(show(&got), show(&want(d)), "on the wire to {d}");
        }
        let stored = sorted(rig.sink_messages().into_iter().map(|m| m.2).collect());
        assert_eq!(show(&stored), show(&want(VIA_SINK)), "stored by the sink");
        let dumps = rig.postfix.dumps();
        assert!(dumps.iter().all(|d| d.rcpts() == [RCPT]), "{dumps:?}");
        let read = sorted(dumps.into_iter().map(|d| d.message).collect());
        let lf = sorted(want(VIA_POSTFIX).iter().map(|m| crlf_to_lf(m)).collect());
        assert_eq!(show(&read), show(&lf), "read by smtp-sink");
        let mails = rig
            .postfix
            .commands()
            .iter()
            .filter(|c| c.starts_with("MAIL FROM:"))
            .count();
        assert_eq!(mails, STORED.len(), "{:?}", rig.postfix.commands());
        let Rig { relay, .. } = rig;
        relay.stop().await;
    })
    .await
}
