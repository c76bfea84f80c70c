//! SMTP AUTH (RFC 4954) credentials: the SASL PLAIN and LOGIN decoders,
//! password checks against argon2id hashes, and the per-address throttle that
//! makes brute force from one address crawl.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::time::Instant;

use crate::config::UserConfig;

/// The configured users, and a dummy hash so an unknown name costs the same
/// argon2 work as a known one (no user enumeration by timing).
pub struct Users {
    by_name: HashMap<String, UserConfig>,
    dummy_hash: String,
}

impl Users {
    pub fn new(users: &[UserConfig]) -> Users {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let secret: [u8; 16] = rand::random();
        let dummy_hash = argon2::Argon2::default()
            .hash_password(&secret, &salt)
            .map(|h| h.to_string())
            .unwrap_or_default();
        Users {
            by_name: users.iter().map(|u| (u.name.clone(), u.clone())).collect(),
            dummy_hash,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&UserConfig> {
        self.by_name.get(name)
    }

    /// Checks a password; runs argon2 on a blocking thread. Unknown users are
    /// checked against the dummy hash and always fail.
    pub async fn verify(&self, name: &str, password: &[u8]) -> bool {
        let (hash, known) = match self.by_name.get(name) {
            Some(u) => (u.password_hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(&password, &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        ok && known
    }
}

/// What a client sent for PLAIN (RFC 4616) or LOGIN.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub authzid: String,
    pub username: String,
    pub password: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed PLAIN message")]
    Malformed,
}

/// Decodes one base64 client response (RFC 4954 §4); `=` is an empty one.
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    use base64::Engine;
    let line = line.trim();
    if line == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| SaslError::Base64)
}

/// Splits a PLAIN message: `authzid NUL authcid NUL passwd` (RFC 4616 §2).
/// No field holds a NUL (SAFE excludes it), so a third NUL is malformed
/// rather than part of the password.
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    if user.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        authzid: text(authzid)?,
        username: text(user)?,
        password: password.to_vec(),
    })
}

/// Failed AUTH attempts per client address, across connections. Once an
/// address has failed, each further attempt from it waits its turn: attempts
/// are serialised and spaced by a delay that doubles with every failure (up
/// to `MAX_DELAY`), so parallel connections do not help an attacker.
pub struct AuthThrottle {
    entries: Mutex<HashMap<IpAddr, ThrottleEntry>>,
}

struct ThrottleEntry {
    failures: u32,
    /// When the next attempt from this address may be checked.
    next_slot: Instant,
    last_seen: Instant,
}

/// Delay after the first failure; doubles per failure.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// An address with no failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Above this many tracked addresses, stale ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

pub fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    BASE_DELAY
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(MAX_DELAY)
}

impl Default for AuthThrottle {
    fn default() -> Self {
        AuthThrottle {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl AuthThrottle {
    /// Waits until an attempt from `ip` may be checked, and books the slot.
    pub async fn wait_turn(&self, ip: IpAddr) {
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let Some(e) = entries.get_mut(&ip) else {
                return;
            };
            if now.duration_since(e.last_seen) > FORGET_AFTER {
                entries.remove(&ip);
                return;
            }
            let slot = e.next_slot.max(now);
            // Book as if this attempt fails too; success clears the entry.
            e.next_slot = slot + delay_after(e.failures);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    pub fn failure(&self, ip: IpAddr) -> u32 {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, e| now.duration_since(e.last_seen) < FORGET_AFTER);
        }
        let e = entries.entry(ip).or_insert(ThrottleEntry {
            failures: 0,
            next_slot: now,
            last_seen: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last_seen = now;
        e.next_slot = e.next_slot.max(now + delay_after(e.failures));
        e.failures
    }

    pub fn success(&self, ip: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let c = parse_plain(b"\0user\0pass").unwrap();
        assert_eq!((c.authzid.as_str(), c.username.as_str()), ("", "user"));
        assert_eq!(c.password, b"pass");
        assert_eq!(parse_plain(b"user\0pass"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0\0pass"), Err(SaslError::Malformed));
        // Found by fuzz/fuzz_targets/sasl.rs: a third NUL was kept in the password.
        assert_eq!(parse_plain(b"\0u\0p\0q"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0u\0p\0"), Err(SaslError::Malformed));
        assert_eq!(decode_response("AHUAcA==").unwrap(), b"\0u\0p");
        assert_eq!(decode_response("=").unwrap(), b"");
        assert_eq!(decode_response("!!"), Err(SaslError::Base64));
    }

    #[test]
    fn delays_double_and_are_capped() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(1), Duration::from_millis(500));
        assert_eq!(delay_after(3), Duration::from_secs(2));
        assert_eq!(delay_after(100), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_from_a_failing_address_are_spaced() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        t.wait_turn(ip).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..4 {
            t.failure(ip);
        }
        t.wait_turn(ip).await;
        // After 4 failures the next attempt waits 4 s (0.5 s doubled three times).
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        t.wait_turn(ip).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(8),
            "slots are serialised"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let before = Instant::now();
        t.wait_turn(other).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
        t.success(ip);
        let before = Instant::now();
        t.wait_turn(ip).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }
}
