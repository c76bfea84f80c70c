//! Resource bounds of the real binary under abusive clients, over real
//! loopback sockets: each case ends with the documented reply (or a close
//! where no reply can be delivered), and the daemon's memory, read from
//! /proc/PID/status (VmRSS now, VmHWM the peak), stays bounded.
//!
//! Every test prints one `abuse-figures:` line (run with `--nocapture`):
//! baseline RSS of the idle relay, peak and after, in MiB and as a ratio.
//! The figures are of whatever profile the tests were built in (a debug
//! `smarthost` unless `--release`).
//!
//! Short timeouts (2 s) keep the slow-client cases quick; the real defaults
//! are `command_timeout = "5m"`, `data_timeout = "10m"`. Opt-in variants:
//! - `SMARTHOST_ABUSE_TIMEOUT=300` runs the slow-client cases with that many
//!   seconds for both timeouts, trickling a byte every timeout/60 s (0.5 to
//!   5 s): minutes per case.
//! - `SMARTHOST_ABUSE_CLIENTS=2000` holds that many clients open in DATA
//!   (default 200).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::auth::auth_plain;
use support::binary::{Relay, run_with_stdin, status_kib};
use support::client::{Client, Reply, TlsClient, connect_from, send_data, tls_session};
use support::harness::Harness;
use support::message::{message, strip_received};
use support::pki::TestCa;
use support::wait::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";
const MIB: usize = 1 << 20;

/// Seconds for command_timeout and data_timeout in the slow-client cases.
fn slow_timeout() -> u64 {
    std::env::var("SMARTHOST_ABUSE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Lets this process (and the relay it spawns, which inherits the limit) hold
/// as many sockets as the hard limit allows.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

// ---------------------------------------------------------------------------
// Memory figures.

/// VmRSS and VmHWM of a process, in KiB.
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
}

fn mem(pid: i32) -> Mem {
    Mem {
        rss: status_kib(pid, "VmRSS"),
        hwm: status_kib(pid, "VmHWM"),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One case's measurement: the idle relay's RSS first, the peak at the end.
struct Watch {
    case: &'static str,
    pid: i32,
    baseline: Mem,
    started: Instant,
}

impl Watch {
    /// Call right after the relay started, before any abuse.
    fn start(case: &'static str, relay: &Relay) -> Watch {
        let pid = relay.pid();
        // Start-up (config, TLS, spool) peaks above the idle RSS; "5" resets
        // VmHWM to the current RSS (proc(5), clear_refs), so the peak read
        // at the end is the abuse's.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .expect("reset VmHWM via /proc/PID/clear_refs");
        Watch {
            case,
            pid,
            baseline: mem(pid),
            started: Instant::now(),
        }
    }

    fn now(&self) -> Mem {
        mem(self.pid)
    }

    /// Prints the figures and asserts the peak stays under `bound_mib`.
    fn finish(self, reply: &str, bound_mib: u64) -> Mem {
        let end = mem(self.pid);
        let b = self.baseline.rss;
        eprintln!(
            "abuse-figures: case={} reply={reply:?} baseline={:.1}MiB peak={:.1}MiB ({:.2}x) after={:.1}MiB ({:.2}x) time={:.2}s",
            self.case,
            mib(b),
            mib(end.hwm),
            end.hwm as f64 / b as f64,
            mib(end.rss),
            end.rss as f64 / b as f64,
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            end.hwm < bound_mib * 1024,
            "{}: peak RSS {:.1} MiB over the {bound_mib} MiB bound",
            self.case,
            mib(end.hwm)
        );
        end
    }
}

// ---------------------------------------------------------------------------
// Clients.

/// Connected, banner read, EHLO said.
async fn greeted(relay: &Relay) -> Client<TcpStream> {
    let mut c = relay.connect().await;
    c.hello().await;
    c
}

/// A reply reader on the read half and the raw write half, so replies can be
/// read while a large pipelined write is still going out.
fn split(
    c: Client<TcpStream>,
) -> (
    Client<tokio::io::Join<tokio::net::tcp::OwnedReadHalf, tokio::io::Sink>>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (rd, wr) = c.stream.into_split();
    (Client::new(tokio::io::join(rd, tokio::io::sink())), wr)
}

/// The first reply on a fresh connection ("220 ...", "421 4.7.0 ...").
async fn first_line(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.ends_with(b"\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("first reply in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).trim_end().to_owned()
}

/// True when the peer closes within `limit` (anything it sends first is dropped).
async fn closes_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes `total` bytes of `fill` (no newline) in 64 KiB writes.
async fn write_filler<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, total: usize, fill: u8) {
    let chunk = vec![fill; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
}

// ---------------------------------------------------------------------------
// 1. Ten mebibytes without a newline.

/// RFC 5321 §4.5.3.1.4/.5: a command line has a length limit; what is over it
/// gets `500 5.5.2` once, the rest of the line is dropped as it arrives, and
/// the next line is a command again.
#[tokio::test]
async fn ten_mib_command_line_is_one_500_and_memory_stays_flat() {
    let h = Harness::plain_limits("max_message_size = 1048576");
    let relay = Relay::start(&h).await;
    let w = Watch::start("10MiB command line", &relay);
    within(60, async {
        let (mut r, mut wr) = split(greeted(&relay).await);
        let writer = async {
            write_filler(&mut wr, 10 * MIB, b'A').await;
            wr.write_all(b"\r\nNOOP\r\nQUIT\r\n").await.unwrap();
        };
        let reader = async {
            r.expect("500 5.5.2").await;
            // Exactly one 500: the next reply is the NOOP's.
            r.expect("250 2.0.0").await;
            r.expect("221 2.0.0").await;
        };
        tokio::join!(writer, reader);
    })
    .await;
    w.finish("500 5.5.2 once", 200);
}

/// Inside DATA, long lines are content (we do not enforce the 998-octet text
/// line limit of RFC 5322 §2.1.1); memory is bounded by max_message_size: over
/// it, bytes are counted and dropped, the body is read to its end, then 552.
#[tokio::test]
async fn ten_mib_without_newline_in_data_is_552_after_the_dot() {
    let h = Harness::plain_limits("max_message_size = 1048576");
    let relay = Relay::start(&h).await;
    let w = Watch::start("10MiB no newline in DATA (limit 1 MiB)", &relay);
    within(60, async {
        let mut c = greeted(&relay).await;
        c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
        c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
        c.cmd("DATA", "354").await;
        let (mut r, mut wr) = split(c);
        let writer = async {
            write_filler(&mut wr, 10 * MIB, b'B').await;
            wr.write_all(b"\r\n.\r\nNOOP\r\n").await.unwrap();
        };
        let reader = async {
            r.expect("552 5.3.4").await;
            r.expect("250 2.0.0").await;
        };
        tokio::join!(writer, reader);
    })
    .await;
    assert_eq!(h.spool_files(), 0);
    w.finish("552 5.3.4 after the dot", 200);
}

/// The same in one BDAT chunk: read to its announced end (RFC 3030 §2), 552.
#[tokio::test]
async fn ten_mib_bdat_chunk_over_the_limit_is_552_and_in_sync() {
    let h = Harness::plain_limits("max_message_size = 1048576");
    let relay = Relay::start(&h).await;
    let w = Watch::start("10MiB BDAT chunk (limit 1 MiB)", &relay);
    within(60, async {
        let mut c = greeted(&relay).await;
        c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
        c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
        let (mut r, mut wr) = split(c);
        let writer = async {
            wr.write_all(format!("BDAT {} LAST\r\n", 10 * MIB).as_bytes())
                .await
                .unwrap();
            write_filler(&mut wr, 10 * MIB, b'C').await;
            wr.write_all(b"NOOP\r\n").await.unwrap();
        };
        let reader = async {
            r.expect("552 5.3.4").await;
            r.expect("250 2.0.0").await;
        };
        tokio::join!(writer, reader);
    })
    .await;
    assert_eq!(h.spool_files(), 0);
    w.finish("552 5.3.4 after the chunk", 200);
}

/// Under a 16 MiB limit a 10 MiB single-line body is accepted and spooled:
/// the figure is what one message in flight costs (it streams to disk).
#[tokio::test]
async fn ten_mib_single_line_body_under_the_limit_is_spooled() {
    let h = Harness::plain_limits("max_message_size = 16777216");
    let relay = Relay::start(&h).await;
    let w = Watch::start("10MiB one-line body accepted (limit 16 MiB)", &relay);
    within(60, async {
        let mut c = greeted(&relay).await;
        c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
        c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
        c.cmd("DATA", "354").await;
        let (mut r, mut wr) = split(c);
        let writer = async {
            wr.write_all(b"Subject: long\r\n\r\n").await.unwrap();
            write_filler(&mut wr, 10 * MIB, b'D').await;
            wr.write_all(b"\r\n.\r\n").await.unwrap();
        };
        let reader = async {
            r.expect("250 2.0.0").await;
        };
        tokio::join!(writer, reader);
    })
    .await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1);
    assert!(spooled[0].1.len() > 10 * MIB);
    w.finish("250 2.0.0", 200);
}

/// Issue 11: three clients each sending a 40 MB message over STARTTLS at the
/// same time. Content streams to the spool's temporary file in bounded
/// buffers, so the relay's memory does not grow with message size × sessions
/// (when whole messages were held: 7 -> 139 MiB). Each message is spooled
/// byte for byte, and nothing is left in tmp/.
#[tokio::test(flavor = "multi_thread")]
async fn three_parallel_40mb_messages_over_starttls_stream_to_disk() {
    const CLIENTS: usize = 3;
    const SIZE: usize = 40_000_000;
    let h = Harness::plain_limits(
        "max_message_size = 67108864
data_timeout = \"2m\"",
    );
    let relay = Relay::start(&h).await;
    let w = Watch::start("3 x 40 MB over STARTTLS", &relay);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let port = relay.port;
        let tls = tokio_rustls::TlsConnector::from(h.ca.client_config());
        tasks.spawn(async move {
            let body = message(&format!("big{i}@test"), FROM, "forty megabytes", SIZE);
            let mut plain = Client::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
            plain.hello().await;
            plain.cmd("STARTTLS", "220").await;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut c = Client::new(tls.connect(name, plain.stream).await.unwrap());
            c.cmd("EHLO client.test", "250").await;
            c.reply_timeout = Duration::from_secs(120);
            let r = send_data(&mut c, FROM, &[TO], &body).await;
            c.cmd("QUIT", "221").await;
            (r, body)
        });
    }
    let mut sent = Vec::new();
    within(300, async {
        while let Some(r) = tasks.join_next().await {
            let (reply, body) = r.unwrap();
            assert_eq!(reply.status(), "250 2.0.0", "{reply:?}");
            sent.push(body);
        }
    })
    .await;
    let base = w.baseline.rss;
    let end = w.finish("250 2.0.0 x3", 400);
    let growth = mib(end.hwm.saturating_sub(base));
    eprintln!("abuse-figures: 3 x 40 MB over STARTTLS: peak RSS growth {growth:.1} MiB");
    // Held whole, the three messages alone are 120 MB (measured before
    // streaming: +168 MiB peak; streamed: +2 to 3 MiB).
    assert!(growth < 40.0, "peak RSS grew {growth:.1} MiB");
    let spooled = h.spooled();
    assert_eq!(spooled.len(), CLIENTS);
    for (env, message) in &spooled {
        let content = strip_received(message);
        assert!(
            sent.iter().any(|b| b == content),
            "{} differs from what was sent",
            env.id
        );
        assert_eq!(env.size, message.len() as u64);
    }
    assert_eq!(
        std::fs::read_dir(h.spool_dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

// ---------------------------------------------------------------------------
// 2. Slowloris.

/// How often the trickling clients send a byte.
fn trickle_period(timeout: u64) -> Duration {
    Duration::from_millis((timeout * 1000 / 60).clamp(500, 5000))
}

/// Trickles `bytes` (cycled) one at a time until the relay replies; returns
/// that reply and how long after `since` it came. Bounded by `limit`.
async fn trickle_until_reply(
    c: Client<TcpStream>,
    bytes: &[u8],
    period: Duration,
    limit: Duration,
) -> (Option<Reply>, Duration, usize) {
    let since = Instant::now();
    let (mut r, mut wr) = split(c);
    r.reply_timeout = limit * 2;
    let mut sent = 0usize;
    let writer = async {
        for b in bytes.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(period).await;
        }
    };
    let reply = tokio::select! {
        r = r.try_reply() => r,
        _ = writer => None,
        _ = tokio::time::sleep(limit) => None,
    };
    (reply, since.elapsed(), sent)
}

/// RFC 5321 §4.5.3.2.7 gives the server a timeout while awaiting a command;
/// it is a deadline for the whole command line, not per byte, so a command
/// trickled a byte at a time is cut at command_timeout with `421 4.4.2`.
#[tokio::test]
async fn slowloris_command_is_cut_at_the_command_deadline() {
    let t = slow_timeout();
    let h = Harness::plain_limits(&format!(
        "command_timeout = \"{t}s\"\ndata_timeout = \"{t}s\""
    ));
    let relay = Relay::start(&h).await;
    let w = Watch::start("slowloris command", &relay);
    let c = greeted(&relay).await;
    let (reply, took, sent) = trickle_until_reply(
        c,
        b"NOOP and more NOOP",
        trickle_period(t),
        Duration::from_secs(t * 3 + 20),
    )
    .await;
    let reply = reply.unwrap_or_else(|| {
        panic!("no reply after {took:?} ({sent} bytes trickled): the trickle holds the session")
    });
    assert_eq!(reply.status(), "421 4.4.2", "{reply:?}");
    let t = Duration::from_secs(t);
    assert!(
        took >= t.mul_f64(0.9) && took < t * 2 + Duration::from_secs(5),
        "cut after {took:?} ({sent} bytes), command_timeout {t:?}"
    );
    eprintln!("slowloris command: cut after {took:?}, {sent} bytes trickled");
    w.finish("421 4.4.2", 200);
}

/// DATA trickled a byte at a time, each byte well within data_timeout: the
/// content has a deadline of its own (data_timeout, extended as bytes arrive
/// at a minimum rate), so the trickle cannot hold the session forever.
#[tokio::test]
async fn slowloris_data_is_cut_at_the_content_deadline() {
    let t = slow_timeout();
    let h = Harness::plain_limits(&format!(
        "command_timeout = \"{t}s\"\ndata_timeout = \"{t}s\""
    ));
    let relay = Relay::start(&h).await;
    let w = Watch::start("slowloris DATA", &relay);
    let mut c = greeted(&relay).await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c.cmd("DATA", "354").await;
    let (reply, took, sent) = trickle_until_reply(
        c,
        b"Subject: slow\r\n\r\nbody\r\n",
        trickle_period(t),
        Duration::from_secs(t * 3 + 20),
    )
    .await;
    let reply = reply.unwrap_or_else(|| {
        panic!("no reply after {took:?} ({sent} bytes trickled): the trickle holds the session")
    });
    assert_eq!(reply.status(), "421 4.4.2", "{reply:?}");
    let t = Duration::from_secs(t);
    assert!(
        took >= t.mul_f64(0.9) && took < t * 2 + Duration::from_secs(5),
        "cut after {took:?} ({sent} bytes), data_timeout {t:?}"
    );
    assert_eq!(h.spool_files(), 0);
    eprintln!("slowloris DATA: cut after {took:?}, {sent} bytes trickled");
    w.finish("421 4.4.2", 200);
}

/// The same through BDAT chunks: a trickled chunk is cut too.
#[tokio::test]
async fn slowloris_bdat_is_cut_at_the_content_deadline() {
    let t = slow_timeout();
    let h = Harness::plain_limits(&format!(
        "command_timeout = \"{t}s\"\ndata_timeout = \"{t}s\""
    ));
    let relay = Relay::start(&h).await;
    let w = Watch::start("slowloris BDAT", &relay);
    let mut c = greeted(&relay).await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    c.send("BDAT 100000 LAST\r\n").await;
    let (reply, took, sent) =
        trickle_until_reply(c, b"x", trickle_period(t), Duration::from_secs(t * 3 + 20)).await;
    let reply = reply.unwrap_or_else(|| {
        panic!("no reply after {took:?} ({sent} bytes trickled): the trickle holds the session")
    });
    assert_eq!(reply.status(), "421 4.4.2", "{reply:?}");
    let t = Duration::from_secs(t);
    assert!(
        took >= t.mul_f64(0.9) && took < t * 2 + Duration::from_secs(5),
        "cut after {took:?} ({sent} bytes), data_timeout {t:?}"
    );
    assert_eq!(h.spool_files(), 0);
    w.finish("421 4.4.2", 200);
}

// ---------------------------------------------------------------------------
// 3. A thousand recipients.

/// The default max_recipients (1000): the 1001st gets `452 4.5.3` (RFC 5321
/// §4.5.3.1.8: the client sends the rest in another transaction), and DATA
/// then spools one message for the 1000 accepted.
#[tokio::test]
async fn thousand_recipients_then_452_and_one_message() {
    let h = Harness::plain_limits("");
    let relay = Relay::start(&h).await;
    let w = Watch::start("1001 RCPT (default max_recipients)", &relay);
    within(60, async {
        let mut c = greeted(&relay).await;
        c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
        let rcpts: String = (0..1001)
            .map(|i| format!("RCPT TO:<rcpt{i:04}@partner.example>\r\n"))
            .collect();
        c.send(rcpts).await;
        for i in 0..1000 {
            let r = c.reply().await;
            assert_eq!(r.status(), "250 2.1.5", "recipient {i}: {r:?}");
        }
        c.expect("452 4.5.3").await;
        c.cmd("DATA", "354").await;
        c.send("Subject: many\r\n\r\nhello\r\n.\r\n").await;
        c.expect("250 2.0.0").await;
    })
    .await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1);
    let rcpts = &spooled[0].0.recipients;
    assert_eq!(rcpts.len(), 1000);
    assert_eq!(rcpts[999].address, "rcpt0999@partner.example");
    w.finish("250 x1000, 452 4.5.3, 250 2.0.0", 200);
}

// ---------------------------------------------------------------------------
// 4. Connections until refused.

/// Opens connections from `ip` until one is refused (at most `cap + 5`).
/// Returns the ones that got a banner and the refusal.
async fn open_until_refused(
    port: u16,
    ips: &[&str],
    per_ip: usize,
    cap: usize,
) -> (Vec<TcpStream>, Option<(String, TcpStream)>) {
    let mut open = Vec::new();
    for i in 0..cap + 5 {
        let ip = ips[(i / per_ip).min(ips.len() - 1)];
        let mut s = connect_from(ip, port).await.stream;
        let line = first_line(&mut s).await;
        if line.starts_with("220") {
            open.push(s);
        } else {
            return (open, Some((line, s)));
        }
    }
    (open, None)
}

/// Polls until a client from `ip` gets a banner (the freed slot is returned
/// when its session ends, a moment after the close).
async fn served_again(port: u16, ip: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from(ip, port).await.stream;
        let line = first_line(&mut s).await;
        if line.starts_with("220") {
            return s;
        }
        assert!(Instant::now() < deadline, "not served again: {line}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connections_from_one_address_stop_at_the_per_ip_cap() {
    raise_fd_limit();
    let h = Harness::plain_limits("max_connections = 50\nmax_connections_per_ip = 20");
    let relay = Relay::start(&h).await;
    let w = Watch::start("connections from one address (cap 20)", &relay);
    within(60, async {
        let (mut open, refused) = open_until_refused(relay.port, &["127.0.0.1"], 100, 20).await;
        assert_eq!(open.len(), 20, "the per-address cap holds exactly");
        let (line, mut s) = refused.expect("a refusal");
        assert!(line.starts_with("421 4.7.0"), "{line}");
        assert!(closes_within(&mut s, Duration::from_secs(10)).await);
        // Another address is not affected.
        let mut other = connect_from("127.0.0.2", relay.port).await.stream;
        assert!(first_line(&mut other).await.starts_with("220"));
        eprintln!("20 open sessions: RSS {:.1} MiB", mib(mem(relay.pid()).rss));
        // One leaves; a new client from the same address is served.
        open.pop();
        let mut again = Client::new(served_again(relay.port, "127.0.0.1").await);
        again.cmd("EHLO client.test", "250").await;
        again.cmd("QUIT", "221").await;
    })
    .await;
    w.finish("421 4.7.0 for the 21st", 200);
}

#[tokio::test]
async fn connections_from_many_addresses_stop_at_the_global_cap() {
    raise_fd_limit();
    let h = Harness::plain_limits("max_connections = 50\nmax_connections_per_ip = 20");
    let relay = Relay::start(&h).await;
    let w = Watch::start("connections from many addresses (cap 50)", &relay);
    within(60, async {
        let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
        let (mut open, refused) = open_until_refused(relay.port, &ips, 20, 50).await;
        assert_eq!(open.len(), 50, "the global cap holds exactly");
        let (line, mut s) = refused.expect("a refusal");
        assert!(line.starts_with("421 4.3.2"), "{line}");
        assert!(closes_within(&mut s, Duration::from_secs(10)).await);
        eprintln!("50 open sessions: RSS {:.1} MiB", mib(mem(relay.pid()).rss));
        open.pop();
        let mut again = Client::new(served_again(relay.port, "127.0.0.9").await);
        again.cmd("EHLO client.test", "250").await;
        again.cmd("QUIT", "221").await;
    })
    .await;
    w.finish("421 4.3.2 for the 51st", 200);
}

// ---------------------------------------------------------------------------
// 5. Clients that never read our replies.

/// Each client reads the banner, then pipelines HELP (a short command with a
/// long reply) without ever reading. The relay stops reading input while its
/// replies cannot be written, holds no more than a bounded reply buffer, and
/// after command_timeout without progress closes the connection (no reply
/// can reach a client that does not read).
#[tokio::test]
async fn clients_that_never_read_cannot_grow_our_memory() {
    raise_fd_limit();
    let t = 2;
    let h = Harness::plain_limits(&format!(
        "command_timeout = \"{t}s\"\nmax_connections_per_ip = 1000"
    ));
    let relay = Relay::start(&h).await;
    let w = Watch::start("20 clients never reading (HELP flood)", &relay);
    let clients = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let port = relay.port;
        tasks.spawn(async move {
            let socket = TcpSocket::new_v4().unwrap();
            // A small receive window: our replies back up quickly.
            socket.set_recv_buffer_size(4096).unwrap();
            let mut s = socket
                .connect(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .unwrap();
            assert!(first_line(&mut s).await.starts_with("220"));
            let burst = b"HELP\r\n".repeat(10_000);
            let mut sent = 0usize;
            // Write until the relay stops taking input (a write stalls for 1 s).
            let started = Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_secs(1), s.write_all(&burst)).await {
                    Ok(Ok(())) => sent += burst.len(),
                    Ok(Err(_)) | Err(_) => break,
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the relay kept reading"
                );
            }
            (s, sent)
        });
    }
    let mut conns = Vec::new();
    while let Some(r) = tasks.join_next().await {
        conns.push(r.unwrap());
    }
    let stalled = w.now();
    let sent: usize = conns.iter().map(|(_, n)| n).sum();
    eprintln!(
        "never-read: {clients} clients stalled after {:.1} MiB of HELP in total; RSS {:.1} MiB, {:.0} KiB per client over baseline",
        sent as f64 / MIB as f64,
        mib(stalled.rss),
        (stalled.rss.saturating_sub(w.baseline.rss)) as f64 / clients as f64
    );
    // The relay gives up on each within command_timeout of its write stalling.
    for (s, _) in &mut conns {
        assert!(
            closes_within(s, Duration::from_secs(t * 2 + 20)).await,
            "the relay kept a client that never reads"
        );
    }
    let base = w.baseline.rss;
    let end = w.finish("none (closed after command_timeout)", 200);
    // What a stalled client costs is bounded by the reply buffer, not by how
    // much it sent (before replies were bounded: about 2 MiB each).
    let per_client = end.hwm.saturating_sub(base) / clients as u64;
    eprintln!("never-read: peak {per_client} KiB per client over baseline");
    assert!(per_client < 512, "{per_client} KiB per stalled client");
}

// ---------------------------------------------------------------------------
// 6. Pipelining abuse.

/// Commands that do no work answered before the close: the junk limit, then
/// `max_errors` (10 by default) more, the last of which gets the 421.
const JUNK_BEFORE_CLOSE: usize = smarthost::session::JUNK_COMMAND_LIMIT as usize + 9;

/// 100 000 NOOPs in one write: answered in order until the junk-command limit
/// runs out the error budget, then `421 4.7.0` and the close; the rest is
/// never looked at, and memory stays bounded by one read's worth of replies.
#[tokio::test]
async fn hundred_thousand_pipelined_noops_end_at_the_junk_limit() {
    let h = Harness::plain_limits("");
    let relay = Relay::start(&h).await;
    let w = Watch::start("100k pipelined NOOP", &relay);
    let n = 100_000;
    within(60, async {
        let (mut r, mut wr) = split(greeted(&relay).await);
        let writer = async {
            // The relay closes partway through: a failed write is expected.
            let _ = wr.write_all(&b"NOOP\r\n".repeat(n)).await;
        };
        let reader = async {
            for i in 0..JUNK_BEFORE_CLOSE {
                let reply = r.reply().await;
                assert_eq!(reply.status(), "250 2.0.0", "NOOP {i}");
            }
            r.expect("421 4.7.0").await;
            assert!(r.closed().await, "closed after the 421");
        };
        tokio::join!(writer, reader);
    })
    .await;
    w.finish(&format!("250 x{JUNK_BEFORE_CLOSE}, 421 4.7.0, close"), 200);
}

/// The junk count starts afresh after each accepted message: a session that
/// delivers mail is never cut off for its RSETs and NOOPs.
#[tokio::test]
async fn junk_commands_between_messages_are_not_counted_against_a_working_session() {
    let h = Harness::plain_limits("");
    let relay = Relay::start(&h).await;
    let limit = smarthost::session::JUNK_COMMAND_LIMIT as usize;
    within(60, async {
        let mut c = greeted(&relay).await;
        for round in 0..3 {
            c.send(b"NOOP\r\n".repeat(limit)).await;
            for i in 0..limit {
                let reply = c.reply().await;
                assert_eq!(reply.status(), "250 2.0.0", "round {round}, NOOP {i}");
            }
            c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
            c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
            c.cmd("DATA", "354").await;
            c.cmd(
                &format!("Subject: round {round}\r\n\r\nbody\r\n."),
                "250 2.0.0",
            )
            .await;
        }
        c.cmd("QUIT", "221").await;
    })
    .await;
    let spool = smarthost::spool::Spool::inspect(&h.spool_dir()).unwrap();
    assert_eq!(spool.list().unwrap().len(), 3, "three messages spooled");
}

/// Transactions opened and abandoned without DATA: each RSET is junk, so the
/// 110th group's RSET gets `421 4.7.0`; nothing is spooled.
#[tokio::test]
async fn pipelined_transactions_without_data_end_at_the_junk_limit() {
    let h = Harness::plain_limits("");
    let relay = Relay::start(&h).await;
    let w = Watch::start("10k MAIL/RCPT/RSET", &relay);
    let n = 10_000;
    within(60, async {
        let (mut r, mut wr) = split(greeted(&relay).await);
        let group = format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nRSET\r\n");
        let writer = async {
            let _ = wr.write_all(group.repeat(n).as_bytes()).await;
        };
        let reader = async {
            for i in 0..JUNK_BEFORE_CLOSE * 3 + 2 {
                let reply = r.reply().await;
                assert_eq!(reply.code, 250, "command {i}: {reply:?}");
            }
            r.expect("421 4.7.0").await;
            assert!(r.closed().await, "closed after the 421");
        };
        tokio::join!(writer, reader);
    })
    .await;
    assert_eq!(h.spool_files(), 0);
    w.finish("250 x329, 421 4.7.0, close", 200);
}

/// Junk pipelined in one write: max_errors (10 by default) refusals, then
/// `421 4.7.0` and the close; the junk after that is never looked at.
#[tokio::test]
async fn pipelined_junk_hits_max_errors_then_421_and_close() {
    let h = Harness::plain_limits("");
    let relay = Relay::start(&h).await;
    let w = Watch::start("pipelined junk", &relay);
    within(30, async {
        let mut c = greeted(&relay).await;
        c.send("BOGUS\r\n".repeat(1000)).await;
        for i in 0..10 {
            let r = c.reply().await;
            assert_eq!(r.status(), "500 5.5.1", "junk {i}: {r:?}");
        }
        c.expect("421 4.7.0").await;
        assert!(c.closed().await);
    })
    .await;
    w.finish("500 5.5.1 x10, 421 4.7.0, close", 200);
}

/// RFC 2920 §3.1: DATA ends a command group; the client must wait for 354
/// before sending content. A client that does not is read consistently: when
/// DATA is accepted the bytes after it are content (the same as after a 354);
/// BDAT's bytes are its chunk whether it is accepted or refused.
#[tokio::test]
async fn content_pipelined_before_the_354_is_content() {
    let h = Harness::plain_limits("");
    let relay = Relay::start(&h).await;
    let w = Watch::start("content before 354", &relay);
    within(30, async {
        let mut c = greeted(&relay).await;
        c.send(format!(
            "MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\nSubject: early\r\n\r\nRSET\r\nQUIT\r\n.\r\nNOOP\r\n"
        ))
        .await;
        c.expect("250 2.1.0").await;
        c.expect("250 2.1.5").await;
        c.expect("354").await;
        c.expect("250 2.0.0").await;
        c.expect("250 2.0.0").await;
        // A refused BDAT still consumes its chunk: the command inside it is not run.
        let inside = "RCPT TO:<a@b.ex>\r\n";
        c.send(format!("BDAT {} LAST\r\n{inside}NOOP\r\n", inside.len()))
            .await;
        c.expect("503 5.5.1").await;
        c.expect("250 2.0.0").await;
        c.cmd("QUIT", "221").await;
    })
    .await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1);
    assert!(
        strip_received(&spooled[0].1).ends_with(b"Subject: early\r\n\r\nRSET\r\nQUIT\r\n"),
        "{:?}",
        String::from_utf8_lossy(&spooled[0].1)
    );
    w.finish("250 250 354 250; 503 for BDAT", 200);
}

/// The other half of RFC 2920 §3.1: when DATA is refused, what the client sent
/// ahead of the 354 it never got is read as commands (the server cannot know
/// how much of it was meant as content). Each bad line counts toward
/// max_errors, so a body pipelined after a refused DATA ends in `421 4.7.0`
/// and nothing is spooled.
#[tokio::test]
async fn content_pipelined_after_a_refused_data_is_read_as_commands() {
    let h = Harness::plain_limits("");
    let relay = Relay::start(&h).await;
    let w = Watch::start("content after refused DATA", &relay);
    within(30, async {
        let mut c = greeted(&relay).await;
        let body: String = (0..20).map(|i| format!("body line {i}\r\n")).collect();
        c.send(format!(
            "MAIL FROM:<{FROM}>\r\nRCPT TO:<>\r\nDATA\r\n{body}.\r\n"
        ))
        .await;
        c.expect("250 2.1.0").await;
        c.expect("501 5.1.3").await;
        c.expect("503 5.5.1").await;
        // Two errors so far; eight body lines reach max_errors (10).
        for i in 0..8 {
            let r = c.reply().await;
            assert_eq!(r.status(), "500 5.5.1", "body line {i}: {r:?}");
        }
        c.expect("421 4.7.0").await;
        assert!(c.closed().await);
    })
    .await;
    assert_eq!(h.spool_files(), 0);
    w.finish("250 501 503, 500 x8, 421 4.7.0", 200);
}

// ---------------------------------------------------------------------------
// 7. Many concurrent slow clients.

/// Many clients each holding a DATA open with a few KiB sent: the cost per
/// open session. Nothing is spooled for unfinished messages.
#[tokio::test]
async fn many_clients_holding_data_open() {
    let limit = raise_fd_limit();
    let n: usize = std::env::var("SMARTHOST_ABUSE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    assert!(
        (n as u64) * 2 + 100 < limit,
        "RLIMIT_NOFILE {limit} is too low for {n} clients"
    );
    let h = Harness::plain_limits(&format!(
        "max_connections = {}\nmax_connections_per_ip = {}",
        n + 10,
        n + 10
    ));
    let relay = Relay::start(&h).await;
    let w = Watch::start("many clients in DATA", &relay);
    let port = relay.port;
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    for _ in 0..n {
        let sem = sem.clone();
        tasks.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let mut c = Client::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
            c.reply_timeout = Duration::from_secs(60);
            c.hello().await;
            c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
            c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
            c.cmd("DATA", "354").await;
            c.send(message("held@test", FROM, "held", 4096)).await;
            c
        });
    }
    let mut held = Vec::new();
    within(300, async {
        while let Some(c) = tasks.join_next().await {
            held.push(c.unwrap());
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = w.now();
    eprintln!(
        "many clients: {n} sessions in DATA: RSS {:.1} MiB, {:.1} KiB per session over baseline",
        mib(busy.rss),
        busy.rss.saturating_sub(w.baseline.rss) as f64 / n as f64
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.spool_files(), 0);
    w.finish(&format!("{n} held; nothing spooled"), 200 + n as u64 / 2);
}

// ---------------------------------------------------------------------------
// 8. AUTH and greeting abuse.

const PASSWORD: &str = "correct horse battery staple";

/// A relay with one user whose hash `smarthost hash-password` made: argon2id
/// with the default parameters (m=19456 KiB, so about 19 MiB per check).
fn auth_harness(limits: &str) -> Harness {
    let out = run_with_stdin(&["hash-password"], format!("{PASSWORD}\n").as_bytes());
    assert!(out.status.success(), "{}", out.stderr);
    let hash = out.stdout.trim();
    assert!(hash.contains("m=19456"), "{hash}");
    Harness::plain_limits(&format!(
        "{limits}\n\n[[user]]\nname = \"exchange01\"\npassword_hash = \"{hash}\"\n"
    ))
}

/// A session from `ip`: banner, EHLO, STARTTLS, EHLO inside TLS.
async fn tls_from(ip: &str, relay: &Relay, ca: &TestCa) -> TlsClient {
    let s = connect_from(ip, relay.port).await.stream;
    tls_session(Client::new(s), ca).await
}

/// One wrong `AUTH PLAIN` from each of `sources` (an address per session,
/// repeated for several sessions from one address), all sent at the same
/// moment once every session is in TLS. Returns each session's address and
/// its reply (seconds after the burst, status) if one came within `window`,
/// and the sessions, still open.
async fn wrong_auth_burst(
    relay: &Relay,
    ca: &TestCa,
    sources: &[&'static str],
    window: Duration,
) -> (Vec<(&'static str, Option<(f64, String)>)>, Vec<TlsClient>) {
    let mut clients = Vec::new();
    within(60, async {
        for &ip in sources {
            clients.push((ip, tls_from(ip, relay, ca).await));
        }
    })
    .await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let line = format!("{}\r\n", auth_plain("exchange01", "wrong"));
    let mut tasks = tokio::task::JoinSet::new();
    for (ip, mut c) in clients {
        let (barrier, line) = (barrier.clone(), line.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let sent = Instant::now();
            c.send(&line).await;
            let reply = tokio::time::timeout(window, c.try_reply()).await;
            let answered = reply.ok().flatten().map(|r| (Instant::now(), r.status()));
            (ip, sent, answered, c)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = within(30, tasks.join_next()).await {
        results.push(r.unwrap());
    }
    let t0 = results.iter().map(|r| r.1).min().unwrap();
    results
        .into_iter()
        .map(|(ip, _, answered, c)| {
            let answered = answered.map(|(t, s)| (t.duration_since(t0).as_secs_f64(), s));
            ((ip, answered), c)
        })
        .unzip()
}

/// What argon2 may cost at peak: about 19 MiB per check, at most one check
/// per core at once, and generous slack for the TLS sessions and rounding.
fn auth_memory_bound(w: &Watch) -> (usize, u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (
        cores,
        mib(w.baseline.rss) as u64 + (cores as u64 + 2) * 20 + 40,
    )
}

/// Prints the memory figures, then asserts the peak and what is left stay
/// under `bound` (memory used by the checks goes back to the OS).
fn check_auth_memory(w: Watch, case: &str, cores: usize, bound: u64) {
    let after = w.now();
    eprintln!(
        "auth-attack: {case}: {cores} cores; RSS baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB (bound {bound} MiB)",
        mib(w.baseline.rss),
        mib(after.hwm),
        mib(after.rss)
    );
    assert!(
        after.rss < bound * 1024,
        "RSS {:.1} MiB after the burst: memory was not returned",
        mib(after.rss)
    );
    w.finish("535 5.7.8", bound);
}

/// From each of two addresses, 20 TLS sessions send a wrong `AUTH PLAIN` at
/// the same moment. Attempts from one address are checked one at a time and
/// spaced by the throttle's doubling delay (parallel connections do not buy
/// guesses), so memory (about 19 MiB per argon2 check) stays bounded, and it
/// goes back afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_wrong_auth_is_serialised_per_address_and_memory_stays_bounded() {
    const PER_ADDRESS: usize = 20;
    let addresses = ["127.0.0.2", "127.0.0.3"];
    // Replies are waited for this long after the burst; later ones are not
    // needed to see the spacing (the 5th from one address is due at ~7.5 s).
    let window = Duration::from_secs(6);
    let h = auth_harness("");
    let relay = Relay::start(&h).await;
    let case = "2 addresses x 20 parallel wrong AUTH PLAIN";
    let w = Watch::start(case, &relay);
    let sources: Vec<&str> = addresses.iter().flat_map(|&ip| [ip; PER_ADDRESS]).collect();
    let (answers, open) = wrong_auth_burst(&relay, &h.ca, &sources, window).await;
    // Every figure is printed before anything is asserted.
    let (cores, bound) = auth_memory_bound(&w);
    let per_address: Vec<(&str, Vec<f64>)> = addresses
        .iter()
        .map(|&ip| {
            let mut at: Vec<f64> = answers
                .iter()
                .filter(|(from, _)| *from == ip)
                .filter_map(|(_, a)| a.as_ref())
                .map(|(t, status)| {
                    assert_eq!(status, "535 5.7.8", "from {ip}");
                    *t
                })
                .collect();
            at.sort_by(f64::total_cmp);
            eprintln!(
                "auth-attack: {ip}: {} of {PER_ADDRESS} answered within {:.0} s, {} within 0.9 s, at {at:.2?} s",
                at.len(),
                window.as_secs_f64(),
                at.iter().filter(|&&t| t < 0.9).count()
            );
            (ip, at)
        })
        .collect();
    check_auth_memory(w, case, cores, bound);
    for (ip, at) in &per_address {
        assert!(at.len() >= 2, "{ip}: the first attempts are answered");
        let early = at.iter().filter(|&&t| t < 0.9).count();
        assert!(early < PER_ADDRESS, "{ip}: all {early} answered at once");
        let min_gap = at
            .windows(2)
            .map(|p| p[1] - p[0])
            .fold(f64::INFINITY, f64::min);
        let spacing = smarthost::auth::BASE_DELAY.as_secs_f64() * 0.8;
        assert!(
            min_gap >= spacing,
            "{ip}: attempts {min_gap:.2} s apart, not spaced by the throttle"
        );
    }
    drop(open);
}

/// One wrong `AUTH PLAIN` from each of 16 addresses at once: the throttle
/// lets each through at once (a first attempt from an address is not
/// delayed), so only the cap on argon2 checks at once (one per core) keeps
/// 16 x 19 MiB from being held together. All are answered 535.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_auth_from_many_addresses_runs_one_check_per_core_at_a_time() {
    let addresses: Vec<&'static str> = (1..=16).map(|i| &*format!("127.0.1.{i}").leak()).collect();
    let h = auth_harness("");
    let relay = Relay::start(&h).await;
    let case = "16 addresses x 1 wrong AUTH PLAIN";
    let w = Watch::start(case, &relay);
    let window = Duration::from_secs(20);
    let (answers, open) = wrong_auth_burst(&relay, &h.ca, &addresses, window).await;
    let (cores, bound) = auth_memory_bound(&w);
    let mut at: Vec<f64> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().map(|a| a.0))
        .collect();
    at.sort_by(f64::total_cmp);
    eprintln!("auth-attack: {case}: answered at {at:.2?} s");
    check_auth_memory(w, case, cores, bound);
    for (ip, a) in &answers {
        let (_, status) = a.as_ref().unwrap_or_else(|| panic!("{ip}: no reply"));
        assert_eq!(status, "535 5.7.8", "from {ip}");
    }
    drop(open);
}

/// Attempts queued behind each other from one address wait at most
/// `command_timeout` for their turn, then get `421 4.7.0` and the close, so
/// a queue of parked sessions does not outlive the client's own patience.
#[tokio::test(flavor = "multi_thread")]
async fn auth_attempts_queued_longer_than_command_timeout_get_421() {
    let h = auth_harness("command_timeout = \"2s\"");
    let relay = Relay::start(&h).await;
    // Turns are due at about 0, 0.5, 1.5, 3.5, 7.5 s: the 4th and later wait
    // longer than 2 s.
    let sources = ["127.0.0.4"; 6];
    let (answers, mut open) =
        wrong_auth_burst(&relay, &h.ca, &sources, Duration::from_secs(8)).await;
    let mut got: Vec<(f64, String)> = answers.into_iter().filter_map(|(_, a)| a).collect();
    got.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("auth-attack: queued behind one address, command_timeout 2 s: {got:.2?}");
    assert_eq!(got.len(), sources.len(), "every session is answered");
    let refused = got.iter().filter(|(_, s)| s == "421 4.7.0").count();
    assert!(
        got.iter()
            .all(|(_, s)| s == "535 5.7.8" || s == "421 4.7.0"),
        "{got:?}"
    );
    assert!(
        (2..=4).contains(&refused),
        "{refused} of 6 refused: {got:?}"
    );
    for (t, s) in &got {
        if s == "421 4.7.0" {
            assert!((1.9..4.0).contains(t), "421 after {t:.2} s");
        }
    }
    // Closed after the 421s; the others are still open.
    let mut closed = 0;
    for c in &mut open {
        if tokio::time::timeout(Duration::from_millis(500), c.try_reply())
            .await
            .is_ok_and(|r| r.is_none())
        {
            closed += 1;
        }
    }
    assert_eq!(closed, refused);
}

/// RFC 5321 §4.1.4 allows EHLO again, but a session that only greets does no
/// work: after the first EHLO inside TLS (required, RFC 3207 §4.2, and not
/// counted), each further one is a junk command, so 300 of them end at the
/// junk limit with `421 4.7.0` and the close.
#[tokio::test]
async fn repeated_ehlo_ends_at_the_junk_limit() {
    let h = auth_harness("");
    let relay = Relay::start(&h).await;
    within(60, async {
        let mut c = tls_from("127.0.0.1", &relay, &h.ca).await;
        c.send("EHLO again.test\r\n".repeat(300)).await;
        for i in 0..JUNK_BEFORE_CLOSE {
            let r = c.reply().await;
            assert_eq!(r.code, 250, "EHLO {i}: {r:?}");
        }
        c.expect("421 4.7.0").await;
        assert!(c.closed().await, "closed after the 421");
    })
    .await;
}

/// RFC 4954 §4: `*` cancels an AUTH exchange (501 5.7.0). A cancelled
/// exchange does no work: 200 `AUTH LOGIN` / `*` cycles end at the junk
/// limit with `421 4.7.0` and the close.
#[tokio::test]
async fn cancelled_auth_cycles_end_at_the_junk_limit() {
    let h = auth_harness("");
    let relay = Relay::start(&h).await;
    within(60, async {
        let mut c = tls_from("127.0.0.1", &relay, &h.ca).await;
        c.send("AUTH LOGIN\r\n*\r\n".repeat(200)).await;
        for i in 0..JUNK_BEFORE_CLOSE {
            c.expect("334 VXNlcm5hbWU6").await;
            let r = c.reply().await;
            assert_eq!(r.status(), "501 5.7.0", "cycle {i}: {r:?}");
        }
        c.expect("334").await;
        c.expect("421 4.7.0").await;
        assert!(c.closed().await, "closed after the 421");
    })
    .await;
}
