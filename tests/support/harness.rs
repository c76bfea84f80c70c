//! A relay configuration in a temporary directory (certificates, spool,
//! TOML), and the relay started from it in this process: on loopback
//! sockets, or one session on an in-memory pipe.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smarthost::ServerContext;
use smarthost::config::Config;
use smarthost::session::Session;
use smarthost::spool::{Envelope, Spool};
use tokio_util::sync::CancellationToken;

use super::client::Client;
use super::pki::{HOSTNAME, TestCa};

/// A relay configuration in a temporary directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub config_path: PathBuf,
}

/// The default listener: STARTTLS, TLS required.
pub const STARTTLS_LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n";

/// A STARTTLS listener that does not require TLS: plaintext sessions may
/// send mail (to show what does not depend on TLS, or read it in a trace).
pub const PLAIN_LISTENER: &str =
    "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\nrequire_tls = false\n";

/// A STARTTLS listener that takes a PROXY header first (v1 or v2).
pub const PROXY_LISTENER: &str =
    "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\nproxy_protocol = true\n";

/// The `[tls]` section every harness starts with.
pub const TLS_SECTION: &str = "[tls]\ncertificate = \"server.crt\"\nprivate_key = \"server.key\"\n";

/// The `relay_networks` line every harness starts with.
const RELAY_NETWORKS: &str = "relay_networks = [\"127.0.0.0/8\", \"::1/128\"]";

impl Harness {
    /// A relay with one STARTTLS listener and `extra` TOML appended.
    pub fn new(extra: &str) -> Harness {
        Self::with_listeners(STARTTLS_LISTENER, extra)
    }

    /// A relay whose one STARTTLS listener does not require TLS.
    pub fn plain(extra: &str) -> Harness {
        Self::with_listeners(PLAIN_LISTENER, extra)
    }

    /// `plain`, with `limits` as its `[limits]` section.
    pub fn plain_limits(limits: &str) -> Harness {
        Self::plain(&format!("[limits]\n{limits}\n"))
    }

    /// A relay behind a PROXY-speaking listener that trusts headers from
    /// 127.0.0.1 only and relays for `relay_network` (as the header names it).
    pub fn behind_proxy(relay_network: &str) -> Harness {
        let h = Self::with_listeners(PROXY_LISTENER, "");
        h.replace_access_line(&format!(
            "relay_networks = [\"{relay_network}\"]\ntrusted_proxies = [\"127.0.0.1/32\"]"
        ));
        h
    }

    pub fn with_listeners(listeners: &str, extra: &str) -> Harness {
        Self::in_dir(tempfile::tempdir().unwrap(), listeners, extra)
    }

    /// The configuration written into `dir` (e.g. on a real disk rather
    /// than the tmpfs /tmp often is): a fresh CA's server certificate as
    /// server.crt and server.key, the CA as ca.pem, smarthost.toml with a
    /// spool in spool/.
    pub fn in_dir(dir: tempfile::TempDir, listeners: &str, extra: &str) -> Harness {
        let ca = TestCa::new();
        ca.write_certificate(dir.path(), "server");
        std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
        let text = format!(
            "hostname = \"{HOSTNAME}\"\n{listeners}\n{TLS_SECTION}\n[access]\n{RELAY_NETWORKS}\n\n[queue]\npath = \"spool\"\n\n{extra}"
        );
        let config_path = dir.path().join("smarthost.toml");
        std::fs::write(&config_path, text).unwrap();
        Harness {
            dir,
            ca,
            config_path,
        }
    }

    /// Replaces `from`, which must be in the config file, with `to`.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        assert!(text.contains(from), "{from:?} not in {text}");
        std::fs::write(&self.config_path, text.replace(from, to)).unwrap();
    }

    /// Replaces the harness's `relay_networks = [...]` line with `lines`
    /// (other networks, or more `[access]` keys).
    pub fn replace_access_line(&self, lines: &str) {
        self.edit_config(RELAY_NETWORKS, lines);
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn context(&self) -> Arc<ServerContext> {
        ServerContext::new(self.config()).unwrap().0
    }

    /// Starts the relay on loopback sockets.
    pub async fn start(&self) -> Running {
        let config = self.config();
        let listeners = smarthost::bind(&config).await.unwrap();
        let addrs = listeners
            .iter()
            .map(|(l, _)| l.local_addr().unwrap())
            .collect();
        let (ctx, arrivals) = ServerContext::new(config).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(smarthost::serve(listeners, ctx, arrivals, shutdown.clone()));
        Running {
            addrs,
            shutdown,
            task,
        }
    }

    /// A session on an in-memory pipe, as if the client were at `peer`.
    pub fn session(&self, ctx: &Arc<ServerContext>, peer: &str) -> Client<tokio::io::DuplexStream> {
        self.session_until(ctx, peer, CancellationToken::new())
    }

    /// `session`, told to shut down when `shutdown` is cancelled.
    pub fn session_until(
        &self,
        ctx: &Arc<ServerContext>,
        peer: &str,
        shutdown: CancellationToken,
    ) -> Client<tokio::io::DuplexStream> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let session = Session::new(
            ctx.clone(),
            ctx.config.listeners[0].clone(),
            peer.parse().unwrap(),
            Box::new(server),
            shutdown,
        );
        tokio::spawn(session.run());
        Client::new(client)
    }

    /// Every message in the spool, oldest first. Read-only (`Spool::inspect`,
    /// not `open`, which would sweep a running relay's in-flight files); a
    /// message delivered and removed while being read is skipped.
    pub fn spooled(&self) -> Vec<(Envelope, Vec<u8>)> {
        let Ok(spool) = Spool::inspect(&self.spool_dir()) else {
            return Vec::new();
        };
        spool
            .list()
            .unwrap_or_default()
            .iter()
            .filter_map(|id| spool.read(id).ok())
            .collect()
    }

    /// Files in the spool's msg/ directory (anything, complete or not),
    /// plus the messages its journal holds that have no file there: zero
    /// means nothing is queued, and nothing is left half-written.
    pub fn spool_files(&self) -> usize {
        let msg = self.spool_dir().join("msg");
        let files = std::fs::read_dir(&msg).map(|d| d.count()).unwrap_or(0);
        let Ok(spool) = Spool::inspect(&self.spool_dir()) else {
            return files;
        };
        let journal = spool
            .list()
            .unwrap_or_default()
            .iter()
            .filter(|id| spool.in_journal(id) && !msg.join(format!("{id}.msg")).exists())
            .count();
        files + journal
    }
}

pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub async fn connect(&self) -> Client<tokio::net::TcpStream> {
        Client::new(tokio::net::TcpStream::connect(self.addr()).await.unwrap())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

/// The names of the files in `dir`, sorted; none if it does not exist.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An `[[upstream]]` table; `tls` is "none", "opportunistic" or "required"
/// (verified against the system roots).
pub fn upstream_toml(name: &str, address: impl Display, tls: &str) -> String {
    format!("[[upstream]]\nname = \"{name}\"\naddress = \"{address}\"\ntls = \"{tls}\"\n\n")
}

/// An `[[upstream]]` table with TLS required and verified against `ca_file`
/// under `tls_name`.
pub fn verified_upstream_toml(
    name: &str,
    address: impl Display,
    ca_file: &Path,
    tls_name: &str,
) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\naddress = \"{address}\"\ntls = \"required\"\nca_file = \"{}\"\ntls_name = \"{tls_name}\"\n\n",
        ca_file.display()
    )
}
