//! Accept latency: the time from the client's final `\r\n.\r\n` to the relay's
//! `250`, for 1 KiB messages on one reused loopback connection (plain and
//! STARTTLS), and on 8 concurrent connections.
//!
//! The machine this runs on is shared and noisy, so every figure is printed
//! beside references measured in the same run, in interleaved rounds:
//!
//! * `disk floor`: what durability costs with plain std calls, in the spool's
//!   filesystem: write+fsync one file the size of the relay's, rename it,
//!   fsync the directory (the spool's layout 2, in std calls).
//! * `smtp-sink`: Postfix's protocol-only sink (no fsync) driven by the same
//!   client code; skipped with a note when it is not installed.
//!
//! Run: `cargo bench --bench accept_latency`. Bounded: at most ~100 s of
//! rounds, each target stops a round after 8 s, each reply waits at most 10 s.
//! Traffic goes to 127.0.0.1 only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::client::Client;
use support::harness::{Harness, PLAIN_LISTENER};
use support::message::message_of_size;
use support::pki::TestCa;
use support::smtp_sink::SmtpSink;
use support::wait::free_port;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const MESSAGE_SIZE: usize = 1024;
const ROUNDS: usize = 5;
/// Messages per round on the single connection.
const MSGS_SINGLE: usize = 200;
/// Connections (or floor threads) in the concurrent scenario.
const CONNS: usize = 8;
const MSGS_PER_CONN: usize = 50;
/// Untimed messages per connection (and floor stores) before round 1.
const WARMUP: usize = 20;
/// A target's round stops early after this long.
const TARGET_ROUND_LIMIT: Duration = Duration::from_secs(8);
/// No new round starts after this long.
const TOTAL_LIMIT: Duration = Duration::from_secs(100);

// ---------------------------------------------------------------------------
// The tests' SMTP client, the same for smarthost and smtp-sink; a failure
// panics, which ends that target's round (its task) and drops it.

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Plain or STARTTLS connections in one list.
type BenchClient = Client<Box<dyn Stream>>;

/// Connects, reads the banner, says EHLO; with `ca`, STARTTLS and EHLO again.
async fn open(addr: SocketAddr, ca: Option<&TestCa>) -> BenchClient {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut c: BenchClient = Client::new(Box::new(tcp));
    c.hello().await;
    match ca {
        None => c,
        Some(ca) => Client::new(Box::new(c.starttls(ca).await.stream)),
    }
}

/// Sends one message; returns the time from the final `\r\n.\r\n` to the 250.
async fn timed_message(c: &mut BenchClient, body: &[u8]) -> Duration {
    c.cmd("MAIL FROM:<sender@bench.example>", "250").await;
    c.cmd("RCPT TO:<rcpt@dest.example>", "250").await;
    c.cmd("DATA", "354").await;
    // The body ends in CRLF; that CRLF goes out with the terminating dot.
    c.send(&body[..body.len() - 2]).await;
    let start = Instant::now();
    c.send(b"\r\n.\r\n").await;
    c.expect("250").await;
    start.elapsed()
}

async fn quit(mut c: BenchClient) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if c.try_send("QUIT\r\n").await {
            c.try_reply().await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// The disk floor: the fsyncs durability needs, with plain std calls.

struct Floor {
    tmp: PathBuf,
    msg: PathBuf,
    file: Vec<u8>,
    seq: AtomicU64,
    /// For the grouped variant: renames so far, and the count covered by
    /// the last directory fsync (the spool's `DirSync` algorithm).
    renamed: AtomicU64,
    synced: Mutex<u64>,
}

impl Floor {
    fn new(root: &Path, len: usize) -> io::Result<Floor> {
        let tmp = root.join("tmp");
        let msg = root.join("msg");
        fs::create_dir_all(&tmp)?;
        fs::create_dir_all(&msg)?;
        Ok(Floor {
            tmp,
            msg,
            file: vec![b'm'; len],
            seq: AtomicU64::new(0),
            renamed: AtomicU64::new(0),
            synced: Mutex::new(0),
        })
    }

    /// One message made durable as the spool does it; returns its duration.
    /// `grouped`: the directory fsync is shared between concurrent stores.
    fn store(&self, grouped: bool) -> io::Result<Duration> {
        let id = format!("{:016X}", self.seq.fetch_add(1, Ordering::Relaxed));
        let start = Instant::now();
        let tmp = self.tmp.join(format!("{id}.msg"));
        write_synced(&tmp, &self.file)?;
        fs::rename(&tmp, self.msg.join(format!("{id}.msg")))?;
        if grouped {
            let mine = self.renamed.fetch_add(1, Ordering::SeqCst) + 1;
            let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
            if *synced < mine {
                let upto = self.renamed.load(Ordering::SeqCst);
                File::open(&self.msg)?.sync_all()?;
                *synced = upto;
            }
        } else {
            File::open(&self.msg)?.sync_all()?;
        }
        Ok(start.elapsed())
    }

    /// `threads` threads storing `per_thread` messages each.
    fn round(
        &self,
        threads: usize,
        per_thread: usize,
        grouped: bool,
        deadline: Instant,
    ) -> Res<(Vec<Duration>, Duration)> {
        let start = Instant::now();
        let results: Vec<io::Result<Vec<Duration>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut lat = Vec::with_capacity(per_thread);
                        for _ in 0..per_thread {
                            if Instant::now() >= deadline {
                                break;
                            }
                            lat.push(self.store(grouped)?);
                        }
                        Ok(lat)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("panic"))))
                .collect()
        });
        let wall = start.elapsed();
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        Ok((all, wall))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

// ---------------------------------------------------------------------------
// Targets, rounds, statistics.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Floor,
    Relay,
    Sink,
}

enum Kind {
    Floor { threads: usize, grouped: bool },
    Net { clients: Vec<BenchClient> },
    Broken,
}

#[derive(Clone, Copy)]
struct Round {
    n: usize,
    p50: f64,
    p99: f64,
    mean: f64,
    rate: f64,
}

struct Target {
    name: &'static str,
    /// Connections (or threads): targets compare with the references of
    /// their own scenario.
    conc: usize,
    role: Role,
    kind: Kind,
    rounds: Vec<Option<Round>>,
}

fn stats(mut lat: Vec<Duration>, wall: Duration) -> Option<Round> {
    if lat.is_empty() {
        return None;
    }
    lat.sort();
    let n = lat.len();
    let secs = |d: Duration| d.as_secs_f64();
    // Nearest rank.
    let rank = |p: f64| lat[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Some(Round {
        n,
        p50: secs(rank(0.50)),
        p99: secs(rank(0.99)),
        mean: lat.iter().map(|d| secs(*d)).sum::<f64>() / n as f64,
        rate: n as f64 / secs(wall),
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Runs `per_conn` messages on each client concurrently.
async fn net_round(
    clients: Vec<BenchClient>,
    per_conn: usize,
    body: Arc<Vec<u8>>,
    deadline: Instant,
) -> Res<(Vec<BenchClient>, Vec<Duration>, Duration)> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let body = body.clone();
        set.spawn(async move {
            let mut lat = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                if Instant::now() >= deadline {
                    break;
                }
                lat.push(timed_message(&mut c, &body).await);
            }
            (i, c, lat)
        });
    }
    let mut done = Vec::new();
    while let Some(r) = set.join_next().await {
        // A client that panicked (no reply, a refusal) fails the round.
        done.push(r?);
    }
    let wall = start.elapsed();
    done.sort_by_key(|(i, _, _)| *i);
    let mut clients = Vec::new();
    let mut all = Vec::new();
    for (_, c, lat) in done {
        clients.push(c);
        all.extend(lat);
    }
    Ok((clients, all, wall))
}

// ---------------------------------------------------------------------------
// Setup: the filesystem.

/// The filesystem holding `path`: (type, device) from /proc/mounts, and
/// what `stat -f` says.
fn filesystem(path: &Path) -> (String, String, String) {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_owned(), f[1].replace("\\040", " "), f[2].to_owned()))
        })
        .filter(|(_, mnt, _)| path.starts_with(mnt))
        .max_by_key(|(_, mnt, _)| mnt.len());
    let stat = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&path)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into());
    match best {
        Some((dev, _, fstype)) => (fstype, dev, stat),
        None => ("?".into(), "?".into(), stat),
    }
}

/// The size of one message's file as the relay stored it (for the floor).
fn spooled_size(msg_dir: &Path) -> Option<usize> {
    for entry in fs::read_dir(msg_dir).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_some_and(|e| e == "msg") {
            return Some(fs::metadata(&path).ok()?.len() as usize);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Output.

fn dur(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0}µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.2}ms", secs * 1e3)
    } else {
        format!("{secs:.2}s")
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

/// Median across rounds of `f(target round, reference round)`.
fn ratio_vs(
    t: &Target,
    reference: Option<&Target>,
    f: impl Fn(&Round, &Round) -> f64,
) -> Option<f64> {
    let reference = reference?;
    median(
        t.rounds
            .iter()
            .zip(&reference.rounds)
            .filter_map(|(a, b)| Some(f(a.as_ref()?, b.as_ref()?)))
            .collect(),
    )
}

fn main() -> Res<()> {
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("smarthost-bench-")
        .tempdir_in("/var/tmp")?;
    let (fstype, device, stat) = filesystem(dir.path());
    println!(
        "accept_latency: spool under {} on {device}, filesystem {fstype} (stat -f: {stat})",
        dir.path().display()
    );
    if matches!(fstype.as_str(), "tmpfs" | "ramfs") {
        println!(
            "WARNING: the spool is on {fstype}: fsync is free here, the figures say nothing about disks"
        );
    }

    // The relay, in-process on its own multi-threaded runtime (its tasks
    // spawned there), its spool in `dir`.
    let h = Harness::in_dir(dir, PLAIN_LISTENER, "");
    let spool_msg = h.spool_dir().join("msg");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("relay")
        .build()?;
    let relay = server_rt.block_on(h.start());
    let relay_addr = relay.addr();

    // The client side: one thread, its own runtime.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sink = match client_rt.block_on(SmtpSink::start_bare(free_port())) {
        Ok(s) => Some(s),
        Err(e) => {
            println!("NOTE: no smtp-sink ({e}): the smtp-sink reference is skipped");
            None
        }
    };
    let body = Arc::new(message_of_size(MESSAGE_SIZE));
    assert!(body.len() == MESSAGE_SIZE && body.ends_with(b"\r\n"));
    let connect = |addr: SocketAddr, n: usize, tls: bool| {
        let body = body.clone();
        client_rt.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..n {
                let mut c = open(addr, tls.then_some(&h.ca)).await;
                for _ in 0..WARMUP {
                    timed_message(&mut c, &body).await;
                }
                clients.push(c);
            }
            clients
        })
    };

    let mut targets = Vec::new();
    let relay_plain = connect(relay_addr, 1, false);
    // Size the floor's file like the relay's own (Received header, envelope).
    let len = spooled_size(&spool_msg).unwrap_or(MESSAGE_SIZE + 800);
    println!(
        "message {MESSAGE_SIZE} B; relay stores {len} B .msg; [limits] defaults; \
         {ROUNDS} rounds x ({MSGS_SINGLE} msgs on 1 conn | {CONNS} conns x {MSGS_PER_CONN} msgs)"
    );
    let floor = Floor::new(&h.dir.path().join("floor"), len)?;
    for _ in 0..WARMUP {
        floor.store(false)?;
    }
    let mut add = |name, conc, role, kind| {
        targets.push(Target {
            name,
            conc,
            role,
            kind,
            rounds: Vec::new(),
        })
    };
    add(
        "disk floor",
        1,
        Role::Floor,
        Kind::Floor {
            threads: 1,
            grouped: false,
        },
    );
    add(
        "smarthost",
        1,
        Role::Relay,
        Kind::Net {
            clients: relay_plain,
        },
    );
    add(
        "smarthost STARTTLS",
        1,
        Role::Relay,
        Kind::Net {
            clients: connect(relay_addr, 1, true),
        },
    );
    if let Some(s) = &sink {
        add(
            "smtp-sink",
            1,
            Role::Sink,
            Kind::Net {
                clients: connect(s.addr(), 1, false),
            },
        );
    }
    add(
        "disk floor 8 thr",
        CONNS,
        Role::Floor,
        Kind::Floor {
            threads: CONNS,
            grouped: false,
        },
    );
    add(
        "floor 8 thr grouped",
        CONNS,
        Role::Floor,
        Kind::Floor {
            threads: CONNS,
            grouped: true,
        },
    );
    add(
        "smarthost 8 conn",
        CONNS,
        Role::Relay,
        Kind::Net {
            clients: connect(relay_addr, CONNS, false),
        },
    );
    add(
        "smarthost TLS 8 conn",
        CONNS,
        Role::Relay,
        Kind::Net {
            clients: connect(relay_addr, CONNS, true),
        },
    );
    if let Some(s) = &sink {
        add(
            "smtp-sink 8 conn",
            CONNS,
            Role::Sink,
            Kind::Net {
                clients: connect(s.addr(), CONNS, false),
            },
        );
    }

    // Interleaved rounds; the order rotates so no target always goes first.
    println!("\nround  target                  n      p50      p99   msgs/s");
    for round in 0..ROUNDS {
        if began.elapsed() > TOTAL_LIMIT {
            println!("(time limit reached: stopping after {round} rounds)");
            break;
        }
        let count = targets.len();
        for k in 0..count {
            let t = &mut targets[(k + round) % count];
            let deadline = Instant::now() + TARGET_ROUND_LIMIT;
            let result = match std::mem::replace(&mut t.kind, Kind::Broken) {
                Kind::Floor { threads, grouped } => {
                    let per_thread = if threads == 1 {
                        MSGS_SINGLE
                    } else {
                        MSGS_PER_CONN
                    };
                    t.kind = Kind::Floor { threads, grouped };
                    floor.round(threads, per_thread, grouped, deadline)
                }
                Kind::Net { clients } => {
                    let per_conn = if clients.len() == 1 {
                        MSGS_SINGLE
                    } else {
                        MSGS_PER_CONN
                    };
                    client_rt
                        .block_on(net_round(clients, per_conn, body.clone(), deadline))
                        .map(|(clients, lat, wall)| {
                            t.kind = Kind::Net { clients };
                            (lat, wall)
                        })
                }
                Kind::Broken => continue,
            };
            let r = match result {
                Ok((lat, wall)) => stats(lat, wall),
                Err(e) => {
                    println!(
                        "{:>5}  {:<20} FAILED: {e} (dropped from later rounds)",
                        round + 1,
                        t.name
                    );
                    None
                }
            };
            if let Some(r) = &r {
                println!(
                    "{:>5}  {:<20} {:>5} {:>8} {:>8} {:>8.0}",
                    round + 1,
                    t.name,
                    r.n,
                    dur(r.p50),
                    dur(r.p99),
                    r.rate
                );
            }
            t.rounds.resize(round, None);
            t.rounds.push(r);
        }
    }
    for t in &mut targets {
        t.rounds.resize(ROUNDS, None);
    }

    // Shut everything down before printing.
    for t in &mut targets {
        if let Kind::Net { clients } = std::mem::replace(&mut t.kind, Kind::Broken) {
            client_rt.block_on(async {
                for c in clients {
                    quit(c).await;
                }
            });
        }
    }
    relay.shutdown.cancel();
    let stopped = server_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), relay.task).await });
    if stopped.is_err() {
        println!("NOTE: the relay did not stop within 10 s");
    }
    drop(sink);

    // The table: medians across rounds; ratios are per round, then the median.
    let find = |conc: usize, role: Role| targets.iter().find(|t| t.conc == conc && t.role == role);
    println!(
        "\nmedians of {ROUNDS} rounds; ratios are taken per round against the reference of the same scenario (1 conn / {CONNS} conn), then the median\n"
    );
    println!(
        "{:<21} {:>5} {:>8} {:>8} {:>8} {:>8}  {:>9} {:>9} {:>9}",
        "target", "n/rnd", "p50", "p99", "mean", "msgs/s", "p50/floor", "p50/sink", "rate/flr"
    );
    for t in &targets {
        let m = |f: fn(&Round) -> f64| median(t.rounds.iter().flatten().map(f).collect());
        let Some(p50) = m(|r| r.p50) else {
            println!("{:<21} (no data)", t.name);
            continue;
        };
        let n = m(|r| r.n as f64).unwrap_or(0.0);
        let floor_ref = find(t.conc, Role::Floor);
        let sink_ref = find(t.conc, Role::Sink);
        println!(
            "{:<21} {:>5.0} {:>8} {:>8} {:>8} {:>8.0}  {:>9} {:>9} {:>9}",
            t.name,
            n,
            dur(p50),
            dur(m(|r| r.p99).unwrap_or(f64::NAN)),
            dur(m(|r| r.mean).unwrap_or(f64::NAN)),
            m(|r| r.rate).unwrap_or(f64::NAN),
            ratio(ratio_vs(t, floor_ref, |a, b| a.p50 / b.p50)),
            ratio(ratio_vs(t, sink_ref, |a, b| a.p50 / b.p50)),
            ratio(ratio_vs(t, floor_ref, |a, b| a.rate / b.rate)),
        );
    }

    // Group commit: what 8 connections buy over 1, in the same rounds.
    let pairs = [
        ("smarthost", "smarthost 8 conn"),
        ("smarthost STARTTLS", "smarthost TLS 8 conn"),
        ("disk floor", "disk floor 8 thr"),
        ("disk floor", "floor 8 thr grouped"),
        ("smtp-sink", "smtp-sink 8 conn"),
    ];
    println!("\n{CONNS} connections (threads) vs 1, per-round ratio, median:");
    for (one, many) in pairs {
        let (Some(a), Some(b)) = (
            targets.iter().find(|t| t.name == one),
            targets.iter().find(|t| t.name == many),
        ) else {
            continue;
        };
        println!(
            "  {:<42} throughput {:>7}   p50 latency {:>7}",
            format!("{many} / {one}"),
            ratio(ratio_vs(b, Some(a), |x, y| x.rate / y.rate)),
            ratio(ratio_vs(b, Some(a), |x, y| x.p50 / y.p50)),
        );
    }
    println!("\ntotal {:.1} s", began.elapsed().as_secs_f64());
    drop(server_rt);
    Ok(())
}
