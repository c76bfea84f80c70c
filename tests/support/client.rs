//! A small raw SMTP client for tests: send bytes, read whole replies, assert
//! their codes; STARTTLS with the test CA; helpers for one transaction.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::pki::TestCa;

/// A client on loopback after STARTTLS.
pub type TlsClient = Client<tokio_rustls::client::TlsStream<TcpStream>>;

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

/// Sends `line` and reads the reply; Err when the peer is gone or says
/// otherwise (for clients that must outlive a relay being killed).
pub async fn step<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    line: &str,
    expect: &str,
) -> Result<Reply, String> {
    if !c.try_send(format!("{line}\r\n")).await {
        return Err(format!("{line}: send failed"));
    }
    match c.try_reply().await {
        Some(r) if r.lines.last().unwrap().starts_with(expect) => Ok(r),
        Some(r) => Err(format!("{line}: expected {expect}, got {:?}", r.lines)),
        None => Err(format!("{line}: connection closed")),
    }
}

/// A client on 127.0.0.1:`port` from the loopback address `source`
/// (127.0.0.2, ...: clients at different addresses on one machine).
pub async fn connect_from(source: &str, port: u16) -> Client<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    Client::new(socket.connect(([127, 0, 0, 1], port).into()).await.unwrap())
}
