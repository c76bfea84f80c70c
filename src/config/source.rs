//! The config file as read, and the one place that turns a position in it
//! (a byte offset from serde, or a key found by name) into the line number
//! and dotted key (`limits.data_timeout`) that every error and warning names.

use std::ops::Range;
use std::path::Path;

use super::ConfigError;

/// The text of the config file and its path.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
}

impl Source<'_> {
    /// The 1-based line holding byte `offset`.
    pub(super) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// The whole line holding byte `offset`.
    pub(super) fn line_text(&self, offset: usize) -> &str {
        let start = offset.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        self.text[line_start..].lines().next().unwrap_or("")
    }

    /// The line of `span` and the dotted key written there (`limits.data_timeout`).
    pub(super) fn locate(&self, span: Range<usize>) -> (usize, String) {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let key = self
            .line_text(start)
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

    /// The line and dotted key of the first assignment of `key` to a value
    /// containing `value` (`""` matches any): how errors found after parsing,
    /// which carry no span, are put back on a line. A dotted `key`
    /// (`limits.command_timeout`) must be in its table; a bare one may be in any.
    fn assignment(&self, key: &str, value: &str) -> Option<(usize, String)> {
        let name = key.rsplit('.').next().unwrap_or(key);
        let mut start = 0;
        for l in self.text.split_inclusive('\n') {
            let offset = start;
            start += l.len();
            let sets = l
                .split_once('=')
                .is_some_and(|(k, v)| k.trim() == name && v.contains(value));
            if sets {
                let (line, path) = self.locate(offset..offset);
                if !key.contains('.') || path == key {
                    return Some((line, path));
                }
            }
        }
        None
    }

    pub(super) fn error(
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
    pub(super) fn warning(&self, line: usize, key: &str, problem: &str, fix: &str) -> String {
        format!(
            "{}:{line}: `{key}`: {problem}; fix: {fix}",
            self.file.display()
        )
    }

    /// An error about `key`, located at its first assignment; without one,
    /// not tied to a line.
    pub(super) fn error_at_key(
        &self,
        key: &str,
        problem: impl Into<String>,
        fix: &str,
    ) -> ConfigError {
        self.error_at_value(key, "", problem, fix)
    }

    /// An error about `key`, located at the line that sets it to a value
    /// containing `value`; without such a line, not tied to one.
    pub(super) fn error_at_value(
        &self,
        key: &str,
        value: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        match self.assignment(key, value) {
            Some((line, path)) => self.error(line, &path, problem, fix),
            None => self.error(0, key, problem, fix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source<'_> {
        Source {
            text,
            file: Path::new("smarthost.toml"),
        }
    }

    #[test]
    fn keys_are_found_in_their_table_on_crlf_lines_too() {
        let text = "hostname = \"a\"\r\n[queue]\r\ncommand_timeout = \"1s\"\r\n\
                    [limits]\r\ncommand_timeout = \"0s\"\r\n";
        let e = source(text).error_at_key("limits.command_timeout", "p", "f");
        assert_eq!((e.line, e.key.as_str()), (5, "limits.command_timeout"));
        let e = source(text).error_at_key("hostname", "p", "f");
        assert_eq!((e.line, e.key.as_str()), (1, "hostname"));
        let e = source(text).error_at_value("command_timeout", "0s", "p", "f");
        assert_eq!((e.line, e.key.as_str()), (5, "limits.command_timeout"));
    }

    #[test]
    fn a_key_not_in_the_file_is_named_without_a_line() {
        let e = source("hostname = \"a\"\n[queue]\npath = \"s\"\n").error_at_key(
            "queue.retry_min",
            "p",
            "f",
        );
        assert_eq!((e.line, e.key.as_str()), (0, "queue.retry_min"));
        assert_eq!(
            e.to_string(),
            "smarthost.toml: `queue.retry_min`: p\n  fix: f"
        );
    }
}
