//! Who may relay and as whom: every access decision is made here.

use std::net::IpAddr;

use crate::address::Mailbox;
use crate::config::{AccessConfig, NullSender, UserConfig};

/// May this client relay? Only from `relay_networks` or after AUTH; an IPv4
/// client seen as `::ffff:a.b.c.d` matches IPv4 rules (`to_canonical`).
pub fn may_relay(access: &AccessConfig, client: IpAddr, authenticated: bool) -> bool {
    let ip = client.to_canonical();
    authenticated || access.relay_networks.iter().any(|n| n.contains(&ip))
}

/// May mail come from `sender` (`None`: the null sender)? `[access]
/// sender_domains` limits everyone and a user's `allowed_sender_domains`
/// limits that user, both judged on the parsed domain. The null sender
/// (bounces, RFC 5321 §4.5.5) is allowed unless `[access] null_sender = "deny"`.
pub fn sender_allowed(
    access: &AccessConfig,
    user: Option<&UserConfig>,
    sender: Option<&Mailbox>,
) -> bool {
    let Some(sender) = sender else {
        return access.null_sender == NullSender::Allow;
    };
    let domain = sender.domain_lowercase();
    let domain = domain.trim_end_matches('.');
    let within = |list: &Option<Vec<String>>| match list {
        None => true,
        Some(domains) => domains.iter().any(|d| d == domain),
    };
    within(&access.sender_domains) && user.is_none_or(|u| within(&u.allowed_sender_domains))
}

/// The lower-cased domain of a stored address (a mailbox's wire form, as
/// the spool keeps it). A domain never holds `@`, so the last one separates
/// it even when a quoted local part holds another.
pub fn domain_of(address: &str) -> Option<String> {
    if let Ok(m) = Mailbox::parse(address) {
        return Some(m.domain_lowercase());
    }
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(nets: &[&str], domains: Option<&[&str]>) -> AccessConfig {
        AccessConfig {
            relay_networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
            trusted_proxies: vec![],
            sender_domains: domains.map(|d| d.iter().map(|s| s.to_string()).collect()),
            null_sender: NullSender::Allow,
        }
    }

    #[test]
    fn networks_match_canonical_addresses() {
        let a = access(&["192.0.2.0/24", "2001:db8::/48"], None);
        assert!(may_relay(&a, "192.0.2.9".parse().unwrap(), false));
        assert!(may_relay(&a, "::ffff:192.0.2.9".parse().unwrap(), false));
        assert!(may_relay(&a, "2001:db8::5".parse().unwrap(), false));
        assert!(!may_relay(&a, "198.51.100.1".parse().unwrap(), false));
        assert!(may_relay(&a, "198.51.100.1".parse().unwrap(), true));
    }

    fn m(s: &str) -> Option<Mailbox> {
        Some(Mailbox::parse(s).unwrap())
    }

    #[test]
    fn sender_domains_allow_null_sender() {
        let mut a = access(&[], Some(&["tenant.example"]));
        assert!(sender_allowed(&a, None, None));
        assert!(sender_allowed(&a, None, m("x@Tenant.Example").as_ref()));
        assert!(!sender_allowed(&a, None, m("x@other.example").as_ref()));
        // The domain is the parsed one, whatever the quoted local part says.
        assert!(!sender_allowed(
            &a,
            None,
            m("\"x@tenant.example\"@other.example").as_ref()
        ));
        assert!(sender_allowed(
            &access(&[], None),
            None,
            m("x@other.example").as_ref()
        ));
        a.null_sender = NullSender::Deny;
        assert!(!sender_allowed(&a, None, None));
    }

    #[test]
    fn user_sender_domains_narrow_further() {
        let user = UserConfig {
            name: "u".into(),
            password_hash: String::new(),
            allowed_sender_domains: Some(vec!["a.example".into()]),
        };
        let open = access(&[], None);
        assert!(sender_allowed(
            &open,
            Some(&user),
            m("x@a.example").as_ref()
        ));
        assert!(!sender_allowed(
            &open,
            Some(&user),
            m("x@b.example").as_ref()
        ));
        assert!(sender_allowed(&open, Some(&user), None));
        let both = access(&[], Some(&["b.example"]));
        assert!(!sender_allowed(
            &both,
            Some(&user),
            m("x@a.example").as_ref()
        ));
    }

    #[test]
    fn stored_addresses_give_their_domain() {
        assert_eq!(domain_of("a@B.test").as_deref(), Some("b.test"));
        assert_eq!(
            domain_of("\"a@evil.test\"@Good.Test").as_deref(),
            Some("good.test")
        );
        assert_eq!(domain_of(""), None);
    }
}
