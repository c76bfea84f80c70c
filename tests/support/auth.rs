//! SMTP AUTH for tests: password hashes for `[[user]]` and what a client
//! sends.

use base64::Engine;

/// An argon2id PHC string for `password`, with the default parameters.
pub fn hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string()
}

/// `text` in base64, as AUTH exchanges carry it.
pub fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `AUTH PLAIN` with an initial response for `user` (RFC 4616: no authzid).
pub fn auth_plain(user: &str, password: &str) -> String {
    format!("AUTH PLAIN {}", base64(&format!("\0{user}\0{password}")))
}
