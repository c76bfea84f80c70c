//! The journal: where a message that arrived whole in memory is made durable,
//! by appending it to a segment file, so that the messages of every session
//! committing at the same moment share one `fdatasync` (group commit). It
//! stays there until its first delivery attempt ends: delivered, it gets a
//! done mark; deferred, it moves to its own `msg/<id>.msg` file (layout 2)
//! and then gets the done mark.
//!
//! # On-disk format (layout version 3: layout 2 plus `journal/`)
//!
//! ```text
//! journal/<segment, 16 hex digits>.log
//!   "smarthost journal v3\n"
//!   records, each:  "SJ" | kind (1 byte) | payload length (u32 LE)
//!                   | CRC-32 of kind and payload (u32 LE) | payload
//!   kind 'M', a message:  id length (1 byte) | id | envelope JSON length
//!                         (u32 LE) | envelope JSON | the message as relayed
//!   kind 'D', done:       id
//! ```
//!
//! A message is queued if its `msg/<id>.msg` exists, or if an `M` record
//! for it exists with no `D` record after it. Segments are created with
//! an fsync of the file and then of `journal/`, before any record in them is
//! acknowledged; a record is acknowledged (the session's 250) only after an
//! `fdatasync` that covers it returned. So the promise of layout 2 holds:
//! the bytes that hold the message and the directory entry that finds them
//! are durable before the 250.
//!
//! A record cut short by a crash fails its length or CRC check: reading a
//! segment stops there (it was never acknowledged). A batch whose write or
//! fdatasync fails is cut off the segment again and the next batch starts a
//! new segment, so no record of a refused message is read back unless the
//! truncation failed as well (a second fault; then the client, which got a
//! 4xx, may see a duplicate).
//!
//! Segments are deleted oldest first, once every message in them is done, so
//! a done mark lives at least as long as the message it closes. Done marks
//! are written and synced with the next batch; one lost in a crash brings
//! its message back at the next start: a duplicate, never a loss
//! (at-least-once).
//!
//! At start (`recover`), whatever the journal still holds is moved to
//! `msg/` as layout-2 files, then every segment is deleted: recovery
//! leaves an empty journal, and only one code path reads old segments.
//!
//! Written by hand: no crate offers a group-committed append log with this
//! durability contract; the record format is ten lines of framing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::SpoolError;

const SEGMENT_MAGIC: &[u8] = b"smarthost journal v3\n";
const RECORD_MAGIC: &[u8; 2] = b"SJ";
/// Magic, kind, payload length, CRC.
const RECORD_HEADER: usize = 2 + 1 + 4 + 4;
const MESSAGE: u8 = b'M';
const DONE: u8 = b'D';
/// A new segment is started once the active one holds this much.
const SEGMENT_BYTES: u64 = 16 << 20;
/// One batch writes at most about this much before its fdatasync.
const BATCH_BYTES: usize = 8 << 20;
/// Larger messages get their own file (the journal is for the many small
/// ones; recovery reads a segment whole).
pub(super) const MAX_MESSAGE: usize = 1 << 20;

/// Where a message's parts are in its segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    segment: u64,
    json_at: u64,
    json_len: u64,
    content_at: u64,
    content_len: u64,
}

/// The journal of a running relay (it appends), or a snapshot of it taken
/// by `queue list/delete` from another process (it only reads).
pub(super) struct Journal {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    /// Where appends and done marks go; `None` for a snapshot.
    writer: Option<Arc<Writer>>,
}

impl Drop for Journal {
    /// Writes what is still queued (done marks) before the spool goes.
    fn drop(&mut self) {
        if let Some(writer) = &self.writer {
            writer.drain(true);
        }
    }
}

/// The queue of requests and the committer that writes them. The
/// committer runs on tokio's blocking pool, started by the request that
/// finds it idle and running until the queue is empty: under load it takes
/// everything queued while it was busy as one batch. A task on the blocking
/// pool, rather than a thread of its own, so that the runtime knows a commit
/// is under way (a paused test clock does not jump ahead of it).
struct Writer {
    queue: Mutex<Queue>,
    committer: Mutex<Committer>,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// A committer is started or running: it will see what is queued.
    draining: bool,
}

struct State {
    /// Messages held in the journal and not done.
    index: HashMap<String, Slot>,
    /// Every segment on disk, with how many of its messages are not done
    /// yet (done: its done mark was processed).
    live: BTreeMap<u64, usize>,
    active: u64,
}

enum Request {
    Message {
        id: String,
        /// Record header, id and envelope; `content` follows it.
        head: Vec<u8>,
        json_len: u64,
        content: Vec<u8>,
        reply: oneshot::Sender<io::Result<Vec<u8>>>,
    },
    Done {
        segment: u64,
        record: Vec<u8>,
    },
}

impl Request {
    fn len(&self) -> usize {
        match self {
            Request::Message { head, content, .. } => head.len() + content.len(),
            Request::Done { record, .. } => record.len(),
        }
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016X}.log"))
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_suffix(".log")?;
            (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// The record header for `parts`; `capacity` more bytes are reserved for
/// what the caller appends (a message's content is written from its own
/// buffer, so its head reserves room for everything but that).
fn record(kind: u8, parts: &[&[u8]], capacity: usize) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    let mut head = Vec::with_capacity(RECORD_HEADER + capacity);
    head.extend_from_slice(RECORD_MAGIC);
    head.push(kind);
    head.extend_from_slice(&(len as u32).to_le_bytes());
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    head
}

/// The head of an `M` record (everything before the content).
fn message_head(id: &str, json: &[u8], content: &[u8]) -> Vec<u8> {
    let id_len = [id.len() as u8];
    let json_len = (json.len() as u32).to_le_bytes();
    let parts: [&[u8]; 5] = [&id_len, id.as_bytes(), &json_len, json, content];
    let head_len = parts[..4].iter().map(|p| p.len()).sum();
    let mut head = record(MESSAGE, &parts, head_len);
    for p in &parts[..4] {
        head.extend_from_slice(p);
    }
    head
}

fn done_record(id: &str) -> Vec<u8> {
    let mut r = record(DONE, &[id.as_bytes()], id.len());
    r.extend_from_slice(id.as_bytes());
    r
}

/// One record read back from a segment.
enum Entry<'a> {
    Message { id: &'a str, slot: Slot },
    Done { id: &'a str },
}

/// The records of one segment's bytes, up to the first that is cut short,
/// damaged or not ours (nothing after it was ever acknowledged).
fn entries(segment: u64, bytes: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(SEGMENT_MAGIC) else {
        return out;
    };
    let mut at = SEGMENT_MAGIC.len() as u64;
    while rest.len() >= RECORD_HEADER && rest.starts_with(RECORD_MAGIC) {
        let kind = rest[2];
        let len = u32::from_le_bytes(rest[3..7].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(rest[7..11].try_into().unwrap());
        let Some(payload) = rest[RECORD_HEADER..].get(..len) else {
            break;
        };
        let mut check = crc32fast::Hasher::new();
        check.update(&[kind]);
        check.update(payload);
        if check.finalize() != crc {
            break;
        }
        let payload_at = at + RECORD_HEADER as u64;
        let entry = match kind {
            MESSAGE => message_entry(segment, payload_at, payload),
            DONE => std::str::from_utf8(payload)
                .ok()
                .map(|id| Entry::Done { id }),
            _ => None,
        };
        let Some(entry) = entry else { break };
        out.push(entry);
        rest = &rest[RECORD_HEADER + len..];
        at = payload_at + len as u64;
    }
    out
}

fn message_entry(segment: u64, at: u64, payload: &[u8]) -> Option<Entry<'_>> {
    let id_len = *payload.first()? as usize;
    let id = std::str::from_utf8(payload.get(1..1 + id_len)?).ok()?;
    let json_len_at = 1 + id_len;
    let json_len =
        u32::from_le_bytes(payload.get(json_len_at..json_len_at + 4)?.try_into().ok()?) as u64;
    let json_at = (json_len_at + 4) as u64;
    let content_at = json_at + json_len;
    let content_len = (payload.len() as u64).checked_sub(content_at)?;
    Some(Entry::Message {
        id,
        slot: Slot {
            segment,
            json_at: at + json_at,
            json_len,
            content_at: at + content_at,
            content_len,
        },
    })
}

/// The messages the segments in `dir` hold and have not closed, and the
/// segments there are. A segment deleted while being read counts as empty.
fn scan(dir: &Path) -> io::Result<(HashMap<String, Slot>, Vec<u64>)> {
    let mut live = HashMap::new();
    let found = segments(dir)?;
    for &segment in &found {
        let bytes = match fs::read(segment_path(dir, segment)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r?,
        };
        for entry in entries(segment, &bytes) {
            match entry {
                Entry::Message { id, slot } => live.insert(id.to_owned(), slot),
                Entry::Done { id } => live.remove(id),
            };
        }
    }
    Ok((live, found))
}

/// Reads `len` bytes at `at` of a segment.
fn read_at(dir: &Path, segment: u64, at: u64, len: u64) -> io::Result<Vec<u8>> {
    let file = File::open(segment_path(dir, segment))?;
    let mut bytes = vec![0; len as usize];
    file.read_exact_at(&mut bytes, at)?;
    Ok(bytes)
}

/// Reads a message's envelope JSON and content from its segment.
fn read_slot(dir: &Path, slot: &Slot) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let file = File::open(segment_path(dir, slot.segment))?;
    let mut json = vec![0; slot.json_len as usize];
    file.read_exact_at(&mut json, slot.json_at)?;
    let mut content = vec![0; slot.content_len as usize];
    file.read_exact_at(&mut content, slot.content_at)?;
    Ok((json, content))
}

/// Moves what the journal in `dir` still holds into its own files (`keep`,
/// called for each message not done and not in `deleted`, oldest first,
/// segment by segment; then `sync`, which makes them durable), then deletes
/// every segment. Returns the number the next segment gets, and how many
/// messages were kept.
pub(super) fn recover(
    dir: &Path,
    deleted: &HashSet<String>,
    mut keep: impl FnMut(&str, &[u8], &[u8]) -> io::Result<()>,
    sync: impl FnOnce() -> io::Result<()>,
) -> io::Result<(u64, usize)> {
    let (live, found) = scan(dir)?;
    let mut by_segment: BTreeMap<u64, Vec<(&String, &Slot)>> = BTreeMap::new();
    for (id, slot) in live.iter().filter(|(id, _)| !deleted.contains(*id)) {
        by_segment.entry(slot.segment).or_default().push((id, slot));
    }
    let mut kept = 0;
    for (segment, mut messages) in by_segment {
        messages.sort_by_key(|(_, slot)| slot.json_at);
        let file = File::open(segment_path(dir, segment))?;
        for (id, slot) in messages {
            let mut json = vec![0; slot.json_len as usize];
            file.read_exact_at(&mut json, slot.json_at)?;
            let mut content = vec![0; slot.content_len as usize];
            file.read_exact_at(&mut content, slot.content_at)?;
            keep(id, &json, &content)?;
            kept += 1;
        }
    }
    sync()?;
    for &segment in &found {
        fs::remove_file(segment_path(dir, segment))?;
    }
    File::open(dir)?.sync_all()?;
    Ok((found.last().map_or(1, |s| s + 1), kept))
}

impl Journal {
    /// The running relay's journal, empty (after `recover`), whose first
    /// segment is `segment`; its committer starts with the first request.
    pub(super) fn start(dir: &Path, segment: u64) -> io::Result<Journal> {
        // On a full or read-only disk the relay still starts; the first
        // message tries again (and gets a 4xx while it cannot).
        let broken = match create_segment(dir, segment) {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!("cannot start a journal segment: {e}");
                true
            }
        };
        let active = if broken { segment - 1 } else { segment };
        let state = Arc::new(Mutex::new(State {
            index: HashMap::new(),
            live: BTreeMap::from([(active, 0)]),
            active,
        }));
        let committer = Committer {
            dir: dir.to_owned(),
            state: state.clone(),
            segment: active,
            len: SEGMENT_MAGIC.len() as u64,
            broken,
        };
        Ok(Journal {
            dir: dir.to_owned(),
            state,
            writer: Some(Arc::new(Writer {
                queue: Mutex::default(),
                committer: Mutex::new(committer),
            })),
        })
    }

    /// What the journal in `dir` holds now, for reading only (another
    /// process may be appending). A spool without `journal/` has none.
    pub(super) fn snapshot(dir: &Path) -> io::Result<Journal> {
        let (index, _) = match scan(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
            r => r?,
        };
        Ok(Journal {
            dir: dir.to_owned(),
            state: Arc::new(Mutex::new(State {
                index,
                live: BTreeMap::new(),
                active: 0,
            })),
            writer: None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Whether this journal can take messages (it is not a snapshot).
    pub(super) fn appends(&self) -> bool {
        self.writer.is_some()
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.lock().index.contains_key(id)
    }

    pub(super) fn ids(&self) -> Vec<String> {
        self.lock().index.keys().cloned().collect()
    }

    /// The message's envelope JSON and content, if the journal holds it.
    pub(super) fn read(&self, id: &str) -> Option<io::Result<(Vec<u8>, Vec<u8>)>> {
        let slot = *self.lock().index.get(id)?;
        Some(read_slot(&self.dir, &slot))
    }

    /// The message's envelope JSON alone, if the journal holds it.
    pub(super) fn read_json(&self, id: &str) -> Option<io::Result<Vec<u8>>> {
        let slot = *self.lock().index.get(id)?;
        Some(read_at(
            &self.dir,
            slot.segment,
            slot.json_at,
            slot.json_len,
        ))
    }

    /// The message's content alone, if the journal holds it.
    pub(super) fn read_content(&self, id: &str) -> Option<io::Result<Vec<u8>>> {
        let slot = *self.lock().index.get(id)?;
        Some(read_at(
            &self.dir,
            slot.segment,
            slot.content_at,
            slot.content_len,
        ))
    }

    /// Appends message `id` and returns `content` once an fdatasync covering
    /// it returned: then, and only then, the 250 may be sent.
    pub(super) async fn append(
        &self,
        id: &str,
        json: &[u8],
        content: Vec<u8>,
    ) -> Result<Vec<u8>, SpoolError> {
        let writer = self
            .writer
            .as_ref()
            .ok_or_else(|| SpoolError::Task("the journal is open for reading only".into()))?;
        let (reply, done) = oneshot::channel();
        let request = Request::Message {
            id: id.to_owned(),
            head: message_head(id, json, &content),
            json_len: json.len() as u64,
            content,
            reply,
        };
        writer.submit(request);
        let written = done
            .await
            .map_err(|_| SpoolError::Task("the journal committer has stopped".into()))?;
        Ok(written?)
    }

    /// Closes message `id` in the journal (delivered, deleted, or moved to
    /// its own file): from now on it is not there. Returns whether it was.
    /// The done mark goes out with the next batch.
    pub(super) fn finish(&self, id: &str) -> bool {
        let Some(slot) = self.lock().index.remove(id) else {
            return false;
        };
        if let Some(writer) = &self.writer {
            writer.submit(Request::Done {
                segment: slot.segment,
                record: done_record(id),
            });
        }
        true
    }
}

/// Creates segment `segment` and makes it and its directory entry durable.
fn create_segment(dir: &Path, segment: u64) -> io::Result<()> {
    let path = segment_path(dir, segment);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let made = (|| {
        file.write_all(SEGMENT_MAGIC)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// Queues `request`, and starts a committer if none is running (on the
    /// caller's runtime; outside one, this thread commits it).
    fn submit(self: &Arc<Self>, request: Request) {
        let mut queue = lock(&self.queue);
        queue.requests.push_back(request);
        if std::mem::replace(&mut queue.draining, true) {
            return;
        }
        drop(queue);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let writer = self.clone();
                drop(rt.spawn_blocking(move || writer.drain(false)));
            }
            Err(_) => self.drain(false),
        }
    }

    /// Commits batches until the queue is empty. Batches are taken under the
    /// committer's lock, so they are written in the order they were queued
    /// (a done mark never precedes its message). `last`: the journal is
    /// going away; whatever a committer started meanwhile finds nothing.
    fn drain(&self, last: bool) {
        let mut committer = lock(&self.committer);
        loop {
            let mut queue = lock(&self.queue);
            let mut bytes = 0;
            let mut batch = Vec::new();
            while bytes < BATCH_BYTES
                && let Some(r) = queue.requests.pop_front()
            {
                bytes += r.len();
                batch.push(r);
            }
            if batch.is_empty() {
                if !last {
                    queue.draining = false;
                }
                return;
            }
            drop(queue);
            committer.commit(batch);
        }
    }
}

/// Owns the active segment: writes a batch in one go, fdatasyncs once, then
/// answers every request in it.
/// The segment is open only while a batch is written: a file open for
/// writing would keep the spool's file system from being remounted
/// read-only.
struct Committer {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    segment: u64,
    /// Bytes in the active segment (where the next batch goes).
    len: u64,
    /// The last batch failed: start a new segment before the next.
    broken: bool,
}

impl Committer {
    fn commit(&mut self, batch: Vec<Request>) {
        if (self.broken || self.len >= SEGMENT_BYTES)
            && let Err(e) = self.rotate()
        {
            if self.broken {
                return self.answer(batch, Err(e));
            }
            // A full segment can take more while no new one can be made.
            tracing::warn!("cannot start a new journal segment: {e}");
        }
        let mut written = self.write(&batch);
        if let Err((e, _)) = &written
            && super::is_out_of_space(e)
            && self.reclaim()
        {
            written = self.write(&batch);
        }
        match written {
            Ok(()) => {
                let start = self.len;
                self.len += batch.iter().map(|r| r.len() as u64).sum::<u64>();
                self.answer(batch, Ok(start));
            }
            Err((e, sound)) => {
                // After a failed fsync (or a failed cut), what the segment
                // holds is unknown: the next batch goes to a new one.
                self.broken |= !sound;
                self.answer(batch, Err(e));
            }
        }
    }

    /// Appends the batch at `self.len` and fdatasyncs. On failure, nothing
    /// of the batch may be read back: it is cut off again; the flag says
    /// whether the segment is still sound (the write failed and the cut
    /// held), or must be left for a new one.
    fn write(&self, batch: &[Request]) -> Result<(), (io::Error, bool)> {
        let mut slices = Vec::with_capacity(batch.len() * 2);
        for r in batch {
            match r {
                Request::Message { head, content, .. } => {
                    slices.push(IoSlice::new(head));
                    slices.push(IoSlice::new(content));
                }
                Request::Done { record, .. } => slices.push(IoSlice::new(record)),
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(segment_path(&self.dir, self.segment))
            .map_err(|e| (e, false))?;
        let cut = || {
            file.set_len(self.len)
                .and_then(|()| file.sync_data())
                .is_ok()
        };
        if let Err(e) = super::write_all_vectored(&file, &mut slices) {
            return Err((e, cut()));
        }
        // Done marks alone need no fdatasync of their own: one lost in a
        // crash means a duplicate, never a loss, and the next message's
        // fdatasync covers them anyway.
        let messages = batch.iter().any(|r| matches!(r, Request::Message { .. }));
        if messages && let Err(e) = file.sync_data() {
            cut();
            return Err((e, false));
        }
        Ok(())
    }

    /// On a full disk: if the active segment is the only one and everything
    /// in it is done, empties it (its done marks close only its own
    /// messages) so the space it held can take the batch. Whether it did.
    fn reclaim(&mut self) -> bool {
        let state = lock(&self.state);
        let dead = state.live.len() == 1 && state.live.get(&self.segment) == Some(&0);
        drop(state);
        let header = SEGMENT_MAGIC.len() as u64;
        if !dead || self.len <= header {
            return false;
        }
        let emptied = OpenOptions::new()
            .write(true)
            .open(segment_path(&self.dir, self.segment))
            .and_then(|f| f.set_len(header).and_then(|()| f.sync_data()));
        if emptied.is_err() {
            return false;
        }
        self.len = header;
        true
    }

    /// Records the batch's outcome (`Ok`: where it starts) and answers each
    /// waiting session; then deletes segments nothing is left in.
    fn answer(&mut self, batch: Vec<Request>, written: io::Result<u64>) {
        let mut state = lock(&self.state);
        let mut at = *written.as_ref().unwrap_or(&0);
        for r in batch {
            let len = r.len() as u64;
            match r {
                Request::Message {
                    id,
                    head,
                    json_len,
                    content,
                    reply,
                } => {
                    let result = match &written {
                        Ok(_) => {
                            let content_at = at + head.len() as u64;
                            state.index.insert(
                                id,
                                Slot {
                                    segment: self.segment,
                                    json_at: content_at - json_len,
                                    json_len,
                                    content_at,
                                    content_len: content.len() as u64,
                                },
                            );
                            *state.live.entry(self.segment).or_default() += 1;
                            Ok(content)
                        }
                        Err(e) => Err(copy_error(e)),
                    };
                    // A session that went away meanwhile still has its
                    // message queued (as with a 250 lost on the wire).
                    let _ = reply.send(result);
                }
                // Its message is done whether or not the mark was written:
                // a lost mark means a duplicate at worst.
                Request::Done { segment, .. } => {
                    if let Some(n) = state.live.get_mut(&segment) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            at += len;
        }
        let mut gone = Vec::new();
        while let Some((&segment, &n)) = state.live.first_key_value() {
            if n > 0 || segment == state.active {
                break;
            }
            state.live.remove(&segment);
            gone.push(segment);
        }
        drop(state);
        for segment in gone {
            let _ = fs::remove_file(segment_path(&self.dir, segment));
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        create_segment(&self.dir, next)?;
        self.segment = next;
        self.len = SEGMENT_MAGIC.len() as u64;
        self.broken = false;
        let mut state = lock(&self.state);
        state.live.insert(next, 0);
        state.active = next;
        Ok(())
    }
}

/// `io::Error` is not `Clone`; each waiting session gets its own.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(records: &[Vec<u8>]) -> Vec<u8> {
        let mut s = SEGMENT_MAGIC.to_vec();
        for r in records {
            s.extend_from_slice(r);
        }
        s
    }

    fn message(id: &str, json: &[u8], content: &[u8]) -> Vec<u8> {
        [message_head(id, json, content), content.to_vec()].concat()
    }

    #[test]
    fn records_read_back_and_a_done_mark_closes_its_message() {
        let bytes = segment_with(&[
            message("A1", b"{}", b"hello\r\n"),
            message("B2", b"{\"x\":1}", b""),
            done_record("A1"),
        ]);
        let entries = entries(7, &bytes);
        assert_eq!(entries.len(), 3);
        let Entry::Message { id, slot } = &entries[0] else {
            panic!("first is a message")
        };
        assert_eq!(*id, "A1");
        let at = |from: u64, len: u64| &bytes[from as usize..(from + len) as usize];
        assert_eq!(at(slot.json_at, slot.json_len), b"{}");
        assert_eq!(at(slot.content_at, slot.content_len), b"hello\r\n");
        assert!(matches!(entries[2], Entry::Done { id: "A1" }));
    }

    #[test]
    fn reading_stops_at_a_torn_or_damaged_record() {
        let good = message("A1", b"{}", b"hello\r\n");
        let next = message("B2", b"{}", b"world\r\n");
        for cut in 0..next.len() {
            let bytes = segment_with(&[good.clone(), next[..cut].to_vec()]);
            assert_eq!(entries(1, &bytes).len(), 1, "cut at {cut}");
        }
        for flip in 0..next.len() {
            let mut damaged = next.clone();
            damaged[flip] ^= 0x20;
            let bytes = segment_with(&[good.clone(), damaged, good.clone()]);
            assert_eq!(entries(1, &bytes).len(), 1, "byte {flip} changed");
        }
        assert!(entries(1, b"not a segment").is_empty());
    }

    #[tokio::test]
    async fn group_commit_then_recovery_moves_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::start(dir.path(), 1).unwrap();
        let (a, b, c) = tokio::join!(
            journal.append("A1", b"{\"a\":1}", b"one\r\n".to_vec()),
            journal.append("B2", b"{\"b\":2}", b"two\r\n".to_vec()),
            journal.append("C3", b"{\"c\":3}", b"three\r\n".to_vec()),
        );
        assert_eq!(a.unwrap(), b"one\r\n");
        assert!(b.is_ok() && c.is_ok());
        assert_eq!(
            journal.read("B2").unwrap().unwrap(),
            (b"{\"b\":2}".to_vec(), b"two\r\n".to_vec())
        );
        assert!(journal.finish("A1"));
        assert!(!journal.finish("A1"), "once");
        // The done mark is written with the next batch.
        journal
            .append("D4", b"{}", b"four\r\n".to_vec())
            .await
            .unwrap();
        let snapshot = Journal::snapshot(dir.path()).unwrap();
        let mut ids = snapshot.ids();
        ids.sort();
        assert_eq!(ids, ["B2", "C3", "D4"]);
        drop(journal);

        let mut kept = Vec::new();
        let deleted = HashSet::from(["C3".to_owned()]);
        let (next, n) = recover(
            dir.path(),
            &deleted,
            |id, json, content| {
                kept.push((id.to_owned(), json.to_vec(), content.to_vec()));
                Ok(())
            },
            || Ok(()),
        )
        .unwrap();
        assert_eq!((next, n), (2, 2));
        kept.sort();
        assert_eq!(
            kept[0],
            ("B2".into(), b"{\"b\":2}".to_vec(), b"two\r\n".to_vec())
        );
        assert_eq!(kept[1].0, "D4");
        assert!(segments(dir.path()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn finished_segments_are_deleted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::start(dir.path(), 1).unwrap();
        let big = vec![b'x'; (SEGMENT_BYTES / 2) as usize];
        for id in ["A1", "B2", "C3"] {
            journal.append(id, b"{}", big.clone()).await.unwrap();
        }
        // A1 and B2 fill segment 1; C3 starts segment 2.
        assert_eq!(segments(dir.path()).unwrap(), [1, 2]);
        journal.finish("B2");
        journal.append("D4", b"{}", Vec::new()).await.unwrap();
        assert_eq!(segments(dir.path()).unwrap(), [1, 2], "A1 keeps segment 1");
        journal.finish("A1");
        journal.append("E5", b"{}", Vec::new()).await.unwrap();
        // Deleted just after the batch is answered.
        for _ in 0..200 {
            if segments(dir.path()).unwrap() == [2] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(segments(dir.path()).unwrap(), [2]);
    }
}
