//! What a SIGHUP reload changed, in words, for its log line: e.g.
//! `users +1 -0, upstreams changed: eu-2, relay_networks changed`.

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::config::Config;

/// The differences between the running `old` and the new `new` config that
/// an administrator would look for; "no changes" when there are none.
/// Certificates are reloaded from their files either way, so a renewed
/// certificate at the same path is not a change here.
pub fn changes(old: &Config, new: &Config) -> String {
    let mut out = Vec::new();
    let by_name = |c: &Config| -> BTreeMap<String, String> {
        c.users
            .iter()
            .map(|u| (u.name.clone(), format!("{u:?}")))
            .collect()
    };
    named(&mut out, "users", &by_name(old), &by_name(new), true);
    let by_name = |c: &Config| -> BTreeMap<String, String> {
        c.upstreams
            .iter()
            .map(|u| (u.name.clone(), format!("{u:?}")))
            .collect()
    };
    named(&mut out, "upstreams", &by_name(old), &by_name(new), false);
    let mut same = |what: &str, a: &dyn Debug, b: &dyn Debug| {
        if format!("{a:?}") != format!("{b:?}") {
            out.push(format!("{what} changed"));
        }
    };
    same("hostname", &old.hostname, &new.hostname);
    same(
        "relay_networks",
        &old.access.relay_networks,
        &new.access.relay_networks,
    );
    same(
        "trusted_proxies",
        &old.access.trusted_proxies,
        &new.access.trusted_proxies,
    );
    same(
        "sender_domains",
        &old.access.sender_domains,
        &new.access.sender_domains,
    );
    same(
        "null_sender",
        &old.access.null_sender,
        &new.access.null_sender,
    );
    same("routes", &old.routes, &new.routes);
    same("limits", &old.limits, &new.limits);
    same("queue", &old.queue, &new.queue);
    same("tls", &old.tls, &new.tls);
    same(
        "listeners (at the next restart)",
        &old.listeners,
        &new.listeners,
    );
    same("log (at the next restart)", &old.log, &new.log);
    if out.is_empty() {
        "no changes".to_owned()
    } else {
        out.join(", ")
    }
}

/// `users +1 -0` (with `changed: a, b` for entries edited in place), or
/// `upstreams added: x, removed: y, changed: z`. Users are counted, not
/// named beside a password change: the log is not where account edits go.
fn named(
    out: &mut Vec<String>,
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    count_only: bool,
) {
    let added: Vec<&str> = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(String::as_str)
        .collect();
    let changed: Vec<&str> = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.as_str())
        .collect();
    if count_only {
        if !added.is_empty() || !removed.is_empty() || !changed.is_empty() {
            let mut s = format!("{what} +{} -{}", added.len(), removed.len());
            if !changed.is_empty() {
                s.push_str(&format!(" ~{}", changed.len()));
            }
            out.push(s);
        }
        return;
    }
    let list = |v: &[&str]| v.join(" ");
    if !added.is_empty() {
        out.push(format!("{what} added: {}", list(&added)));
    }
    if !removed.is_empty() {
        out.push(format!("{what} removed: {}", list(&removed)));
    }
    if !changed.is_empty() {
        out.push(format!("{what} changed: {}", list(&changed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    const BASE: &str = r#"
hostname = "relay.example"
[[listener]]
address = "127.0.0.1:2525"
tls = "starttls"
[access]
relay_networks = ["127.0.0.1/32"]
[queue]
path = "/tmp/q"
[[upstream]]
name = "eu-1"
address = "127.0.0.1:2600"
tls = "none"
[[upstream]]
name = "eu-2"
address = "127.0.0.1:2601"
tls = "none"
"#;

    #[test]
    fn names_what_changed() {
        let old = load(BASE);
        assert_eq!(changes(&old, &old), "no changes");
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$k1+c7HYjv1q1z8o3i9OmNA$hFbNDGWTcBonBrKQKpbT2rKOK2T3u8Hx6HtvvLnjI6Y";
        let new = load(&format!(
            "{}\n[[user]]\nname = \"exchange01\"\npassword_hash = \"{hash}\"\n",
            BASE.replace("127.0.0.1:2601", "127.0.0.1:2602")
                .replace("127.0.0.1/32\"]", "127.0.0.1/32\", \"10.0.0.0/8\"]")
        ));
        assert_eq!(
            changes(&old, &new),
            "users +1 -0, upstreams changed: eu-2, relay_networks changed"
        );
    }
}
