//! The durable spool: where an accepted message lives until it is delivered.
//!
//! # On-disk format (layout version 3: the files of layout 2, and a journal)
//!
//! ```text
//! <queue.path>/
//!   journal/<segment>.log         messages in their first delivery attempt,
//!                                 appended and group-committed (`journal`)
//!   tmp/<id>.msg, tmp/<id>.json   being written; anything here at start is debris
//!   msg/<id>.msg                  one file per message: the message exactly as it
//!                                 will be relayed (our Received header, then the
//!                                 content, CRLF line endings only, ending in CRLF),
//!                                 then the envelope as accepted (`Envelope`, JSON),
//!                                 then a 33-byte footer:
//!                                 "\nsmarthost spool v2 " + 12-digit JSON length + "\n"
//!   msg/<id>.json                 only once delivery has something to record: the
//!                                 envelope with each recipient's new status; it
//!                                 overrides the copy in `<id>.msg`
//! ```
//!
//! A message that arrived whole in memory (the usual case, below 128 KiB) is
//! stored in the journal: see `journal` for its format and why its one
//! `fdatasync` per batch keeps the same promise. It moves to `msg/` when its
//! first attempt defers it, and whatever the journal holds at start moves
//! there too. The rest of this section is about `msg/`.
//!
//! A message is in `msg/` if and only if `msg/<id>.msg` exists. Storing one: write
//! content, envelope and footer to `tmp/<id>.msg`, fsync it, rename it into
//! `msg/`, fsync `msg/`, and only then answer `250`: one file fsync and one
//! rename per message (layout 1 had two of each: content and envelope apart).
//! A crash before the directory fsync may lose the rename; no 250 was sent.
//! Delivery records state in `msg/<id>.json` (write `tmp/<id>.json`, fsync,
//! rename, fsync `msg/`), and removes a finished message `.msg` first, so a
//! crash in between leaves a lone `.json`, which `Spool::open` sweeps.
//!
//! Directory fsyncs are shared between concurrent stores (`DirSync`): one fsync
//! started after a rename covers it, so under load many sessions' messages are
//! made durable by one call (group commit).
//!
//! A message from a client is written as it arrives (`Incoming`): `tmp/<id>.msg`
//! is created with its first bytes and grows by one write per buffer; at the
//! end comes the rest of it with the envelope and footer, then the same
//! sequence (fsync, rename, directory fsync) before the `250`. A message that
//! is refused, abandoned or fails to write has its temporary file removed then
//! and there.
//!
//! A spool in layout 1 (`msg/<id>.eml` + `msg/<id>.json`) is migrated by
//! `Spool::open`: each `.eml` becomes a `.msg` with the envelope appended (the
//! `.json` stays, as the delivery state it already is), fsynced and renamed in
//! before the `.eml` is removed, so a crash mid-way migrates again.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

mod journal;

use journal::Journal;

/// The file `smarthost queue delete` appends each removed queue id to, one a
/// line; the running relay's queue manager logs each (`event=deleted`),
/// drops it from its schedule and the journal, and removes the file. A
/// message still in the journal when no relay runs is dropped by the next
/// start's recovery.
pub const DELETED_IDS: &str = "deleted-ids";

/// Why a message could not be stored; the session answers 451 or 452 (never 250).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt spool entry {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("spool task failed: {0}")]
    Task(String),
}

impl SpoolError {
    /// The same error again, for a second reply that reports it
    /// (`io::Error` is not `Clone`).
    pub fn again(&self) -> SpoolError {
        match self {
            SpoolError::Io(e) => SpoolError::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            SpoolError::Corrupt { id, reason } => SpoolError::Corrupt {
                id: id.clone(),
                reason: reason.clone(),
            },
            SpoolError::Task(why) => SpoolError::Task(why.clone()),
        }
    }

    /// Out of disk space or quota: `452 4.3.1` rather than `451 4.3.0`.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            SpoolError::Io(e) => is_out_of_space(e),
            _ => false,
        }
    }
}

fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The envelope of one message, as stored in `msg/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version; readers refuse versions they do not know.
    pub version: u32,
    pub id: String,
    /// Seconds since the Unix epoch when the 250 was sent.
    pub received_at: u64,
    pub client: ClientInfo,
    /// The reverse path; empty for the null sender `<>`.
    pub sender: String,
    pub params: MailParams,
    pub recipients: Vec<Recipient>,
    /// Bytes in `msg/<id>.eml`; checked when the message is read back.
    pub size: u64,
    /// Route by this sender domain instead of `sender`'s: a bounce (from `<>`)
    /// takes the route of the message it reports on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_domain: Option<String>,
}

/// Who handed the message over, for logs, Received headers and bounces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub address: SocketAddr,
    pub helo: String,
    /// `None` when the session was not encrypted.
    pub tls: Option<TlsInfo>,
    /// The SMTP AUTH identity, when the client authenticated.
    pub auth: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// The MAIL FROM parameters that travel with the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    /// `SIZE=` as declared by the client (RFC 1870), if any.
    pub declared_size: Option<u64>,
    /// `BODY=` value: `7BIT` or `8BITMIME` (RFC 6152).
    pub body: Option<String>,
    /// The message needs SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN `RET=` and `ENVID=` (RFC 3461), kept for the delivery stage.
    pub ret: Option<String>,
    pub envid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    /// DSN `ORCPT=` and `NOTIFY=` (RFC 3461), when given.
    pub orcpt: Option<String>,
    pub notify: Option<Vec<String>>,
    pub status: RecipientStatus,
}

/// Delivery state of one recipient; delivery rewrites it after each attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RecipientStatus {
    Pending,
    Delivered {
        upstream: String,
        reply: String,
        at: u64,
    },
    Deferred {
        reply: String,
        attempts: u32,
        next_attempt: u64,
    },
    Failed {
        reply: String,
        at: u64,
    },
}

/// The envelope's JSON schema (`Envelope::version`).
pub const FORMAT_VERSION: u32 = 1;

/// The end of every `.msg` file: names the layout, locates the envelope.
const FOOTER_TAG: &[u8] = b"\nsmarthost spool v2 ";
const FOOTER_LEN: usize = FOOTER_TAG.len() + 12 + 1;

fn footer(json_len: usize) -> Vec<u8> {
    let mut f = FOOTER_TAG.to_vec();
    f.extend_from_slice(format!("{json_len:012}\n").as_bytes());
    f
}

/// The bytes of a `.msg` file holding `content` and the envelope `json`
/// (for tools, tests and fuzzing; stores write the same in pieces).
pub fn message_file(content: &[u8], json: &[u8]) -> Vec<u8> {
    [content, json, &footer(json.len())].concat()
}

/// The envelope's length from a `.msg` file's last `FOOTER_LEN` bytes.
fn parse_footer(id: &str, tail: &[u8]) -> Result<u64, SpoolError> {
    let corrupt = || SpoolError::Corrupt {
        id: id.into(),
        reason: "no spool footer at the end of the message file".into(),
    };
    let digits = tail
        .strip_prefix(FOOTER_TAG)
        .and_then(|t| t.strip_suffix(b"\n"))
        .ok_or_else(corrupt)?;
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.len() == 12 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(corrupt)
}

/// A fresh queue id: time-ordered, unique within and across runs.
/// Hex of microseconds since the epoch, a per-process sequence and random bits.
pub fn new_queue_id() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff;
    let noise: u16 = rand::random();
    format!("{micros:013X}{seq:04X}{noise:04X}")
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Shares directory fsyncs between concurrent writers (group commit).
struct DirSync {
    dir: PathBuf,
    /// Renames completed so far (incremented after each rename).
    renamed: AtomicU64,
    /// The value of `renamed` when the last successful fsync started.
    synced: Mutex<u64>,
}

impl DirSync {
    /// Returns once an fsync of the directory that began after the caller's
    /// rename has succeeded: the caller's own, or one it queued behind.
    fn sync_after_rename(&self) -> io::Result<()> {
        let mine = self.renamed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= mine {
            return Ok(());
        }
        let upto = self.renamed.load(Ordering::SeqCst);
        File::open(&self.dir)?.sync_all()?;
        *synced = upto;
        Ok(())
    }
}

/// The spool directory. Cheap to clone; safe to share between sessions.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<SpoolInner>,
}

struct SpoolInner {
    msg_dir: PathBuf,
    tmp_dir: PathBuf,
    dir_sync: DirSync,
    journal: Journal,
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`, clears crash debris
    /// and migrates a layout-1 spool (see the module docs).
    pub fn open(root: &Path) -> io::Result<Spool> {
        let msg_dir = root.join("msg");
        let tmp_dir = root.join("tmp");
        let journal_dir = root.join("journal");
        for dir in [&msg_dir, &tmp_dir, &journal_dir] {
            fs::create_dir_all(dir)?;
        }
        for entry in fs::read_dir(&tmp_dir)? {
            fs::remove_file(entry?.path())?;
        }
        migrate_layout_1(&msg_dir, &tmp_dir)?;
        let (segment, recovered) = recover_journal(root, &msg_dir, &tmp_dir)?;
        if recovered > 0 {
            tracing::info!(
                messages = recovered,
                "messages moved from the journal to their own files"
            );
        }
        let spool = Spool::at(root, Journal::start(&journal_dir, segment)?);
        // A `.json` without its `.msg` was never acknowledged, or its
        // message was removed by a crash half-way.
        for entry in fs::read_dir(&msg_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") && !path.with_extension("msg").exists()
            {
                tracing::warn!(file = %path.display(), "removing a delivery state without its message, left by a crash");
                fs::remove_file(&path)?;
            }
        }
        File::open(&msg_dir)?.sync_all()?;
        Ok(spool)
    }

    fn at(root: &Path, journal: Journal) -> Spool {
        let msg_dir = root.join("msg");
        Spool {
            inner: Arc::new(SpoolInner {
                dir_sync: DirSync {
                    dir: msg_dir.clone(),
                    renamed: AtomicU64::new(0),
                    synced: Mutex::new(0),
                },
                msg_dir,
                tmp_dir: root.join("tmp"),
                journal,
            }),
        }
    }

    /// Opens an existing spool without touching it: for `queue list/delete`
    /// while the relay runs (sweeping `tmp/` then would eat in-flight writes).
    /// A spool still in layout 1 is refused: the relay migrates it at start.
    pub fn inspect(root: &Path) -> io::Result<Spool> {
        let msg_dir = root.join("msg");
        if !msg_dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no spool at {} (no msg/ directory)", root.display()),
            ));
        }
        let layout_1 = fs::read_dir(&msg_dir)?
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "eml"));
        if layout_1 {
            return Err(io::Error::other(format!(
                "the spool at {} is in the layout of an older smarthost; start `smarthost serve` once to migrate it",
                root.display()
            )));
        }
        Ok(Spool::at(root, Journal::snapshot(&root.join("journal"))?))
    }

    /// The file that holds message `id` (content, envelope, footer).
    pub fn message_path(&self, id: &str) -> PathBuf {
        self.inner.msg_dir.join(format!("{id}.msg"))
    }

    /// Where delivery records the state of message `id` (absent until then).
    pub fn state_path(&self, id: &str) -> PathBuf {
        self.inner.msg_dir.join(format!("{id}.json"))
    }

    /// Whether message `id` is queued.
    pub fn contains(&self, id: &str) -> bool {
        self.inner.journal.contains(id) || self.message_path(id).exists()
    }

    /// Whether message `id` is in the journal (in its first attempt, or
    /// left there by a crash): another process cannot remove it, only note
    /// it for the relay (`DELETED_IDS`).
    pub fn in_journal(&self, id: &str) -> bool {
        self.inner.journal.contains(id)
    }

    /// Makes `message` and `envelope` durable. When this returns `Ok`, both
    /// survive a crash or power loss, and the 250 may be sent.
    pub async fn store(&self, envelope: &Envelope, message: Vec<u8>) -> Result<(), SpoolError> {
        self.incoming(&envelope.id, Vec::new())
            .commit(message, envelope)
            .await
            .map(drop)
    }

    /// Starts writing message `id`, whose file begins with `header`; nothing
    /// touches the disk before its first `write` (or `commit`).
    pub fn incoming(&self, id: &str, header: Vec<u8>) -> Incoming {
        Incoming {
            inner: self.inner.clone(),
            id: id.to_owned(),
            len: header.len() as u64,
            header,
            file: None,
            failed: None,
        }
    }

    /// Rewrites a queued message's envelope (delivery state) durably: temporary
    /// file, fsync, rename over the old one, directory fsync. Refuses when the
    /// message is gone (deleted by `queue delete`), so a late update cannot
    /// bring back half a message.
    /// A message still in the journal moves to its own file instead, with
    /// the new state in it.
    pub async fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let json = serde_json::to_vec_pretty(envelope).map_err(io::Error::other)?;
        let inner = self.inner.clone();
        let id = envelope.id.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(read) = inner.journal.read(&id) {
                return inner.move_out_of_journal(&id, read?.1, &json);
            }
            let tmp = inner.tmp_dir.join(format!("{id}.json.update"));
            let target = inner.msg_dir.join(format!("{id}.json"));
            if !inner.msg_dir.join(format!("{id}.msg")).exists() {
                return Err(SpoolError::Io(io::ErrorKind::NotFound.into()));
            }
            let _ = fs::remove_file(&tmp);
            write_synced(&tmp, &json)?;
            fs::rename(&tmp, &target)?;
            // Deleted meanwhile: take back the envelope just written. (A lone
            // envelope left by an even closer race is swept at the next start.)
            if !inner.msg_dir.join(format!("{id}.msg")).exists() {
                let _ = fs::remove_file(&target);
                return Err(SpoolError::Io(io::ErrorKind::NotFound.into()));
            }
            inner.dir_sync.sync_after_rename()?;
            Ok(())
        })
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// Removes a message: from the journal (a done mark), or the `.msg`
    /// first (it is what makes it queued), then its state. A crash in
    /// between leaves a lone state, swept at start.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        // (A snapshot may be stale: the relay may have moved the message
        // to its own file since; that goes too.)
        if self.inner.journal.finish(id) && self.inner.journal.appends() {
            return Ok(());
        }
        for path in [self.message_path(id), self.state_path(id)] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Moves message `id` out of the journal into its own file, as it is
    /// (a message that will wait: it should not keep a segment alive).
    pub async fn move_to_file(&self, id: &str) -> Result<(), SpoolError> {
        let id = id.to_owned();
        self.blocking(move |s| match s.inner.journal.read(&id) {
            Some(read) => {
                let (json, content) = read?;
                s.inner.move_out_of_journal(&id, content, &json)
            }
            None => Ok(()),
        })
        .await
    }

    /// Closes message `id` in the journal if it is there (`queue delete`
    /// from another process, which could only note it); its file, if any,
    /// that process removed already.
    pub fn forget(&self, id: &str) {
        self.inner.journal.finish(id);
    }

    /// The spool's root directory (where `queue flush` leaves its request).
    pub fn root(&self) -> &Path {
        self.inner.msg_dir.parent().unwrap_or(Path::new("."))
    }

    /// Ids of the queued messages, oldest first.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = fs::read_dir(&self.inner.msg_dir)?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".msg").map(str::to_owned)
            })
            .collect();
        ids.extend(self.inner.journal.ids());
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Reads one queued message's envelope (its delivery state) without its
    /// content, checking that the file is whole.
    pub fn read_envelope(&self, id: &str) -> Result<Envelope, SpoolError> {
        match self.inner.journal.read_json(id) {
            Some(Ok(json)) => return parse_envelope(id, &json),
            Some(Err(e)) if !self.moved_on(&e) => return Err(e.into()),
            _ => {}
        }
        let file = File::open(self.message_path(id))?;
        let at = footer_start(id, file.metadata()?.len())?;
        let mut tail = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut tail, at)?;
        let content_len = content_len(id, at, &tail)?;
        let envelope = self.envelope_of(id, || {
            let mut json = vec![0; (at - content_len) as usize];
            file.read_exact_at(&mut json, content_len)?;
            Ok(json)
        })?;
        check_size(&envelope, content_len)?;
        Ok(envelope)
    }

    /// Reads one queued message back: its envelope (the recorded state, if
    /// any) and its content, checking that they belong together.
    pub fn read(&self, id: &str) -> Result<(Envelope, Vec<u8>), SpoolError> {
        match self.inner.journal.read(id) {
            Some(Ok((json, content))) => {
                let envelope = parse_envelope(id, &json)?;
                check_size(&envelope, content.len() as u64)?;
                return Ok((envelope, content));
            }
            Some(Err(e)) if !self.moved_on(&e) => return Err(e.into()),
            _ => {}
        }
        let mut bytes = fs::read(self.message_path(id))?;
        let at = footer_start(id, bytes.len() as u64)? as usize;
        let content_len = content_len(id, at as u64, &bytes[at..])? as usize;
        let envelope = self.envelope_of(id, || Ok(bytes[content_len..at].to_vec()))?;
        check_size(&envelope, content_len as u64)?;
        bytes.truncate(content_len);
        Ok((envelope, bytes))
    }

    /// Reads the content of message `id` alone (delivery already has its
    /// envelope), checking it against the `size` that envelope gives.
    pub fn read_content(&self, id: &str, size: u64) -> Result<Vec<u8>, SpoolError> {
        let content = match self.inner.journal.read_content(id) {
            Some(Ok(content)) => content,
            Some(Err(e)) if !self.moved_on(&e) => return Err(e.into()),
            _ => {
                let mut bytes = fs::read(self.message_path(id))?;
                let at = footer_start(id, bytes.len() as u64)?;
                let content_len = content_len(id, at, &bytes[at as usize..])?;
                bytes.truncate(content_len as usize);
                bytes
            }
        };
        check_len(id, size, content.len() as u64)?;
        Ok(content)
    }

    /// Whether a snapshot's journal entry is gone because the relay moved
    /// on since (the message moved to its own file, or was done): then the
    /// file, if any, is what to read.
    fn moved_on(&self, e: &io::Error) -> bool {
        !self.inner.journal.appends() && e.kind() == io::ErrorKind::NotFound
    }

    /// The state delivery recorded for `id`, else the envelope as accepted.
    fn envelope_of(
        &self,
        id: &str,
        accepted: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> Result<Envelope, SpoolError> {
        let json = match fs::read(self.state_path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => accepted()?,
            recorded => recorded?,
        };
        parse_envelope(id, &json)
    }
}

/// Layout 1 kept content (`.eml`) and envelope (`.json`) apart: each pair
/// becomes a `.msg` (content + envelope + footer), made durable before
/// the `.eml` goes; the `.json` stays as its delivery state. A lone
/// `.eml` was never acknowledged and is removed.
fn migrate_layout_1(msg_dir: &Path, tmp_dir: &Path) -> io::Result<()> {
    let mut migrated = Vec::new();
    for entry in fs::read_dir(msg_dir)? {
        let eml = entry?.path();
        if eml.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let json = eml.with_extension("json");
        if !json.exists() {
            tracing::warn!(file = %eml.display(), "removing unacknowledged spool file left by a crash");
            fs::remove_file(&eml)?;
            continue;
        }
        let id = eml
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let (content, envelope) = (fs::read(&eml)?, fs::read(&json)?);
        place(
            &tmp_dir.join(format!("{id}.msg")),
            &eml.with_extension("msg"),
            &[&content, &envelope, &footer(envelope.len())],
        )?;
        migrated.push(eml);
    }
    if !migrated.is_empty() {
        File::open(msg_dir)?.sync_all()?;
        for eml in &migrated {
            fs::remove_file(eml)?;
        }
        tracing::info!(
            messages = migrated.len(),
            "spool migrated from layout 1 to layout 2"
        );
    }
    Ok(())
}

/// Moves the messages the journal still holds into `msg/` (unless one is
/// there already: moved before a crash, and maybe given a state since) and
/// empties the journal. Ids `queue delete` noted are dropped.
fn recover_journal(root: &Path, msg_dir: &Path, tmp_dir: &Path) -> io::Result<(u64, usize)> {
    let deleted: HashSet<String> = fs::read_to_string(root.join(DELETED_IDS))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let keep = |id: &str, json: &[u8], content: &[u8]| {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            tracing::warn!(queue_id = %id.escape_debug(), "journal record with a malformed queue id left out");
            return Ok(());
        }
        let target = msg_dir.join(format!("{id}.msg"));
        if target.exists() {
            return Ok(());
        }
        place(
            &tmp_dir.join(format!("{id}.msg")),
            &target,
            &[content, json, &footer(json.len())],
        )
    };
    journal::recover(&root.join("journal"), &deleted, keep, || {
        File::open(msg_dir)?.sync_all()
    })
}

/// Writes `parts` to a new file at `tmp`, fsyncs it and renames it to
/// `target` (the caller fsyncs the directory).
fn place(tmp: &Path, target: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let _ = fs::remove_file(tmp);
    let mut file = TmpFile::create(tmp.to_owned())?;
    write_all(&file.file, parts)?;
    file.file.sync_all()?;
    fs::rename(&file.path, target)?;
    file.keep = true;
    Ok(())
}

/// Where the footer of a `.msg` file of `len` bytes starts.
fn footer_start(id: &str, len: u64) -> Result<u64, SpoolError> {
    len.checked_sub(FOOTER_LEN as u64)
        .ok_or_else(|| SpoolError::Corrupt {
            id: id.into(),
            reason: format!("message file of {len} bytes has no footer"),
        })
}

/// The content's length in a `.msg` file whose footer, `tail`, starts at `at`.
fn content_len(id: &str, at: u64, tail: &[u8]) -> Result<u64, SpoolError> {
    let json_len = parse_footer(id, tail)?;
    at.checked_sub(json_len).ok_or_else(|| SpoolError::Corrupt {
        id: id.into(),
        reason: format!("footer names an envelope of {json_len} bytes before byte {at}"),
    })
}

/// The same reads and removal for async callers (the queue manager, the admin
/// endpoint): on a blocking thread, since a queued message may be 150 MiB and
/// up to 64 deliveries read at once.
impl Spool {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let spool = self.clone();
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    pub async fn read_content_async(&self, id: &str, size: u64) -> Result<Vec<u8>, SpoolError> {
        let id = id.to_owned();
        self.blocking(move |s| s.read_content(&id, size)).await
    }

    pub async fn read_envelope_async(&self, id: &str) -> Result<Envelope, SpoolError> {
        let id = id.to_owned();
        self.blocking(move |s| s.read_envelope(&id)).await
    }

    pub async fn list_async(&self) -> Result<Vec<String>, SpoolError> {
        self.blocking(|s| Ok(s.list()?)).await
    }

    pub async fn remove_async(&self, id: &str) -> Result<(), SpoolError> {
        let id = id.to_owned();
        self.blocking(move |s| Ok(s.remove(&id)?)).await
    }
}

/// A content file of `size` bytes belongs with `envelope` only if it has the
/// size the envelope recorded (a torn or foreign file does not).
fn check_size(envelope: &Envelope, size: u64) -> Result<(), SpoolError> {
    check_len(&envelope.id, envelope.size, size)
}

fn check_len(id: &str, expected: u64, size: u64) -> Result<(), SpoolError> {
    if size == expected {
        return Ok(());
    }
    Err(SpoolError::Corrupt {
        id: id.to_owned(),
        reason: format!("message is {size} bytes, envelope says {expected}"),
    })
}

/// Parses an envelope file; truncated or foreign input is an error, never a panic.
pub fn parse_envelope(id: &str, json: &[u8]) -> Result<Envelope, SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        id: id.into(),
        reason,
    };
    let envelope: Envelope = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
    if envelope.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "unknown format version {}",
            envelope.version
        )));
    }
    if envelope.id != id {
        return Err(corrupt(format!("envelope names id {}", envelope.id)));
    }
    Ok(envelope)
}

/// One message being written to `tmp/<id>.eml` as it arrives. Content goes
/// out on blocking threads, one buffer at a time (the session waits for each
/// write before reading on: backpressure, and bounded memory). Dropped before
/// `commit`, its temporary file is removed.
pub struct Incoming {
    inner: Arc<SpoolInner>,
    id: String,
    /// Not yet written: goes out with the first content, in the same call.
    header: Vec<u8>,
    /// Created by the first write; `None` before, or while a write has it.
    file: Option<TmpFile>,
    /// Bytes of the message so far, header included, written or not.
    len: u64,
    /// A write failed: the file is gone, later content is dropped, and
    /// `commit` reports this.
    failed: Option<SpoolError>,
}

impl Incoming {
    /// The size the message file will have with `tail` bytes more: the
    /// envelope's `size`.
    pub fn size_with(&self, tail: usize) -> u64 {
        self.len + tail as u64
    }

    /// Why the message can no longer be stored, if a write failed.
    pub fn failure(&self) -> Option<SpoolError> {
        self.failed.as_ref().map(SpoolError::again)
    }

    /// Appends `chunk` to the temporary file (creating it the first time) and
    /// gives the buffer back for reuse. After a failure, or for a discarded
    /// message, the chunk is dropped: the client's content is still read to
    /// its end and `commit` answers for it.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Vec<u8> {
        self.len += chunk.len() as u64;
        if self.failed.is_some() || chunk.is_empty() {
            return chunk;
        }
        let header = std::mem::take(&mut self.header);
        let file = self.file.take();
        let path = self.inner.tmp_path(&self.id, "msg");
        // If this future is dropped mid-write, the file comes back in the
        // task's output, which tokio drops: TmpFile's Drop removes it.
        let done = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let file = match file {
                    Some(f) => f,
                    None => TmpFile::create(path)?,
                };
                write_all(&file.file, &[&header, &chunk])?;
                Ok(file)
            })();
            (result, chunk)
        })
        .await;
        match done {
            Ok((Ok(file), chunk)) => {
                self.file = Some(file);
                chunk
            }
            Ok((Err(e), chunk)) => {
                // The file (if any) was dropped, so removed, on that thread.
                self.failed = Some(SpoolError::Io(e));
                chunk
            }
            Err(e) => {
                self.failed = Some(SpoolError::Task(e.to_string()));
                Vec::new()
            }
        }
    }

    /// Removes the temporary file now (a refused message), on a blocking
    /// thread; later writes are dropped.
    pub async fn discard(&mut self) {
        self.failed
            .get_or_insert_with(|| SpoolError::Task("message discarded".into()));
        if let Some(file) = self.file.take() {
            let _ = tokio::task::spawn_blocking(move || drop(file)).await;
        }
    }

    /// Writes `tail` (the rest of the message) and makes the message and
    /// `envelope` durable, as the module docs say. When this returns `Ok`,
    /// the 250 may be sent; on `Err` nothing of the message is left. `Ok`
    /// carries the whole message when it was never written in pieces (it
    /// was all in memory), so delivery need not read it back.
    pub async fn commit(
        mut self,
        tail: Vec<u8>,
        envelope: &Envelope,
    ) -> Result<Option<Vec<u8>>, SpoolError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if envelope.size != self.size_with(tail.len()) {
            return Err(SpoolError::Corrupt {
                id: self.id.clone(),
                reason: format!(
                    "envelope says {} bytes, message is {}",
                    envelope.size,
                    self.size_with(tail.len())
                ),
            });
        }
        let json = serde_json::to_vec_pretty(envelope).map_err(io::Error::other)?;
        let inner = self.inner.clone();
        let id = self.id.clone();
        let header = std::mem::take(&mut self.header);
        let file = self.file.take();
        // All of it in memory: into the journal, one fdatasync shared
        // with whoever else commits now.
        if file.is_none()
            && inner.journal.appends()
            && header.len() + tail.len() <= journal::MAX_MESSAGE
        {
            // The header goes in front within `tail`'s own buffer, which
            // has room to spare as a rule: no second copy of the message.
            let mut content = tail;
            content.splice(0..0, header);
            // The buffer grew by doubling (a 100 KiB message sits in 128
            // KiB); it waits for the fdatasync and may then wait in the hot
            // cache, so its spare room goes back now (in place: no copy).
            content.shrink_to_fit();
            return inner.journal.append(&id, &json, content).await.map(Some);
        }
        tokio::task::spawn_blocking(move || inner.commit_blocking(&id, file, &header, &tail, &json))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }
}

impl Drop for Incoming {
    /// An abandoned message (RSET, disconnect, timeout): its file is removed
    /// and closed off the async workers when there are some (closing a large
    /// unlinked file frees its pages, which takes a while).
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(file))),
            Err(_) => drop(file),
        }
    }
}

/// A file in `tmp/`, removed when dropped unless `keep` was set (renamed
/// into `msg/`).
struct TmpFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl TmpFile {
    fn create(path: PathBuf) -> io::Result<TmpFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TmpFile {
            path,
            file,
            keep: false,
        })
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl SpoolInner {
    fn tmp_path(&self, id: &str, ext: &str) -> PathBuf {
        self.tmp_dir.join(format!("{id}.{ext}"))
    }

    /// Gives a message in the journal its own file, with `json` as its
    /// envelope, durable before the journal lets go of it. If `queue delete`
    /// took it meanwhile, the file goes again and the answer is `NotFound`.
    fn move_out_of_journal(
        &self,
        id: &str,
        content: Vec<u8>,
        json: &[u8],
    ) -> Result<(), SpoolError> {
        let target = self.msg_dir.join(format!("{id}.msg"));
        place(
            &self.tmp_path(id, "msg"),
            &target,
            &[&content, json, &footer(json.len())],
        )?;
        self.dir_sync.sync_after_rename()?;
        if self.journal.finish(id) {
            return Ok(());
        }
        let _ = fs::remove_file(&target);
        Err(SpoolError::Io(io::ErrorKind::NotFound.into()))
    }

    /// The end of a store: the last bytes of the message, the envelope and
    /// the footer, one fsync, the rename and the directory fsync.
    fn commit_blocking(
        &self,
        id: &str,
        file: Option<TmpFile>,
        header: &[u8],
        tail: &[u8],
        json: &[u8],
    ) -> Result<Option<Vec<u8>>, SpoolError> {
        let in_memory = file.is_none();
        let target = self.msg_dir.join(format!("{id}.msg"));
        let result = (|| {
            let mut file = match file {
                Some(f) => f,
                None => TmpFile::create(self.tmp_path(id, "msg"))?,
            };
            write_all(&file.file, &[header, tail, json, &footer(json.len())])?;
            file.file.sync_all()?;
            fs::rename(&file.path, &target)?;
            file.keep = true;
            self.dir_sync.sync_after_rename()
        })();
        if let Err(e) = result {
            // Leave nothing that looks accepted: no 250 will be sent. (The
            // temporary file, if it was not renamed, removed itself.)
            let _ = fs::remove_file(target);
            return Err(e.into());
        }
        Ok(in_memory.then(|| [header, tail].concat()))
    }
}

/// Writes every byte of `parts`, in order: one `write` for one non-empty
/// part, one `writev` for two (our header and the first content) in the
/// usual case.
fn write_all(mut file: &File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    match &slices[..] {
        [] => Ok(()),
        [one] => file.write_all(one),
        _ => write_all_vectored(file, &mut slices),
    }
}

/// Writes every byte of `slices` with as few `writev` calls as it takes.
fn write_all_vectored(mut file: &File, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices = slices;
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str, size: u64) -> Envelope {
        Envelope {
            version: FORMAT_VERSION,
            id: id.into(),
            received_at: 1,
            client: ClientInfo {
                address: "127.0.0.1:1".parse().unwrap(),
                helo: "h".into(),
                tls: None,
                auth: None,
            },
            sender: "a@b.example".into(),
            params: MailParams::default(),
            recipients: vec![Recipient {
                address: "c@d.example".into(),
                orcpt: None,
                notify: None,
                status: RecipientStatus::Pending,
            }],
            size,
            route_domain: None,
        }
    }

    #[tokio::test]
    async fn store_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        spool
            .store(&envelope(&id, 6), b"hi\r\n\r\n".to_vec())
            .await
            .unwrap();
        assert_eq!(spool.list().unwrap(), vec![id.clone()]);
        let (env, body) = spool.read(&id).unwrap();
        assert_eq!(env, envelope(&id, 6));
        assert_eq!(body, b"hi\r\n\r\n");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn journal_first_then_one_file_and_the_recorded_state_wins() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut env = envelope("S1", 3);
        spool.store(&env, b"a\r\n".to_vec()).await.unwrap();
        let names = |d: &str| {
            let mut n: Vec<String> = fs::read_dir(dir.path().join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        // Stored whole from memory: in the journal, queued all the same.
        assert!(names("msg").is_empty());
        assert_eq!(names("journal").len(), 1);
        assert!(spool.contains("S1") && spool.in_journal("S1"));
        assert_eq!(spool.list().unwrap(), ["S1"]);
        assert_eq!(spool.read_envelope("S1").unwrap(), env);
        let other = Spool::inspect(dir.path()).unwrap();
        assert_eq!(other.read("S1").unwrap(), (env.clone(), b"a\r\n".to_vec()));

        // The first deferral moves it to its own file, state included.
        env.recipients[0].status = RecipientStatus::Deferred {
            reply: "451 4.4.1 later".into(),
            attempts: 1,
            next_attempt: 9,
        };
        spool.update(&env).await.unwrap();
        assert!(!spool.in_journal("S1"));
        assert_eq!(names("msg"), ["S1.msg"]);
        let file = fs::read(dir.path().join("msg/S1.msg")).unwrap();
        assert!(file.starts_with(b"a\r\n{"), "content, then the envelope");
        assert!(file.ends_with(b"\n") && file[file.len() - FOOTER_LEN..].starts_with(FOOTER_TAG));
        assert_eq!(spool.read_envelope("S1").unwrap(), env);

        // Later states go beside it.
        env.recipients[0].status = RecipientStatus::Deferred {
            reply: "451 4.4.1 later".into(),
            attempts: 2,
            next_attempt: 19,
        };
        spool.update(&env).await.unwrap();
        assert_eq!(names("msg"), ["S1.json", "S1.msg"]);
        assert_eq!(spool.read_envelope("S1").unwrap(), env);
        assert_eq!(spool.read("S1").unwrap(), (env.clone(), b"a\r\n".to_vec()));

        // A torn file (no footer, or one that does not fit) is corrupt, not a panic.
        for len in [0, 2, file.len() - 1] {
            fs::write(dir.path().join("msg/S1.msg"), &file[..len]).unwrap();
            assert!(
                matches!(spool.read("S1"), Err(SpoolError::Corrupt { .. })),
                "{len}"
            );
            assert!(
                matches!(spool.read_envelope("S1"), Err(SpoolError::Corrupt { .. })),
                "{len}"
            );
        }
    }

    #[tokio::test]
    async fn a_layout_1_spool_is_migrated_at_open_and_refused_by_inspect() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path()).unwrap());
        let mut env = envelope("M1", 4);
        env.recipients[0].status = RecipientStatus::Deferred {
            reply: "451 4.4.1 later".into(),
            attempts: 2,
            next_attempt: 7,
        };
        fs::write(dir.path().join("msg/M1.eml"), b"ab\r\n").unwrap();
        fs::write(
            dir.path().join("msg/M1.json"),
            serde_json::to_vec_pretty(&env).unwrap(),
        )
        .unwrap();
        let refused = Spool::inspect(dir.path()).err().expect("refused");
        assert!(
            refused.to_string().contains("start `smarthost serve` once"),
            "{refused}"
        );

        let spool = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join("msg/M1.eml").exists());
        assert_eq!(spool.list().unwrap(), ["M1"]);
        assert_eq!(spool.read("M1").unwrap(), (env.clone(), b"ab\r\n".to_vec()));
        // Without the recorded state, the envelope in the file is the same.
        fs::remove_file(dir.path().join("msg/M1.json")).unwrap();
        assert_eq!(spool.read_envelope("M1").unwrap(), env);
        assert!(Spool::inspect(dir.path()).is_ok());
    }

    #[tokio::test]
    async fn open_moves_the_journal_to_files_and_drops_deleted_ids() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for id in ["A1", "B2", "C3"] {
            spool
                .store(&envelope(id, 3), b"x\r\n".to_vec())
                .await
                .unwrap();
        }
        spool.remove("C3").unwrap();
        fs::write(dir.path().join(DELETED_IDS), "B2\n").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap(), ["A1"]);
        assert!(!spool.in_journal("A1") && spool.message_path("A1").exists());
        assert_eq!(
            spool.read("A1").unwrap(),
            (envelope("A1", 3), b"x\r\n".to_vec())
        );
        let segments = fs::read_dir(dir.path().join("journal")).unwrap().count();
        assert_eq!(segments, 1, "a fresh, empty segment");
    }

    fn tmp_files(dir: &Path) -> usize {
        fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    #[tokio::test]
    async fn incoming_streams_then_commits_the_same_format() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut m = spool.incoming("S1", b"Received: x\r\n".to_vec());
        assert_eq!(tmp_files(dir.path()), 0, "nothing on disk before content");
        let back = m.write(b"a\r\n".to_vec()).await;
        assert_eq!(back, b"a\r\n", "the buffer comes back");
        assert_eq!(tmp_files(dir.path()), 1);
        m.write(b"b\r\n".to_vec()).await;
        let env = envelope("S1", m.size_with(3));
        assert_eq!(env.size, 22);
        m.commit(b"c\r\n".to_vec(), &env).await.unwrap();
        let (read, body) = spool.read("S1").unwrap();
        assert_eq!(read, env);
        assert_eq!(body, b"Received: x\r\na\r\nb\r\nc\r\n");
        assert_eq!(tmp_files(dir.path()), 0);
        // A size that does not match is refused, not stored.
        let m = spool.incoming("S2", b"R\r\n".to_vec());
        assert!(
            m.commit(b"x\r\n".to_vec(), &envelope("S2", 3))
                .await
                .is_err()
        );
        assert_eq!(spool.list().unwrap(), ["S1"]);
    }

    #[tokio::test]
    async fn an_abandoned_or_failed_message_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // Dropped mid-message (disconnect, RSET): removed off the worker.
        let mut m = spool.incoming("D1", b"R\r\n".to_vec());
        m.write(vec![b'x'; 1000]).await;
        assert_eq!(tmp_files(dir.path()), 1);
        drop(m);
        for _ in 0..200 {
            if tmp_files(dir.path()) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(tmp_files(dir.path()), 0);
        // Discarded (refused): gone when discard returns; later writes dropped.
        let mut m = spool.incoming("D2", b"R\r\n".to_vec());
        m.write(vec![b'x'; 1000]).await;
        m.discard().await;
        assert_eq!(tmp_files(dir.path()), 0);
        m.write(vec![b'x'; 1000]).await;
        assert_eq!(tmp_files(dir.path()), 0);
        // A write that fails (here: tmp/ is gone) is reported by commit.
        fs::remove_dir(dir.path().join("tmp")).unwrap();
        let mut m = spool.incoming("D3", b"R\r\n".to_vec());
        m.write(b"a\r\n".to_vec()).await;
        let e = m.failure().expect("the failure is known at once");
        assert!(matches!(&e, SpoolError::Io(io) if io.kind() == io::ErrorKind::NotFound));
        m.write(b"b\r\n".to_vec()).await;
        let env = envelope("D3", m.size_with(0));
        assert!(m.commit(Vec::new(), &env).await.is_err());
        assert!(spool.list().unwrap().is_empty());
    }

    #[test]
    fn open_removes_lone_halves_and_tmp_debris() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path()).unwrap());
        // A layout-1 content file without its envelope, a state without its
        // message, and anything in tmp/.
        fs::write(dir.path().join("msg/A.eml"), b"x").unwrap();
        fs::write(dir.path().join("msg/B.json"), b"{}").unwrap();
        fs::write(dir.path().join("tmp/C.msg"), b"x").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(!dir.path().join("msg/A.eml").exists());
        assert!(!dir.path().join("msg/B.json").exists());
        assert!(!dir.path().join("tmp/C.msg").exists());
    }

    #[test]
    fn corrupt_envelopes_are_errors() {
        let good = serde_json::to_vec(&envelope("X", 1)).unwrap();
        for cut in [0, 1, good.len() / 2, good.len() - 1] {
            assert!(parse_envelope("X", &good[..cut]).is_err());
        }
        assert!(parse_envelope("Y", &good).is_err());
        assert!(parse_envelope("X", &good).is_ok());
    }

    #[tokio::test]
    async fn update_rewrites_and_remove_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut env = envelope("U1", 2);
        spool.store(&env, b"x\n".to_vec()).await.unwrap();
        env.recipients[0].status = RecipientStatus::Failed {
            reply: "550 5.1.1 no".into(),
            at: 2,
        };
        spool.update(&env).await.unwrap();
        assert_eq!(spool.read("U1").unwrap().0, env);
        spool.remove("U1").unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(spool.update(&env).await.is_err(), "no resurrection");
        assert!(!dir.path().join("msg/U1.json").exists());
    }

    #[test]
    fn queue_ids_are_unique_and_ordered() {
        let a = new_queue_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_queue_id();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), 21);
    }
}
