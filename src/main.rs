//! The `smarthost` command line (see shared/INTERFACE.md).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use smarthost::{Config, ServerContext};

#[derive(Parser)]
#[command(name = "smarthost", version, about = "An SMTP smart-host relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay in the foreground, logging to stderr.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file without starting.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read one password line on stdin and print an argon2id PHC string.
    HashPassword,
    /// For each upstream: resolve, connect, EHLO, STARTTLS, certificate, AUTH; exit 1 if any failed.
    CheckUpstreams {
        #[arg(long)]
        config: PathBuf,
    },
    /// A minimal upstream for trying a setup out: accepts every message and
    /// writes each, as received, to its own file in DIR.
    Sink {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// The out-of-the-box run: a relay delivering round-robin to two sinks on loopback.
    Demo {
        #[arg(long, default_value = "127.0.0.1:2525")]
        listen: std::net::SocketAddr,
    },
    /// Probe the running relay (admin /healthz, else its SMTP banner): exit 0 healthy, 1 not.
    Health {
        #[arg(long, required_unless_present = "smtp")]
        config: Option<PathBuf>,
        /// Probe this SMTP address's banner instead (e.g. a `sink`'s).
        #[arg(long, conflicts_with = "config")]
        smtp: Option<std::net::SocketAddr>,
    },
    /// Inspect and manage the queue (works while the relay runs).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per queued message: id, age, sender, recipients and their state, last reply.
    List {
        #[arg(long)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Retry every queued message now.
    Flush {
        #[arg(long)]
        config: PathBuf,
    },
    /// Drop one message (no bounce is sent).
    Delete {
        id: String,
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::HashPassword => hash_password(),
        Command::Queue { action } => queue(action),
        Command::CheckUpstreams { config } => check_upstreams(config),
        Command::Sink {
            listen,
            dir,
            tls_cert,
            tls_key,
        } => sink(listen, dir, tls_cert.zip(tls_key)),
        Command::Demo { listen } => demo(listen),
        Command::Health { config, smtp } => health(config, smtp),
    }
}

/// The container HEALTHCHECK (see src/health.rs).
fn health(config: Option<PathBuf>, smtp: Option<std::net::SocketAddr>) -> ExitCode {
    use smarthost::health::Probe;
    let result = match (config, smtp) {
        (_, Some(address)) => Probe::Smtp {
            address,
            implicit: false,
        }
        .run(std::time::Duration::ZERO)
        .map_err(|e| e.to_string()),
        (Some(path), None) => Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|config| {
                Probe::for_config(&config)
                    .and_then(|probe| probe.run(config.limits.banner_delay))
                    .map_err(|e| e.to_string())
            }),
        (None, None) => Err("--config or --smtp is required".into()),
    };
    match result {
        Ok(seen) => {
            println!("healthy: {seen}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` on a fresh runtime with SIGTERM/SIGINT wired to `shutdown`.
fn run_async<F: std::future::Future<Output = ExitCode>>(
    work: impl FnOnce(CancellationToken) -> F,
) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(async move {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            work(shutdown).await
        }),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sink(listen: std::net::SocketAddr, dir: PathBuf, tls: Option<(PathBuf, PathBuf)>) -> ExitCode {
    init_logging();
    run_async(|shutdown| async move {
        let tls = match tls {
            Some((cert, key)) => match smarthost::sink::tls_from_files(&cert, &key) {
                Ok(t) => Some(t),
                Err(e) => {
                    error!("{e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            error!("{}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        info!(%listen, dir = %dir.display(), "sink running");
        match smarthost::sink::run(listener, dir, tls, "sink.localhost".into(), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo(listen: std::net::SocketAddr) -> ExitCode {
    init_logging();
    run_async(|shutdown| async move {
        let state = PathBuf::from(smarthost::demo::STATE_DIR);
        match smarthost::demo::run(listen, &state, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The smart host's answer to Office 365's "Validate": a table of what each upstream passed.
fn check_upstreams(path: PathBuf) -> ExitCode {
    use smarthost::outbound::{ClientOptions, Connection, Upstream};
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.upstreams.is_empty() {
        eprintln!("error: {}: no [[upstream]] configured", path.display());
        return ExitCode::FAILURE;
    }
    run_async(|_| async move {
        let options = ClientOptions {
            helo_name: config.hostname.clone(),
            connect_timeout: std::time::Duration::from_secs(10),
            greeting_timeout: std::time::Duration::from_secs(30),
            command_timeout: std::time::Duration::from_secs(30),
            ..ClientOptions::default()
        };
        println!(
            "{:<12} {:<32} {:<8} {:<9} {:<9} {:<6} result",
            "upstream", "address", "connect", "starttls", "verified", "auth"
        );
        let mut failed = false;
        for u in &config.upstreams {
            let row = |connect: &str, starttls: &str, verified: &str, auth: &str, result: &str| {
                println!(
                    "{:<12} {:<32} {connect:<8} {starttls:<9} {verified:<9} {auth:<6} {result}",
                    u.name, u.address
                );
            };
            let upstream = match Upstream::from_config(u) {
                Ok(x) => x,
                Err(e) => {
                    failed = true;
                    row("-", "-", "-", "-", &format!("FAILED: {e}"));
                    continue;
                }
            };
            match Connection::open(&upstream, &options).await {
                Ok(conn) => {
                    let caps = conn.capabilities().clone();
                    conn.quit().await;
                    let yes_no = |b: bool| if b { "yes" } else { "no" };
                    row(
                        "ok",
                        if caps.tls.is_some() { "yes" } else { "no" },
                        yes_no(caps.tls_verified),
                        caps.auth_used.unwrap_or("-"),
                        "ok",
                    );
                }
                Err(e) => {
                    failed = true;
                    row("-", "-", "-", "-", &format!("FAILED: {e}"));
                }
            }
        }
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Loads the config and opens its spool for inspection, or says why not.
fn open_spool(path: &std::path::Path) -> Result<smarthost::spool::Spool, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    smarthost::spool::Spool::inspect(&config.queue.path).map_err(|e| e.to_string())
}

fn queue(action: QueueAction) -> ExitCode {
    use smarthost::queue::listing;
    let result = match action {
        QueueAction::List { config, json } => open_spool(&config).and_then(|spool| {
            let (entries, problems) = listing::entries(&spool).map_err(|e| e.to_string())?;
            if json {
                let text = serde_json::to_string_pretty(&entries).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                for e in &entries {
                    println!("{}", listing::format_line(e));
                }
                println!("{} message(s) queued", entries.len());
            }
            for p in &problems {
                eprintln!("warning: unreadable entry {p}");
            }
            Ok(())
        }),
        QueueAction::Flush { config } => open_spool(&config).and_then(|spool| {
            let request = spool.root().join(smarthost::queue::FLUSH_REQUEST);
            std::fs::write(&request, b"").map_err(|e| format!("{}: {e}", request.display()))?;
            println!(
                "flush requested: the running relay retries every queued message within a second"
            );
            Ok(())
        }),
        QueueAction::Delete { id, config } => open_spool(&config).and_then(|spool| {
            // Queue ids are hex: anything else could point outside the spool.
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{id:?} is not a queue id"));
            }
            if !spool.envelope_path(&id).exists() {
                return Err(format!("no queued message {id}"));
            }
            spool.remove(&id).map_err(|e| e.to_string())?;
            println!("deleted {id} (no bounce sent)");
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and `docker logs` get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn check_config(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Certificates are part of the config: a key that does not load is an error now.
    if let Err(e) = smarthost::tls::server_config(config.tls.as_ref(), &config.hostname) {
        eprintln!("error: {}", locate_tls_error(&path, &e));
        return ExitCode::FAILURE;
    }
    println!("{}: ok\n{}", path.display(), config.summary());
    for w in &config.warnings {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}

fn serve(path: PathBuf) -> ExitCode {
    init_logging();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &config.warnings {
        warn!("{w}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Certificates, upstreams and the spool first: a config error is
        // reported as such even when the port is also taken.
        let ctx = match ServerContext::new(config) {
            Ok(c) => c,
            Err(smarthost::server::StartError::Tls(e)) => {
                error!("{}", locate_tls_error(&path, &e));
                return ExitCode::FAILURE;
            }
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let listeners = match smarthost::bind(&ctx.config).await {
            Ok(l) => l,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let (contexts, current) = tokio::sync::watch::channel(ctx);
        tokio::spawn(reload_on_sighup(path.clone(), contexts));
        info!("smarthost {} started", env!("CARGO_PKG_VERSION"));
        smarthost::server::serve_reloadable(listeners, current, shutdown).await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

/// A certificate or key that does not load, as a config error at its line.
fn locate_tls_error(config: &std::path::Path, e: &smarthost::tls::TlsSetupError) -> String {
    use smarthost::tls::TlsSetupError;
    let fix = "point it at a readable PEM file: the full chain (leaf first) for `certificate`, its private key for `private_key`";
    match e {
        TlsSetupError::File { path, key, problem } => {
            let name = std::path::Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Config::error_at_value(config, key, &name, format!("{path}: {problem}"), fix)
                .to_string()
        }
        other => {
            Config::error_at_value(config, "certificate", "", other.to_string(), fix).to_string()
        }
    }
}

/// SIGHUP: load the config again and, if it is valid, give it to new
/// connections. A bad config is logged and the running one stays.
async fn reload_on_sighup(
    path: PathBuf,
    contexts: tokio::sync::watch::Sender<std::sync::Arc<ServerContext>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        let running = contexts.borrow().clone();
        let reloaded = match Config::load(&path) {
            Ok(config) => {
                let warnings = config.warnings.clone();
                running
                    .reload(config)
                    .map(|ctx| (ctx, warnings))
                    .map_err(|e| match e {
                        smarthost::server::StartError::Tls(e) => locate_tls_error(&path, &e),
                        other => other.to_string(),
                    })
            }
            Err(e) => Err(e.to_string()),
        };
        match reloaded {
            Ok((ctx, warnings)) => {
                for w in warnings {
                    warn!("{w}");
                }
                contexts.send_replace(ctx);
                info!(config = %path.display(), "SIGHUP: configuration reloaded");
            }
            Err(e) => error!("SIGHUP: reload refused, keeping the running configuration: {e}"),
        }
    }
}

/// SIGTERM or SIGINT: stop accepting and drain.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

fn hash_password() -> ExitCode {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        eprintln!("error: cannot read a password from stdin");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("error: empty password");
        return ExitCode::FAILURE;
    }
    let salt = SaltString::generate(&mut OsRng);
    match argon2::Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
