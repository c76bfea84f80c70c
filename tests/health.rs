//! `smarthost health` (the Docker HEALTHCHECK) against real listeners: the
//! real relay's STARTTLS and implicit-TLS banners, a relay that has stopped,
//! an SMTP server refusing with 421, and the admin `/healthz` status line.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use support::binary::{Output, Proc, run, wait_banner};
use support::harness::upstream_toml;
use support::wait::free_port;

/// A relay config in `dir` with `listeners` and a self-signed certificate.
fn config(dir: &Path, listeners: &str, extra: &str) -> String {
    let path = dir.join("smarthost.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"relay.test\"\n{listeners}\n[queue]\npath = \"spool\"\n{extra}\n{}",
            upstream_toml("down", format!("127.0.0.1:{}", free_port()), "none")
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn health(args: &[&str]) -> Output {
    let mut all = vec!["health"];
    all.extend_from_slice(args);
    run(&all)
}

#[tokio::test]
async fn healthy_while_serving_unhealthy_once_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = config(
        dir.path(),
        &format!("[[listener]]\naddress = \"0.0.0.0:{port}\"\ntls = \"starttls\"\n"),
        "",
    );
    let log = dir.path().join("serve.log");
    let mut relay = Proc::spawn(&["serve", "--config", &path], &log);
    wait_banner(&mut relay, port, &log).await.unwrap();

    // 0.0.0.0 is probed on 127.0.0.1.
    let out = health(&["--config", &path]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("healthy: 220 "), "{}", out.stdout);

    relay.signal(libc::SIGTERM);
    assert!(relay.wait_for(Duration::from_secs(10)).is_some());
    let out = health(&["--config", &path]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.starts_with("unhealthy: "), "{}", out.stderr);
}

#[tokio::test]
async fn implicit_tls_listener_is_probed_through_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = config(
        dir.path(),
        &format!("[[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = \"implicit\"\n"),
        "",
    );
    let log = dir.path().join("serve.log");
    let _relay = Proc::spawn(&["serve", "--config", &path], &log);
    // No plain banner to wait for: poll the health command itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = health(&["--config", &path]);
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.status.success(), "{}{}", out.stderr, read(&log));
    assert!(out.stdout.starts_with("healthy: 220 "), "{}", out.stdout);
}

#[test]
fn a_421_banner_is_unhealthy() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"421 4.3.2 too busy\r\n").unwrap();
    });
    let out = health(&["--smtp", &addr.to_string()]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("421 4.3.2 too busy"), "{}", out.stderr);
}

/// One HTTP exchange on a loopback listener: returns the request it read.
fn answer_once(listener: TcpListener, status: &'static str) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
        String::from_utf8_lossy(&request).into_owned()
    })
}

/// With `[admin]` the probe is `GET /healthz` there, not the SMTP listener
/// (here nothing listens on it, so an SMTP probe would fail): 200 is healthy,
/// 503 (draining) is not.
#[test]
fn admin_healthz_decides_when_admin_is_set() {
    for (status, healthy) in [("200 OK", true), ("503 Service Unavailable", false)] {
        let dir = tempfile::tempdir().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let path = config(
            dir.path(),
            &format!(
                "[[listener]]\naddress = \"127.0.0.1:{}\"\ntls = \"starttls\"\n",
                free_port()
            ),
            &format!("[admin]\naddress = \"{admin_addr}\"\n"),
        );
        let server = answer_once(admin, status);
        let out = health(&["--config", &path]);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(out.status.success(), healthy, "{status}: {}", out.stderr);
    }
}

#[test]
fn proxy_only_listeners_without_admin_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"starttls\"\nproxy_protocol = true\n",
        "[access]\ntrusted_proxies = [\"10.0.0.1/32\"]\n",
    );
    let out = health(&["--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("set [admin]"), "{}", out.stderr);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
