//! Access control with real third-party peers: swaks authenticating with
//! AUTH LOGIN and PLAIN, and PROXY headers sent by haproxy and by swaks.
//! The tools come from scripts/install-test-deps.sh; a missing one fails.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use support::auth::hash;
use support::harness::Harness;
use support::tools::{require, run_tool};
use support::wait::{free_port, wait_listening};
use tokio::process::Command;

const PASSWORD: &str = "s3cret-Exchange-password";

/// Runs a command to completion within the tool time limit; returns
/// (success, everything it printed).
async fn run(cmd: &mut Command) -> (bool, String) {
    let ran = run_tool(cmd, b"").await;
    (ran.status.success(), ran.output())
}

/// Only authenticated clients may relay (no relay_networks).
fn auth_only_harness() -> Harness {
    let h = Harness::new(&format!(
        "[[user]]\nname = \"exchange01\"\npassword_hash = \"{}\"\n",
        hash(PASSWORD)
    ));
    h.replace_access_line("relay_networks = []");
    h
}

fn swaks(relay: SocketAddr, ca: &Path) -> Command {
    let mut cmd = Command::new(require("swaks"));
    cmd.args([
        "--server",
        &relay.ip().to_string(),
        "--port",
        &relay.port().to_string(),
    ])
    .args(["--tls", "--tls-verify", "--tls-ca-path"])
    .arg(ca)
    .args(["--tls-sni", "localhost", "--ehlo", "exch01.tenant.example"])
    .args([
        "--from",
        "sender@tenant.example",
        "--to",
        "rcpt@partner.example",
    ])
    .args(["--timeout", "20"]);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_auth_login_and_plain_relay_and_a_wrong_password_does_not() {
    let h = auth_only_harness();
    let relay = h.start().await;
    for mechanism in ["LOGIN", "PLAIN"] {
        let (ok, out) = run(swaks(relay.addr(), &h.ca_path()).args([
            "--auth",
            mechanism,
            "--auth-user",
            "exchange01",
            "--auth-password",
            PASSWORD,
        ]))
        .await;
        assert!(ok, "{mechanism}: {out}");
        assert!(out.contains("235 2.7.0"), "{out}");
        assert!(
            !out.contains(PASSWORD) || out.contains("AUTH PLAIN"),
            "{out}"
        );
    }
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 2);
    for (env, _) in &spooled {
        assert_eq!(env.client.auth.as_deref(), Some("exchange01"));
    }
    let (ok, out) = run(swaks(relay.addr(), &h.ca_path()).args([
        "--auth",
        "LOGIN",
        "--auth-user",
        "exchange01",
        "--auth-password",
        "wrong",
    ]))
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("535 5.7.8"), "{out}");
    // Without AUTH nothing is relayed.
    let (ok, out) = run(&mut swaks(relay.addr(), &h.ca_path())).await;
    assert!(!ok, "{out}");
    assert!(out.contains("554 5.7.1"), "{out}");
    assert_eq!(h.spooled().len(), 2);
    relay.stop().await;
}

/// haproxy in front of the relay: one frontend per PROXY version.
struct Haproxy {
    child: tokio::process::Child,
    v1: u16,
    v2: u16,
}

async fn start_haproxy(dir: &Path, relay: SocketAddr) -> Haproxy {
    let (v1, v2) = (free_port(), free_port());
    let config = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend f1\n  bind 127.0.0.1:{v1}\n  default_backend b1\n\
         backend b1\n  server relay {relay} send-proxy source 127.0.0.1\n\
         frontend f2\n  bind 127.0.0.1:{v2}\n  default_backend b2\n\
         backend b2\n  server relay {relay} send-proxy-v2 source 127.0.0.1\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(require("haproxy"))
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for port in [v1, v2] {
        wait_listening(port, "haproxy", &mut child).await;
    }
    Haproxy { child, v1, v2 }
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_send_proxy_v1_and_v2_carry_the_client_address() {
    let h = Harness::behind_proxy("127.0.0.3/32");
    let relay = h.start().await;
    let mut haproxy = start_haproxy(h.dir.path(), relay.addr()).await;
    for port in [haproxy.v1, haproxy.v2] {
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // From 127.0.0.3 (allowed) through haproxy: relayed, with that address.
        let (ok, out) =
            run(swaks(front, &h.ca_path()).args(["--local-interface", "127.0.0.3"])).await;
        assert!(ok, "port {port}: {out}");
        // From 127.0.0.4 (not allowed): refused at RCPT.
        let (ok, out) =
            run(swaks(front, &h.ca_path()).args(["--local-interface", "127.0.0.4"])).await;
        assert!(!ok && out.contains("554 5.7.1"), "port {port}: {out}");
    }
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 2);
    for (env, msg) in &spooled {
        assert_eq!(env.client.address.ip().to_string(), "127.0.0.3");
        assert!(String::from_utf8_lossy(msg).contains("[127.0.0.3]"));
    }
    // Straight to the relay, bypassing haproxy (no header): closed, no banner.
    let (ok, out) = run(&mut swaks(relay.addr(), &h.ca_path())).await;
    assert!(!ok, "{out}");
    assert!(!out.contains("220 "), "{out}");
    haproxy.child.kill().await.unwrap();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_proxy_headers_trusted_and_untrusted() {
    let h = Harness::behind_proxy("127.0.0.3/32");
    let relay = h.start().await;
    for (version, family) in [("1", "TCP4"), ("2", "AF_INET")] {
        let (ok, out) = run(swaks(relay.addr(), &h.ca_path()).args([
            "--proxy-version",
            version,
            "--proxy-family",
            family,
            "--proxy-source",
            "127.0.0.3",
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            "127.0.0.1",
            "--proxy-dest-port",
            "25",
        ]))
        .await;
        assert!(ok, "v{version}: {out}");
    }
    // The same header from an untrusted source is not believed: closed.
    let (ok, out) = run(swaks(relay.addr(), &h.ca_path()).args([
        "--local-interface",
        "127.0.0.2",
        "--proxy-version",
        "1",
        "--proxy-family",
        "TCP4",
        "--proxy-source",
        "127.0.0.3",
        "--proxy-source-port",
        "40000",
        "--proxy-dest",
        "127.0.0.1",
        "--proxy-dest-port",
        "25",
    ]))
    .await;
    assert!(!ok, "{out}");
    assert_eq!(h.spooled().len(), 2);
    for (env, _) in h.spooled() {
        assert_eq!(env.client.address, "127.0.0.3:40000".parse().unwrap());
    }
    relay.stop().await;
}
