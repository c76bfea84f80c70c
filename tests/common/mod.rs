//! Shared test scaffolding: a test CA (rcgen), a relay started in-process on
//! loopback or on an in-memory pipe, and a small raw SMTP client.
#![allow(dead_code)]

pub mod binary;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use smarthost::ServerContext;
use smarthost::config::Config;
use smarthost::session::Session;
use smarthost::spool::{Envelope, Spool};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const HOSTNAME: &str = "relay.test";

/// A CA and a server certificate it signed (SAN localhost and 127.0.0.1).
pub struct TestCa {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smarthost test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (cert_pem, key_pem) = Self::sign(&issuer, &leaf_key);
        TestCa {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            cert_pem,
            key_pem,
            issuer,
        }
    }

    /// Certificate (leaf + CA, a full chain) for `key`, signed by this CA.
    fn sign(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        key: &rcgen::KeyPair,
    ) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".into(),
            "127.0.0.1".into(),
            HOSTNAME.into(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, HOSTNAME);
        let leaf = params.signed_by(key, issuer).unwrap();
        (leaf.pem(), key.serialize_pem())
    }

    /// An RSA certificate (key made by openssl: ring cannot generate RSA keys).
    pub fn rsa_certificate(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let key_path = dir.join("rsa.key");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key_path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is required (apt-get install openssl)");
        assert!(status.success());
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
        let (cert, _) = Self::sign(&self.issuer, &key);
        let cert_path = dir.join("rsa.crt");
        std::fs::write(&cert_path, format!("{cert}{}", self.ca_pem)).unwrap();
        (cert_path, key_path)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(smarthost::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// A relay configuration in a temporary directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub config_path: PathBuf,
}

/// The default listener: STARTTLS, TLS required.
pub const STARTTLS_LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n";

impl Harness {
    /// A relay with one STARTTLS listener and `extra` TOML appended.
    pub fn new(extra: &str) -> Harness {
        Self::with_listeners(STARTTLS_LISTENER, extra)
    }

    pub fn with_listeners(listeners: &str, extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        std::fs::write(
            dir.path().join("server.crt"),
            format!("{}{}", ca.cert_pem, ca.ca_pem),
        )
        .unwrap();
        std::fs::write(dir.path().join("server.key"), &ca.key_pem).unwrap();
        // As an administrator would keep it (check-config warns on wider).
        std::fs::set_permissions(
            dir.path().join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
        let text = format!(
            "hostname = \"{HOSTNAME}\"\n{listeners}\n[tls]\ncertificate = \"server.crt\"\nprivate_key = \"server.key\"\n\n[access]\nrelay_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\n[queue]\npath = \"spool\"\n\n{extra}"
        );
        let config_path = dir.path().join("smarthost.toml");
        std::fs::write(&config_path, text).unwrap();
        Harness {
            dir,
            ca,
            config_path,
        }
    }

    /// Replaces the harness's `relay_networks = [...]` line with `lines`
    /// (other networks, or more `[access]` keys).
    pub fn replace_access_line(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let default = "relay_networks = [\"127.0.0.0/8\", \"::1/128\"]";
        assert!(text.contains(default), "{text}");
        std::fs::write(&self.config_path, text.replace(default, lines)).unwrap();
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn context(&self) -> Arc<ServerContext> {
        ServerContext::new(self.config()).unwrap().0
    }

    /// Starts the relay on loopback sockets.
    pub async fn start(&self) -> Running {
        let config = self.config();
        let listeners = smarthost::bind(&config).await.unwrap();
        let addrs = listeners
            .iter()
            .map(|(l, _)| l.local_addr().unwrap())
            .collect();
        let (ctx, arrivals) = ServerContext::new(config).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(smarthost::serve(listeners, ctx, arrivals, shutdown.clone()));
        Running {
            addrs,
            shutdown,
            task,
        }
    }

    /// A session on an in-memory pipe, as if the client were at `peer`.
    pub fn session(&self, ctx: &Arc<ServerContext>, peer: &str) -> Client<tokio::io::DuplexStream> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let session = Session::new(
            ctx.clone(),
            ctx.config.listeners[0].clone(),
            peer.parse().unwrap(),
            Box::new(server),
            CancellationToken::new(),
        );
        tokio::spawn(session.run());
        Client::new(client)
    }

    /// Every message in the spool, oldest first. Read-only (`Spool::inspect`,
    /// not `open`, which would sweep a running relay's in-flight files); a
    /// message delivered and removed while being read is skipped.
    pub fn spooled(&self) -> Vec<(Envelope, Vec<u8>)> {
        let Ok(spool) = Spool::inspect(&self.spool_dir()) else {
            return Vec::new();
        };
        spool
            .list()
            .unwrap_or_default()
            .iter()
            .filter_map(|id| spool.read(id).ok())
            .collect()
    }

    /// Files in the spool's msg/ directory (anything, complete or not).
    pub fn spool_files(&self) -> usize {
        std::fs::read_dir(self.spool_dir().join("msg"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub async fn connect(&self) -> Client<tokio::net::TcpStream> {
        Client::new(tokio::net::TcpStream::connect(self.addr()).await.unwrap())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

/// A raw SMTP client: send bytes, read whole replies.
pub struct Client<S> {
    pub stream: S,
    buf: Vec<u8>,
    /// How long a reply may take before the test fails.
    pub reply_timeout: Duration,
}

/// One reply: the code and every line as received.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// `"250 2.0.0"` style prefix of the last line.
    pub fn status(&self) -> String {
        self.lines.last().unwrap().chars().take(9).collect()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Self {
        Client {
            stream,
            buf: Vec::new(),
            reply_timeout: Duration::from_secs(10),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Sends, reporting whether the peer still listened.
    pub async fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.stream.write_all(bytes.as_ref()).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Reads one complete (possibly multi-line) reply; panics on EOF or after 10 s.
    pub async fn reply(&mut self) -> Reply {
        self.try_reply().await.unwrap_or_else(|| {
            panic!(
                "connection closed; unread: {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    /// A reply, or None if the server closed the connection first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8(line).unwrap().trim_end().to_owned();
                assert!(line.len() >= 3, "short reply line {line:?}");
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    let code = lines[0][..3].parse().unwrap();
                    return Some(Reply { code, lines });
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(self.reply_timeout, self.stream.read(&mut chunk))
                .await
                .expect("reply in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `line` (CRLF added) and asserts the reply starts with `expect`
    /// (e.g. `"250"` or `"530 5.7.0"`).
    pub async fn cmd(&mut self, line: &str, expect: &str) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.expect(expect).await
    }

    pub async fn expect(&mut self, expect: &str) -> Reply {
        let r = self.reply().await;
        assert!(
            r.lines.last().unwrap().starts_with(expect),
            "expected {expect:?}, got {:?}",
            r.lines
        );
        r
    }

    /// True when the server closes the connection (reading nothing more than EOF).
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }

    /// Greeting, EHLO, STARTTLS, handshake, EHLO again.
    pub async fn starttls(self, ca: &TestCa) -> Client<tokio_rustls::client::TlsStream<S>> {
        let mut c = self.starttls_no_ehlo(ca).await;
        c.cmd("EHLO client.test", "250").await;
        c
    }

    /// STARTTLS and the handshake, nothing after.
    pub async fn starttls_no_ehlo(
        mut self,
        ca: &TestCa,
    ) -> Client<tokio_rustls::client::TlsStream<S>> {
        self.cmd("STARTTLS", "220").await;
        assert!(self.buf.is_empty());
        let connector = tokio_rustls::TlsConnector::from(ca.client_config());
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), self.stream)
            .await
            .expect("TLS handshake");
        Client::new(tls)
    }

    /// Reads the banner and says EHLO.
    pub async fn hello(&mut self) -> Reply {
        self.expect("220").await;
        self.cmd("EHLO client.test", "250").await
    }
}

/// A plaintext session, greeted, then upgraded to TLS and greeted again.
pub async fn tls_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut c: Client<S>,
    ca: &TestCa,
) -> Client<tokio_rustls::client::TlsStream<S>> {
    c.hello().await;
    c.starttls(ca).await
}

/// Sends one message with DATA and returns the final reply.
pub async fn send_data<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    from: &str,
    to: &[&str],
    body: &[u8],
) -> Reply {
    c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    for r in to {
        c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    c.cmd("DATA", "354").await;
    c.send(body).await;
    c.send(b".\r\n").await;
    c.reply().await
}

/// The stored message minus our Received header (which is first, and folded).
pub fn strip_received(message: &[u8]) -> &[u8] {
    assert!(
        message.starts_with(b"Received: from "),
        "{:?}",
        String::from_utf8_lossy(message)
    );
    let mut pos = 0;
    loop {
        let nl = message[pos..].iter().position(|&b| b == b'\n').unwrap() + pos;
        pos = nl + 1;
        if message.get(pos) != Some(&b'\t') {
            return &message[pos..];
        }
    }
}

/// A message of exactly `size` bytes of CRLF lines.
pub fn message_of_size(size: usize) -> Vec<u8> {
    let mut m = b"Subject: test\r\nMessage-ID: <x@test>\r\n\r\n".to_vec();
    while m.len() < size {
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
        let take = (size - m.len()).min(line.len());
        if take < 2 {
            m.truncate(size.min(m.len()));
            break;
        }
        m.extend_from_slice(&line[line.len() - take..]);
    }
    m
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this process runs as root (the owner of /proc/self is the
/// effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// An argon2id PHC string for `password`, with the default parameters.
pub fn hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string()
}

/// `AUTH PLAIN` with an initial response for `user` (RFC 4616: no authzid).
pub fn auth_plain(user: &str, password: &str) -> String {
    use base64::Engine;
    let message = format!("\0{user}\0{password}");
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(message)
    )
}

/// A relay whose one STARTTLS listener does not require TLS.
pub fn plain_harness(extra: &str) -> Harness {
    Harness::with_listeners(
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\nrequire_tls = false\n",
        extra,
    )
}

/// `bytes` with every CRLF made LF (as peers that store mail in Unix form do).
pub fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}
