#![no_main]
//! Spool metadata: `spool::parse_envelope`, and the same bytes as a file in a
//! real spool read by `Spool::read` and `queue list` (`queue::listing`).
//!
//! Properties: no panic on any bytes; an envelope that parses re-serialises
//! (compact and pretty, as the spool writes it) and re-parses to the same
//! value; every truncation of a serialised envelope is an error; `Spool::read`
//! succeeds exactly when the envelope parses, names its file's id and states
//! the body's true size.
//!
//! Input: the envelope's bytes, stored in a `.msg` file after a body.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smarthost::queue::listing;
use smarthost::spool::{FORMAT_VERSION, Spool, SpoolError, message_file, parse_envelope};

/// A spool in a directory made once per process, under `TMPDIR` (which
/// scripts/fuzz.sh points at a tmpfs and removes afterwards).
fn spool() -> &'static Spool {
    static SPOOL: OnceLock<Spool> = OnceLock::new();
    SPOOL.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("smarthost-fuzz-")
            .tempdir()
            .unwrap()
            .keep();
        Spool::open(&dir).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // The id the file claims, so a well-formed envelope can parse.
    let named = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
    let id = named.clone().unwrap_or_else(|| "X".into());
    let parsed = parse_envelope(&id, data);
    if let Ok(env) = &parsed {
        assert_eq!(env.version, FORMAT_VERSION);
        assert_eq!(env.id, id);
        let compact = serde_json::to_vec(env).unwrap();
        let pretty = serde_json::to_vec_pretty(env).unwrap();
        for bytes in [&compact, &pretty] {
            let again = parse_envelope(&id, bytes).expect("a written envelope parses");
            assert_eq!(&again, env, "envelope changed through the file");
        }
        let cuts: Vec<usize> = if compact.len() <= 1024 {
            (0..compact.len()).collect()
        } else {
            (0..compact.len()).step_by(compact.len() / 512).collect()
        };
        for cut in cuts {
            assert!(
                parse_envelope(&id, &compact[..cut]).is_err(),
                "envelope cut at {cut} of {} parses",
                compact.len()
            );
        }
    } else if let Err(e) = &parsed {
        assert!(matches!(e, SpoolError::Corrupt { .. }), "{e}");
    }

    // The same bytes as a queued message's envelope, with a body of up to
    // 1 KiB: read back only when all agrees.
    let file_id = match &named {
        Some(n) if (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            n.clone()
        }
        _ => "X".into(),
    };
    let spool = spool();
    let body_len = parsed.as_ref().map_or(0, |e| e.size.min(1024) as usize);
    std::fs::write(
        spool.message_path(&file_id),
        message_file(&vec![b'x'; body_len], data),
    )
    .unwrap();
    let read = spool.read(&file_id);
    let expected_ok = file_id == id && parsed.as_ref().is_ok_and(|e| e.size <= 1024);
    assert_eq!(read.is_ok(), expected_ok, "Spool::read: {:?}", read.err());
    if let Ok((env, body)) = read {
        assert_eq!(Some(&env), parsed.as_ref().ok());
        assert_eq!(body.len() as u64, env.size);
    }
    let (entries, problems) = listing::entries(spool).unwrap();
    assert_eq!(
        entries.len() + problems.len(),
        1,
        "one message in the spool"
    );
    for e in &entries {
        let _ = listing::format_line(e);
    }
    spool.remove(&file_id).unwrap();
});
