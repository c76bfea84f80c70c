//! SMTP AUTH (RFC 4954) credentials: the SASL PLAIN and LOGIN decoders,
//! password checks against argon2id hashes, and the per-address throttle that
//! makes brute force from one address crawl.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;
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

    /// Checks a password. Unknown users are checked against the dummy hash
    /// and always fail.
    pub async fn verify(&self, name: &str, password: &[u8]) -> bool {
        let (hash, known) = match self.by_name.get(name) {
            Some(u) => (u.password_hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let password = password.to_vec();
        let ok = run_argon2(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(&password, &parsed)
                    .is_ok()
            })
        })
        .await;
        ok && known
    }
}

/// Runs one argon2 computation on a blocking thread, at most one per core
/// at a time: each holds `m` KiB (19 MiB by default) while it runs, so
/// clients from many addresses cannot make memory grow with their number.
/// Waiting callers are served in order (tokio's semaphore is fair). The
/// binary makes glibc return each block to the OS when freed (main.rs,
/// `return_large_blocks_to_the_os`): the library has no unsafe code.
async fn run_argon2(work: impl FnOnce() -> bool + Send + 'static) -> bool {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Semaphore::new(cores))
    });
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return false;
    };
    // The permit moves into the thread, so it is held exactly as long as the
    // computation, even if the session waiting for it goes away.
    tokio::task::spawn_blocking(move || {
        let ok = work();
        drop(permit);
        ok
    })
    .await
    .unwrap_or(false)
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

/// AUTH attempts per client address, across connections. Every attempt from
/// an address waits its turn, from the very first: attempts run one at a
/// time (parallel connections do not buy parallel guesses), each is counted
/// as a failure before it is checked (a success clears the address), and
/// once failures exist they are spaced by a delay that doubles with each one
/// (up to `MAX_DELAY`).
pub struct AuthThrottle {
    entries: Mutex<HashMap<IpAddr, ThrottleEntry>>,
}

struct ThrottleEntry {
    failures: u32,
    /// When the next attempt from this address may be checked.
    next_slot: Instant,
    last_seen: Instant,
    /// Held by the attempt being checked; the others queue on it in order.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl ThrottleEntry {
    fn new(now: Instant) -> ThrottleEntry {
        ThrottleEntry {
            failures: 0,
            next_slot: now,
            last_seen: now,
            turn: Arc::default(),
        }
    }

    /// True when no attempt holds or waits for this address's turn (the
    /// map's own reference is the only one left).
    fn idle(&self) -> bool {
        Arc::strong_count(&self.turn) == 1
    }
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

/// One attempt's turn. It was counted as a failure when the turn began; the
/// next attempt from the same address starts only once this is dropped.
pub struct AuthTurn<'a> {
    throttle: &'a AuthThrottle,
    ip: IpAddr,
    failures: u32,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl AuthThrottle {
    /// Waits until an attempt from `ip` may be checked: after every earlier
    /// attempt from it has finished, and its delay has passed.
    pub async fn wait_turn(&self, ip: IpAddr) -> AuthTurn<'_> {
        let turn = self.with_entry(ip, |e, now| {
            if now.duration_since(e.last_seen) > FORGET_AFTER {
                e.failures = 0;
                e.next_slot = now;
            }
            e.last_seen = now;
            e.turn.clone()
        });
        let guard = turn.lock_owned().await;
        let slot = self.with_entry(ip, |e, _| e.next_slot);
        tokio::time::sleep_until(slot).await;
        // Counted before the check: a client that hangs up (or a session
        // that ends) mid-check has still used its attempt.
        let failures = self.with_entry(ip, |e, now| {
            e.failures = e.failures.saturating_add(1);
            e.last_seen = now;
            e.next_slot = now + delay_after(e.failures);
            e.failures
        });
        AuthTurn {
            throttle: self,
            ip,
            failures,
            _turn: guard,
        }
    }

    /// Runs `f` on the entry for `ip`, made if there is none.
    fn with_entry<T>(&self, ip: IpAddr, f: impl FnOnce(&mut ThrottleEntry, Instant) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, e| !e.idle() || now.duration_since(e.last_seen) < FORGET_AFTER);
        }
        f(
            entries.entry(ip).or_insert_with(|| ThrottleEntry::new(now)),
            now,
        )
    }
}

impl AuthTurn<'_> {
    /// The attempt failed: the next one waits the delay from now. Returns the
    /// failures counted for the address.
    pub fn failure(self) -> u32 {
        self.throttle.with_entry(self.ip, |e, now| {
            e.next_slot = e.next_slot.max(now + delay_after(e.failures));
        });
        self.failures
    }

    /// The attempt succeeded: the address starts afresh (its entry is dropped
    /// unless other attempts are queued on it).
    pub fn success(self) {
        let mut entries = self
            .throttle
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(e) = entries.get_mut(&self.ip) else {
            return;
        };
        e.failures = 0;
        e.next_slot = Instant::now();
        // Ours is the map's reference plus the one in `_turn`.
        if Arc::strong_count(&e.turn) == 2 {
            entries.remove(&self.ip);
        }
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
        let mut began = Vec::new();
        for _ in 0..5 {
            let turn = t.wait_turn(ip).await;
            began.push(start.elapsed());
            turn.failure();
        }
        // Each failure doubles the wait before the next: 0.5, 1, 2, 4 s.
        let s = Duration::from_millis;
        assert_eq!(began, [s(0), s(500), s(1500), s(3500), s(7500)]);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let before = Instant::now();
        t.wait_turn(other).await.failure();
        assert_eq!(before.elapsed(), Duration::ZERO, "another address");
        // A success clears the address.
        t.wait_turn(ip).await.success();
        let before = Instant::now();
        t.wait_turn(ip).await.failure();
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    /// Parallel first attempts from one address run one at a time: the
    /// second starts only when the first is over, and then waits its delay.
    #[tokio::test(start_paused = true)]
    async fn parallel_first_attempts_are_serialised() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        let first = t.wait_turn(ip).await;
        assert_eq!(first.failures, 1, "counted before the check");
        let waiting = tokio::time::timeout(Duration::from_secs(60), t.wait_turn(ip)).await;
        assert!(waiting.is_err(), "a second attempt ran alongside the first");
        let start = Instant::now();
        let second = async {
            let turn = t.wait_turn(ip).await;
            (start.elapsed(), turn.failure())
        };
        let first_done = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            first.failure();
        };
        let ((waited, failures), ()) = tokio::join!(second, first_done);
        assert_eq!(waited, Duration::from_millis(1500), "1 s check, then 0.5 s");
        assert_eq!(failures, 2);
        // A turn given up mid-check (the session went away) still counts.
        drop(t.wait_turn(ip).await);
        assert_eq!(t.wait_turn(ip).await.failure(), 4);
    }

    /// Attempts queued behind a success keep the address's one queue.
    #[tokio::test(start_paused = true)]
    async fn success_with_attempts_queued_keeps_them_serialised() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        let first = t.wait_turn(ip).await;
        let queued = async { t.wait_turn(ip).await };
        let succeed = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            first.success();
        };
        let (second, ()) = tokio::join!(queued, succeed);
        let third = tokio::time::timeout(Duration::from_secs(60), t.wait_turn(ip)).await;
        assert!(third.is_err(), "a new attempt ran alongside a queued one");
        assert_eq!(second.failure(), 1, "the success cleared the count");
    }
}
