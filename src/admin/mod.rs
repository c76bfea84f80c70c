//! The admin HTTP endpoint (`http`): `/healthz`, `/metrics`, `/api/messages`
//! and the "accepted email" page, showing what `crate::telemetry` counts and
//! remembers merged with the spool (`messages`), as HTML (`page`).

pub mod http;
pub mod messages;
pub mod page;

pub use http::{bind, serve};

/// The bearer token in `path`: its content without surrounding whitespace
/// (a trailing newline from `echo` is not part of it); empty is an error.
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("[admin] token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("[admin] token_file {} is empty", path.display()));
    }
    Ok(token.as_bytes().to_vec())
}
