//! `[queue]`: the spool directory, the retry schedule and the upstream timeouts.

use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::paths::resolve;
use super::raw::{HumanDuration, RawQueue};
use super::source::Source;

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

/// The section is required (it names the spool); retries must not shrink.
pub(super) fn validate(src: &Source, raw: Option<RawQueue>) -> Result<QueueConfig, ConfigError> {
    let queue = match raw {
        Some(q) => {
            let d =
                |x: Option<HumanDuration>, def: u64| x.map_or(Duration::from_secs(def), |h| h.0);
            QueueConfig {
                path: resolve(src.file, q.path),
                retry_min: d(q.retry_min, 60),
                retry_max: d(q.retry_max, 3600),
                max_lifetime: d(q.max_lifetime, 5 * 86400),
                connect_timeout: d(q.connect_timeout, 30),
                command_timeout: d(q.command_timeout, 300),
                data_timeout: d(q.data_timeout, 600),
            }
        }
        None => {
            return Err(src.error(
                0,
                "queue.path",
                "no [queue] section: the spool directory is not set",
                "add\n    [queue]\n    path = \"/var/spool/smarthost\"",
            ));
        }
    };
    if queue.retry_min > queue.retry_max {
        return Err(src.error_at_key(
            "queue.retry_min",
            "queue.retry_min is longer than queue.retry_max",
            "make retry_min shorter than retry_max",
        ));
    }
    Ok(queue)
}
