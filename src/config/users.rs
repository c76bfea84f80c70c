//! `[[user]]`: who may AUTH, by an argon2id hash checked for syntax and strength.

use toml::Spanned;

use super::raw::RawUser;
use super::source::Source;
use super::{ConfigError, lowercase_all};

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    /// An argon2id PHC string, checked for syntax at load time.
    pub password_hash: String,
    pub allowed_sender_domains: Option<Vec<String>>,
}

/// Unique names and usable argon2id hashes; weak hashes are warned about.
pub(super) fn validate(
    src: &Source,
    raw: Vec<Spanned<RawUser>>,
    warnings: &mut Vec<String>,
) -> Result<Vec<UserConfig>, ConfigError> {
    let mut users: Vec<UserConfig> = Vec::new();
    for u in raw {
        let span = u.span();
        let u = u.into_inner();
        if users.iter().any(|o| o.name == u.name) {
            return Err(src.error(
                src.line(span.start),
                "user.name",
                format!("user {:?} is defined twice", u.name),
                "give each [[user]] a unique name",
            ));
        }
        let hash_line = src.line(u.password_hash.span().start);
        let hash = u.password_hash.into_inner();
        let params = argon2::PasswordHash::new(&hash)
            .ok()
            .filter(|h| h.algorithm.as_str() == "argon2id")
            .and_then(|h| argon2::Params::try_from(&h).ok());
        match params {
            Some(p) => {
                if !owasp_strength(&p) {
                    warnings.push(src.warning(
                        hash_line,
                        "user.password_hash",
                        &format!(
                            "the hash of user {:?} costs m={} KiB, t={}, p={}, below OWASP's \
                             minimum for argon2id (m=19456 KiB, t=2, p=1, or an equivalent \
                             trade-off): a leaked config is cheap to brute-force",
                            u.name,
                            p.m_cost(),
                            p.t_cost(),
                            p.p_cost()
                        ),
                        "run `smarthost hash-password` and paste its output",
                    ));
                }
            }
            None => {
                return Err(src.error(
                    hash_line,
                    "user.password_hash",
                    format!(
                        "the password of user {:?} is not an argon2id PHC string",
                        u.name
                    ),
                    "run `smarthost hash-password` and paste its output (\"$argon2id$v=19$...\")",
                ));
            }
        }
        users.push(UserConfig {
            name: u.name,
            password_hash: hash,
            allowed_sender_domains: u.allowed_sender_domains.map(lowercase_all),
        });
    }
    Ok(users)
}

/// OWASP Password Storage Cheat Sheet, argon2id: its equally strong
/// (memory KiB, passes) pairs, each with one lane.
const OWASP_ARGON2ID: [(u32, u32); 5] = [
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];

/// At least one of OWASP's argon2id settings in both memory and passes.
fn owasp_strength(p: &argon2::Params) -> bool {
    OWASP_ARGON2ID
        .iter()
        .any(|&(m, t)| p.m_cost() >= m && p.t_cost() >= t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owasp_settings_are_the_threshold() {
        let p = |m, t| argon2::Params::new(m, t, 1, None).unwrap();
        for (m, t) in OWASP_ARGON2ID {
            assert!(owasp_strength(&p(m, t)), "m={m} t={t}");
            assert!(!owasp_strength(&p(m - 1, t)), "m={} t={t}", m - 1);
        }
        assert!(!owasp_strength(&p(19_456, 1)));
        assert!(owasp_strength(&argon2::Params::default()));
    }
}
