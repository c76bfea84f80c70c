//! PROXY protocol v1 and v2 (HAProxy's spec): the real client address when
//! smarthost sits behind a load balancer. Parsing is `ppp`'s; this module only
//! reads exactly one header off the socket, bounded in size and time, and only
//! from `[access] trusted_proxies`.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use ppp::HeaderResult;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A header must arrive this quickly after the connection opens.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A v1 header is at most 107 bytes (the PROXY protocol spec, §2.1).
const MAX_PROXY_V1_HEADER: usize = 107;
/// A v2 header, TLVs included, is capped here, well under the 64 KiB its
/// length field allows.
const MAX_PROXY_V2_HEADER: usize = 4096;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY header from an untrusted source")]
    Untrusted,
    #[error("no PROXY header")]
    Missing,
    #[error("PROXY header too long")]
    TooLong,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("no PROXY header within {HEADER_TIMEOUT:?}")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header that must open a connection from `peer`, and returns
/// the client address it carries (or `peer` for LOCAL / UNKNOWN headers, which
/// proxies send for their own health checks). Reads exactly the header's bytes,
/// so whatever follows (a TLS ClientHello, say) stays in the socket.
pub async fn read_client_address<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    trusted: &[IpNet],
) -> Result<SocketAddr, ProxyError> {
    let ip = peer.ip().to_canonical();
    if !trusted.iter().any(|n| n.contains(&ip)) {
        return Err(ProxyError::Untrusted);
    }
    let header = tokio::time::timeout(HEADER_TIMEOUT, read_header(stream))
        .await
        .map_err(|_| ProxyError::Timeout)??;
    client_address(&header, peer)
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, ProxyError> {
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await?;
    if buf == V2_SIGNATURE {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[12..]).await?;
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if 16 + len > MAX_PROXY_V2_HEADER {
            return Err(ProxyError::TooLong);
        }
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await?;
        return Ok(buf);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    // v1 is a text line of unknown length: read to its LF, a byte at a time,
    // so nothing after it is consumed.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= MAX_PROXY_V1_HEADER {
            return Err(ProxyError::TooLong);
        }
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        buf.push(byte[0]);
    }
    Ok(buf)
}

fn client_address(header: &[u8], peer: SocketAddr) -> Result<SocketAddr, ProxyError> {
    let malformed = |e: &dyn std::fmt::Debug| ProxyError::Malformed(format!("{e:?}"));
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => (a.source_address, a.source_port).into(),
            ppp::v1::Addresses::Tcp6(a) => (a.source_address, a.source_port).into(),
            ppp::v1::Addresses::Unknown => peer,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                (a.source_address, a.source_port).into()
            }
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                (a.source_address, a.source_port).into()
            }
            _ => peer,
        }),
        HeaderResult::V1(Err(e)) => Err(malformed(&e)),
        HeaderResult::V2(Err(e)) => Err(malformed(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8], peer: &str) -> Result<SocketAddr, ProxyError> {
        let trusted = ["127.0.0.0/8".parse().unwrap()];
        let mut input = bytes;
        read_client_address(&mut input, peer.parse().unwrap(), &trusted).await
    }

    #[tokio::test]
    async fn v1_and_v2_headers() {
        let got = read(
            b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 25\r\nEHLO",
            "127.0.0.1:9",
        )
        .await;
        assert_eq!(got.unwrap(), "192.0.2.1:40000".parse().unwrap());
        let got = read(
            b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 25\r\n",
            "127.0.0.1:9",
        )
        .await;
        assert_eq!(got.unwrap(), "[2001:db8::1]:40000".parse().unwrap());
        let got = read(b"PROXY UNKNOWN\r\n", "127.0.0.1:9").await;
        assert_eq!(got.unwrap(), "127.0.0.1:9".parse().unwrap());
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0, 25,
        ]);
        assert_eq!(
            read(&v2, "127.0.0.1:9").await.unwrap(),
            "192.0.2.7:40000".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn untrusted_missing_oversized_and_garbage_are_errors() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 25\r\n";
        assert!(matches!(
            read(v1, "192.0.2.9:1").await,
            Err(ProxyError::Untrusted)
        ));
        assert!(matches!(
            read(b"EHLO client.example\r\n", "127.0.0.1:1").await,
            Err(ProxyError::Missing)
        ));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            read(long.as_bytes(), "127.0.0.1:1").await,
            Err(ProxyError::TooLong)
        ));
        assert!(matches!(
            read(b"PROXY TCP4 x y z w\r\n", "127.0.0.1:1").await,
            Err(ProxyError::Malformed(_))
        ));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read(&v2, "127.0.0.1:1").await,
            Err(ProxyError::TooLong)
        ));
        assert!(matches!(
            read(b"PROXY TCP4 1.2", "127.0.0.1:1").await,
            Err(ProxyError::Io(_))
        ));
    }
}
