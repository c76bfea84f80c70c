//! `smarthost demo`: the out-of-the-box run. A relay on loopback delivering
//! round-robin to two `sink` upstreams, all in one process, with its state
//! (config, certificate, spool, what the sinks receive) in one directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::{ServerContext, StartError};
use crate::server;

/// Where the demo keeps its files, relative to the working directory.
pub const STATE_DIR: &str = "smarthost-demo";

/// Runs until `shutdown`. Prints how to send a message and where it lands.
pub async fn run(
    listen: SocketAddr,
    state: &Path,
    shutdown: CancellationToken,
) -> Result<(), String> {
    std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let state = state
        .canonicalize()
        .map_err(|e| format!("{}: {e}", state.display()))?;
    let (cert, key) = certificate(&state)?;

    let mut sinks = Vec::new();
    for name in ["eu", "us"] {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start the {name} sink: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let dir = state.join(format!("upstream-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        tokio::spawn(crate::sink::run(
            listener,
            dir.clone(),
            None,
            format!("upstream-{name}.demo"),
            shutdown.clone(),
        ));
        sinks.push((name, addr, dir));
    }

    let upstreams: String = sinks
        .iter()
        .map(|(name, addr, _)| {
            format!("[[upstream]]\nname = \"{name}\"\naddress = \"{addr}\"\ntls = \"none\"\n\n")
        })
        .collect();
    let relay_networks = relay_networks(listen);
    let text = format!(
        "# Written by `smarthost demo`; regenerated at every start.\n\
         hostname = \"smarthost.demo\"\n\n\
         [[listener]]\naddress = \"{listen}\"\ntls = \"starttls\"\n\n\
         [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\n\
         [access]\nrelay_networks = [{}]\n\n\
         [queue]\npath = \"spool\"\nretry_min = \"10s\"\nretry_max = \"1m\"\n\n{upstreams}",
        cert.display(),
        key.display(),
        relay_networks
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let config_path = state.join("smarthost.toml");
    std::fs::write(&config_path, &text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let config = Config::parse(&text, &config_path).map_err(|e| e.to_string())?;
    let listeners = server::bind(&config).await.map_err(|e| match e {
        StartError::Listen { .. } => format!(
            "{e}\n  fix: another program uses that port; pick a free one with `{} demo --listen 127.0.0.1:2526`",
            this_program()
        ),
        other => other.to_string(),
    })?;
    let (ctx, arrivals) = ServerContext::new(config).map_err(|e| e.to_string())?;

    let here = listeners
        .first()
        .and_then(|(l, _)| l.local_addr().ok())
        .unwrap_or(listen);
    println!("smarthost demo: a relay and two upstream sinks, round-robin\n");
    println!("  relay      {here}  (STARTTLS required; self-signed certificate)");
    for (name, addr, dir) in &sinks {
        println!(
            "  upstream   {name} at {addr}, writes each message to {}",
            dir.display()
        );
    }
    println!("  relaying for {}", relay_networks.join(", "));
    println!("\nSend a test message (several, to see them alternate):\n");
    println!(
        "  swaks --server {} --port {} --tls --from you@example.com --to someone@example.net\n",
        here.ip(),
        here.port()
    );
    println!(
        "See the queue:  {} queue list --config {}",
        this_program(),
        shell_word(&config_path.display().to_string())
    );
    println!("Stop with Ctrl-C.\n");

    server::serve(listeners, ctx, arrivals, shutdown).await;
    Ok(())
}

/// How to run this very program again from a shell: the path of the running
/// executable, since `smarthost` is not on PATH when started by `cargo run`.
fn this_program() -> String {
    std::env::current_exe()
        .map(|p| shell_word(&p.display().to_string()))
        .unwrap_or_else(|_| "smarthost".into())
}

/// `text` quoted for a POSIX shell when it holds anything but safe characters.
fn shell_word(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Loopback, and when the demo listens beyond loopback (in a container, with
/// `docker run -p`) the default-route gateway as one /32: a published port
/// reaches the container from the Docker network's gateway (docker-proxy or
/// NAT), not from 127.0.0.1. Only that address: the demo is never an open relay.
fn relay_networks(listen: SocketAddr) -> Vec<String> {
    let mut networks = vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()];
    if !listen.ip().is_loopback() {
        let gateway = std::fs::read_to_string("/proc/net/route")
            .ok()
            .and_then(|table| default_gateway(&table));
        if let Some(gateway) = gateway {
            networks.push(format!("{gateway}/32"));
        }
    }
    networks
}

/// The gateway of the IPv4 default route in a `/proc/net/route` table: the
/// row whose Destination and Mask are 0 (addresses are hex, host byte order).
fn default_gateway(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let (destination, gateway, mask) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        if *destination != "00000000" || *mask != "00000000" {
            return None;
        }
        let raw = u32::from_str_radix(gateway, 16).ok()?;
        // The kernel prints the in-memory (network order) bytes as a host-order u32.
        let ip = Ipv4Addr::from(raw.to_ne_bytes());
        (!ip.is_unspecified()).then_some(ip)
    })
}

/// The demo's self-signed ECDSA certificate, made on first start and kept.
fn certificate(state: &Path) -> Result<(PathBuf, PathBuf), String> {
    let cert = state.join("demo.crt");
    let key = state.join("demo.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let err = |e: rcgen::Error| format!("cannot make the demo certificate: {e}");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let signed = rcgen::CertificateParams::new(vec!["smarthost.demo".into(), "localhost".into()])
        .map_err(err)?
        .self_signed(&pair)
        .map_err(err)?;
    std::fs::write(&cert, signed.pem()).map_err(|e| e.to_string())?;
    write_private(&key, pair.serialize_pem().as_bytes())?;
    Ok((cert, key))
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's table: eth0 with gateway 172.17.0.1 (0x010011AC).
    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn default_gateway_from_proc_net_route() {
        assert_eq!(default_gateway(TABLE), Some(Ipv4Addr::new(172, 17, 0, 1)));
        let no_default = TABLE.lines().take(1).chain(TABLE.lines().skip(2));
        assert_eq!(
            default_gateway(&no_default.collect::<Vec<_>>().join("\n")),
            None
        );
    }

    #[test]
    fn loopback_demo_relays_for_loopback_only() {
        let nets = relay_networks("127.0.0.1:2525".parse().unwrap());
        assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
        // Beyond loopback at most one /32 is added, never a wide network.
        let nets = relay_networks("0.0.0.0:2525".parse().unwrap());
        assert!(nets.len() <= 3);
        assert!(nets[2..].iter().all(|n| n.ends_with("/32")));
    }
}
