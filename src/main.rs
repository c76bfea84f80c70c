//! The `smarthost` command line (see shared/INTERFACE.md).
//!
//! The library forbids unsafe code; the binary allows it only where marked,
//! for the calls that act on the whole process (each with its SAFETY).

#![deny(unsafe_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use smarthost::{Config, ServerContext};

#[derive(Parser)]
#[command(
    name = "smarthost",
    version,
    about = "An SMTP smart-host relay: accepts mail from Exchange / Office 365 over TLS and forwards it to upstream smart hosts",
    after_help = "Start with `smarthost demo`, or write a config (the example config is config/smarthost.toml in the source), check it with `smarthost check-config --config PATH`, then `smarthost serve --config PATH`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The config file every command that reads one takes.
#[derive(clap::Args)]
struct ConfigArg {
    /// The TOML config file (relative paths inside it resolve against its directory).
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay in the foreground, logging to stderr.
    ///
    /// Signals: SIGTERM or SIGINT stops accepting, lets open sessions finish
    /// (idle ones get 421 4.3.2) for up to limits.shutdown_grace, and exits 0.
    /// SIGHUP reloads the config for new connections (certificates, users,
    /// networks, limits, upstreams, routes); a bad config is logged and the
    /// running one stays.
    ///
    /// Logging: RUST_LOG sets the level or filter (default "info"; e.g.
    /// RUST_LOG=debug, or RUST_LOG=smarthost=debug).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Log lines as "text" or "json" (one object per line); overrides `[log] format`.
        #[arg(long, value_name = "text|json")]
        log_format: Option<smarthost::config::LogFormat>,
    },
    /// Validate a config file without starting.
    ///
    /// Loads every certificate, key, ca_file, password_file and user hash that
    /// serve loads; prints a summary and exits 0, or one error (file, line,
    /// key, fix) and exits 1. Warnings (wide networks, readable secrets, cheap
    /// hashes) are printed after the summary.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the argon2id hash of a password for `[[user]] password_hash`.
    ///
    /// On a terminal it prompts without echo; otherwise it reads one line
    /// from stdin (e.g. `printf '%s\n' "$PASSWORD" | smarthost hash-password`).
    HashPassword,
    /// For each upstream: resolve, connect, EHLO, STARTTLS, certificate, AUTH; exit 1 if any failed.
    CheckUpstreams {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A minimal upstream for trying a setup out: accepts every message and
    /// writes each, as received, to its own file in DIR.
    Sink {
        /// The address and port to listen on, e.g. 127.0.0.1:2526.
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// The directory each received message is written to (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A PEM certificate chain: offer STARTTLS with it (needs --tls-key).
        #[arg(long, requires = "tls_key", value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "PEM")]
        tls_key: Option<PathBuf>,
    },
    /// The out-of-the-box run: a relay delivering round-robin to two sinks on
    /// loopback, with its state in ./smarthost-demo.
    Demo {
        /// The relay's address and port; pick another if 2525 is taken.
        #[arg(long, default_value = "127.0.0.1:2525", value_name = "ADDR")]
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
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Retry every queued message now (at the next start if no relay runs).
    Flush {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Drop one message (no bounce is sent).
    Delete {
        /// The queue id, as `queue list` shows it and the 250 reply named it.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    tune_the_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve(config.config, log_format),
        Command::CheckConfig { config } => check_config(config.config),
        Command::HashPassword => hash_password(),
        Command::Queue { action } => queue(action),
        Command::CheckUpstreams { config } => check_upstreams(config.config),
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

/// glibc raises its mmap threshold to the size of the largest mapped block
/// freed, so after the first check argon2's 19 MiB block comes from the
/// thread's heap arena, which keeps it. Measured (tests/abuse.rs): 40
/// parallel checks left the relay at over 700 MiB; even at most 2 at once,
/// each new blocking thread kept its 19 MiB (163 MiB after 8 checks). A
/// fixed threshold (which also stops the dynamic one) keeps every allocation
/// of 1 MiB or more in a mapping of its own, unmapped when freed: 11 MiB
/// after the same 8 checks, from 10 MiB idle.
///
/// Process-wide allocator tuning belongs to the program, not the library
/// (which checks the passwords, src/auth.rs): set first in `main`, before
/// any thread runs, for every command.
///
/// Also one arena per CPU instead of glibc's eight per CPU: the runtime's
/// workers and the spool's blocking threads would otherwise each keep an
/// arena of freed message buffers. At 100 sessions × 100 KiB, peak PSS went
/// from 31-36 to 28-30 MB (benches/profile.md), at the same rate.
#[allow(unsafe_code)]
fn tune_the_allocator() {
    #[cfg(target_env = "gnu")]
    {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cpus.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets allocator parameters, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Free heap bytes above which `trim_freed_memory` gives pages back.
#[cfg(target_env = "gnu")]
const TRIM_AT: usize = 4 << 20;

/// Once a second, gives the free pages of the heap back to the system when
/// more than `TRIM_AT` bytes lie free. glibc returns only the top of a heap
/// by itself, so the pages of a burst's freed message buffers stayed
/// resident and the next burst's peak came on top of them: six loads of
/// 100 sessions in a row went from 22 to 35 MB PSS (benches/profile.md).
/// A trim costs a walk of the free lists; the pages it releases are faulted
/// in again only if a later burst needs them.
#[allow(unsafe_code)]
fn trim_freed_memory() {
    #[cfg(target_env = "gnu")]
    {
        let trim = || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            // SAFETY: both act on the allocator's own state, under its locks.
            unsafe {
                if libc::mallinfo2().fordblks > TRIM_AT {
                    libc::malloc_trim(0);
                }
            }
        };
        if let Err(e) = std::thread::Builder::new().name("trim".into()).spawn(trim) {
            warn!("cannot start the memory trimmer: {e}");
        }
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
                    use smarthost::outbound::client::{Stage, UpstreamError};
                    failed = true;
                    // How far it got: the TCP connection worked unless the
                    // error is about connecting.
                    let connect = match &e {
                        UpstreamError::Connect(_) | UpstreamError::Timeout(Stage::Connect) => {
                            "FAILED"
                        }
                        _ => "ok",
                    };
                    let starttls = match &e {
                        UpstreamError::Tls(_) | UpstreamError::Timeout(Stage::StartTls) => "FAILED",
                        UpstreamError::NoStartTls => "no",
                        UpstreamError::Rejected {
                            stage: Stage::StartTls,
                            ..
                        } => "refused",
                        _ => "-",
                    };
                    row(connect, starttls, "-", "-", &format!("FAILED: {e}"));
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

/// How long `queue flush` waits for a running relay to take its request (it
/// looks every second).
const FLUSH_TAKEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

fn queue(action: QueueAction) -> ExitCode {
    use smarthost::queue::listing;
    let result = match action {
        QueueAction::List { config, json } => open_spool(&config.config).and_then(|spool| {
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
        QueueAction::Flush { config } => open_spool(&config.config).and_then(|spool| {
            let request = spool.root().join(smarthost::queue::FLUSH_REQUEST);
            std::fs::write(&request, b"").map_err(|e| format!("{}: {e}", request.display()))?;
            // A running relay looks for the request every second and removes
            // it when it acts on it: watching for that tells the truth without
            // a lock or pid file (an open file would keep the spool's file
            // system from being remounted or unmounted).
            let deadline = std::time::Instant::now() + FLUSH_TAKEN_WITHIN;
            while request.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if request.exists() {
                println!(
                    "flush requested, but no relay took it within {} s: none seems to be running \
                     on {}. The request is kept: every queued message is retried when \
                     `smarthost serve` starts",
                    FLUSH_TAKEN_WITHIN.as_secs(),
                    spool.root().display()
                );
            } else {
                println!("flush requested: the running relay is retrying every queued message now");
            }
            Ok(())
        }),
        QueueAction::Delete { id, config } => open_spool(&config.config).and_then(|spool| {
            // Queue ids are hex: anything else could point outside the spool.
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{id:?} is not a queue id"));
            }
            if !spool.contains(&id) {
                return Err(format!("no queued message {id}"));
            }
            // A message in the journal is closed by the relay that owns it
            // (or, if none runs, by the next start): the note is the deletion.
            let in_journal = spool.in_journal(&id);
            spool.remove(&id).map_err(|e| e.to_string())?;
            // For the running relay's log (`event=deleted`); a file's
            // deletion stands without it.
            let notes = spool.root().join(smarthost::queue::DELETED_IDS);
            let noted = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&notes)
                .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{id}\n").as_bytes()));
            match noted {
                Err(e) if in_journal => return Err(format!("{}: {e}", notes.display())),
                Err(e) => eprintln!("warning: {}: {e}", notes.display()),
                Ok(()) => {}
            }
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
    smarthost::logging::init(smarthost::config::LogFormat::Text);
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

fn serve(path: PathBuf, log_format: Option<smarthost::config::LogFormat>) -> ExitCode {
    // The config names the log format, so it is read before logging starts.
    let loaded = Config::load(&path);
    let configured = loaded.as_ref().map(|c| c.log.format).unwrap_or_default();
    smarthost::logging::init(log_format.unwrap_or(configured));
    let config = match loaded {
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
    trim_freed_memory();
    runtime.block_on(async move {
        // Certificates, upstreams and the spool first: a config error is
        // reported as such even when the port is also taken.
        let (ctx, arrivals) = match ServerContext::new(config) {
            Ok(c) => c,
            Err(smarthost::context::StartError::Tls(e)) => {
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
        let admin = match smarthost::admin::bind(&ctx.config).await {
            Ok(a) => a,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let (contexts, current) = tokio::sync::watch::channel(ctx);
        // Not part of the drain: it answers (healthz 503) until the process exits.
        if let Some(admin) = admin {
            tokio::spawn(smarthost::admin::serve(
                admin,
                current.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(reload_on_sighup(path.clone(), contexts));
        info!("smarthost {} started", env!("CARGO_PKG_VERSION"));
        smarthost::server::serve_reloadable(listeners, current, arrivals, shutdown).await;
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
                let changes = smarthost::reload::changes(&running.config, &config);
                running
                    .reload(config)
                    .map(|ctx| (ctx, warnings, changes))
                    .map_err(|e| match e {
                        smarthost::context::StartError::Tls(e) => locate_tls_error(&path, &e),
                        other => other.to_string(),
                    })
            }
            Err(e) => Err(e.to_string()),
        };
        match reloaded {
            Ok((ctx, warnings, changes)) => {
                for w in warnings {
                    warn!("{w}");
                }
                contexts.send_replace(ctx);
                info!(event = smarthost::tracking::RELOADED, config = %path.display(), changes = changes.as_str(), "SIGHUP: configuration reloaded: {changes}");
            }
            // The error spans lines (its fix): a field keeps it on one.
            Err(e) => error!(
                event = smarthost::tracking::RELOAD_REFUSED,
                config = %path.display(),
                error = e.as_str(),
                "SIGHUP: reload refused, keeping the running configuration"
            ),
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
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
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

/// The password: typed twice without echo on a terminal, else one line of stdin.
fn read_password() -> Result<String, String> {
    let line = |prompt: Option<&str>| -> Result<String, String> {
        if let Some(p) = prompt {
            eprint!("{p}");
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read a password from stdin: {e}"))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return line(None);
    }
    let _quiet = NoEcho::on_stdin().map_err(|e| format!("cannot turn off echo: {e}"))?;
    let first = line(Some("Password: "))?;
    eprintln!();
    let again = line(Some("Again: "))?;
    eprintln!();
    if first != again {
        return Err("the two passwords differ".into());
    }
    Ok(first)
}

/// Terminal echo off on stdin until dropped. termios through libc (already a
/// dependency) rather than a crate such as rpassword: it is two calls, the
/// binary needs unsafe for `mallopt` anyway, the password is read from stdin
/// (rpassword reads the controlling terminal), and the guard restores the
/// saved settings on every path out, errors included.
struct NoEcho {
    saved: libc::termios,
}

impl NoEcho {
    #[allow(unsafe_code)]
    fn on_stdin() -> std::io::Result<NoEcho> {
        // SAFETY: tcgetattr fills the zeroed termios (plain data) for fd 0;
        // tcsetattr only reads it.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut quiet = saved;
            quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &quiet) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(NoEcho { saved })
        }
    }
}

impl Drop for NoEcho {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `on_stdin` on the same fd.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &self.saved);
        }
    }
}
