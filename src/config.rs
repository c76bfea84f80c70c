//! The configuration: a TOML file parsed once into validated types.
//!
//! `RawConfig` mirrors the file (serde, unknown keys refused); `Config` is what
//! the rest of the program sees: addresses are `SocketAddr`, networks `IpNet`,
//! durations `Duration`, paths resolved against the config file's directory
//! (so `certs/smarthost.crt` beside `/etc/smarthost/smarthost.toml` means
//! `/etc/smarthost/certs/smarthost.crt`). Nothing downstream re-parses strings.
//!
//! Every error names the file, the line, the key and the fix (`ConfigError`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::Mailbox;
use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name in the banner, the EHLO reply and our Received headers.
    pub hostname: String,
    /// Where `RCPT TO:<Postmaster>` (no domain, RFC 5321 §4.5.1) is relayed:
    /// the `postmaster` key, else `postmaster@<hostname>`; `None` when the
    /// hostname is not a mail domain (then that RCPT gets 550 5.1.1).
    pub postmaster: Option<Mailbox>,
    /// `[log]`: how `serve` writes its log lines.
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    /// `None`: a self-signed ECDSA certificate is made at start.
    pub tls: Option<TlsConfig>,
    pub access: AccessConfig,
    pub users: Vec<UserConfig>,
    pub limits: Limits,
    pub queue: QueueConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub admin: Option<AdminConfig>,
    /// Warnings found while validating (logged by `serve`, printed by `check-config`).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// `[log] format`, or `serve --log-format` (which wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` lines; string values quoted and escaped.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?}: expected \"text\" or \"json\"")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain TCP, TLS after the STARTTLS command (RFC 3207), usually port 25 or 587.
    Starttls,
    /// TLS from the first byte (RFC 8314), usually port 465.
    Implicit,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: ListenerTls,
    /// Mail commands before TLS get `530 5.7.0` (RFC 3207 §4).
    pub require_tls: bool,
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone)]
pub struct CertificatePaths {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The primary certificate followed by any additional ones (e.g. RSA beside ECDSA).
    pub certificates: Vec<CertificatePaths>,
}

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

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    /// An argon2id PHC string, checked for syntax at load time.
    pub password_hash: String,
    pub allowed_sender_domains: Option<Vec<String>>,
}

/// What to do with a bare CR or LF inside message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Turn each into CRLF (the stored message never holds one).
    #[default]
    Normalize,
    /// Refuse the message with `550 5.5.2`.
    Reject,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_auth_failures: u32,
    /// Errors one session may make before `421` and close.
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// How long to wait before the banner, to catch clients that talk first.
    pub banner_delay: Duration,
    pub bare_line_endings: BareLineEndings,
    /// How long SIGTERM waits for open sessions before exiting anyway.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 157_286_400,
            max_recipients: 1000,
            max_connections: 2000,
            max_connections_per_ip: 100,
            max_auth_failures: 3,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            banner_delay: Duration::ZERO,
            bare_line_endings: BareLineEndings::Normalize,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub path: PathBuf,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub max_lifetime: Duration,
    /// Upstream timeouts (RFC 5321 §4.5.3.2): TCP connect; greeting and each
    /// command; each block of content and the reply after the final dot.
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Required,
    Opportunistic,
    None,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port`, resolved when connecting so DNS changes are followed.
    pub address: String,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub tls_name: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `None` marks the default route.
    pub sender_domains: Option<Vec<String>>,
    pub upstreams: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Requests (but `/healthz`) need `Authorization: Bearer <its content>`;
    /// required when `address` is not loopback.
    pub token_file: Option<PathBuf>,
    /// Accepted messages remembered in memory for the API and the page.
    pub recent_messages: usize,
}

/// `[admin] recent_messages` when not set.
pub const DEFAULT_RECENT_MESSAGES: usize = 10_000;

/// A config error: where it is, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not tied to a line (e.g. the file is missing).
    pub line: usize,
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}\n  fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: Option<String>,
    postmaster: Option<String>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    listener: Vec<Spanned<RawListener>>,
    tls: Option<RawTls>,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    user: Vec<Spanned<RawUser>>,
    #[serde(default)]
    limits: RawLimits,
    queue: Option<RawQueue>,
    #[serde(default)]
    upstream: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    admin: Option<Spanned<RawAdmin>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: SocketAddr,
    tls: ListenerTls,
    #[serde(default = "yes")]
    require_tls: bool,
    #[serde(default)]
    proxy_protocol: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    certificate: PathBuf,
    private_key: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    private_key: Spanned<PathBuf>,
    #[serde(default)]
    additional: Vec<RawCertificate>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    relay_networks: Vec<Spanned<Network>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<Network>>,
    sender_domains: Option<Vec<String>>,
    null_sender: Option<NullSender>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: Spanned<String>,
    allowed_sender_domains: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_size: Option<Spanned<usize>>,
    max_recipients: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_ip: Option<Spanned<usize>>,
    max_auth_failures: Option<u32>,
    max_errors: Option<Spanned<u32>>,
    command_timeout: Option<HumanDuration>,
    data_timeout: Option<HumanDuration>,
    banner_delay: Option<HumanDuration>,
    bare_line_endings: Option<BareLineEndings>,
    shutdown_grace: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    path: PathBuf,
    retry_min: Option<HumanDuration>,
    retry_max: Option<HumanDuration>,
    max_lifetime: Option<HumanDuration>,
    connect_timeout: Option<HumanDuration>,
    command_timeout: Option<HumanDuration>,
    data_timeout: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    address: Spanned<String>,
    tls: Spanned<UpstreamTls>,
    ca_file: Option<Spanned<PathBuf>>,
    tls_name: Option<String>,
    username: Option<String>,
    password_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    sender_domains: Option<Vec<String>>,
    upstreams: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: SocketAddr,
    token_file: Option<PathBuf>,
    recent_messages: Option<usize>,
}

/// A network in CIDR form, or a bare address meaning that one host (/32 or
/// /128), as Postfix's mynetworks reads it. The error names the entry.
#[derive(Clone, Copy)]
struct Network(IpNet);

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
struct HumanDuration(Duration);

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

// ---------------------------------------------------------------------------
// Loading and validation.

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            problem: format!("cannot read the file: {e}"),
            fix: "pass the path of a readable TOML file with --config".into(),
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = Validator { text, file: path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let mut warnings = Vec::new();

        let hostname = match raw.hostname {
            Some(h) => {
                if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control()) {
                    return Err(v.error_at_key(
                        "hostname",
                        format!("{h:?} is not a host name"),
                        "use the fully qualified name clients connect to, e.g. \"smarthost.example.com\"",
                    ));
                }
                h
            }
            None => system_hostname(),
        };
        let postmaster = match raw.postmaster {
            Some(text) => match Mailbox::parse(&text) {
                Ok(m) => Some(m),
                Err(e) => {
                    return Err(v.error_at_key(
                        "postmaster",
                        format!("{text:?} is not a mailbox: {e}"),
                        "write a full address, e.g. \"postmaster@example.com\"",
                    ));
                }
            },
            None => Mailbox::from_parts("postmaster", &hostname).ok(),
        };

        if raw.listener.is_empty() {
            return Err(v.error(
                0,
                "listener",
                "no [[listener]] is configured",
                "add one, e.g.\n    [[listener]]\n    address = \"0.0.0.0:25\"\n    tls = \"starttls\"",
            ));
        }
        let mut listeners = Vec::new();
        for l in &raw.listener {
            let span = l.span();
            let l = l.get_ref();
            // Port 0 (any free port) may repeat; tests bind several that way.
            if l.address.port() != 0
                && listeners
                    .iter()
                    .any(|o: &ListenerConfig| o.address == l.address)
            {
                return Err(v.error(
                    v.line(span.start),
                    "listener.address",
                    format!("{} is listed twice", l.address),
                    "give each [[listener]] its own address",
                ));
            }
            listeners.push(ListenerConfig {
                address: l.address,
                tls: l.tls,
                require_tls: l.require_tls,
                proxy_protocol: l.proxy_protocol,
            });
        }

        let tls = raw.tls.map(|t| {
            let mut key = |k: Spanned<PathBuf>, name: &str| {
                let line = v.line(k.span().start);
                let path = resolve(k.into_inner());
                if let Some(mode) = loose_mode(&path) {
                    warnings.push(v.warning(
                        line,
                        name,
                        &format!(
                            "{} has mode {mode:04o}, wider than 0640: other local users may read the private key",
                            path.display()
                        ),
                        &format!("chmod 600 {}", path.display()),
                    ));
                }
                path
            };
            let mut certificates = vec![CertificatePaths {
                certificate: resolve(t.certificate),
                private_key: key(t.private_key, "tls.private_key"),
            }];
            for c in t.additional {
                certificates.push(CertificatePaths {
                    certificate: resolve(c.certificate),
                    private_key: key(c.private_key, "tls.additional.private_key"),
                });
            }
            TlsConfig { certificates }
        });
        if tls.is_none() {
            warnings.push(
                "no [tls] section: a self-signed certificate is made at start; Office 365 \
                 (\"issued by a trusted CA\") and verifying clients will refuse it"
                    .into(),
            );
        }

        // Clients are matched by their canonical address (IPv4-mapped IPv6
        // becomes IPv4), so networks written in mapped form are made IPv4 too.
        let canonical = |nets: Vec<Spanned<Network>>| -> Vec<Spanned<IpNet>> {
            nets.into_iter()
                .map(|n| Spanned::new(n.span(), canonical_net(n.get_ref().0)))
                .collect()
        };
        let relay_networks = canonical(raw.access.relay_networks);
        let trusted_proxies = canonical(raw.access.trusted_proxies);
        if let Some((who, line)) = v.full_cover(&relay_networks) {
            return Err(v.error(
                line,
                "access.relay_networks",
                format!("{who} on the Internet relay: an open relay"),
                "list only your own mail servers' networks, e.g. \"192.0.2.10/32\"",
            ));
        }
        if let Some((who, line)) = v.full_cover(&trusted_proxies) {
            return Err(v.error(
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
            match v.public_cover(nets) {
                Some(PublicCover::Open {
                    entries,
                    line,
                    what,
                }) => {
                    return Err(v.error(
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
                }) => warnings.push(v.warning(
                    line,
                    key,
                    &format!("{entries} {what} {who}"),
                    "list only your own servers' networks",
                )),
                None => {}
            }
        }
        if raw.listener.iter().any(|l| l.get_ref().proxy_protocol) && trusted_proxies.is_empty() {
            return Err(v.error_at_key(
                "proxy_protocol",
                "a listener expects PROXY headers but [access] trusted_proxies is empty, so every connection would be closed",
                "list your load balancers' addresses in [access] trusted_proxies",
            ));
        }
        let access = AccessConfig {
            relay_networks: relay_networks
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            trusted_proxies: trusted_proxies
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            sender_domains: raw.access.sender_domains.map(lowercase_all),
            null_sender: raw.access.null_sender.unwrap_or_default(),
        };

        let mut users: Vec<UserConfig> = Vec::new();
        for u in raw.user {
            let span = u.span();
            let u = u.into_inner();
            if users.iter().any(|o| o.name == u.name) {
                return Err(v.error(
                    v.line(span.start),
                    "user.name",
                    format!("user {:?} is defined twice", u.name),
                    "give each [[user]] a unique name",
                ));
            }
            let hash_line = v.line(u.password_hash.span().start);
            let hash = u.password_hash.into_inner();
            let params = argon2::PasswordHash::new(&hash)
                .ok()
                .filter(|h| h.algorithm.as_str() == "argon2id")
                .and_then(|h| argon2::Params::try_from(&h).ok());
            match params {
                Some(p) => {
                    if !owasp_strength(&p) {
                        warnings.push(v.warning(
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
                    return Err(v.error(
                        hash_line,
                        "user.password_hash",
                        format!("the password of user {:?} is not an argon2id PHC string", u.name),
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

        let limits = v.limits(raw.limits)?;

        let queue = match raw.queue {
            Some(q) => {
                let d = |x: Option<HumanDuration>, def: u64| {
                    x.map_or(Duration::from_secs(def), |h| h.0)
                };
                QueueConfig {
                    path: resolve(q.path),
                    retry_min: d(q.retry_min, 60),
                    retry_max: d(q.retry_max, 3600),
                    max_lifetime: d(q.max_lifetime, 5 * 86400),
                    connect_timeout: d(q.connect_timeout, 30),
                    command_timeout: d(q.command_timeout, 300),
                    data_timeout: d(q.data_timeout, 600),
                }
            }
            None => {
                return Err(v.error(
                    0,
                    "queue.path",
                    "no [queue] section: the spool directory is not set",
                    "add\n    [queue]\n    path = \"/var/spool/smarthost\"",
                ));
            }
        };
        if queue.retry_min > queue.retry_max {
            return Err(v.error_at_key(
                "retry_min",
                "queue.retry_min is longer than queue.retry_max",
                "make retry_min shorter than retry_max",
            ));
        }

        let mut upstreams: Vec<UpstreamConfig> = Vec::new();
        for u in raw.upstream {
            let span = u.span();
            let u = u.into_inner();
            if upstreams.iter().any(|o| o.name == u.name) {
                return Err(v.error(
                    v.line(span.start),
                    "upstream.name",
                    format!("upstream {:?} is defined twice", u.name),
                    "give each [[upstream]] a unique name",
                ));
            }
            let addr_line = v.line(u.address.span().start);
            let address = u.address.into_inner();
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(v.error(
                    addr_line,
                    "upstream.address",
                    format!("{address:?} is not host:port"),
                    "write the host and the port, e.g. \"eu-smtp-1.example.net:25\" or \"[2001:db8::1]:25\"",
                ));
            }
            if u.username.is_some() != u.password_file.is_some() {
                return Err(v.error(
                    v.line(span.start),
                    "upstream.username",
                    format!(
                        "upstream {:?} has only one of username and password_file",
                        u.name
                    ),
                    "set both (upstream AUTH) or neither",
                ));
            }
            let tls = *u.tls.get_ref();
            // The client never sends AUTH outside TLS (src/outbound/client.rs),
            // but opportunistic TLS takes any certificate: whoever sits in the
            // path can terminate it and read the password.
            let leak = match tls {
                UpstreamTls::Required => None,
                UpstreamTls::None => {
                    Some(("none", "the password would cross the network in clear text"))
                }
                UpstreamTls::Opportunistic => Some((
                    "opportunistic",
                    "opportunistic TLS accepts any certificate, so whoever intercepts \
                     the connection receives the password",
                )),
            };
            if let (Some(_), Some((setting, why))) = (&u.username, leak) {
                return Err(v.error(
                    v.line(u.tls.span().start),
                    "upstream.tls",
                    format!(
                        "upstream {:?} has tls = \"{setting}\" with username and password_file: {why}",
                        u.name
                    ),
                    "set tls = \"required\" (add ca_file for a private CA), or remove username and password_file",
                ));
            }
            let password_file = u.password_file.map(|p| {
                let line = v.line(p.span().start);
                let path = resolve(p.into_inner());
                // Read now, as serve will: a missing file is a config error
                // with its line, not a start-up failure.
                if let Err(e) = std::fs::read(&path) {
                    return Err(v.error(
                        line,
                        "upstream.password_file",
                        format!("upstream {:?}: cannot read {}: {e}", u.name, path.display()),
                        "point it at a file holding the upstream password on one line, readable by the relay's user",
                    ));
                }
                if let Some(mode) = loose_mode(&path) {
                    warnings.push(v.warning(
                        line,
                        "upstream.password_file",
                        &format!(
                            "upstream {:?}: {} has mode {mode:04o}, wider than 0640: other local users may read the password",
                            u.name,
                            path.display()
                        ),
                        &format!("chmod 600 {}", path.display()),
                    ));
                }
                Ok(path)
            }).transpose()?;
            let ca_file = match u.ca_file {
                Some(c) => {
                    let line = v.line(c.span().start);
                    let path = resolve(c.into_inner());
                    // The same loading serve does, so check-config passing means serve starts.
                    if let Err(e) = crate::pem::ca_certificates(&path) {
                        return Err(v.error(
                            line,
                            "upstream.ca_file",
                            format!("upstream {:?}: {e}", u.name),
                            "point it at a readable PEM file holding the CA certificate(s) that signed the upstream's certificate",
                        ));
                    }
                    Some(path)
                }
                None => None,
            };
            upstreams.push(UpstreamConfig {
                name: u.name,
                address,
                tls,
                ca_file,
                tls_name: u.tls_name,
                username: u.username,
                password_file,
            });
        }
        if upstreams.is_empty() {
            warnings.push(
                "no [[upstream]]: accepted mail is kept in the queue and not forwarded".into(),
            );
        }

        let mut routes: Vec<RouteConfig> = Vec::new();
        for r in raw.route {
            let line = v.line(r.span().start);
            let r = r.into_inner();
            if let Some(missing) = r
                .upstreams
                .iter()
                .find(|n| !upstreams.iter().any(|u| &u.name == *n))
            {
                return Err(v.error(
                    line,
                    "route.upstreams",
                    format!("route names upstream {missing:?}, which no [[upstream]] defines"),
                    "use the name of a configured [[upstream]]",
                ));
            }
            if r.upstreams.is_empty() {
                return Err(v.error(
                    line,
                    "route.upstreams",
                    "a route without upstreams",
                    "list at least one upstream name",
                ));
            }
            if r.sender_domains.is_none() && routes.iter().any(|o| o.sender_domains.is_none()) {
                return Err(v.error(
                    line,
                    "route.sender_domains",
                    "two default routes (routes without sender_domains)",
                    "give all routes but one a sender_domains list",
                ));
            }
            routes.push(RouteConfig {
                sender_domains: r.sender_domains.map(lowercase_all),
                upstreams: r.upstreams,
            });
        }

        let admin = match raw.admin {
            None => None,
            Some(a) => {
                let line = v.line(a.span().start);
                let a = a.into_inner();
                let token_file = a.token_file.map(&resolve);
                // The admin page shows senders, recipients and clients: off
                // loopback it must not be readable by whoever can connect.
                if !a.address.ip().is_loopback() && token_file.is_none() {
                    return Err(v.error(
                        line,
                        "admin.address",
                        format!(
                            "[admin] address {} is not loopback and no token_file is set: anyone who can connect would read the message list",
                            a.address
                        ),
                        "set token_file to a file holding a bearer token, or listen on 127.0.0.1",
                    ));
                }
                if let Some(path) = &token_file {
                    let readable = std::fs::read_to_string(path)
                        .map_err(|e| e.to_string())
                        .and_then(|t| {
                            if t.trim().is_empty() {
                                Err("it is empty".to_owned())
                            } else {
                                Ok(())
                            }
                        });
                    if let Err(e) = readable {
                        return Err(v.error(
                            line,
                            "admin.token_file",
                            format!("cannot use {}: {e}", path.display()),
                            "point it at a readable file holding the token (e.g. `openssl rand -hex 32 > FILE`)",
                        ));
                    }
                }
                Some(AdminConfig {
                    address: a.address,
                    token_file,
                    recent_messages: a.recent_messages.unwrap_or(DEFAULT_RECENT_MESSAGES),
                })
            }
        };

        Ok(Config {
            hostname,
            postmaster,
            log: LogConfig {
                format: raw.log.format,
            },
            listeners,
            tls,
            access,
            users,
            limits,
            queue,
            upstreams,
            routes,
            admin,
            warnings,
        })
    }

    /// An error found after parsing (a certificate that does not load, say),
    /// located at the line of `file` that sets `key` to a value containing `value`.
    pub fn error_at_value(
        file: &Path,
        key: &str,
        value: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let v = Validator { text: &text, file };
        let offset = text
            .lines()
            .scan(0, |pos, l| {
                let start = *pos;
                *pos += l.len() + 1;
                Some((start, l))
            })
            .find(|(_, l)| {
                l.split_once('=')
                    .is_some_and(|(k, val)| k.trim() == key && val.contains(value))
            })
            .map(|(start, _)| start);
        match offset {
            Some(o) => {
                let (line, path) = v.locate(o..o);
                v.error(line, &path, problem, fix)
            }
            None => v.error(0, key, problem, fix),
        }
    }

    /// A few lines for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| {
                format!(
                    "{} ({}{})",
                    l.address,
                    match l.tls {
                        ListenerTls::Starttls => "starttls",
                        ListenerTls::Implicit => "implicit tls",
                    },
                    if l.require_tls {
                        ", tls required"
                    } else {
                        ", tls optional"
                    }
                )
            })
            .collect();
        format!(
            "hostname: {}\nlisteners: {}\ntls: {}\nrelay networks: {}\nusers: {}\nqueue: {}\nupstreams: {}\nroutes: {}\nmax message size: {} bytes",
            self.hostname,
            listeners.join(", "),
            match &self.tls {
                Some(t) => format!("{} certificate(s)", t.certificates.len()),
                None => "self-signed (made at start)".into(),
            },
            if self.access.relay_networks.is_empty() {
                "none".into()
            } else {
                self.access
                    .relay_networks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.users.len(),
            self.queue.path.display(),
            if self.upstreams.is_empty() {
                "none".into()
            } else {
                self.upstreams
                    .iter()
                    .map(|u| format!("{} ({})", u.name, u.address))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.routes.len(),
            self.limits.max_message_size,
        )
    }
}

/// `::ffff:a.b.c.d/n` (n >= 96) as the IPv4 network it denotes.
fn canonical_net(net: IpNet) -> IpNet {
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
enum PublicCover {
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
fn public_size(net: IpNet) -> u128 {
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

/// The mode of the secret at `path` when it lets anyone in beyond the owner
/// and a group that may only read (e.g. `ssl-cert`): any bit of 0o137. `None`
/// when tight, or when missing (loading it reports that).
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o137 != 0).then_some(mode)
}

fn lowercase_all(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|d| d.to_ascii_lowercase()).collect()
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// How fixes name the reference config: an administrator who installed the
/// binary has no repository, so say what the file is and where it comes from.
const EXAMPLE: &str = "the example config (config/smarthost.toml in the source)";

/// Serde's type names in words an administrator uses.
fn administrator_words(message: &str) -> String {
    let mut m = message.to_owned();
    for t in ["usize", "u64", "u32", "u16", "u8", "i64"] {
        m = m.replace(&format!("expected {t}"), "expected a whole number");
    }
    m
}

/// `X` in a message that says `the entry "X"`.
fn quoted_entry(problem: &str) -> Option<&str> {
    let rest = problem.split_once("the entry \"")?.1;
    rest.split_once('"').map(|(e, _)| e)
}

/// Levenshtein distance, for "did you mean" on short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Turns positions in the file into line numbers and key paths for errors.
struct Validator<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Validator<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error(
        &self,
        line: usize,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line,
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// A warning in the errors' shape, on one line (it is also a log line).
    fn warning(&self, line: usize, key: &str, problem: &str, fix: &str) -> String {
        format!(
            "{}:{line}: `{key}`: {problem}; fix: {fix}",
            self.file.display()
        )
    }

    /// An error about `key` (a bare key name), located at its first assignment.
    fn error_at_key(&self, key: &str, problem: impl Into<String>, fix: &str) -> ConfigError {
        let offset = self
            .text
            .lines()
            .scan(0, |pos, l| {
                let start = *pos;
                *pos += l.len() + 1;
                Some((start, l))
            })
            .find(|(_, l)| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
            .map_or(0, |(start, _)| start);
        let (line, path) = self.locate(offset..offset);
        self.error(if offset == 0 { 0 } else { line }, &path, problem, fix)
    }

    /// The line of `span` and the dotted key written there (`limits.data_timeout`).
    fn locate(&self, span: Range<usize>) -> (usize, String) {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_text = self.text[line_start..].lines().next().unwrap_or("");
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .unwrap_or_default();
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
            .unwrap_or_default();
        let path = match (table.is_empty(), key.is_empty()) {
            (_, true) => table,
            (true, false) => key,
            (false, false) => format!("{table}.{key}"),
        };
        (self.line(start), path)
    }

    /// When `nets` (canonical, see `canonical_net`) together hold every IPv4
    /// or every IPv6 client address: `"0.0.0.0/1", "128.0.0.0/1" together let
    /// every IPv4 address` (the entries as written, up to the one completing
    /// the cover) and the line of that entry.
    fn full_cover(&self, nets: &[Spanned<IpNet>]) -> Option<(String, usize)> {
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
                .map(|n| self.text[n.span()].trim_matches(|c| c == '"' || c == '\''))
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
                self.line(net.span().start),
            ));
        }
        None
    }

    /// When the union of `nets` (canonical) holds a /1 of public IPv4 space
    /// or all of 2000::/3 (`Open`), or a /8's worth (`Wide`): the entries that
    /// bring public space, up to the one that crosses the line, and its line.
    fn public_cover(&self, nets: &[Spanned<IpNet>]) -> Option<PublicCover> {
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
                        .map(|n| {
                            format!(
                                "\"{}\"",
                                self.text[n.span()].trim_matches(|c| c == '"' || c == '\'')
                            )
                        })
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
                    (entries.join(", "), self.line(net.span().start), what)
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

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let (mut line, mut key) = match span.clone() {
            Some(span) => self.locate(span),
            None => (0, String::new()),
        };
        let mut problem = administrator_words(e.message().trim());
        // An entry of a list split over lines: point at the entry itself.
        if let (Some(span), Some(entry)) = (span.clone(), quoted_entry(&problem)) {
            let within = &self.text[span.start.min(self.text.len())..span.end.min(self.text.len())];
            if let Some(at) = within.find(&format!("\"{entry}\"")) {
                line = self.line(span.start + at);
            }
        }
        let header = span
            .map(|s| self.line_text(s.start).trim())
            .filter(|l| l.starts_with('['));
        let fix: String = if let (true, Some(header)) =
            (problem.starts_with("unknown field"), header)
        {
            // `[acess]`: the misspelt name is a section, not a key of the one above.
            let name = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            let known: Vec<String> = problem
                .split_once("expected one of")
                .map(|(_, l)| {
                    l.split(',')
                        .map(|k| k.trim().trim_matches('`').to_owned())
                        // Top-level keys, not sections.
                        .filter(|k| k != "hostname" && k != "postmaster")
                        .collect()
                })
                .unwrap_or_default();
            problem = format!(
                "unknown section {header}; the sections are {}",
                known
                    .iter()
                    .map(|k| format!("[{k}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            key = name.clone();
            match known.iter().min_by_key(|k| edit_distance(k, &name)) {
                Some(near) if edit_distance(near, &name) <= 2 => {
                    format!("did you mean [{near}]? {EXAMPLE} shows every section")
                }
                _ => format!("correct the section name; {EXAMPLE} shows every section"),
            }
        } else if problem.starts_with("unknown field") {
            format!("remove the key or correct its spelling; {EXAMPLE} lists every key")
        } else if problem.starts_with("missing field") {
            format!("add the key; {EXAMPLE} shows each with an example")
        } else if problem.contains("neither an address nor a network") {
            "write an address (\"192.0.2.10\", \"2001:db8::10\") or a network in CIDR form (\"10.0.0.0/8\", \"2001:db8::/48\")".into()
        } else if problem.contains("socket address") {
            "write an address and a port, e.g. \"0.0.0.0:25\" or \"[::]:25\"".into()
        } else if problem.contains("duration") {
            "write a number and a unit in quotes, e.g. \"30s\", \"5m\", \"5d\"".into()
        } else if problem.contains("a whole number") {
            "write digits without quotes, e.g. 100".into()
        } else {
            format!("see {EXAMPLE} for the expected form")
        };
        self.error(line, &key, problem, fix)
    }

    /// The whole line holding byte `offset`.
    fn line_text(&self, offset: usize) -> &str {
        let start = offset.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        self.text[line_start..].lines().next().unwrap_or("")
    }

    fn limits(&self, raw: RawLimits) -> Result<Limits, ConfigError> {
        let mut l = Limits::default();
        let positive = |v: Option<Spanned<usize>>, key: &str, dst: &mut usize| {
            if let Some(v) = v {
                if *v.get_ref() == 0 {
                    return Err(self.error(
                        self.line(v.span().start),
                        &format!("limits.{key}"),
                        "must be greater than 0",
                        "use a positive number or remove the key for the default",
                    ));
                }
                *dst = v.into_inner();
            }
            Ok(())
        };
        positive(
            raw.max_message_size,
            "max_message_size",
            &mut l.max_message_size,
        )?;
        positive(raw.max_recipients, "max_recipients", &mut l.max_recipients)?;
        positive(
            raw.max_connections,
            "max_connections",
            &mut l.max_connections,
        )?;
        positive(
            raw.max_connections_per_ip,
            "max_connections_per_ip",
            &mut l.max_connections_per_ip,
        )?;
        if let Some(v) = raw.max_errors {
            let mut n = *v.get_ref() as usize;
            positive(Some(Spanned::new(v.span(), n)), "max_errors", &mut n)?;
            l.max_errors = n as u32;
        }
        if let Some(v) = raw.max_auth_failures {
            l.max_auth_failures = v;
        }
        let set = |v: Option<HumanDuration>, dst: &mut Duration| {
            if let Some(d) = v {
                *dst = d.0;
            }
        };
        set(raw.command_timeout, &mut l.command_timeout);
        set(raw.data_timeout, &mut l.data_timeout);
        set(raw.banner_delay, &mut l.banner_delay);
        set(raw.shutdown_grace, &mut l.shutdown_grace);
        if let Some(b) = raw.bare_line_endings {
            l.bare_line_endings = b;
        }
        for (key, d) in [
            ("command_timeout", l.command_timeout),
            ("data_timeout", l.data_timeout),
        ] {
            if d.is_zero() {
                return Err(self.error_at_key(
                    key,
                    format!("limits.{key} is zero"),
                    "use a positive duration, e.g. \"5m\"",
                ));
            }
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"starttls\"\n\n[queue]\npath = \"spool\"\n";

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
    fn owasp_settings_are_the_threshold() {
        let p = |m, t| argon2::Params::new(m, t, 1, None).unwrap();
        for (m, t) in OWASP_ARGON2ID {
            assert!(owasp_strength(&p(m, t)), "m={m} t={t}");
            assert!(!owasp_strength(&p(m - 1, t)), "m={} t={t}", m - 1);
        }
        assert!(!owasp_strength(&p(19_456, 1)));
        assert!(owasp_strength(&argon2::Params::default()));
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
}
