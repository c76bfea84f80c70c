//! The durability order, seen from the kernel: `smarthost serve` runs under
//! strace, two messages are sent over a cleartext session (so the `250` is
//! readable in the trace), and the trace must show, for each.
//!
//! A small message goes to the journal (`spool::journal`):
//!
//! 1. the segment that holds it was made durable first: its first bytes
//!    written, an fsync of the file, then an fsync of `journal/` that started
//!    after those bytes were written;
//! 2. the message's record is written to the segment (one `writev`, shared
//!    with whatever other records are in its batch);
//! 3. an fdatasync (or fsync) of the segment that started after that write
//!    returned;
//! 4. and only after both fsyncs returned, the `250 ... queued as <id>`.
//!
//! A 1 MB message is written to its own file as it arrives:
//!
//! 1. the writes of `tmp/<id>.msg` (content, envelope and footer: one file,
//!    and no other for that id), then its fsync (starting after the file's
//!    last write ended);
//! 2. its rename into `msg/` after the fsync returned;
//! 3. an fsync of the `msg/` directory that started after the rename
//!    returned (the rename itself is only durable once its directory is);
//! 4. and only after that fsync returned, the write of `250 ... queued as
//!    <id>` to the client's socket.
//!
//!
//! strace is installed by `scripts/install-test-deps.sh`; a missing strace is
//! a failure. Where ptrace is not permitted (some containers), the test says
//! so and skips.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::binary::{BIN, Proc, sigkill, wait_banner};
use support::client::{Client, send_data};
use support::harness::Harness;
use support::message::{message, queue_id_of};
use support::wait::{free_port, within};

const STRACE: &str = "strace";

/// Whether strace can trace a child here: Err(why) when ptrace is refused.
fn strace_works() -> Result<(), String> {
    let out = Command::new(STRACE)
        .args(["-f", "-o", "/dev/null", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {STRACE} ({e}): run scripts/install-test-deps.sh (as root) first")
        });
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// strace running `smarthost serve`. Dropping it SIGKILLs the traced relay
/// first (strace killed alone would detach and leave the relay running),
/// then strace, which exits once its tracee is gone.
struct Traced {
    strace: Proc,
}

impl Traced {
    /// The relay: strace's child.
    fn relay_pid(&self) -> Option<i32> {
        let pid = self.strace.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(pid) = self.relay_pid() {
            sigkill(pid);
        }
        if self.strace.wait_for(Duration::from_secs(10)).is_none() {
            self.strace.kill();
        }
    }
}

/// One syscall in the trace: its name, the line's text (arguments and
/// result, resumed parts joined), and the trace lines where it started and
/// returned (strace writes events in the order it sees them, so line numbers
/// order them across threads).
#[derive(Debug, Clone)]
struct Call {
    name: String,
    text: String,
    start: usize,
    end: usize,
}

/// Parses `strace -f -tt` output: `PID HH:MM:SS.micros name(args) = result`,
/// with calls interrupted by another thread's split into `name(args
/// <unfinished ...>` and `PID time <... name resumed>rest`.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    // Per pid: the index in `calls` of its unfinished call.
    let mut open: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        // strace pads the pid column: split on runs of spaces.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((_time, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if let Some(&i) = open.get(pid) {
                let after = resumed.split_once("resumed>").map_or("", |(_, r)| r);
                calls[i].text.push_str(after);
                calls[i].end = n;
                open.remove(pid);
            }
            continue;
        }
        let Some(paren) = rest.find('(') else {
            continue; // "+++ exited +++", "--- SIGKILL ---"
        };
        let name = rest[..paren].to_owned();
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            open.insert(pid.to_owned(), calls.len());
            calls.push(Call {
                name,
                text: head.to_owned(),
                start: n,
                end: usize::MAX,
            });
        } else {
            calls.push(Call {
                name,
                text: rest.to_owned(),
                start: n,
                end: n,
            });
        }
    }
    calls
}

/// The path strace -y shows for a call's first (fd) argument, as in
/// `fsync(12</spool/tmp/X.msg>)`.
fn fd_path(call: &Call) -> Option<&str> {
    let args = call.text.split_once('(')?.1;
    let open = args.find('<')?;
    let close = args[open..].find('>')? + open;
    // The fd must be the first argument: digits right before '<'.
    args[..open]
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| &args[open + 1..close])
}

fn ok(call: &Call) -> bool {
    call.end != usize::MAX && !call.text.contains(" = -1 ")
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_rename_dirsync_then_250() {
    if let Err(why) = strace_works() {
        eprintln!("SKIPPED: strace cannot trace processes here (ptrace refused?): {why}");
        return;
    }
    within(120, async {
        let h = Harness::plain("");
        let port = free_port();
        h.edit_config("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        let trace_path = h.dir.path().join("strace.out");
        let log = h.dir.path().join("relay.log");
        let mut traced = Traced {
            strace: Proc {
                child: Command::new(STRACE)
                    .args([
                        "-f",
                        "-tt",
                        "-yy",
                        "-s",
                        "200",
                        "-e",
                        "trace=fsync,fdatasync,rename,renameat,renameat2,write,writev,sendto,sendmsg",
                        "-o",
                    ])
                    .arg(&trace_path)
                    .arg(BIN)
                    .args(["serve", "--config"])
                    .arg(&h.config_path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .expect("spawn strace"),
            },
        };
        wait_banner(&mut traced.strace, port, &log)
            .await
            .unwrap_or_else(|e| panic!("relay under strace: {e}"));

        let mut c = Client::new(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
        c.hello().await;
        let mut ids = Vec::new();
        for size in [3_000, 1_000_000] {
            let body = message("order@syscall.test", "a@tenant.example", "syscall order", size);
            let r = send_data(&mut c, "a@tenant.example", &["b@partner.example"], &body).await;
            ids.push(queue_id_of(&r).unwrap_or_else(|| panic!("not queued: {:?}", r.lines)));
        }
        c.cmd("QUIT", "221").await;
        drop(c);
        // Stop the relay (strace then exits), so the trace is complete.
        drop(traced);
        let trace = std::fs::read_to_string(&trace_path).unwrap();
        let spool = h.spool_dir().canonicalize().unwrap();
        check_journal_order(&trace, &ids[0], &spool);
        let large = check_order(&trace, &ids[1], &spool);
        assert!(large >= 4, "1 MB written as it arrived: {large} writes");
    })
    .await;
}

/// Asserts the order described in the module docs for message `id`, whose
/// spool is at `spool` (a canonical path, as strace shows it). Returns the
/// number of writes of the message file.
fn check_order(trace: &str, id: &str, spool: &Path) -> usize {
    let calls = parse_trace(trace);
    let relevant: Vec<&Call> = calls
        .iter()
        .filter(|c| c.text.contains(id) || fd_path(c).is_some_and(|p| p.ends_with("/msg")))
        .collect();
    let shown: String = relevant
        .iter()
        .map(|c| format!("  [{}..{}] {}\n", c.start, c.end, c.text))
        .collect();
    eprintln!("syscalls for {id}:\n{shown}");
    let tmp = |ext: &str| spool.join("tmp").join(format!("{id}.{ext}"));
    let on = |c: &Call, path: &PathBuf| fd_path(c) == Some(path.to_str().unwrap());

    // One file holds the message, envelope and all: nothing else of it goes
    // through tmp/.
    let file = tmp("msg");
    let tmp_dir = spool.join("tmp");
    let elsewhere: Vec<&&Call> = relevant
        .iter()
        .filter(|c| fd_path(c).is_some_and(|p| Path::new(p).starts_with(&tmp_dir) && !on(c, &file)))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "other temporary files for {id}:\n{shown}"
    );
    let writes: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c.name.as_str(), "write" | "writev") && on(c, &file))
        .collect();
    assert!(
        !writes.is_empty(),
        "no write of {}:\n{shown}",
        file.display()
    );
    assert!(writes.iter().all(|c| ok(c)), "{shown}");
    assert!(
        writes.iter().any(|c| c.text.contains("smarthost spool v2")),
        "the envelope's footer is not written to {}:\n{shown}",
        file.display()
    );
    let fsync = calls
        .iter()
        .find(|c| matches!(c.name.as_str(), "fsync" | "fdatasync") && on(c, &file))
        .unwrap_or_else(|| panic!("{} never fsynced:\n{shown}", file.display()));
    assert!(ok(fsync), "{shown}");
    let last_write = writes.iter().map(|c| c.end).max().unwrap();
    assert!(
        last_write < fsync.start,
        "{}: fsync started before the last write returned:\n{shown}",
        file.display()
    );
    let rename = calls
        .iter()
        .find(|c| {
            c.name.starts_with("rename")
                && c.text.contains(&format!("tmp/{id}.msg\""))
                && c.text.contains(&format!("msg/{id}.msg\""))
        })
        .unwrap_or_else(|| panic!("{} never renamed into msg/:\n{shown}", file.display()));
    assert!(ok(rename), "{shown}");
    assert!(
        fsync.end < rename.start,
        "{}: renamed before its fsync returned:\n{shown}",
        file.display()
    );
    let (message_writes, renamed_end) = (writes.len(), rename.end);

    // The 250 on the client's socket (a TCP fd, decoded by -yy).
    let reply = calls
        .iter()
        .find(|c| {
            matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                && c.text.contains(&format!("250 2.0.0 Ok: queued as {id}"))
        })
        .unwrap_or_else(|| panic!("no 250 for {id} in the trace:\n{shown}"));
    assert!(
        fd_path(reply).is_some_and(|p| p.starts_with("TCP")),
        "the 250 was not written to a TCP socket: {}",
        reply.text
    );
    let dir = spool.join("msg");
    let dir_fsync = calls
        .iter()
        .filter(|c| matches!(c.name.as_str(), "fsync" | "fdatasync") && on(c, &dir))
        .find(|c| c.start > renamed_end && ok(c))
        .unwrap_or_else(|| panic!("no fsync of {} after the renames:\n{shown}", dir.display()));
    assert!(
        dir_fsync.end < reply.start,
        "the 250 was written before the directory fsync returned:\n{shown}"
    );
    message_writes
}

/// Asserts the journal's order (module docs) for message `id`.
fn check_journal_order(trace: &str, id: &str, spool: &Path) {
    let calls = parse_trace(trace);
    let journal = spool.join("journal");
    let in_journal = |c: &Call| fd_path(c).is_some_and(|p| Path::new(p).starts_with(&journal));
    let relevant: Vec<&Call> = calls
        .iter()
        .filter(|c| c.text.contains(id) || in_journal(c))
        .collect();
    let shown: String = relevant
        .iter()
        .map(|c| format!("  [{}..{}] {}\n", c.start, c.end, c.text))
        .collect();
    eprintln!("syscalls for {id}:\n{shown}");
    let record = calls
        .iter()
        .find(|c| {
            matches!(c.name.as_str(), "write" | "writev") && in_journal(c) && c.text.contains(id)
        })
        .unwrap_or_else(|| panic!("{id} was never written to a journal segment:\n{shown}"));
    assert!(ok(record), "{shown}");
    let segment = fd_path(record).unwrap().to_owned();
    let on_segment = |c: &Call| fd_path(c) == Some(segment.as_str());
    let is_sync = |c: &Call| matches!(c.name.as_str(), "fsync" | "fdatasync");
    let reply = calls
        .iter()
        .find(|c| {
            matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                && c.text.contains(&format!("250 2.0.0 Ok: queued as {id}"))
        })
        .unwrap_or_else(|| panic!("no 250 for {id} in the trace:\n{shown}"));
    assert!(
        fd_path(reply).is_some_and(|p| p.starts_with("TCP")),
        "the 250 was not written to a TCP socket: {}",
        reply.text
    );
    // (After the 250 it may move to its own file: no upstream here.)
    let tmp_dir = spool.join("tmp");
    assert!(
        !relevant.iter().any(|c| c.start < reply.start
            && fd_path(c).is_some_and(|p| Path::new(p).starts_with(&tmp_dir))),
        "a message stored in the journal also went through tmp/:\n{shown}"
    );
    let sync = calls
        .iter()
        .filter(|c| is_sync(c) && on_segment(c) && ok(c))
        .find(|c| c.start > record.end)
        .unwrap_or_else(|| panic!("{segment}: no fsync after the record was written:\n{shown}"));
    assert!(
        sync.end < reply.start,
        "the 250 was written before the segment's fdatasync returned:\n{shown}"
    );
    // The segment itself: created (its magic written), fsynced, and its
    // directory entry fsynced, all before the 250.
    let created = calls
        .iter()
        .find(|c| c.name == "write" && on_segment(c) && c.text.contains("smarthost journal v3"))
        .unwrap_or_else(|| panic!("{segment}: its first bytes are not in the trace:\n{shown}"));
    let made = calls
        .iter()
        .filter(|c| is_sync(c) && on_segment(c) && ok(c))
        .find(|c| c.start > created.end)
        .unwrap_or_else(|| panic!("{segment}: never fsynced after it was created:\n{shown}"));
    let dir_sync = calls
        .iter()
        .filter(|c| is_sync(c) && fd_path(c) == journal.to_str() && ok(c))
        .find(|c| c.start > created.end)
        .unwrap_or_else(|| {
            panic!(
                "no fsync of {} after the segment was created:\n{shown}",
                journal.display()
            )
        });
    assert!(
        made.end < reply.start && dir_sync.end < reply.start,
        "the 250 was written before the segment was durable:\n{shown}"
    );
}

/// A journal commit as the committer thread (102) and a session's writer
/// (104) would trace it, the segment made at start by the main thread (101).
const GOOD_JOURNAL: &str = r#"101  10:00:00.000001 write(9</s/journal/0000000000000001.log>, "smarthost journal v3\n", 21) = 21
101  10:00:00.000002 fsync(9</s/journal/0000000000000001.log>) = 0
101  10:00:00.000003 fsync(10</s/journal>) = 0
102  10:00:00.000004 writev(9</s/journal/0000000000000001.log>, [{iov_base="SJM\20\f\0\0\345\27ID{\"version\"", iov_len=50}, {iov_base="Received: from", iov_len=3211}], 2) = 3261
102  10:00:00.000005 fdatasync(9</s/journal/0000000000000001.log> <unfinished ...>
103  10:00:00.000006 write(2</s/relay.log>, "log line", 8) = 8
102  10:00:00.000007 <... fdatasync resumed>) = 0
104  10:00:00.000008 sendto(11<TCP:[127.0.0.1:25->127.0.0.1:4000]>, "250 2.0.0 Ok: queued as ID\r\n", 29, MSG_NOSIGNAL, NULL, 0) = 29
"#;

fn check_journal(trace: &str) -> Result<(), String> {
    let trace = trace.to_owned();
    panic_message(move || check_journal_order(&trace, "ID", Path::new("/s")))
}

/// What `f` panicked with, if it did.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> Result<(), String> {
    std::panic::catch_unwind(f).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "panic".into())
    })
}

/// `trace` with its line `from` moved to position `to`.
fn reorder(trace: &str, from: usize, to: usize) -> String {
    let mut lines: Vec<&str> = trace.lines().collect();
    let moved = lines.remove(from);
    lines.insert(to, moved);
    lines.join("\n")
}

/// The journal checker accepts the right order and catches each wrong one.
#[test]
fn the_journal_order_check_fails_on_wrong_orders() {
    check_journal(GOOD_JOURNAL).unwrap();
    let reorder = |from, to| reorder(GOOD_JOURNAL, from, to);
    // The 250 before the fdatasync returned.
    let e = check_journal(&reorder(7, 6)).unwrap_err();
    assert!(e.contains("before the segment's fdatasync returned"), "{e}");
    // The fdatasync started before the record's write.
    let e = check_journal(&reorder(3, 6)).unwrap_err();
    assert!(e.contains("no fsync after the record was written"), "{e}");
    // The segment's directory never fsynced.
    let e = check_journal(&GOOD_JOURNAL.replace("fsync(10</s/journal>)", "fstat(10</s/journal>)"))
        .unwrap_err();
    assert!(e.contains("no fsync of /s/journal"), "{e}");
    // The directory fsynced only after the 250.
    let e = check_journal(&reorder(2, 7)).unwrap_err();
    assert!(e.contains("before the segment was durable"), "{e}");
    // The record not in a journal segment.
    let e = check_journal(&GOOD_JOURNAL.replace("writev(9</s/journal/", "writev(9</s/other/"))
        .unwrap_err();
    assert!(e.contains("never written to a journal segment"), "{e}");
}

/// A trace in strace's format, as two threads would write it: the session's
/// store on one (its dir fsync shared with, and started by, another
/// thread's group commit), the reply on another.
const GOOD: &str = r#"101  10:00:00.000001 writev(12</s/tmp/ID.msg>, [{iov_base="Received: from client.test"..., iov_len=3211}, {iov_base="\nsmarthost spool v2 000000000556\n", iov_len=33}], 2) = 3244
101  10:00:00.000002 fsync(12</s/tmp/ID.msg> <unfinished ...>
102  10:00:00.000003 write(2</s/relay.log>, "log line", 8) = 8
101  10:00:00.000004 <... fsync resumed>) = 0
101  10:00:00.000005 rename("/s/tmp/ID.msg", "/s/msg/ID.msg") = 0
103  10:00:00.000006 fsync(13</s/msg> <unfinished ...>
101  10:00:00.000007 write(2</s/relay.log>, "waiting", 7) = 7
103  10:00:00.000008 <... fsync resumed>) = 0
104  10:00:00.000009 sendto(11<TCP:[127.0.0.1:25->127.0.0.1:4000]>, "250 2.0.0 Ok: queued as ID\r\n", 29, MSG_NOSIGNAL, NULL, 0) = 29
104  10:00:00.000010 +++ exited with 0 +++
"#;

fn check(trace: &str) -> Result<(), String> {
    let trace = trace.to_owned();
    panic_message(move || {
        check_order(&trace, "ID", Path::new("/s"));
    })
}

/// The checker accepts the right order and catches each wrong one.
#[test]
fn the_order_check_fails_on_wrong_orders() {
    check(GOOD).unwrap();
    let lines: Vec<&str> = GOOD.lines().collect();
    let reorder = |from, to| reorder(GOOD, from, to);
    // The 250 before the directory fsync returned.
    let e = check(&reorder(8, 7)).unwrap_err();
    assert!(e.contains("before the directory fsync returned"), "{e}");
    // The directory fsync begun before the rename.
    let e = check(&reorder(5, 4)).unwrap_err();
    assert!(e.contains("no fsync of /s/msg after the renames"), "{e}");
    // The rename before the file's fsync returned.
    let mut l = lines.clone();
    l.swap(3, 4);
    let e = check(&l.join("\n")).unwrap_err();
    assert!(e.contains("renamed before its fsync returned"), "{e}");
    // An fsync before the last write.
    let e = check(&reorder(0, 1)).unwrap_err();
    assert!(
        e.contains("fsync started before the last write returned"),
        "{e}"
    );
    // No fsync of the file at all.
    let e = check(
        &GOOD
            .replace(
                "fsync(12</s/tmp/ID.msg> <unf",
                "fstat(12</s/tmp/ID.msg> <unf",
            )
            .replace(
                "101  10:00:00.000004 <... fsync",
                "101  10:00:00.000004 <... fstat",
            ),
    )
    .unwrap_err();
    assert!(e.contains("never fsynced"), "{e}");
    // A second temporary file for the message (layout 1's envelope).
    let e = check(&GOOD.replace(
        "102  10:00:00.000003 write(2</s/relay.log>",
        "102  10:00:00.000003 write(14</s/tmp/ID.json>",
    ))
    .unwrap_err();
    assert!(e.contains("other temporary files"), "{e}");
    // The reply on something other than a TCP socket.
    let e = check(&GOOD.replace("sendto(11<TCP:", "sendto(11<UNIX:")).unwrap_err();
    assert!(e.contains("not written to a TCP socket"), "{e}");
}
