//! How the sink keeps a message: `<unix-millis>-<counter>.json` (the
//! envelope) then `<unix-millis>-<counter>.eml` (the bytes), in `dir`. Each
//! is written under a hidden temporary name, fsynced and renamed, the
//! sidecar first: whoever sees an `.eml` finds its `.json` beside it. The
//! counter is zero-padded so names sort in arrival order.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The `.json` sidecar.
#[derive(Serialize)]
pub(super) struct Sidecar<'a> {
    pub(super) mail_from: &'a str,
    pub(super) mail_params: &'a str,
    pub(super) rcpt_to: &'a [String],
    pub(super) rcpt_params: &'a [String],
    pub(super) tls: bool,
    pub(super) chunking: bool,
    pub(super) received_at: u64,
    pub(super) client: String,
}

/// Writes one message and its sidecar atomically; returns the `.eml` name.
pub(super) fn write_message(dir: &Path, body: &[u8], json: &[u8]) -> std::io::Result<String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let stem = format!("{millis}-{:06}", COUNTER.fetch_add(1, Ordering::Relaxed));
    // Sidecar first: an `.eml` never appears without its `.json`.
    for (ext, bytes) in [("json", json), ("eml", body)] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        let result = (|| {
            let mut f = std::fs::File::create_new(&tmp)?;
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}")))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(dir.join(format!("{stem}.json")));
            return Err(e);
        }
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(format!("{stem}.eml"))
}
