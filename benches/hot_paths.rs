//! Micro-benchmarks of the per-message hot paths, through the library's
//! public API: what one message costs in CPU on the way in (command parsing,
//! dot-unstuffing, line-ending normalisation), on the way out (dot-stuffing,
//! reply parsing), and in the spool (`Spool::store`: fsyncs, renames, the
//! shared directory fsync).
//!
//! The spool groups put the relay's store beside a `floor` of plain std calls
//! doing the minimum durable write (one file: write, fsync, rename, directory
//! fsync), measured in the same run on the same filesystem: the machine is
//! shared and noisy, so read the ratio between the two, not the absolutes.
//!
//! Run: `cargo bench --bench hot_paths` (a few minutes). Only a temporary
//! directory is written; nothing touches the network.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use smarthost::body::Content;
use smarthost::config::BareLineEndings;
use smarthost::dot::DotReader;
use smarthost::outbound::UpstreamReply;
use smarthost::outbound::stuffing;
use smarthost::session::command;
use smarthost::spool::{
    ClientInfo, Envelope, FORMAT_VERSION, MailParams, Recipient, RecipientStatus, Spool,
    new_queue_id,
};

const KIB: usize = 1024;
/// What the session reads at most per `read` (session::READ_CHUNK).
const READ_CHUNK: usize = 64 * KIB;
/// Messages stored at once in the group-commit case.
const CONCURRENT: usize = 20;

/// A plausible message of about `size` bytes: a header section, then 76-column
/// text lines, one in ten starting with a dot (so stuffing has work to do).
/// Canonical: CRLF line endings only, ending in CRLF.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Alice <alice@example.com>\r\n\
To: Bob <bob@example.net>\r\n\
Subject: quarterly figures\r\n\
Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <20261130100000.1234@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let mut n = 0usize;
    while m.len() < size {
        let lead = if n.is_multiple_of(10) { "." } else { "" };
        let line = format!(
            "{lead}line {n:05} of the body, padded to look like ordinary prose text here\r\n"
        );
        m.extend_from_slice(line.as_bytes());
        n += 1;
    }
    m
}

/// `m` as the client sends it after DATA: dot-stuffed, then the terminator.
fn wire(m: &[u8]) -> Vec<u8> {
    stuffing::data_blocks(m).flatten().collect()
}

/// The same message with bare LF line endings (what a sloppy client sends;
/// `Content` rewrites each into CRLF).
fn bare_lf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for w in m.split(|&b| b == b'\n') {
        out.extend_from_slice(w.strip_suffix(b"\r").unwrap_or(w));
        out.push(b'\n');
    }
    out.pop();
    out
}

fn sizes() -> [(&'static str, Vec<u8>); 2] {
    [("1KiB", message(KIB)), ("100KiB", message(100 * KIB))]
}

fn dot_unstuffing(c: &mut Criterion) {
    let mut g = c.benchmark_group("dot_unstuff");
    g.measurement_time(Duration::from_secs(3));
    for (name, m) in sizes() {
        let input = wire(&m);
        let mut check = Vec::new();
        assert_eq!(
            DotReader::default().feed(&input, &mut check),
            Some(input.len())
        );
        assert_eq!(check, m, "unstuffing undoes the stuffing");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            let mut out = Vec::with_capacity(input.len());
            b.iter(|| {
                out.clear();
                let mut reader = DotReader::default();
                let mut end = None;
                for chunk in input.chunks(READ_CHUNK) {
                    end = reader.feed(chunk, &mut out);
                }
                black_box((end, out.len()))
            })
        });
    }
    g.finish();
}

fn body_normalisation(c: &mut Criterion) {
    let mut g = c.benchmark_group("body_normalise");
    g.measurement_time(Duration::from_secs(3));
    for (name, m) in sizes() {
        g.throughput(Throughput::Bytes(m.len() as u64));
        for (kind, input) in [("crlf", m.clone()), ("bare_lf", bare_lf(&m))] {
            let mut check = Content::new(150 * KIB * KIB, BareLineEndings::Normalize);
            check.push(&input);
            assert_eq!(
                check.finish().ok().as_ref(),
                Some(&m),
                "{kind} normalises to CRLF"
            );
            g.bench_with_input(BenchmarkId::new(kind, name), &input, |b, input| {
                b.iter(|| {
                    let mut content = Content::new(150 * KIB * KIB, BareLineEndings::Normalize);
                    for chunk in input.chunks(READ_CHUNK) {
                        content.push(chunk);
                    }
                    black_box(content.finish().map(|d| d.len()))
                })
            });
        }
    }
    g.finish();
}

fn outbound_stuffing(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound_stuff");
    g.measurement_time(Duration::from_secs(3));
    for (name, m) in sizes() {
        g.throughput(Throughput::Bytes(m.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &m, |b, m| {
            b.iter(|| {
                let canonical = stuffing::canonical(m);
                black_box(
                    stuffing::data_blocks(&canonical)
                        .map(|block| block.len())
                        .sum::<usize>(),
                )
            })
        });
    }
    g.finish();
}

fn reply_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstream_reply_parse");
    g.measurement_time(Duration::from_secs(2));
    let replies: [(&str, &[u8]); 3] = [
        ("queued", b"250 2.0.0 Ok: queued as 4Z1x2y3z4\r\n"),
        ("refused", b"550-5.1.1 The email account that you tried to reach does\r\n550 5.1.1 not exist. Please try again.\r\n"),
        (
            "ehlo",
            b"250-sink.example\r\n250-PIPELINING\r\n250-SIZE 157286400\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n",
        ),
    ];
    for (name, raw) in replies {
        assert!(UpstreamReply::parse(raw).is_ok(), "{name} must parse");
        g.bench_with_input(BenchmarkId::from_parameter(name), raw, |b, raw| {
            b.iter(|| black_box(UpstreamReply::parse(raw).map(|r| r.code)))
        });
    }
    g.finish();
}

fn command_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_parse");
    g.measurement_time(Duration::from_secs(2));
    let lines: [(&str, &[u8]); 5] = [
        ("ehlo", b"EHLO client.example.com\r\n"),
        (
            "mail",
            b"MAIL FROM:<alice@example.com> SIZE=1024 BODY=8BITMIME\r\n",
        ),
        ("rcpt", b"RCPT TO:<bob@example.net> NOTIFY=FAILURE\r\n"),
        ("data", b"DATA\r\n"),
        ("rset", b"RSET\r\n"),
    ];
    for (name, line) in lines {
        assert!(command::parse(line).is_ok(), "{name} must parse");
        g.bench_with_input(BenchmarkId::from_parameter(name), line, |b, line| {
            b.iter(|| black_box(command::parse(line).is_ok()))
        });
    }
    // One whole transaction's commands, as a session parses them per message.
    g.bench_function("transaction", |b| {
        b.iter(|| {
            for (_, line) in &lines[1..4] {
                black_box(command::parse(line).is_ok());
            }
        })
    });
    g.finish();
}

fn envelope(id: &str, size: u64) -> Envelope {
    Envelope {
        version: FORMAT_VERSION,
        id: id.to_owned(),
        received_at: 1_790_000_000,
        client: ClientInfo {
            address: "127.0.0.1:40000".parse().unwrap(),
            helo: "client.example.com".into(),
            tls: None,
            auth: None,
        },
        sender: "alice@example.com".into(),
        params: MailParams::default(),
        recipients: vec![Recipient {
            address: "bob@example.net".into(),
            orcpt: None,
            notify: None,
            status: RecipientStatus::Pending,
        }],
        size,
        route_domain: None,
    }
}

/// The envelope's JSON, as `Spool::store` writes it (CPU only).
fn envelope_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_json");
    g.measurement_time(Duration::from_secs(2));
    let env = envelope(&new_queue_id(), 1024);
    g.bench_function("to_vec_pretty", |b| {
        b.iter(|| black_box(serde_json::to_vec_pretty(&env).map(|v| v.len())))
    });
    g.finish();
}

/// Stores `count` messages of `m` at once and returns how long that took;
/// removes them afterwards, untimed.
fn store_batch(rt: &tokio::runtime::Runtime, spool: &Spool, m: &[u8], count: usize) -> Duration {
    let batch: Vec<Envelope> = (0..count)
        .map(|_| envelope(&new_queue_id(), m.len() as u64))
        .collect();
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for env in &batch {
            let (spool, env, m) = (spool.clone(), env.clone(), m.to_vec());
            tasks.spawn(async move { spool.store(&env, m).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("store task").expect("store");
        }
    });
    let elapsed = start.elapsed();
    for env in &batch {
        spool.remove(&env.id).expect("remove");
    }
    elapsed
}

/// The least a durable one-file write costs here: create, write, fsync,
/// rename into place, fsync the directory.
fn floor_store(dir: &Path, n: u64, m: &[u8]) {
    let tmp = dir.join(format!("tmp/{n}"));
    let dst = dir.join(format!("msg/{n}"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .expect("create");
    f.write_all(m).expect("write");
    f.sync_all().expect("fsync");
    fs::rename(&tmp, &dst).expect("rename");
    File::open(dir.join("msg"))
        .and_then(|d| d.sync_all())
        .expect("dir fsync");
}

fn spool_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(&dir.path().join("spool")).expect("spool");
    let floor_dir = dir.path().join("floor");
    fs::create_dir_all(floor_dir.join("tmp")).expect("floor tmp");
    fs::create_dir_all(floor_dir.join("msg")).expect("floor msg");

    let mut g = c.benchmark_group("spool_store");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, m) in sizes() {
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("one", name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| store_batch(&rt, &spool, &m, 1)).sum())
        });
        g.throughput(Throughput::Elements(CONCURRENT as u64));
        g.bench_function(BenchmarkId::new(format!("x{CONCURRENT}"), name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| store_batch(&rt, &spool, &m, CONCURRENT))
                    .sum()
            })
        });
        g.throughput(Throughput::Elements(1));
        let mut n = 0u64;
        g.bench_function(BenchmarkId::new("floor_one_file", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let start = Instant::now();
                    floor_store(&floor_dir, n, &m);
                    total += start.elapsed();
                    fs::remove_file(floor_dir.join(format!("msg/{n}"))).expect("remove");
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    command_parsing,
    dot_unstuffing,
    body_normalisation,
    envelope_json,
    outbound_stuffing,
    reply_parsing,
    spool_store
);
criterion_main!(benches);
