//! The file as written: serde mirrors of each section, unknown keys refused.
//! Positions (`Spanned`) are kept where a later check needs a line to name.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::{BareLineEndings, ListenerTls, LogFormat, NullSender, UpstreamTls};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) hostname: Option<String>,
    pub(super) postmaster: Option<String>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) listener: Vec<Spanned<RawListener>>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) access: RawAccess,
    #[serde(default)]
    pub(super) user: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) queue: Option<RawQueue>,
    #[serde(default)]
    pub(super) upstream: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
    pub(super) admin: Option<Spanned<RawAdmin>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) address: SocketAddr,
    pub(super) tls: ListenerTls,
    #[serde(default = "yes")]
    pub(super) require_tls: bool,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) certificate: PathBuf,
    pub(super) private_key: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certificate: PathBuf,
    pub(super) private_key: Spanned<PathBuf>,
    #[serde(default)]
    pub(super) additional: Vec<RawCertificate>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    #[serde(default)]
    pub(super) relay_networks: Vec<Spanned<Network>>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<Spanned<Network>>,
    pub(super) sender_domains: Option<Vec<String>>,
    pub(super) null_sender: Option<NullSender>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) password_hash: Spanned<String>,
    pub(super) allowed_sender_domains: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_message_size: Option<Spanned<usize>>,
    pub(super) max_recipients: Option<Spanned<usize>>,
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) max_connections_per_ip: Option<Spanned<usize>>,
    pub(super) max_auth_failures: Option<u32>,
    pub(super) max_errors: Option<Spanned<u32>>,
    pub(super) command_timeout: Option<HumanDuration>,
    pub(super) data_timeout: Option<HumanDuration>,
    pub(super) banner_delay: Option<HumanDuration>,
    pub(super) bare_line_endings: Option<BareLineEndings>,
    pub(super) shutdown_grace: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) path: PathBuf,
    pub(super) retry_min: Option<HumanDuration>,
    pub(super) retry_max: Option<HumanDuration>,
    pub(super) max_lifetime: Option<HumanDuration>,
    pub(super) connect_timeout: Option<HumanDuration>,
    pub(super) command_timeout: Option<HumanDuration>,
    pub(super) data_timeout: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) address: Spanned<String>,
    pub(super) tls: Spanned<UpstreamTls>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) tls_name: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) sender_domains: Option<Vec<String>>,
    pub(super) upstreams: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) address: SocketAddr,
    pub(super) token_file: Option<PathBuf>,
    pub(super) recent_messages: Option<usize>,
}

/// A network in CIDR form, or a bare address meaning that one host (/32 or
/// /128), as Postfix's mynetworks reads it. The error names the entry.
#[derive(Clone, Copy)]
pub(super) struct Network(pub(super) IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Network(net));
        }
        if let Ok(addr) = text.parse::<std::net::IpAddr>() {
            return Ok(Network(IpNet::from(addr)));
        }
        Err(serde::de::Error::custom(format!(
            "the entry {text:?} is neither an address nor a network in CIDR form"
        )))
    }
}

/// A duration written as `"30s"`, `"5m"`, `"5d"`; the error carries the fix.
#[derive(Clone, Copy)]
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(DurationVisitor)
    }
}

/// Names what is expected in words (`60` without a unit gets "expected a
/// duration such as "60s"", not serde's "expected a string").
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"60s\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HumanDuration, E> {
        humantime::parse_duration(text)
            .map(HumanDuration)
            .map_err(|e| {
                E::custom(format!(
                    "invalid duration {text:?} ({e}); write a number and a unit, e.g. \"30s\", \"5m\", \"1h\", \"5d\""
                ))
            })
    }
}
