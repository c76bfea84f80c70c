//! The real `smarthost` binary as a child process: a kill-on-drop guard, a
//! one-shot runner, and `smarthost serve` on the harness config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::client::{Client, TlsClient, tls_session};
use super::harness::Harness;
use super::pki::TestCa;
use super::wait::free_port;

pub const BIN: &str = env!("CARGO_BIN_EXE_smarthost");

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

/// What a finished `smarthost` command left behind.
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

/// `smarthost check-config` on `path`.
pub fn check_config(path: &Path) -> Output {
    run(&["check-config", "--config", path.to_str().unwrap()])
}

/// The 1-based number of the first line of `text` containing `needle`: where
/// check-config must point.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

/// `smarthost queue list --json` on `config`, parsed: one value per message.
pub fn queue_list(config: &Path) -> Vec<serde_json::Value> {
    let out = run(&[
        "queue",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
        .as_array()
        .unwrap()
        .clone()
}

/// Whether `listing` (from `queue_list`) holds `n` messages, every
/// recipient of each deferred (tried at least once, to be tried again).
pub fn all_deferred(listing: &[serde_json::Value], n: usize) -> bool {
    listing.len() == n
        && listing.iter().all(|e| {
            e["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["state"] == "deferred")
        })
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
        Self::start_with(h, &[]).await
    }

    /// `start` with more arguments to `smarthost serve`.
    pub async fn start_with(h: &Harness, extra: &[&str]) -> Relay {
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
            let mut args = vec!["serve", "--config", h.config_path.to_str().unwrap()];
            args.extend_from_slice(extra);
            let mut proc = Proc::spawn(&args, &log);
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

    /// Fails the test, with the relay's log, if it has exited.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        assert!(
            self.proc.exited().is_none(),
            "the relay died: {}",
            self.log()
        );
    }
}

/// A memory figure of process `pid` in KiB, from /proc/PID/status
/// (`field`: "VmRSS" now, "VmHWM" the peak).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
