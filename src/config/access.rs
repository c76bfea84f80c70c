//! `[access]`: who may relay without AUTH, whose PROXY headers are believed,
//! and which senders are accepted. Lists that would make an open relay are
//! refused; very wide ones are warned about (`networks`).

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::networks::{PublicCover, canonical_net, full_cover, public_cover, public_size};
use super::raw::{Network, RawAccess};
use super::source::Source;
use super::{ConfigError, ListenerConfig, lowercase_all};

#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub relay_networks: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// When set, only these MAIL FROM domains (and `<>`) are accepted from anyone.
    pub sender_domains: Option<Vec<String>>,
    pub null_sender: NullSender,
}

/// Whether `MAIL FROM:<>` (delivery notifications, RFC 5321 §4.5.5) is
/// accepted. It names no domain, so `sender_domains` cannot judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NullSender {
    /// Accepted from whoever may relay (bounces from Exchange need it).
    #[default]
    Allow,
    /// Refused with `553 5.7.1`: for relays that carry only user mail.
    Deny,
}

/// The networks (canonical), refused when they make an open relay; PROXY
/// listeners need trusted proxies.
pub(super) fn validate(
    src: &Source,
    raw: RawAccess,
    listeners: &[ListenerConfig],
    warnings: &mut Vec<String>,
) -> Result<AccessConfig, ConfigError> {
    // Clients are matched by their canonical address (IPv4-mapped IPv6
    // becomes IPv4), so networks written in mapped form are made IPv4 too.
    let canonical = |nets: Vec<Spanned<Network>>| -> Vec<Spanned<IpNet>> {
        nets.into_iter()
            .map(|n| Spanned::new(n.span(), canonical_net(n.get_ref().0)))
            .collect()
    };
    let relay_networks = canonical(raw.relay_networks);
    let trusted_proxies = canonical(raw.trusted_proxies);
    if let Some((who, line)) = full_cover(src, &relay_networks) {
        return Err(src.error(
            line,
            "access.relay_networks",
            format!("{who} on the Internet relay: an open relay"),
            "list only your own mail servers' networks, e.g. \"192.0.2.10/32\"",
        ));
    }
    if let Some((who, line)) = full_cover(src, &trusted_proxies) {
        return Err(src.error(
            line,
            "access.trusted_proxies",
            format!(
                "{who} send a PROXY header that claims any source \
                 address (127.0.0.1 or one in relay_networks) and so relay: an open relay"
            ),
            "list only your load balancers' addresses, e.g. \"192.0.2.5/32\"",
        ));
    }
    let mut wide_entry = false;
    for net in &relay_networks {
        let wide = match net.get_ref() {
            IpNet::V4(n) => n.prefix_len() < 16 && !n.network().is_loopback(),
            IpNet::V6(n) => n.prefix_len() < 32,
        };
        // Private space may be wide: no Internet client comes from it.
        if wide && public_size(*net.get_ref()) > 0 {
            wide_entry = true;
            warnings.push(format!(
                "access.relay_networks: {} is very wide; everyone in it may relay. Office 365 \
                 sends from ranges shared by all tenants: allow-listing them admits all of \
                 Office 365, so restrict senders with [access] sender_domains",
                net.get_ref()
            ));
        }
    }
    for (nets, key, who) in [
        (&relay_networks, "access.relay_networks", "relay"),
        (
            &trusted_proxies,
            "access.trusted_proxies",
            "claim any source address",
        ),
    ] {
        match public_cover(src, nets) {
            Some(PublicCover::Open {
                entries,
                line,
                what,
            }) => {
                return Err(src.error(
                    line,
                    key,
                    format!("{entries} {what} {who}: an open relay"),
                    "list only your own servers' networks, e.g. \"192.0.2.10/32\"; \
                     private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7) may be wide",
                ));
            }
            // A wide single entry is already warned about above.
            Some(PublicCover::Wide { .. }) if wide_entry && who == "relay" => {}
            Some(PublicCover::Wide {
                entries,
                line,
                what,
            }) => warnings.push(src.warning(
                line,
                key,
                &format!("{entries} {what} {who}"),
                "list only your own servers' networks",
            )),
            None => {}
        }
    }
    if listeners.iter().any(|l| l.proxy_protocol) && trusted_proxies.is_empty() {
        return Err(src.error_at_key(
            "listener.proxy_protocol",
            "a listener expects PROXY headers but [access] trusted_proxies is empty, so every connection would be closed",
            "list your load balancers' addresses in [access] trusted_proxies",
        ));
    }
    Ok(AccessConfig {
        relay_networks: relay_networks
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        trusted_proxies: trusted_proxies
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        sender_domains: raw.sender_domains.map(lowercase_all),
        null_sender: raw.null_sender.unwrap_or_default(),
    })
}
