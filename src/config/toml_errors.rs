//! What the TOML parser and serde report (bad syntax, unknown or missing
//! keys, wrong types), retold in an administrator's words with a fix.

use super::ConfigError;
use super::source::Source;

/// How fixes name the reference config: an administrator who installed the
/// binary has no repository, so say what the file is and where it comes from.
const EXAMPLE: &str = "the example config (config/smarthost.toml in the source)";

/// The parse error `e` of the file in `src`, at its line and key.
pub(super) fn explain(src: &Source, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let (mut line, mut key) = match span.clone() {
        Some(span) => src.locate(span),
        None => (0, String::new()),
    };
    let mut problem = administrator_words(e.message().trim());
    // An entry of a list split over lines: point at the entry itself.
    if let (Some(span), Some(entry)) = (span.clone(), quoted_entry(&problem)) {
        let within = &src.text[span.start.min(src.text.len())..span.end.min(src.text.len())];
        if let Some(at) = within.find(&format!("\"{entry}\"")) {
            line = src.line(span.start + at);
        }
    }
    let header = span
        .map(|s| src.line_text(s.start).trim())
        .filter(|l| l.starts_with('['));
    let fix: String = if let (true, Some(header)) = (problem.starts_with("unknown field"), header) {
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
    src.error(line, &key, problem, fix)
}

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
