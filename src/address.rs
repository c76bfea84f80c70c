//! Envelope addresses: RFC 5321 §4.1.2 paths and mailboxes, with RFC 6531's
//! UTF-8 extensions.
//!
//! A `Mailbox` is a local part and a domain, kept apart: policy and routing
//! judge the parsed domain, and the wire form (`Display`) quotes the local
//! part whenever it is not a Dot-string. What an upstream reads back from
//! `MAIL FROM:<{mailbox}>` is therefore exactly the mailbox judged here; the
//! unquoted text of `"a@evil> AUTH=x"@good` would read as another sender plus
//! injected parameters.
//!
//! Written by hand: smtp-proto's address parser (used for everything else on
//! the command line) drops the quotes of a Quoted-string and accepts an empty
//! domain, and no maintained crate parses RFC 5321 paths (RFC 5322 parsers
//! allow comments, folding and obsolete forms that SMTP does not).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets, brackets included.
pub const MAX_SMTP_PATH: usize = 256;
/// RFC 5321 §4.5.3.1.2 / RFC 1035 §2.3.4.
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;

/// Why a path was refused; the session answers 501 with 5.1.7 (sender) or
/// 5.1.3 (recipient).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address too long")]
    TooLong,
    #[error("control character in address")]
    Control,
    #[error("empty local part")]
    EmptyLocalPart,
    #[error("no domain")]
    NoDomain,
    #[error("bad local part")]
    LocalPart,
    #[error("bad domain")]
    Domain,
    #[error("bad source route")]
    SourceRoute,
}

/// A mailbox: `local-part@domain`, the domain possibly an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part's content: unquoted, quoted-pairs resolved.
    local: String,
    /// As the client wrote it (case kept), without a trailing dot.
    domain: String,
}

/// What a MAIL or RCPT path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `<>`: the null reverse-path (RFC 5321 §4.5.5, notifications).
    Null,
    /// `<Postmaster>` without a domain (RFC 5321 §4.5.1), any case.
    Postmaster,
    Mailbox(Mailbox),
}

impl Path {
    /// Parses the text between `<` and `>`. A source route (`@a,@b:`) is
    /// accepted and dropped (RFC 5321 §4.1.1.3, Appendix C).
    pub fn parse(inner: &str) -> Result<Path, AddressError> {
        if inner.len() + 2 > MAX_SMTP_PATH {
            return Err(AddressError::TooLong);
        }
        if inner.chars().any(char::is_control) {
            // C0, DEL and C1 (U+0080–U+009F): RFC 5321 excludes the former,
            // RFC 5198 §2 the latter; a C1 CSI or NEL in a log is an escape.
            return Err(AddressError::Control);
        }
        // Some clients write `< >` for the null path; nothing else is blank.
        if inner.trim_matches(' ').is_empty() {
            return Ok(Path::Null);
        }
        if inner.eq_ignore_ascii_case("postmaster") {
            return Ok(Path::Postmaster);
        }
        let mailbox = match inner.strip_prefix('@') {
            Some(_) => {
                let (route, rest) = split_source_route(inner)?;
                for hop in route.split(',') {
                    let hop = hop.strip_prefix('@').ok_or(AddressError::SourceRoute)?;
                    check_domain(hop).map_err(|_| AddressError::SourceRoute)?;
                }
                rest
            }
            None => inner,
        };
        Mailbox::parse(mailbox).map(Path::Mailbox)
    }
}

/// `@a,@b:rest`: the route and the rest, split at the first `:` outside
/// quotes (a quoted local part may hold one).
fn split_source_route(inner: &str) -> Result<(&str, &str), AddressError> {
    let colon = inner.find([':', '"']).ok_or(AddressError::SourceRoute)?;
    if inner.as_bytes()[colon] != b':' {
        return Err(AddressError::SourceRoute);
    }
    Ok((&inner[..colon], &inner[colon + 1..]))
}

impl Mailbox {
    /// Parses `Local-part "@" ( Domain / address-literal )`.
    pub fn parse(text: &str) -> Result<Mailbox, AddressError> {
        if text.len() + 2 > MAX_SMTP_PATH {
            return Err(AddressError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(AddressError::Control);
        }
        let (local, rest) = if let Some(quoted) = text.strip_prefix('"') {
            let (local, used) = unquote(quoted)?;
            (local, &quoted[used..])
        } else {
            let at = text.rfind('@').ok_or(AddressError::NoDomain)?;
            let local = &text[..at];
            if !is_dot_string(local) {
                return Err(if local.is_empty() {
                    AddressError::EmptyLocalPart
                } else {
                    AddressError::LocalPart
                });
            }
            (local.to_owned(), &text[at..])
        };
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        let domain = rest.strip_prefix('@').ok_or(AddressError::LocalPart)?;
        if domain.is_empty() {
            return Err(AddressError::NoDomain);
        }
        check_domain(domain)?;
        Ok(Mailbox {
            local,
            domain: domain.to_owned(),
        })
    }

    /// A mailbox from a local part's content and a domain, as configuration
    /// or an older spool names them; the local part is quoted as needed.
    pub fn from_parts(local: &str, domain: &str) -> Result<Mailbox, AddressError> {
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        if local.chars().any(|c| c.is_control()) {
            return Err(AddressError::Control);
        }
        check_domain(domain)?;
        let mailbox = Mailbox {
            local: local.to_owned(),
            domain: domain.to_owned(),
        };
        if mailbox.to_string().len() + 2 > MAX_SMTP_PATH {
            return Err(AddressError::TooLong);
        }
        Ok(mailbox)
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain as written (an address literal keeps its brackets).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The domain as policy and routing compare it: ASCII lower case.
    pub fn domain_lowercase(&self) -> String {
        self.domain.to_ascii_lowercase()
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

/// The wire form: the local part as a Dot-string when it is one, else as a
/// Quoted-string with `"` and `\` escaped (RFC 5321 §4.1.2: a local part is
/// sent unquoted when it can be).
impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// RFC 5321 §4.1.2 atext, with RFC 6531 §3.3's UTF-8 (controls are refused
/// before this is asked).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// `Atom *("." Atom)`.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Reads a Quoted-string's content after its opening `"`: the content, and
/// how many bytes (closing quote included) it took.
fn unquote(s: &str) -> Result<(String, usize), AddressError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            // quoted-pairSMTP: `\` then %d32-126 (RFC 5321 §4.1.2).
            '\\' => match chars.next() {
                Some((_, e)) if (' '..='~').contains(&e) => out.push(e),
                _ => return Err(AddressError::LocalPart),
            },
            // qtextSMTP: %d32-33 / %d35-91 / %d93-126, and UTF-8 (RFC 6531).
            c if c == ' ' || c.is_ascii_graphic() || !c.is_ascii() => out.push(c),
            _ => return Err(AddressError::LocalPart),
        }
    }
    Err(AddressError::LocalPart)
}

/// `Domain / address-literal` (RFC 5321 §4.1.2, §4.1.3); U-labels allowed
/// (RFC 6531 §3.3). A general address literal (`[tag:...]`) is refused: no
/// route can take it.
fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let inner = literal.strip_suffix(']').ok_or(AddressError::Domain)?;
        let valid = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                inner[5..].parse::<Ipv6Addr>().is_ok()
            }
            _ => inner.parse::<Ipv4Addr>().is_ok(),
        };
        return if valid {
            Ok(())
        } else {
            Err(AddressError::Domain)
        };
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(AddressError::Domain)
    }
}

/// A string as it may appear in a log line: anything that is not printable
/// (controls, line and paragraph separators, bidirectional overrides) is
/// escaped, so client input cannot forge lines or drive a terminal.
pub struct Printable<'a>(pub &'a str);

impl Printable<'_> {
    /// Whether `c` is escaped: controls (C0, DEL, C1), zero-width and
    /// bidirectional formatting characters, line and paragraph separators.
    pub fn escapes(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    }
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if Printable::escapes(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Mailbox {
        match Path::parse(s) {
            Ok(Path::Mailbox(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn dot_strings_and_quoted_strings() {
        let m = mailbox("john.smith@Good.Test");
        assert_eq!((m.local_part(), m.domain()), ("john.smith", "Good.Test"));
        assert_eq!(m.domain_lowercase(), "good.test");
        assert_eq!(m.to_string(), "john.smith@Good.Test");

        let m = mailbox("\"john smith\"@good.test");
        assert_eq!(m.local_part(), "john smith");
        assert_eq!(m.to_string(), "\"john smith\"@good.test");

        // Needless quotes go; needed escapes stay.
        assert_eq!(mailbox("\"john\"@good.test").to_string(), "john@good.test");
        let m = mailbox(r#""a\"b\\c"@d.test"#);
        assert_eq!(m.local_part(), r#"a"b\c"#);
        assert_eq!(m.to_string(), r#""a\"b\\c"@d.test"#);
    }

    #[test]
    fn injection_stays_inside_the_quotes() {
        let m = mailbox("\"ceo@evil.test> AUTH=ceo@evil.test ENVID=x\"@good.test");
        assert_eq!(m.domain(), "good.test");
        assert_eq!(
            m.to_string(),
            "\"ceo@evil.test> AUTH=ceo@evil.test ENVID=x\"@good.test"
        );
        // The wire form reads back as the same mailbox.
        assert_eq!(mailbox(&m.to_string()), m);
    }

    #[test]
    fn null_postmaster_and_source_routes() {
        assert_eq!(Path::parse(""), Ok(Path::Null));
        assert_eq!(Path::parse(" "), Ok(Path::Null));
        assert_eq!(Path::parse("PostMaster"), Ok(Path::Postmaster));
        let m = mailbox("@a.test,@b.test:user@c.test");
        assert_eq!(m.to_string(), "user@c.test");
        assert_eq!(
            Path::parse("@a.test:\"x:y\"@c.test"),
            Ok(Path::Mailbox(Mailbox::parse("\"x:y\"@c.test").unwrap()))
        );
        assert_eq!(Path::parse("@:user@c.test"), Err(AddressError::SourceRoute));
    }

    #[test]
    fn refused() {
        for (text, why) in [
            ("foo@", AddressError::NoDomain),
            ("foo", AddressError::NoDomain),
            ("@b.test", AddressError::SourceRoute),
            ("\"\"@b.test", AddressError::EmptyLocalPart),
            ("a..b@c.test", AddressError::LocalPart),
            ("a b@c.test", AddressError::LocalPart),
            ("\"a\"b@c.test", AddressError::LocalPart),
            ("\"a@c.test", AddressError::LocalPart),
            ("\"a\\\"@c.test", AddressError::LocalPart),
            ("a@b..test", AddressError::Domain),
            ("a@-b.test", AddressError::Domain),
            ("a@b.test.", AddressError::Domain),
            ("a@b_c.test", AddressError::Domain),
            ("a@[999.1.1.1]", AddressError::Domain),
            ("a@[tag:x]", AddressError::Domain),
            ("a@b.test> X=1", AddressError::Domain),
            ("a\u{9b}b@c.test", AddressError::Control),
            ("\"a\u{85}\"@c.test", AddressError::Control),
            ("a@c\u{7f}.test", AddressError::Control),
        ] {
            assert_eq!(Path::parse(text), Err(why), "{text}");
        }
        let long = format!("{}@b.test", "a".repeat(250));
        assert_eq!(Path::parse(&long), Err(AddressError::TooLong));
    }

    #[test]
    fn literals_and_utf8() {
        assert_eq!(mailbox("a@[192.0.2.1]").domain(), "[192.0.2.1]");
        assert_eq!(
            mailbox("b@[IPv6:2001:db8::1]").to_string(),
            "b@[IPv6:2001:db8::1]"
        );
        let m = mailbox("孫子@áéíóú.org");
        assert!(!m.is_ascii());
        assert_eq!(m.to_string(), "孫子@áéíóú.org");
        assert_eq!(mailbox("\"é x\"@b.test").to_string(), "\"é x\"@b.test");
    }

    #[test]
    fn from_parts_quotes_what_needs_it() {
        let m = Mailbox::from_parts("john smith", "good.test").unwrap();
        assert_eq!(m.to_string(), "\"john smith\"@good.test");
        assert_eq!(Mailbox::parse(&m.to_string()).unwrap(), m);
        assert!(Mailbox::from_parts("", "a.test").is_err());
        assert!(Mailbox::from_parts("a\r\nb", "a.test").is_err());
        assert!(Mailbox::from_parts("a", "a.test> X").is_err());
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        assert_eq!(Printable("a\u{9b}2Jb\nc").to_string(), "a\\u{9b}2Jb\\u{a}c");
        assert_eq!(Printable("é\u{202e}").to_string(), "é\\u{202e}");
    }
}
