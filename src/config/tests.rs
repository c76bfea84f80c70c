//! `Config::parse` end to end: each error at its line and key, defaults, normalisation.

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::*;

const MINIMAL: &str =
    "[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"starttls\"\n\n[queue]\npath = \"spool\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/smarthost/smarthost.toml"))
}

#[test]
fn minimal_config_gets_defaults_and_resolves_paths() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listeners[0].address, "127.0.0.1:2525".parse().unwrap());
    assert!(c.listeners[0].require_tls);
    assert_eq!(c.queue.path, Path::new("/etc/smarthost/spool"));
    assert_eq!(c.limits.command_timeout, Duration::from_secs(300));
    assert_eq!(c.limits.bare_line_endings, BareLineEndings::Normalize);
}

#[test]
fn unknown_key_names_line_key_and_fix() {
    let e = parse(&format!("{MINIMAL}\n[limits]\nmax_mesage_size = 10\n")).unwrap_err();
    assert_eq!(e.line, 9, "{e}");
    assert_eq!(e.key, "limits.max_mesage_size");
    assert!(e.problem.contains("unknown field"), "{e}");
    assert!(e.fix.contains("spelling"));
}

#[test]
fn bad_duration_and_network_are_located() {
    let e = parse(&format!(
        "{MINIMAL}[limits]\ndata_timeout = \"10 parsecs\"\n"
    ))
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (8, "limits.data_timeout"), "{e}");
    let e = parse(&format!(
        "{MINIMAL}[access]\nrelay_networks = [\"10.0.0.0/33\"]\n"
    ))
    .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_str()),
        (8, "access.relay_networks"),
        "{e}"
    );
}

#[test]
fn mapped_networks_become_ipv4() {
    let c = parse(&format!(
        "{MINIMAL}[access]\nrelay_networks = [\"::ffff:192.0.2.0/120\"]\n"
    ))
    .unwrap();
    assert_eq!(
        c.access.relay_networks,
        ["192.0.2.0/24".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn open_relay_networks_are_refused() {
    for net in ["0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96"] {
        let e = parse(&format!(
            "{MINIMAL}[access]\nrelay_networks = [\"{net}\"]\n"
        ))
        .unwrap_err();
        assert!(e.problem.contains("open relay"), "{e}");
    }
}

#[test]
fn ipv6_networks_missing_only_the_mapped_range_cover_every_ipv6_client() {
    // The 96 siblings along the path to ::ffff:0:0/96: all of IPv6 but it.
    let mapped: u128 = 0xffff << 32;
    let nets: Vec<String> = (1..=96u32)
        .map(|p| {
            let bit = 1u128 << (128 - p);
            let sibling = (mapped & !(bit - 1)) ^ bit;
            format!("\"{}/{p}\"", std::net::Ipv6Addr::from(sibling))
        })
        .collect();
    let all = format!(
        "{MINIMAL}[access]\nrelay_networks = [{}]\n",
        nets.join(", ")
    );
    let e = parse(&all).unwrap_err();
    assert!(e.problem.contains("every IPv6 address"), "{e}");
    // Without 2000::/3 (all public IPv6 space) there is a real gap, and
    // what is left is not public: accepted.
    assert_eq!(nets[2], "\"2000::/3\"");
    let gap = format!(
        "{MINIMAL}[access]\nrelay_networks = [{}, {}]\n",
        nets[..2].join(", "),
        nets[3..].join(", ")
    );
    assert!(parse(&gap).is_ok());
}

#[test]
fn bare_addresses_are_single_hosts() {
    let c = parse(&format!(
        "{MINIMAL}[access]\nrelay_networks = [\"10.1.2.3\", \"2001:db8::1\"]\ntrusted_proxies = [\"192.0.2.5\"]\n"
    ))
    .unwrap();
    let nets = |v: &[&str]| {
        v.iter()
            .map(|n| n.parse::<IpNet>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        c.access.relay_networks,
        nets(&["10.1.2.3/32", "2001:db8::1/128"])
    );
    assert_eq!(c.access.trusted_proxies, nets(&["192.0.2.5/32"]));
}

#[test]
fn unusable_argon2_parameters_are_an_error() {
    // p=4 needs m >= 32 KiB: argon2 could never verify this hash.
    let text = format!(
        "{MINIMAL}[[user]]\nname = \"a\"\npassword_hash = \"$argon2id$v=19$m=8,t=1,p=4$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA\"\n"
    );
    let e = parse(&text).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (9, "user.password_hash"), "{e}");
}

#[test]
fn routes_must_name_known_upstreams() {
    let text = format!(
        "{MINIMAL}[[upstream]]\nname = \"eu-1\"\naddress = \"eu.example.net:25\"\ntls = \"required\"\n\n[[route]]\nsender_domains = [\"a.example\"]\nupstreams = [\"us-1\"]\n"
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "route.upstreams");
    assert_eq!(e.line, 12, "{e}");
}

#[test]
fn user_hash_must_be_argon2id() {
    let text = format!("{MINIMAL}[[user]]\nname = \"a\"\npassword_hash = \"plaintext\"\n");
    let e = parse(&text).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (9, "user.password_hash"), "{e}");
}

#[test]
fn errors_found_after_parsing_are_put_on_the_line_of_their_key() {
    let e = parse(&format!("{MINIMAL}retry_min = \"2h\"\n")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (7, "queue.retry_min"), "{e}");
    let e = parse(&format!("{MINIMAL}\n[limits]\ncommand_timeout = \"0s\"\n")).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_str()),
        (9, "limits.command_timeout"),
        "{e}"
    );
    let proxied = MINIMAL.replace(
        "tls = \"starttls\"\n",
        "tls = \"starttls\"\nproxy_protocol = true\n",
    );
    let e = parse(&proxied).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_str()),
        (4, "listener.proxy_protocol"),
        "{e}"
    );
}
