//! Where log lines go and how they look: stderr, text or JSON lines
//! (`[log] format`, `serve --log-format`), filtered by `RUST_LOG` (default
//! `info`).

use crate::config::LogFormat;

/// Installs the process-wide subscriber. Text is coloured only on a
/// terminal: journald and `docker logs` get plain text. JSON is one object
/// per line with the event's fields at the top level beside `timestamp`,
/// `level`, `message` and `target`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
