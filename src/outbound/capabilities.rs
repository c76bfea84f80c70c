//! What an upstream's EHLO reply offers (RFC 5321 §4.1.1.1), and what this
//! connection made of it; `check-upstreams` prints it.

use serde::Serialize;
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_CHUNKING, EXT_DSN, EXT_PIPELINING,
    EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
};

use crate::spool::TlsInfo;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The upstream's name from the first EHLO/HELO line.
    pub hostname: String,
    /// False when EHLO was refused and HELO used: no extensions at all.
    pub esmtp: bool,
    /// STARTTLS was offered before TLS.
    pub starttls_offered: bool,
    /// The TLS session, when STARTTLS was used.
    pub tls: Option<TlsInfo>,
    /// The certificate was verified (`tls = "required"`).
    pub tls_verified: bool,
    /// The SASL mechanism we authenticated with.
    pub auth_used: Option<&'static str>,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub pipelining: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// `SIZE` (RFC 1870): `Some(0)` offered without a limit.
    pub size: Option<u64>,
}

impl Capabilities {
    /// Reads a 250 EHLO reply (all its lines, as framed by `Wire`). Public
    /// for the fuzz target.
    pub fn from_ehlo(raw: &[u8]) -> Capabilities {
        match EhloResponse::parse(&mut raw.iter()) {
            Ok(r) => {
                let has = |ext: u32| r.capabilities & ext != 0;
                Capabilities {
                    hostname: r.hostname,
                    esmtp: true,
                    starttls_offered: has(EXT_START_TLS),
                    auth_plain: has(EXT_AUTH) && r.auth_mechanisms & AUTH_PLAIN != 0,
                    auth_login: has(EXT_AUTH) && r.auth_mechanisms & AUTH_LOGIN != 0,
                    pipelining: has(EXT_PIPELINING),
                    chunking: has(EXT_CHUNKING),
                    dsn: has(EXT_DSN),
                    eight_bit_mime: has(EXT_8BIT_MIME),
                    smtputf8: has(EXT_SMTP_UTF8),
                    size: has(EXT_SIZE).then_some(r.size as u64),
                    ..Capabilities::default()
                }
            }
            // smtp-proto refuses some replies real servers send (see the
            // tests); read the keywords by hand rather than lose them all.
            Err(_) => Self::by_hand(raw),
        }
    }

    fn by_hand(raw: &[u8]) -> Capabilities {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.lines().map(|l| l.get(4..).unwrap_or("").trim());
        let mut c = Capabilities {
            hostname: lines
                .next()
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("")
                .to_owned(),
            esmtp: true,
            ..Capabilities::default()
        };
        for line in lines {
            let mut words = line.split([' ', '=']);
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            let args: Vec<String> = words.map(|w| w.to_ascii_uppercase()).collect();
            match keyword.as_str() {
                "STARTTLS" => c.starttls_offered = true,
                "PIPELINING" => c.pipelining = true,
                "CHUNKING" => c.chunking = true,
                "DSN" => c.dsn = true,
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "SIZE" => c.size = Some(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
                "AUTH" => {
                    c.auth_plain |= args.iter().any(|a| a == "PLAIN");
                    c.auth_login |= args.iter().any(|a| a == "LOGIN");
                }
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_usual_extensions() {
        let c = Capabilities::from_ehlo(
            b"250-mx.example Hello there\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n\
              250-AUTH LOGIN PLAIN XOAUTH2\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n\
              250-CHUNKING\r\n250-X-UNKNOWN-THING 1 2\r\n250 SMTPUTF8\r\n",
        );
        assert_eq!(c.hostname, "mx.example");
        assert!(c.starttls_offered && c.auth_plain && c.auth_login && c.pipelining);
        assert!(c.chunking && c.eight_bit_mime && c.smtputf8 && !c.dsn);
        assert_eq!(c.size, Some(35882577));
    }

    #[test]
    fn odd_but_real_replies() {
        let c = Capabilities::from_ehlo(b"250-mx\r\n250-AUTH=LOGIN\r\n250-size\r\n250 dsn\r\n");
        assert!(c.auth_login && c.dsn);
        assert_eq!(c.size, Some(0));
        let c = Capabilities::from_ehlo(b"250 mx\r\n");
        assert!(c.esmtp && !c.pipelining);
        // LF-only line ends.
        let c = Capabilities::from_ehlo(b"250-mx\n250 PIPELINING\n");
        assert!(c.pipelining);
    }
}
