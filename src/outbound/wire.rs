//! The byte stream to an upstream: plaintext or TLS, with bounded reply
//! framing and a timeout on every read and write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::error::{Stage, UpstreamError};
use super::reply::UpstreamReply;

/// Longest reply line we accept (RFC 5321 §4.5.3.1.5 says 512; real servers
/// exceed it, so be generous but bounded).
pub const MAX_UPSTREAM_REPLY_LINE: usize = 4096;
/// Most lines in one reply (a long EHLO list has ~20).
pub const MAX_UPSTREAM_REPLY_LINES: usize = 100;

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream and the bytes read from it but not yet consumed.
pub(crate) struct Wire {
    pub stream: Stream,
    buf: Vec<u8>,
}

impl Wire {
    pub fn new(tcp: TcpStream) -> Wire {
        Wire {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Writes and flushes `bytes` within `limit`.
    pub async fn send(
        &mut self,
        bytes: &[u8],
        limit: Duration,
        stage: Stage,
    ) -> Result<(), UpstreamError> {
        let io = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(limit, io).await {
            Err(_) => Err(UpstreamError::Timeout(stage)),
            Ok(Err(e)) => Err(UpstreamError::Protocol(format!(
                "connection lost while sending ({stage}): {e}"
            ))),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads one complete reply within `limit`.
    pub async fn reply(
        &mut self,
        limit: Duration,
        stage: Stage,
    ) -> Result<UpstreamReply, UpstreamError> {
        let raw = self.raw_reply(limit, stage).await?;
        UpstreamReply::parse(&raw).map_err(UpstreamError::Protocol)
    }

    /// Reads one complete reply's bytes (all its lines) within `limit`.
    pub async fn raw_reply(
        &mut self,
        limit: Duration,
        stage: Stage,
    ) -> Result<Vec<u8>, UpstreamError> {
        tokio::time::timeout(limit, self.frame(stage))
            .await
            .map_err(|_| UpstreamError::Timeout(stage))?
    }

    async fn frame(&mut self, stage: Stage) -> Result<Vec<u8>, UpstreamError> {
        read_frame(&mut self.stream, &mut self.buf, stage).await
    }

    /// The TLS handshake after STARTTLS's 220 (RFC 3207). Any byte the
    /// server sent after the 220 was sent before TLS, so it must not be read
    /// as if protected (CVE-2011-0411 seen from the client side): refuse.
    pub async fn start_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        limit: Duration,
    ) -> Result<Wire, UpstreamError> {
        if !self.buf.is_empty() {
            return Err(UpstreamError::Protocol(format!(
                "{} bytes after the 220 to STARTTLS, before TLS began (plaintext injection)",
                self.buf.len()
            )));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(UpstreamError::Protocol("STARTTLS inside TLS".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
            Err(_) => Err(UpstreamError::Timeout(Stage::StartTls)),
            Ok(Err(e)) => Err(UpstreamError::Tls(super::tls::explain_handshake_error(&e))),
            Ok(Ok(tls)) => Ok(Wire {
                stream: Stream::Tls(Box::new(tls)),
                buf: Vec::new(),
            }),
        }
    }

    /// The TLS session's facts (version, cipher), when encrypted.
    pub fn tls_info(&self) -> Option<crate::spool::TlsInfo> {
        match &self.stream {
            Stream::Tls(s) => Some(crate::tls::describe(s.get_ref().1)),
            Stream::Plain(_) => None,
        }
    }
}

/// Reads one complete reply's bytes (all its lines) from `stream`, `buf`
/// holding bytes read earlier and keeping whatever follows the reply. Bounded:
/// a line over `MAX_UPSTREAM_REPLY_LINE` or a reply over `MAX_UPSTREAM_REPLY_LINES` lines is an error.
/// Public so the fuzz target can drive it over any reader.
pub async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    stage: Stage,
) -> Result<Vec<u8>, UpstreamError> {
    let bad = |what: String| UpstreamError::Protocol(format!("{what} ({stage})"));
    let mut pos = 0; // start of the first line not yet checked
    let mut lines = 0;
    loop {
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + nl + 1];
            if line.len() > MAX_UPSTREAM_REPLY_LINE {
                return Err(bad(format!(
                    "reply line over {MAX_UPSTREAM_REPLY_LINE} bytes"
                )));
            }
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            // RFC 5321 §4.2: three digits, the first 2 to 5, then "-" (more
            // lines follow), " " or nothing (the last line); the same code on
            // every line.
            let well_formed = text.len() >= 3
                && (b'2'..=b'5').contains(&text[0])
                && text[..3].iter().all(u8::is_ascii_digit)
                && matches!(text.get(3), None | Some(b' ' | b'-'))
                && (pos == 0 || text[..3] == buf[..3]);
            if !well_formed {
                return Err(bad(format!(
                    "malformed reply line {:?}",
                    String::from_utf8_lossy(&text[..text.len().min(100)])
                )));
            }
            lines += 1;
            pos += nl + 1;
            if text.get(3) != Some(&b'-') {
                return Ok(buf.drain(..pos).collect());
            }
            if lines >= MAX_UPSTREAM_REPLY_LINES {
                return Err(bad(format!(
                    "reply of more than {MAX_UPSTREAM_REPLY_LINES} lines"
                )));
            }
        }
        if buf.len() - pos > MAX_UPSTREAM_REPLY_LINE {
            return Err(bad(format!(
                "reply line over {MAX_UPSTREAM_REPLY_LINE} bytes"
            )));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) => return Err(bad("connection closed by the upstream".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(bad(format!("connection lost: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frame(bytes: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        let mut reader = bytes;
        read_frame(&mut reader, &mut Vec::new(), Stage::Greeting).await
    }

    #[tokio::test]
    async fn reply_codes_start_with_two_to_five() {
        assert_eq!(frame(b"250 ok\r\n").await.unwrap(), b"250 ok\r\n");
        assert_eq!(frame(b"599\n").await.unwrap(), b"599\n");
        // Found by fuzz/fuzz_targets/upstream_reply.rs: these were framed and
        // parsed as replies, codes no SMTP server sends (RFC 5321 §4.2).
        for odd in [&b"199 x\r\n"[..], b"650 y\r\n", b"099 z\r\n", b"999\r\n"] {
            assert!(
                matches!(frame(odd).await, Err(UpstreamError::Protocol(_))),
                "{odd:?}"
            );
        }
    }

    #[tokio::test]
    async fn replies_are_bounded() {
        let long = [
            b"250 ".as_slice(),
            &[b'x'; MAX_UPSTREAM_REPLY_LINE],
            b"\r\n",
        ]
        .concat();
        assert!(frame(&long).await.is_err());
        let endless = b"250-x\r\n".repeat(MAX_UPSTREAM_REPLY_LINES + 1);
        assert!(frame(&endless).await.is_err());
        let most = [
            b"250-x\r\n".repeat(MAX_UPSTREAM_REPLY_LINES - 1),
            b"250 y\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(frame(&most).await.unwrap(), most);
    }
}
