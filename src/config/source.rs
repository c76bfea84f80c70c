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

    /// The offset of the first line that sets the bare key `key` to a value
    /// containing `value` (`""` matches any): how errors found after parsing,
    /// which carry no span, are put back on a line.
    fn assignment(&self, key: &str, value: &str) -> Option<usize> {
        self.text
            .lines()
            .scan(0, |pos, l| {
                let start = *pos;
                *pos += l.len() + 1;
                Some((start, l))
            })
            .find(|(_, l)| {
                l.split_once('=')
                    .is_some_and(|(k, v)| k.trim() == key && v.contains(value))
            })
            .map(|(start, _)| start)
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

    /// An error about `key` (a bare key name), located at its first assignment.
    pub(super) fn error_at_key(
        &self,
        key: &str,
        problem: impl Into<String>,
        fix: &str,
    ) -> ConfigError {
        let offset = self.assignment(key, "").unwrap_or(0);
        let (line, path) = self.locate(offset..offset);
        self.error(if offset == 0 { 0 } else { line }, &path, problem, fix)
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
            Some(o) => {
                let (line, path) = self.locate(o..o);
                self.error(line, &path, problem, fix)
            }
            None => self.error(0, key, problem, fix),
        }
    }
}
