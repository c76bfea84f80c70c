#![no_main]
//! SASL responses (RFC 4954 §4) and the PLAIN message (RFC 4616 §2):
//! `auth::decode_response` and `auth::parse_plain`, the only decoders AUTH
//! PLAIN and AUTH LOGIN use (LOGIN's username and password are each one
//! decoded response).
//!
//! Properties: no panic; a decoded response re-encodes to the line sent (the
//! encoding is canonical, so two lines never mean the same bytes); a PLAIN
//! message is accepted only with exactly two NULs, a UTF-8 authzid and a
//! non-empty UTF-8 authcid, and its fields put back together give the message.
//!
//! Input: the bytes are used both as a response line and as a decoded
//! message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use smarthost::auth::{decode_response, parse_plain};

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        check_response(line);
    }
    check_plain(data);
    // And the bytes as a client would send them, base64-encoded.
    let line = STANDARD.encode(data);
    assert_eq!(decode_response(&line).as_deref(), Ok(data));
    check_plain(&decode_response(&line).unwrap());
});

fn check_response(line: &str) {
    let Ok(decoded) = decode_response(line) else {
        return;
    };
    let trimmed = line.trim();
    if trimmed == "=" {
        assert!(decoded.is_empty());
        return;
    }
    assert_eq!(
        STANDARD.encode(&decoded),
        trimmed,
        "two encodings decode to the same bytes"
    );
    check_plain(&decoded);
}

fn check_plain(message: &[u8]) {
    let Ok(c) = parse_plain(message) else {
        return;
    };
    let nuls = message.iter().filter(|&&b| b == 0).count();
    assert_eq!(nuls, 2, "PLAIN message with {nuls} NULs accepted");
    assert!(!c.username.is_empty(), "empty authcid accepted");
    let mut again = c.authzid.clone().into_bytes();
    again.push(0);
    again.extend_from_slice(c.username.as_bytes());
    again.push(0);
    again.extend_from_slice(&c.password);
    assert_eq!(again, message, "PLAIN fields do not give the message back");
}
