//! `[[upstream]]`: the smart hosts mail is forwarded to, and how we log in
//! to them. A password is never sent where TLS does not protect it.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::paths::{loose_mode, resolve};
use super::raw::RawUpstream;
use super::source::Source;

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

/// Unique names, `host:port` addresses, credentials only over verified TLS;
/// the password and CA files are read now, as `serve` will.
pub(super) fn validate(
    src: &Source,
    raw: Vec<Spanned<RawUpstream>>,
    warnings: &mut Vec<String>,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let mut upstreams: Vec<UpstreamConfig> = Vec::new();
    for u in raw {
        let span = u.span();
        let u = u.into_inner();
        if upstreams.iter().any(|o| o.name == u.name) {
            return Err(src.error(
                src.line(span.start),
                "upstream.name",
                format!("upstream {:?} is defined twice", u.name),
                "give each [[upstream]] a unique name",
            ));
        }
        let addr_line = src.line(u.address.span().start);
        let address = u.address.into_inner();
        let port_ok = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(src.error(
                addr_line,
                "upstream.address",
                format!("{address:?} is not host:port"),
                "write the host and the port, e.g. \"eu-smtp-1.example.net:25\" or \"[2001:db8::1]:25\"",
            ));
        }
        if u.username.is_some() != u.password_file.is_some() {
            return Err(src.error(
                src.line(span.start),
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
            return Err(src.error(
                src.line(u.tls.span().start),
                "upstream.tls",
                format!(
                    "upstream {:?} has tls = \"{setting}\" with username and password_file: {why}",
                    u.name
                ),
                "set tls = \"required\" (add ca_file for a private CA), or remove username and password_file",
            ));
        }
        let password_file = u
            .password_file
            .map(|p| {
                let line = src.line(p.span().start);
                let path = resolve(src.file, p.into_inner());
                // Read now, as serve will: a missing file is a config error
                // with its line, not a start-up failure.
                if let Err(e) = std::fs::read(&path) {
                    return Err(src.error(
                        line,
                        "upstream.password_file",
                        format!("upstream {:?}: cannot read {}: {e}", u.name, path.display()),
                        "point it at a file holding the upstream password on one line, readable by the relay's user",
                    ));
                }
                if let Some(mode) = loose_mode(&path) {
                    warnings.push(src.warning(
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
            })
            .transpose()?;
        let ca_file = match u.ca_file {
            Some(c) => {
                let line = src.line(c.span().start);
                let path = resolve(src.file, c.into_inner());
                // The same loading serve does, so check-config passing means serve starts.
                if let Err(e) = crate::pem::ca_certificates(&path) {
                    return Err(src.error(
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
        warnings
            .push("no [[upstream]]: accepted mail is kept in the queue and not forwarded".into());
    }
    Ok(upstreams)
}
