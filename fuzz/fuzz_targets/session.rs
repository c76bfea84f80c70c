#![no_main]
//! One inbound SMTP session (`session::Session`) over an in-memory pipe, in
//! plaintext, across STARTTLS (a real rustls handshake) and inside TLS, with
//! AUTH offered, against a real spool.
//!
//! Input: byte 0 picks the listener (bit 0: TLS required, bit 1: implicit
//! TLS, bit 2: bare line endings refused instead of normalised, bit 3: the
//! client is outside the relay networks, so it must AUTH). The rest is split
//! at each `~~\n` into segments, sent one at a time once the session has
//! answered the previous one (so "packets" are part of the input). When the
//! session has just answered `220 2.0.0` to STARTTLS, the client does the TLS
//! handshake and the following segments go inside TLS. After the last
//! segment the client closes its side and reads to the end.
//!
//! Time is tokio's paused clock: every timeout and AUTH delay is real to the
//! session but costs nothing, and a session stuck with no timer left would
//! hang the target (libFuzzer's -timeout reports it).
//!
//! Properties: no panic; the session ends once the client has closed; every
//! reply line is well-formed (three digits, the first 2 to 5, then space or
//! hyphen, CRLF-terminated, at most 512 bytes, one code per reply); nothing
//! follows `220 2.0.0` to STARTTLS in plaintext; each `250 ... queued as ID`
//! is exactly one message in the spool, and the spool holds nothing else; a
//! spooled message reads back consistent (envelope, size, CRLF only, no NUL,
//! within the recipient limit) and no temporary file is left behind; no
//! message is accepted from outside the relay networks without AUTH, without
//! TLS where it is required, or with AUTH outside TLS; what an upstream reads
//! for a spooled message's MAIL and RCPTs (as the outbound client writes
//! them) parses back to the very mailboxes and parameters the relay's
//! policy judged, and that sender passes the sender-domain rules.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use smarthost::address::{Mailbox, Path as MailPath};
use smarthost::config::{Config, ListenerConfig, ListenerTls};
use smarthost::outbound::Capabilities;
use smarthost::outbound::client::{mail_command, rcpt_command, wire_path};
use smarthost::policy;
use smarthost::session::command::{self, Parsed};
use smarthost::session::notify_keywords;
use smarthost::spool::Envelope;
use smtp_proto::{MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8};
use smarthost::ServerContext;
use smarthost::session::Session;
use smarthost::spool::Spool;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

const SPLIT: &[u8] = b"~~\n";
const HOSTNAME: &str = "relay.test";
/// The client waits this long (paused time) for more replies before sending
/// its next segment: longer than the longest AUTH delay (30 s), much shorter
/// than command_timeout, so a quiet session is a session waiting for input.
const SETTLE: Duration = Duration::from_secs(100);
/// After the client closes, the session must be gone within this (paused) time.
const END_WITHIN: Duration = Duration::from_secs(24 * 3600);
/// Contexts are rebuilt this often: each keeps every queued id in an
/// unbounded channel nobody drains here.
const REBUILD_EVERY: u64 = 4096;
const MAX_MESSAGE_SIZE: usize = 2048;
const MAX_RECIPIENTS: usize = 3;
/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
const MAX_REPLY_LINE: usize = 512;

struct World {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    /// Indexed by `bare_line_endings = "reject"`.
    contexts: [Arc<ServerContext>; 2],
    client_tls: Arc<rustls::ClientConfig>,
    runs: u64,
}

fn world() -> &'static Mutex<World> {
    static WORLD: OnceLock<Mutex<World>> = OnceLock::new();
    WORLD.get_or_init(|| Mutex::new(World::new()))
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("smarthost-fuzz-")
            .tempdir()
            .unwrap()
            .keep();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = rcgen::CertificateParams::new(vec![HOSTNAME.into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(
            dir.join("server.crt"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client_tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(smarthost::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let contexts = Self::contexts(&rt, &dir);
        World {
            rt,
            dir,
            contexts,
            client_tls,
            runs: 0,
        }
    }

    fn contexts(rt: &tokio::runtime::Runtime, dir: &Path) -> [Arc<ServerContext>; 2] {
        // Cheap argon2 parameters: a right password costs microseconds.
        let hash = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let params = argon2::Params::new(8, 1, 1, None).unwrap();
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(
                    b"secret",
                    &SaltString::from_b64("c21hcnRob3N0ZnV6eg").unwrap(),
                )
                .unwrap()
                .to_string()
        };
        let _guard = rt.enter();
        [false, true].map(|reject| {
            let mode = if reject { "reject" } else { "normalize" };
            let text = format!(
                r#"hostname = "{HOSTNAME}"
[[listener]]
address = "127.0.0.1:0"
tls = "starttls"

[tls]
certificate = "server.crt"
private_key = "server.key"

[access]
relay_networks = ["127.0.0.0/8"]
sender_domains = ["contoso.com", "b.example", "b"]

[queue]
path = "spool-{mode}"

[limits]
max_message_size = {MAX_MESSAGE_SIZE}
max_recipients = {MAX_RECIPIENTS}
max_errors = 5
max_auth_failures = 2
command_timeout = "5m"
data_timeout = "5m"
bare_line_endings = "{mode}"

[[user]]
name = "user@example.com"
password_hash = "{hash}"
"#
            );
            let config =
                Config::parse(&text, &dir.join("smarthost.toml")).unwrap_or_else(|e| panic!("{e}"));
            ServerContext::new(config).unwrap().0
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, input @ ..] = data else {
        return;
    };
    let mut world = world().lock().unwrap_or_else(|e| e.into_inner());
    world.runs += 1;
    if world.runs.is_multiple_of(REBUILD_EVERY) {
        world.contexts = World::contexts(&world.rt, &world.dir);
    }
    let reject = flags & 4 != 0;
    let ctx = world.contexts[reject as usize].clone();
    let listener = ListenerConfig {
        address: "127.0.0.1:25".parse().unwrap(),
        tls: if flags & 2 != 0 {
            ListenerTls::Implicit
        } else {
            ListenerTls::Starttls
        },
        require_tls: flags & 1 != 0,
        proxy_protocol: false,
    };
    let peer: SocketAddr = if flags & 8 != 0 {
        "192.0.2.9:40000".parse().unwrap()
    } else {
        "127.0.0.1:40000".parse().unwrap()
    };
    let segments: Vec<&[u8]> = split(input);
    // The relay's own spool: a message in the journal is closed there.
    let spool = &ctx.spool;
    assert!(
        spool.list().unwrap().is_empty(),
        "spool not empty before the run"
    );

    let client_tls = world.client_tls.clone();
    let transcript = world
        .rt
        .block_on(drive(ctx.clone(), listener, peer, segments, client_tls));

    if std::env::var_os("SMARTHOST_FUZZ_SHOW").is_some() {
        // For reading one input's run: SMARTHOST_FUZZ_SHOW=1 ./session FILE
        eprintln!("{}", String::from_utf8_lossy(&transcript.plain));
        eprintln!("-- TLS --\n{}", String::from_utf8_lossy(&transcript.tls));
    }
    let queued = check_replies(&transcript);
    let must = Must {
        peer,
        tls: flags & 3 != 0,
        auth: flags & 8 != 0,
    };
    check_spool(&ctx, spool, &queued, &must);
});

fn split(input: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(i) = rest.windows(SPLIT.len()).position(|w| w == SPLIT) {
        out.push(&rest[..i]);
        rest = &rest[i + SPLIT.len()..];
    }
    out.push(rest);
    out
}

/// What the client saw: the reply bytes received in plaintext and in TLS.
struct Transcript {
    plain: Vec<u8>,
    tls: Vec<u8>,
}

enum Conn {
    Plain(DuplexStream),
    Tls(Box<tokio_rustls::client::TlsStream<DuplexStream>>),
}

impl Conn {
    fn io(&mut self) -> &mut (dyn Io + '_) {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.as_mut(),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

async fn drive(
    ctx: Arc<ServerContext>,
    listener: ListenerConfig,
    peer: SocketAddr,
    segments: Vec<&[u8]>,
    client_tls: Arc<rustls::ClientConfig>,
) -> Transcript {
    let implicit = listener.tls == ListenerTls::Implicit;
    // Large enough for any input: writes never wait for the session to read.
    let (client, server) = tokio::io::duplex(1 << 20);
    let session = Session::new(
        ctx,
        listener,
        peer,
        Box::new(server),
        CancellationToken::new(),
    );
    let task = tokio::spawn(session.run());
    let mut t = Transcript {
        plain: Vec::new(),
        tls: Vec::new(),
    };
    let mut conn = Conn::Plain(client);
    let mut open = true;
    if implicit {
        conn = handshake(conn, &client_tls).await;
    }
    open &= settle(&mut conn, &mut t).await;
    for segment in segments {
        if !open {
            break;
        }
        let io = conn.io();
        if io.write_all(segment).await.is_err() || io.flush().await.is_err() {
            break;
        }
        open &= settle(&mut conn, &mut t).await;
        if matches!(conn, Conn::Plain(_)) && t.plain.ends_with(b"220 2.0.0 Ready to start TLS\r\n")
        {
            conn = handshake(conn, &client_tls).await;
            open &= settle(&mut conn, &mut t).await;
        }
    }
    // Close our side, then everything the session still says, to its end.
    let _ = conn.io().shutdown().await;
    let rest = tokio::time::timeout(END_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            let read = conn.io().read(&mut buf).await;
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => t.out(&conn).extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        rest.is_ok(),
        "session still talking a day after the client closed"
    );
    tokio::time::timeout(END_WITHIN, task)
        .await
        .expect("session did not end after the client closed")
        .expect("session task panicked");
    t
}

impl Transcript {
    fn out(&mut self, conn: &Conn) -> &mut Vec<u8> {
        match conn {
            Conn::Plain(_) => &mut self.plain,
            Conn::Tls(_) => &mut self.tls,
        }
    }
}

/// Reads replies until the session has been quiet for `SETTLE`. False once
/// the session has closed the connection.
async fn settle(conn: &mut Conn, t: &mut Transcript) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(SETTLE, conn.io().read(&mut buf)).await;
        match read {
            Err(_) => return true,
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => t.out(conn).extend_from_slice(&buf[..n]),
        }
    }
}

/// The client side of the TLS handshake; the session said it is ready, so a
/// failure is a bug.
async fn handshake(conn: Conn, config: &Arc<rustls::ClientConfig>) -> Conn {
    let Conn::Plain(plain) = conn else {
        panic!("handshake inside TLS");
    };
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from(HOSTNAME).unwrap();
    let tls = connector
        .connect(name, plain)
        .await
        .expect("TLS handshake with the session");
    Conn::Tls(Box::new(tls))
}

/// Checks every reply line; returns the ids of the messages said to be queued.
fn check_replies(t: &Transcript) -> BTreeSet<String> {
    const READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
    if let Some(at) = find(&t.plain, READY) {
        assert_eq!(
            at + READY.len(),
            t.plain.len(),
            "plaintext after 220 to STARTTLS: {:?}",
            String::from_utf8_lossy(&t.plain[at..])
        );
    }
    let mut queued = BTreeSet::new();
    for stream in [&t.plain, &t.tls] {
        assert!(
            stream.is_empty() || stream.ends_with(b"\r\n"),
            "reply cut short: {:?}",
            String::from_utf8_lossy(&stream[stream.len().saturating_sub(200)..])
        );
        let mut code: Option<&[u8]> = None;
        for line in stream.split_inclusive(|&b| b == b'\n') {
            let show = || String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
            assert!(
                line.len() <= MAX_REPLY_LINE,
                "reply line of {} bytes: {}",
                line.len(),
                show()
            );
            assert!(
                line.ends_with(b"\r\n"),
                "reply line without CRLF: {}",
                show()
            );
            assert!(
                !line[..line.len() - 2].contains(&b'\r'),
                "CR inside a reply line: {}",
                show()
            );
            assert!(line.len() >= 6, "short reply line: {}", show());
            assert!(
                (b'2'..=b'5').contains(&line[0]) && line[1..3].iter().all(u8::is_ascii_digit),
                "reply code: {}",
                show()
            );
            assert!(
                matches!(line[3], b' ' | b'-'),
                "reply separator: {}",
                show()
            );
            if let Some(c) = code {
                assert_eq!(c, &line[..3], "code changes inside a reply: {}", show());
            }
            code = (line[3] == b'-').then(|| &line[..3]);
            if let Some(id) = line
                .strip_prefix(b"250 2.0.0 Ok: queued as ")
                .and_then(|r| r.strip_suffix(b"\r\n"))
            {
                let id = String::from_utf8(id.to_vec()).unwrap();
                assert!(queued.insert(id.clone()), "queued twice as {id}");
            }
        }
        assert!(code.is_none(), "multi-line reply never ended");
    }
    queued
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What every message accepted in this run must show.
struct Must {
    peer: SocketAddr,
    /// TLS was required, or implicit.
    tls: bool,
    /// The client is outside the relay networks: only AUTH lets it relay.
    auth: bool,
}

/// The spool holds exactly the messages said to be queued, each consistent
/// and accepted only as the access rules allow; then it is emptied.
fn check_spool(ctx: &ServerContext, spool: &Spool, queued: &BTreeSet<String>, must: &Must) {
    let listed: BTreeSet<String> = spool.list().unwrap().into_iter().collect();
    let tmp = ctx.config.queue.path.join("tmp");
    let debris = std::fs::read_dir(&tmp).map_or(0, |d| d.count());
    // Clean up before asserting, so one failure does not cascade.
    for id in &listed {
        let result = spool.read(id);
        spool.remove(id).unwrap();
        let (env, message) = result.unwrap_or_else(|e| panic!("queued message unreadable: {e}"));
        assert!(
            message.starts_with(b"Received: "),
            "no Received header first"
        );
        assert!(message.ends_with(b"\r\n"), "message not ending in CRLF");
        assert!(
            message.iter().enumerate().all(|(i, &b)| match b {
                b'\r' => message.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && message[i - 1] == b'\r',
                _ => true,
            }),
            "bare CR or LF in a spooled message"
        );
        assert!(!message.contains(&0), "NUL in a spooled message");
        let client = &env.client;
        assert_eq!(client.address, must.peer);
        assert!(!must.auth || client.auth.is_some(), "relayed without AUTH");
        assert!(!must.tls || client.tls.is_some(), "accepted without TLS");
        assert!(
            client.auth.is_none() || client.tls.is_some(),
            "AUTH without TLS"
        );
        assert!(
            (1..=MAX_RECIPIENTS).contains(&env.recipients.len()),
            "{} recipients",
            env.recipients.len()
        );
        check_upstream_view(ctx, &env);
    }
    assert_eq!(debris, 0, "temporary files left in the spool");
    assert_eq!(&listed, queued, "spool and 250 replies disagree");
}

/// The MAIL and RCPT lines the outbound client writes for `env`, read back
/// by an RFC 5321 parser (ours): the same mailboxes the session stored and
/// judged, and no parameter the client did not give.
fn check_upstream_view(ctx: &ServerContext, env: &Envelope) {
    let caps = Capabilities::from_ehlo(
        b"250-up.test\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 DSN\r\n",
    );
    let utf8 = env.params.smtputf8
        || !env.sender.is_ascii()
        || env.recipients.iter().any(|r| !r.address.is_ascii());
    let sender = wire_path(&env.sender).expect("a spooled sender has a wire form");
    let line = mail_command(&sender, env, &caps, env.size as usize, utf8);
    let Ok(Parsed::Mail(from, path)) = command::parse(line.as_bytes()) else {
        panic!("the upstream cannot read our MAIL: {line:?}");
    };
    let judged = match env.sender.as_str() {
        "" => MailPath::Null,
        s => MailPath::Mailbox(Mailbox::parse(s).expect("a stored sender parses")),
    };
    assert_eq!(path, judged, "MAIL reads back as another sender: {line:?}");
    let user = env.client.auth.as_deref().and_then(|n| ctx.users.get(n));
    let mailbox = match &path {
        MailPath::Mailbox(m) => Some(m),
        _ => None,
    };
    assert!(
        policy::sender_allowed(&ctx.config.access, user, mailbox),
        "relayed from a sender the policy refuses: {line:?}"
    );
    assert_eq!(from.env_id, env.params.envid, "{line:?}");
    assert_eq!(from.size, env.size as usize, "{line:?}");
    let ret = env.params.ret.as_deref().map(str::to_ascii_uppercase);
    assert_eq!(from.flags & MAIL_RET_FULL != 0, ret.as_deref() == Some("FULL"));
    assert_eq!(from.flags & MAIL_RET_HDRS != 0, ret.as_deref() == Some("HDRS"));
    assert_eq!(from.flags & MAIL_SMTPUTF8 != 0, utf8, "{line:?}");
    for r in &env.recipients {
        let address = wire_path(&r.address).expect("a stored recipient has a wire form");
        let line = rcpt_command(&address, r, true);
        let Ok(Parsed::Rcpt(to, path)) = command::parse(line.as_bytes()) else {
            panic!("the upstream cannot read our RCPT: {line:?}");
        };
        let judged = Mailbox::parse(&r.address).expect("a stored recipient parses");
        assert_eq!(path, MailPath::Mailbox(judged), "RCPT reads back as another: {line:?}");
        let notify = notify_keywords(to.flags);
        assert_eq!(
            notify,
            r.notify.clone().unwrap_or_default(),
            "NOTIFY differs: {line:?}"
        );
        assert!(
            to.orcpt.is_none() || to.orcpt == r.orcpt,
            "ORCPT differs: {line:?}"
        );
    }
}
