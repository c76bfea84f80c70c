//! The operator's "accepted email" view, rendered on the server: every value
//! in it came from a client or an upstream, so each is HTML-escaped, and no
//! script or external asset is used (the page works on an air-gapped host).

use std::fmt::Write;

use super::messages::Filter;
use crate::telemetry::recent::{Message, STATES};

/// Rows shown on the list page; the API returns them all.
const MAX_ROWS: usize = 500;

/// Escapes the five characters that matter in HTML text and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value (a search string put back into a link).
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:17px;margin:0}
header a{color:#fff;text-decoration:none}
.up{display:inline-block;padding:2px 8px;border-radius:10px;margin-right:6px;font-size:12px}
.ok{background:#1f883d}.down{background:#cf222e}
main{padding:16px 20px}
form{margin-bottom:12px;display:flex;gap:8px}
input,select,button{font:inherit;padding:4px 8px}
input[type=search]{width:320px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e1e4e8;vertical-align:top}
th{background:#eaeef2;font-weight:600}
td.id a{font-family:ui-monospace,monospace}
.nw{white-space:nowrap}
.state{display:inline-block;padding:0 6px;border-radius:4px;font-size:12px;margin:1px 0}
.queued{background:#ddf4ff}.deleted{background:#eaeef2}.deferred{background:#fff8c5}.delivered{background:#dafbe1}.bounced{background:#ffebe9}
.muted{color:#656d76}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;padding:12px}
dt{font-weight:600}dd{margin:0;word-break:break-all}
";

fn head(out: &mut String, title: &str, hostname: &str, upstreams: &[(String, bool)]) {
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} - smarthost</title><style>{STYLE}</style></head><body>\
         <header><h1><a href=\"/\">smarthost {}</a></h1><div>upstreams: ",
        escape(title),
        escape(hostname)
    );
    if upstreams.is_empty() {
        out.push_str("<span class=\"muted\">none configured</span>");
    }
    for (name, up) in upstreams {
        let (class, word) = if *up { ("ok", "up") } else { ("down", "down") };
        let _ = write!(
            out,
            "<span class=\"up {class}\">{} {word}</span>",
            escape(name)
        );
    }
    out.push_str("</div></header><main>");
}

fn states(m: &Message) -> String {
    let mut out = String::new();
    for s in STATES {
        let n = m.recipients.iter().filter(|r| r.state == s).count();
        if n > 0 {
            let _ = write!(out, "<span class=\"state {s}\">{s} {n}</span> ");
        }
    }
    out
}

/// `2026-12-04 18:34:41` (UTC).
fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// The list page: search form, then one row per message (newest first).
pub fn index(
    hostname: &str,
    upstreams: &[(String, bool)],
    messages: &[Message],
    filter: &Filter,
) -> String {
    let mut out = String::new();
    head(&mut out, "Accepted email", hostname, upstreams);
    let q = filter.q.as_deref().unwrap_or("");
    let state = filter.state.as_deref().unwrap_or("");
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/\"><input type=\"search\" name=\"q\" value=\"{}\" \
         placeholder=\"queue id, sender or recipient\"><select name=\"state\"><option value=\"\">any state</option>",
        escape(q)
    );
    for s in STATES {
        let selected = if s == state { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{s}\"{selected}>{s}</option>");
    }
    let _ = write!(
        out,
        "</select><button type=\"submit\">Search</button></form>\
         <p class=\"muted\">{} message(s){}</p>\
         <table><thead><tr><th>queue id</th><th>received (UTC)</th><th>client</th><th>sender</th>\
         <th>recipients</th><th>state</th><th>size</th><th>last reply</th></tr></thead><tbody>",
        messages.len(),
        if messages.len() > MAX_ROWS {
            format!(", the newest {MAX_ROWS} shown")
        } else {
            String::new()
        }
    );
    for m in messages.iter().take(MAX_ROWS) {
        let rcpts: Vec<String> = m.recipients.iter().map(|r| escape(&r.address)).collect();
        let last = m
            .recipients
            .iter()
            .filter_map(|r| r.last_reply.as_deref())
            .next_back()
            .unwrap_or("");
        let _ = write!(
            out,
            "<tr><td class=\"id nw\"><a href=\"/message/{id}\">{id}</a></td><td class=\"nw\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"nw\">{}</td><td>{}</td><td>{}</td></tr>",
            time(m.received_at),
            escape(m.client.as_deref().unwrap_or("")),
            escape(&format!("<{}>", m.sender)),
            rcpts.join("<br>"),
            states(m),
            m.size,
            escape(last),
            id = escape(&m.id),
        );
    }
    out.push_str("</tbody></table>");
    if !q.is_empty() || !state.is_empty() {
        let _ = write!(
            out,
            "<p><a href=\"/api/messages?q={}&amp;state={}\">as JSON</a></p>",
            query_value(q),
            query_value(state)
        );
    }
    out.push_str("</main></body></html>");
    out
}

/// One message: its envelope, each recipient's state, and its whole trail.
pub fn message(hostname: &str, upstreams: &[(String, bool)], m: &Message) -> String {
    let mut out = String::new();
    head(&mut out, &format!("Message {}", m.id), hostname, upstreams);
    let field = |out: &mut String, name: &str, value: &str| {
        let _ = write!(out, "<dt>{name}</dt><dd>{}</dd>", escape(value));
    };
    let _ = write!(out, "<h2>Message {}</h2><dl>", escape(&m.id));
    field(&mut out, "received", &time(m.received_at));
    field(
        &mut out,
        "client",
        m.client.as_deref().unwrap_or("(not known: from the spool)"),
    );
    field(
        &mut out,
        "authenticated as",
        m.auth_user.as_deref().unwrap_or("-"),
    );
    field(&mut out, "TLS", m.tls_version.as_deref().unwrap_or("none"));
    field(&mut out, "sender", &format!("<{}>", m.sender));
    field(&mut out, "size", &format!("{} bytes", m.size));
    field(&mut out, "attempts", &m.attempts.to_string());
    out.push_str(
        "</dl><h3>Recipients</h3><table><thead><tr><th>recipient</th><th>state</th>\
                  <th>upstream</th><th>attempts</th><th>last reply</th></tr></thead><tbody>",
    );
    for r in &m.recipients {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><span class=\"state {s}\">{s}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.address),
            escape(r.upstream.as_deref().unwrap_or("")),
            r.attempts,
            escape(r.last_reply.as_deref().unwrap_or("")),
            s = r.state,
        );
    }
    out.push_str("</tbody></table><h3>Trail</h3>");
    if m.trail.is_empty() {
        out.push_str("<p class=\"muted\">accepted before this process started: only the spool's state is known</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>time (UTC)</th><th>event</th><th>upstream</th>\
                      <th>recipient</th><th>reply</th></tr></thead><tbody>",
        );
        for e in &m.trail {
            let at = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
            );
            let _ = write!(
                out,
                "<tr><td>{at}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.what.replace('_', " "),
                escape(e.upstream.as_deref().unwrap_or("")),
                escape(e.recipient.as_deref().unwrap_or("")),
                escape(e.reply.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</main></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            escape("\"<script>alert('1')</script>\"@x&y"),
            "&quot;&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt;&quot;@x&amp;y"
        );
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }
}
