#![no_main]
//! PROXY protocol headers (`proxy::read_client_address`), v1 and v2, over
//! arbitrary bytes. Beyond "no panic": a header is read only from a trusted
//! peer; exactly the header's bytes are consumed; a success is a header the
//! spec allows (v1: one line ending in CRLF within 107 bytes; v2: the 12-byte
//! signature, version 2, a known command, length within bounds), and the
//! address returned is the one the header carries, read here independently.
//!
//! Input: byte 0 bit 0 makes the peer untrusted; the rest is the stream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smarthost::proxy::{ProxyError, read_client_address};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const MAX_PROXY_V1_HEADER: usize = 107;
const MAX_PROXY_V2_HEADER: usize = 4096;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let [flags, input @ ..] = data else {
        return;
    };
    let trusted_peer = flags & 1 == 0;
    let peer: SocketAddr = if trusted_peer {
        "127.0.0.1:9".parse().unwrap()
    } else {
        "192.0.2.9:9".parse().unwrap()
    };
    let trusted = ["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let mut rest = input;
    let result = runtime().block_on(read_client_address(&mut rest, peer, &trusted));
    let consumed = input.len() - rest.len();
    if !trusted_peer {
        assert!(matches!(result, Err(ProxyError::Untrusted)), "{result:?}");
        assert_eq!(consumed, 0, "read from an untrusted peer");
        return;
    }
    let v2 = input.len() >= 12 && input[..12] == V2_SIGNATURE[..];
    let v1 = input.len() >= 12 && input.starts_with(b"PROXY ");
    match result {
        Ok(addr) if v2 => check_v2(input, consumed, addr, peer),
        Ok(addr) if v1 => check_v1(input, consumed, addr, peer),
        Ok(addr) => panic!("{addr} from a stream without a PROXY header"),
        Err(ProxyError::Untrusted) => panic!("trusted peer called untrusted"),
        Err(ProxyError::Missing) => {
            assert!(!v1 && !v2 && consumed == 12, "Missing after {consumed}");
        }
        Err(ProxyError::TooLong) => {
            if v2 {
                let len = u16::from_be_bytes([input[14], input[15]]) as usize;
                assert!(16 + len > MAX_PROXY_V2_HEADER, "v2 of {len} called too long");
                assert_eq!(consumed, 16, "read past a too-long v2 header's length");
            } else {
                assert!(v1);
                assert_eq!(consumed, MAX_PROXY_V1_HEADER, "v1 too long after {consumed} bytes");
                assert!(!input[..consumed].ends_with(b"\r\n"));
            }
        }
        Err(ProxyError::Malformed(_)) => {
            // A whole header was read: v1 to a CRLF, v2 to its length.
            if v2 {
                let len = u16::from_be_bytes([input[14], input[15]]) as usize;
                assert_eq!(consumed, 16 + len);
            } else {
                assert!(v1 && input[..consumed].ends_with(b"\r\n"));
            }
        }
        Err(ProxyError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
            assert_eq!(consumed, input.len(), "Io error with input left");
        }
        Err(ProxyError::Timeout) => panic!("timed out reading a slice"),
    }
});

/// A v1 success: one line, CRLF only at its end, within 107 bytes, naming
/// TCP4 / TCP6 addresses (the source is returned) or UNKNOWN (the peer is).
fn check_v1(input: &[u8], consumed: usize, addr: SocketAddr, peer: SocketAddr) {
    let header = &input[..consumed];
    assert!(consumed <= MAX_PROXY_V1_HEADER, "v1 header of {consumed} bytes");
    assert!(header.ends_with(b"\r\n"), "v1 header without CRLF");
    let line = &header[..consumed - 2];
    assert!(
        !line.windows(2).any(|w| w == b"\r\n"),
        "CRLF inside a v1 header: {header:?}"
    );
    // UNKNOWN: "the receiver must ignore anything presented before the CRLF".
    if line.starts_with(b"PROXY UNKNOWN") {
        assert_eq!(addr, peer);
        return;
    }
    assert!(
        !line.contains(&b'\r') && !line.contains(&b'\n'),
        "CR or LF inside a v1 header: {header:?}"
    );
    let line = std::str::from_utf8(&line[6..]).expect("v1 header is ASCII");
    let fields: Vec<&str> = line.split(' ').collect();
    match fields[0] {
        "TCP4" | "TCP6" => {
            let [_, src, dst, sport, dport] = fields[..] else {
                panic!("v1 header with {} fields accepted: {line:?}", fields.len());
            };
            let ip = |s: &str| -> IpAddr {
                if fields[0] == "TCP4" {
                    IpAddr::V4(s.parse::<Ipv4Addr>().expect("TCP4 address"))
                } else {
                    IpAddr::V6(s.parse::<Ipv6Addr>().expect("TCP6 address"))
                }
            };
            // The spec says decimal 0..=65535; ppp (like `str::parse`) also
            // takes a leading "+", harmless from a trusted proxy.
            let port = |s: &str| -> u16 { s.parse().expect("port in range") };
            let _ = (ip(dst), port(dport));
            assert_eq!(addr, SocketAddr::new(ip(src), port(sport)), "{line:?}");
        }
        other => panic!("v1 protocol {other:?} accepted"),
    }
}

/// A v2 success: version 2, command LOCAL or PROXY, the stated length read
/// and no more; PROXY over INET / INET6 returns the source address.
fn check_v2(input: &[u8], consumed: usize, addr: SocketAddr, peer: SocketAddr) {
    let len = u16::from_be_bytes([input[14], input[15]]) as usize;
    assert_eq!(consumed, 16 + len, "v2 header length");
    assert!(consumed <= MAX_PROXY_V2_HEADER);
    assert_eq!(input[12] >> 4, 2, "v2 version {:#x} accepted", input[12]);
    let command = input[12] & 0xf;
    assert!(command <= 1, "v2 command {command} accepted");
    let body = &input[16..consumed];
    let expected = match (command, input[13] >> 4) {
        (1, 1) => {
            assert!(len >= 12, "INET addresses in {len} bytes");
            let ip: [u8; 4] = body[..4].try_into().unwrap();
            SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]]))
        }
        (1, 2) => {
            assert!(len >= 36, "INET6 addresses in {len} bytes");
            let ip: [u8; 16] = body[..16].try_into().unwrap();
            SocketAddr::new(ip.into(), u16::from_be_bytes([body[32], body[33]]))
        }
        _ => peer,
    };
    assert_eq!(addr, expected, "v2 address");
}
