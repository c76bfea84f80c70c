//! How much of the Internet a list of networks lets in: every address (an
//! open relay), or how much public space (open from a /1 of IPv4, wide from
//! a /8's worth). Entries are named as written, with the line of the one
//! that crosses the line.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv6Net};
use toml::Spanned;

use super::source::Source;

/// `::ffff:a.b.c.d/n` (n >= 96) as the IPv4 network it denotes.
pub(super) fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// Space that may be listed as widely as one likes: no Internet client
/// comes from it (RFC 1918, loopback, RFC 4193 unique local, link-local).
const PRIVATE: [&str; 8] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

/// IPv4: a /1 holds at least 2^31 - 2^25 public addresses (0.0.0.0/1 less
/// 10/8 and 127/8), so any list holding a /1 of public space reaches this.
const OPEN_V4: u128 = (1 << 31) - (1 << 25);
/// IPv4: every /8 but 10/8 and 127/8 holds at least 2^24 - 2^20 public
/// addresses (172.0.0.0/8 less 172.16/12): warn from there.
const WIDE_V4: u128 = (1 << 24) - (1 << 20);
/// IPv6 global unicast (RFC 4291 §2.4): 2000::/3 is all of it; a list that
/// covers it is open, and from a /8's worth it is wide.
const OPEN_V6: u128 = 1 << 125;
const WIDE_V6: u128 = 1 << 120;

/// How much public space a list of networks lets in, when it is too much.
pub(super) enum PublicCover {
    /// At least a /1 of public IPv4 or all of 2000::/3.
    Open {
        entries: String,
        line: usize,
        what: String,
    },
    /// At least a /8's worth: allowed, with a warning.
    Wide {
        entries: String,
        line: usize,
        what: String,
    },
}

/// The number of addresses of `net` outside `PRIVATE` (IPv4) or inside
/// 2000::/3 (IPv6). Prefixes either nest or are disjoint, so the overlaps
/// with the disjoint private ranges are subtracted exactly.
pub(super) fn public_size(net: IpNet) -> u128 {
    let size = |n: IpNet| -> u128 {
        let bits = n.max_prefix_len() - n.prefix_len();
        if bits >= 128 {
            u128::MAX
        } else {
            1u128 << bits
        }
    };
    let overlap = |a: IpNet, b: IpNet| -> u128 {
        if a.contains(&b) {
            size(b)
        } else if b.contains(&a) {
            size(a)
        } else {
            0
        }
    };
    match net {
        IpNet::V4(_) => {
            let private: u128 = PRIVATE
                .iter()
                .filter_map(|p| p.parse::<IpNet>().ok())
                .map(|p| overlap(net, p))
                .sum();
            size(net) - private
        }
        IpNet::V6(_) => {
            let unicast: IpNet = "2000::/3".parse().expect("a valid network");
            overlap(net, unicast)
        }
    }
}

/// An entry as written in the file, without its quotes.
fn as_written<'a>(src: &Source<'a>, net: &Spanned<IpNet>) -> &'a str {
    src.text[net.span()].trim_matches(|c| c == '"' || c == '\'')
}

/// When `nets` (canonical, see `canonical_net`) together hold every IPv4
/// or every IPv6 client address: `"0.0.0.0/1", "128.0.0.0/1" together let
/// every IPv4 address` (the entries as written, up to the one completing
/// the cover) and the line of that entry.
pub(super) fn full_cover(src: &Source, nets: &[Spanned<IpNet>]) -> Option<(String, usize)> {
    // Mapped clients are matched as IPv4 (`to_canonical`), so an IPv6 list
    // that misses only ::ffff:0:0/96 still admits every IPv6 client.
    let mapped = IpNet::V6(Ipv6Net::new(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96).ok()?);
    let mut union = vec![mapped];
    for (i, net) in nets.iter().enumerate() {
        union.push(*net.get_ref());
        let Some(all) = IpNet::aggregate(&union)
            .into_iter()
            .find(|n| n.prefix_len() == 0)
        else {
            continue;
        };
        let same_family: Vec<&str> = nets[..=i]
            .iter()
            .filter(|n| n.get_ref().network().is_ipv4() == all.network().is_ipv4())
            .map(|n| as_written(src, n))
            .collect();
        let family = if all.network().is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let verb = if same_family.len() == 1 {
            "lets"
        } else {
            "together let"
        };
        let entries = same_family
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        return Some((
            format!("{entries} {verb} every {family} address"),
            src.line(net.span().start),
        ));
    }
    None
}

/// When the union of `nets` (canonical) holds a /1 of public IPv4 space
/// or all of 2000::/3 (`Open`), or a /8's worth (`Wide`): the entries that
/// bring public space, up to the one that crosses the line, and its line.
pub(super) fn public_cover(src: &Source, nets: &[Spanned<IpNet>]) -> Option<PublicCover> {
    let mut found = None;
    for v4 in [true, false] {
        let (open, wide) = if v4 {
            (OPEN_V4, WIDE_V4)
        } else {
            (OPEN_V6, WIDE_V6)
        };
        let mut union: Vec<IpNet> = Vec::new();
        let mut wide_at = None;
        for (i, net) in nets.iter().enumerate() {
            if net.get_ref().network().is_ipv4() != v4 {
                continue;
            }
            union.push(*net.get_ref());
            let public: u128 = IpNet::aggregate(&union)
                .into_iter()
                .map(public_size)
                .fold(0, u128::saturating_add);
            let describe = || {
                let entries: Vec<String> = nets[..=i]
                    .iter()
                    .filter(|n| {
                        n.get_ref().network().is_ipv4() == v4 && public_size(*n.get_ref()) > 0
                    })
                    .map(|n| format!("\"{}\"", as_written(src, n)))
                    .collect();
                let verb = if entries.len() == 1 {
                    "lets"
                } else {
                    "together let"
                };
                let what = if v4 {
                    format!("{verb} {public} public IPv4 addresses")
                } else {
                    format!(
                        "{verb} {} of the global unicast IPv6 space (2000::/3)",
                        if public >= OPEN_V6 {
                            "all".to_owned()
                        } else {
                            format!("1/{}", OPEN_V6 / public.max(1))
                        }
                    )
                };
                (entries.join(", "), src.line(net.span().start), what)
            };
            if public >= open {
                let (entries, line, what) = describe();
                return Some(PublicCover::Open {
                    entries,
                    line,
                    what,
                });
            }
            if public >= wide && wide_at.is_none() {
                wide_at = Some(describe());
            }
        }
        if found.is_none() {
            found = wide_at.map(|(entries, line, what)| PublicCover::Wide {
                entries,
                line,
                what,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_space_is_counted_without_private_ranges() {
        let n = |s: &str| public_size(s.parse().unwrap());
        assert_eq!(n("0.0.0.0/1"), OPEN_V4);
        assert!(n("128.0.0.0/1") >= OPEN_V4);
        assert_eq!(n("10.0.0.0/8"), 0);
        assert_eq!(n("172.0.0.0/8"), WIDE_V4);
        assert_eq!(n("192.0.2.1/32"), 1);
        assert_eq!(n("::/0"), OPEN_V6);
        assert_eq!(n("fc00::/7"), 0);
        assert_eq!(n("2001:db8::/32"), 1 << 96);
    }
}
