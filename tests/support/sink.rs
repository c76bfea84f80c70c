//! `smarthost sink` as an upstream: the real binary on a port of its own
//! (`Sink`), or its accept loop in this process (`LocalSink`). Both store
//! each message as NAME.eml with a JSON sidecar, names in arrival order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::binary::{Proc, wait_banner};
use super::client::Client;
use super::harness::upstream_toml;
use super::wait::free_port;

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

    /// `new` and `start`.
    pub async fn started(base: &Path, name: &str) -> Sink {
        let mut sink = Sink::new(base, name);
        sink.start().await;
        sink
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

    /// This sink as the relay's upstream of the same name.
    pub fn upstream(&self) -> String {
        upstream_toml(&self.name, format!("127.0.0.1:{}", self.port), "none")
    }

    /// The `.eml` files received so far, in arrival order.
    pub fn files(&self) -> Vec<PathBuf> {
        eml_files(&self.dir)
    }

    pub fn count(&self) -> usize {
        self.files().len()
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        read_all(&self.files())
    }
}

/// Fast retries (1 to 2 s) and `sinks` as the upstreams: what a test that
/// stops and starts sinks wants, so deferred mail goes out within seconds.
pub fn quick_retries_to(sinks: &[&Sink]) -> String {
    let upstreams: String = sinks.iter().map(|s| s.upstream()).collect();
    format!("retry_min = \"1s\"\nretry_max = \"2s\"\n\n{upstreams}")
}

/// `smarthost::sink::run` on 127.0.0.1 in this process: stoppable, and
/// restartable on the same port.
pub struct LocalSink {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The directory `start_temp` made, removed when dropped.
    _temp: Option<tempfile::TempDir>,
    tls: Option<Arc<rustls::ServerConfig>>,
    running: Option<(
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
}

impl LocalSink {
    /// Started on a free port, storing into `base/name`.
    pub async fn start(
        base: &Path,
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> LocalSink {
        Self::start_at(([127, 0, 0, 1], 0).into(), base, name, tls).await
    }

    /// Started on a free port, storing into a temporary directory of its own.
    pub async fn start_temp(tls: Option<Arc<rustls::ServerConfig>>) -> LocalSink {
        let temp = tempfile::tempdir().unwrap();
        let mut sink = Self::start(temp.path(), "sink", tls).await;
        sink._temp = Some(temp);
        sink
    }

    /// Started on `addr`, which may have been in use a moment ago (an
    /// upstream that was down and comes back).
    pub async fn start_at(
        addr: SocketAddr,
        base: &Path,
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> LocalSink {
        let listener = bind(addr).await;
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut sink = LocalSink {
            addr: listener.local_addr().unwrap(),
            dir,
            _temp: None,
            tls,
            running: None,
        };
        sink.run(listener);
        sink
    }

    fn run(&mut self, listener: tokio::net::TcpListener) {
        let token = CancellationToken::new();
        let task = tokio::spawn(smarthost::sink::run(
            listener,
            self.dir.clone(),
            self.tls.clone(),
            "sink.test".into(),
            token.clone(),
        ));
        self.running = Some((token, task));
    }

    /// Shuts it down; it must stop cleanly within 10 s.
    pub async fn stop(&mut self) {
        if let Some((token, task)) = self.running.take() {
            token.cancel();
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("sink stops")
                .unwrap()
                .unwrap();
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "sink still running");
        let listener = bind(self.addr).await;
        self.run(listener);
    }

    pub async fn connect(&self) -> Client<TcpStream> {
        Client::new(TcpStream::connect(self.addr).await.unwrap())
    }

    /// This sink as the relay's upstream `name`.
    pub fn upstream(&self, name: &str) -> String {
        upstream_toml(name, self.addr, "none")
    }

    /// The `.eml` files received so far, in arrival order.
    pub fn files(&self) -> Vec<PathBuf> {
        eml_files(&self.dir)
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        read_all(&self.files())
    }

    /// The JSON sidecar of the `n`th message.
    pub fn sidecar(&self, n: usize) -> serde_json::Value {
        sidecar(&self.files()[n])
    }
}

/// A listener on `addr`, retried for 2 s while the port is still taken.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} is still in use after 2 s");
}

/// The complete `.eml` files in `dir` (a sink writes a dot-file first and
/// renames it), sorted: arrival order.
pub fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
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

/// The JSON sidecar beside a sink's `eml` file: the envelope, TLS, chunking.
pub fn sidecar(eml: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(eml.with_extension("json")).unwrap()).unwrap()
}

fn read_all(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}
