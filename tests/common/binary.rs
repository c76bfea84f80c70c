//! The real `smarthost` binary as a child process: a kill-on-drop guard, a
//! one-shot runner, `smarthost serve` on the harness config and `smarthost
//! sink` on ports of their own.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{Client, Harness, TestCa, strip_received, tls_session};

pub const BIN: &str = env!("CARGO_BIN_EXE_smarthost");

pub type TlsClient = Client<tokio_rustls::client::TlsStream<TcpStream>>;

/// A child process that is SIGKILLed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Proc {
    /// `smarthost ARGS`, stdin and stdout null, stderr to `log`.
    pub fn spawn(args: &[&str], log: &Path) -> Proc {
        Proc {
            child: Command::new(BIN)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .expect("spawn smarthost"),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process ends within `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// SIGKILL by pid, from wherever the moment comes (`Child::kill` needs `&mut`).
pub fn sigkill(pid: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// A port that was free a moment ago (the socket is dropped before returning):
/// also serves as the address of an upstream that is down.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `127.0.0.1:port` until it sends a 220 banner (15 s at most).
pub async fn wait_banner(proc: &mut Proc, port: u16, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = proc.exited() {
            return Err(format!(
                "exited early ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
                && buf[..n].starts_with(b"220")
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "no banner on port {port} within 15 s: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    ))
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `smarthost ARGS` to completion (30 s at most), stdin null.
pub fn run(args: &[&str]) -> Output {
    run_inner(args, None)
}

/// Runs `smarthost ARGS` to completion (30 s at most) with `stdin` as its input.
pub fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    run_inner(args, Some(stdin))
}

fn run_inner(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut p = Proc {
        child: Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn smarthost"),
    };
    if let Some(stdin) = stdin {
        let mut input = p.child.stdin.take().unwrap();
        let _ = input.write_all(stdin);
    }
    let status = p
        .wait_for(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("smarthost {args:?} did not exit within 30 s"));
    Output {
        status,
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    }
}

/// `smarthost serve` on the harness config, moved to a fixed free port;
/// SIGKILLed when dropped. Restartable on the same spool.
pub struct Relay {
    pub proc: Proc,
    pub port: u16,
    pub log: PathBuf,
    /// The config file it runs on (the harness config, on a fixed port).
    pub config: PathBuf,
}

impl Relay {
    /// Rewrites the harness config to listen on a fixed free port (from a
    /// template kept beside it, so restarts work), starts the binary, and
    /// waits for its 220 banner (which comes only after the spool was opened
    /// and crash debris cleared). Retries if the port was taken in between.
    pub async fn start(h: &Harness) -> Relay {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let template = h.dir.path().join("template.toml");
        if !template.exists() {
            std::fs::copy(&h.config_path, &template).unwrap();
        }
        let text = std::fs::read_to_string(&template).unwrap();
        assert!(text.contains("127.0.0.1:0"), "{text}");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(
                &h.config_path,
                text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
            )
            .unwrap();
            let n = STARTS.fetch_add(1, Ordering::Relaxed);
            let log = h.dir.path().join(format!("relay-{n}.log"));
            let mut proc = Proc::spawn(
                &["serve", "--config", h.config_path.to_str().unwrap()],
                &log,
            );
            match wait_banner(&mut proc, port, &log).await {
                Ok(()) => {
                    return Relay {
                        proc,
                        port,
                        log,
                        config: h.config_path.clone(),
                    };
                }
                Err(e) => {
                    last = e;
                    if !last.contains("in use") {
                        break;
                    }
                }
            }
        }
        panic!("relay did not start: {last}");
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub async fn connect(&self) -> Client<TcpStream> {
        Client::new(TcpStream::connect(("127.0.0.1", self.port)).await.unwrap())
    }

    pub async fn tls(&self, ca: &TestCa) -> TlsClient {
        tls_session(self.connect().await, ca).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `smarthost sink` on a port reserved for it, not running until `start`;
/// stoppable and restartable.
pub struct Sink {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    logs: PathBuf,
    starts: usize,
    /// Certificate and key, for a sink that offers STARTTLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    proc: Option<Proc>,
}

impl Sink {
    /// Picks the port and directory; does not start it.
    pub fn new(base: &Path, name: &str) -> Sink {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Sink {
            name: name.to_owned(),
            port: free_port(),
            dir,
            logs: base.to_path_buf(),
            starts: 0,
            tls: None,
            proc: None,
        }
    }

    pub async fn start(&mut self) {
        assert!(self.proc.is_none(), "sink {} already running", self.name);
        let log = self
            .logs
            .join(format!("sink-{}-{}.log", self.name, self.starts));
        self.starts += 1;
        let mut args = vec![
            "sink".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", self.port),
            "--dir".to_owned(),
            self.dir.to_str().unwrap().to_owned(),
        ];
        if let Some((cert, key)) = &self.tls {
            args.push("--tls-cert".into());
            args.push(cert.to_str().unwrap().into());
            args.push("--tls-key".into());
            args.push(key.to_str().unwrap().into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn(&args, &log);
        wait_banner(&mut proc, self.port, &log)
            .await
            .unwrap_or_else(|e| panic!("sink {}: {e}", self.name));
        self.proc = Some(proc);
    }

    /// SIGKILL and reap.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn upstream(&self) -> String {
        format!(
            "[[upstream]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\ntls = \"none\"\n\n",
            self.name, self.port
        )
    }

    /// The `.eml` files received so far, in arrival order.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "eml")
                    && !p.file_name().unwrap().to_string_lossy().starts_with('.')
            })
            .collect();
        names.sort();
        names
    }

    pub fn count(&self) -> usize {
        self.files().len()
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.files()
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Messages sent by the crash tests.

/// One message a client tried to send.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub from: String,
    pub to: Vec<String>,
    pub body: Vec<u8>,
    /// The final "." went out (the relay may have stored it without our seeing a 250).
    pub fully_sent: bool,
    /// The queue id from `250 2.0.0 ... queued as <id>`.
    pub queued_as: Option<String>,
}

/// A CRLF message of about `size` bytes with a unique Message-ID.
pub fn message(message_id: &str, from: &str, subject: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <rcpt@partner.example>\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0u64;
    while m.len() < size {
        m.extend_from_slice(
            format!("{message_id} line {i:08} abcdefghijklmnopqrstuvwxyz\r\n").as_bytes(),
        );
        i += 1;
    }
    m
}

/// The queue id in a `250 2.0.0 ... queued as <id>` reply.
pub fn queue_id_of(reply: &super::Reply) -> Option<String> {
    let last = reply.lines.last()?;
    if !last.starts_with("250 2.0.0") || !last.contains("queued as ") {
        return None;
    }
    let id = last.rsplit("queued as ").next()?.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// Sends `line` and reads the reply; Err when the relay is gone or says otherwise.
pub async fn step<S>(c: &mut Client<S>, line: &str, expect: &str) -> Result<super::Reply, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if !c.try_send(format!("{line}\r\n")).await {
        return Err(format!("{line}: send failed"));
    }
    match c.try_reply().await {
        Some(r) if r.lines.last().unwrap().starts_with(expect) => Ok(r),
        Some(r) => Err(format!("{line}: expected {expect}, got {:?}", r.lines)),
        None => Err(format!("{line}: connection closed")),
    }
}

/// Bounds a whole scenario.
pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("scenario timed out")
}

// ---------------------------------------------------------------------------
// What the sinks received, checked against what was sent.

/// Waits until `pred` holds, checking every 20 ms, for `secs` at most.
pub async fn eventually(what: &str, secs: u64, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Message-ID in `content`'s header section.
pub fn message_id_in(content: &[u8]) -> String {
    let text = String::from_utf8_lossy(content);
    let header = text.split("\r\n\r\n").next().unwrap_or("");
    header
        .split("Message-ID: <")
        .nth(1)
        .and_then(|r| r.split('>').next())
        .unwrap_or_else(|| panic!("no Message-ID in {header:.300}"))
        .to_owned()
}

/// What the sinks received, by Message-ID: (sink, file, bytes) per copy.
pub type Received = BTreeMap<String, Vec<(String, PathBuf, Vec<u8>)>>;

pub fn received(sinks: &[&Sink]) -> Received {
    let mut got = Received::new();
    for s in sinks {
        for f in s.files() {
            let bytes = std::fs::read(&f).unwrap();
            let mid = message_id_in(strip_received(&bytes));
            got.entry(mid).or_default().push((s.name.clone(), f, bytes));
        }
    }
    got
}

/// What the sinks got, summed up by `check_deliveries`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct messages (by Message-ID) at the sinks.
    pub messages: usize,
    /// Copies of a (message, recipient) beyond the first: at-least-once duplicates.
    pub duplicates: usize,
    /// Messages that arrived as more than one transaction (each with only
    /// some of their recipients).
    pub split: usize,
}

/// Every acknowledged message reached a sink for each of its recipients;
/// every copy at a sink is a message that was completely sent, equal to it
/// plus exactly one Received header of ours, for some of its recipients
/// (sidecar); copies of one message are byte-identical.
pub fn check_deliveries(sinks: &[&Sink], sent: &[Sent]) -> Tally {
    let got = received(sinks);
    let by_id: HashMap<&str, &Sent> = sent.iter().map(|s| (s.message_id.as_str(), s)).collect();
    let mut tally = Tally {
        messages: got.len(),
        ..Tally::default()
    };
    let mut reached: HashMap<&str, BTreeMap<String, usize>> = HashMap::new();
    for (mid, copies) in &got {
        let s = by_id
            .get(mid.as_str())
            .unwrap_or_else(|| panic!("a sink received unknown message {mid}"));
        assert!(
            s.fully_sent,
            "{mid} reached a sink but its content was never completely sent"
        );
        let per_rcpt = reached.entry(s.message_id.as_str()).or_default();
        for (sink, file, bytes) in copies {
            let content = strip_received(bytes);
            let header = String::from_utf8_lossy(&bytes[..bytes.len() - content.len()]);
            assert!(
                header.starts_with("Received: from client.test (")
                    && header.contains("by relay.test (smarthost) with ESMTPS"),
                "{sink} {}: not our Received header: {header}",
                file.display()
            );
            if let Some(q) = &s.queued_as {
                assert!(header.contains(q.as_str()), "{mid}: {header}");
            }
            assert!(
                content == s.body.as_slice(),
                "{sink} {}: content of {mid} ({} bytes) differs from what was sent ({} bytes)",
                file.display(),
                content.len(),
                s.body.len()
            );
            assert!(
                !content.starts_with(b"Received:"),
                "{mid}: more than one Received header"
            );
            assert!(
                bytes == &copies[0].2,
                "{mid}: copies differ ({} vs {})",
                file.display(),
                copies[0].1.display()
            );
            let sidecar: serde_json::Value =
                serde_json::from_slice(&std::fs::read(file.with_extension("json")).unwrap())
                    .unwrap();
            assert_eq!(sidecar["mail_from"], s.from.as_str(), "{mid}");
            let rcpts: Vec<String> = serde_json::from_value(sidecar["rcpt_to"].clone()).unwrap();
            assert!(!rcpts.is_empty(), "{mid}: no recipients");
            for r in rcpts {
                assert!(s.to.contains(&r), "{mid} delivered to {r}, not a recipient");
                *per_rcpt.entry(r).or_default() += 1;
            }
        }
        let transactions = copies.len();
        let most = per_rcpt.values().copied().max().unwrap_or(0);
        if transactions > most {
            tally.split += 1;
        }
        tally.duplicates += per_rcpt.values().map(|n| n - 1).sum::<usize>();
    }
    for s in sent {
        if s.queued_as.is_none() {
            continue;
        }
        let per_rcpt = reached.get(s.message_id.as_str());
        for r in &s.to {
            assert!(
                per_rcpt.is_some_and(|m| m.contains_key(r)),
                "{} was acknowledged as {:?} but never reached an upstream for {r}",
                s.message_id,
                s.queued_as
            );
        }
    }
    tally
}
