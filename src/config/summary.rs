//! `Config::summary`: the configuration in a few lines, for `check-config`
//! and the start-up log.

use super::{Config, ListenerTls};

impl Config {
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
