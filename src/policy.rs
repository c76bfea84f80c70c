//! Who may relay and as whom: every access decision is made here.

use std::net::IpAddr;

use crate::config::{AccessConfig, UserConfig};

/// May this client relay? Only from `relay_networks` or after AUTH; an IPv4
/// client seen as `::ffff:a.b.c.d` matches IPv4 rules (`to_canonical`).
pub fn may_relay(access: &AccessConfig, client: IpAddr, authenticated: bool) -> bool {
    let ip = client.to_canonical();
    authenticated || access.relay_networks.iter().any(|n| n.contains(&ip))
}

/// May mail come from `sender`? `[access] sender_domains` limits everyone and
/// a user's `allowed_sender_domains` limits that user; the null sender
/// (bounces) is always allowed.
pub fn sender_allowed(access: &AccessConfig, user: Option<&UserConfig>, sender: &str) -> bool {
    if sender.is_empty() {
        return true;
    }
    let domain = domain_of(sender);
    let within = |list: &Option<Vec<String>>| match list {
        None => true,
        Some(domains) => domain.as_ref().is_some_and(|d| domains.contains(d)),
    };
    within(&access.sender_domains) && user.is_none_or(|u| within(&u.allowed_sender_domains))
}

/// The lower-cased domain of an address (after the last `@`).
pub fn domain_of(address: &str) -> Option<String> {
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

    #[test]
    fn sender_domains_allow_null_sender() {
        let a = access(&[], Some(&["tenant.example"]));
        assert!(sender_allowed(&a, None, ""));
        assert!(sender_allowed(&a, None, "x@Tenant.Example"));
        assert!(!sender_allowed(&a, None, "x@other.example"));
        assert!(sender_allowed(&access(&[], None), None, "x@other.example"));
    }

    #[test]
    fn user_sender_domains_narrow_further() {
        let user = UserConfig {
            name: "u".into(),
            password_hash: String::new(),
            allowed_sender_domains: Some(vec!["a.example".into()]),
        };
        let open = access(&[], None);
        assert!(sender_allowed(&open, Some(&user), "x@a.example"));
        assert!(!sender_allowed(&open, Some(&user), "x@b.example"));
        assert!(sender_allowed(&open, Some(&user), ""));
        let both = access(&[], Some(&["b.example"]));
        assert!(!sender_allowed(&both, Some(&user), "x@a.example"));
    }
}
