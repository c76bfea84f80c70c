//! The command line of the real binary: `check-config`, `hash-password`, and
//! `serve`'s start-up failures and signal handling (shared/INTERFACE.md).

mod support;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smarthost::spool::Spool;
use support::binary::{Output, Relay, check_config, line_of, run, run_with_stdin};
use support::client::tls_session;
use support::harness::Harness;
use support::message::{message_of_size, strip_received};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// check-config

/// A complete config; paths resolve against the harness directory.
const GOOD: &str = r#"hostname = "relay.test"

[[listener]]
address = "127.0.0.1:2525"
tls = "starttls"

[tls]
certificate = "server.crt"
private_key = "server.key"

[access]
relay_networks = ["127.0.0.0/8", "::1/128"]

[queue]
path = "spool"

[limits]
max_message_size = 1048576
data_timeout = "10m"

[[upstream]]
name = "eu-1"
address = "eu-smtp-1.example.net:25"
tls = "required"

[[route]]
sender_domains = ["tenant-a.example"]
upstreams = ["eu-1"]
"#;

/// Writes `GOOD` with `from` replaced by `to` beside the harness certificates.
fn variant(h: &Harness, name: &str, from: &str, to: &str) -> (PathBuf, String) {
    assert!(GOOD.contains(from), "{from:?}");
    let text = GOOD.replacen(from, to, 1);
    let path = h.dir.path().join(name);
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// Exit 1, nothing on stdout, and exactly one error on stderr naming the
/// file, `line` (when given), `key`, and a fix containing `fix`.
fn assert_one_error(out: &Output, path: &Path, line: Option<usize>, key: &str, fix: &str) {
    let all = format!("stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(out.stdout.is_empty(), "{all}");
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("error"))
            .count(),
        1,
        "exactly one error wanted; {all}"
    );
    assert!(out.stderr.starts_with("error: "), "{all}");
    let location = match line {
        Some(n) => format!("{}:{n}: `{key}`", path.display()),
        None => format!("{}: `{key}`", path.display()),
    };
    assert!(out.stderr.contains(&location), "wanted {location:?}; {all}");
    let fix_text = out
        .stderr
        .split_once("fix:")
        .unwrap_or_else(|| panic!("no fix; {all}"))
        .1;
    assert!(fix_text.contains(fix), "fix should mention {fix:?}; {all}");
}

#[test]
fn check_config_accepts_a_good_config_and_summarises_it() {
    let h = Harness::new("");
    let path = h.dir.path().join("good.toml");
    std::fs::write(&path, GOOD).unwrap();
    chmod(&h.dir.path().join("server.key"), 0o600);
    let out = check_config(&path);
    assert!(out.status.success(), "{} / {}", out.stdout, out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    for expected in [
        "ok",
        "hostname: relay.test",
        "127.0.0.1:2525",
        "127.0.0.0/8",
        "eu-1",
    ] {
        assert!(out.stdout.contains(expected), "{expected}: {}", out.stdout);
    }
    assert!(
        out.stdout.lines().count() <= 20,
        "not short: {}",
        out.stdout
    );
    // Validation only: nothing is created.
    assert!(!h.dir.path().join("spool").exists());
}

#[test]
fn check_config_names_file_line_key_and_fix() {
    let h = Harness::new("");
    let cases: [(&str, &str, &str, &str, &str); 5] = [
        // (from, to, line marker, key, fix mentions)
        (
            "max_message_size = 1048576",
            "max_mesage_size = 1048576",
            "max_mesage_size",
            "limits.max_mesage_size",
            "spelling",
        ),
        (
            "data_timeout = \"10m\"",
            "data_timeout = \"10 parsecs\"",
            "data_timeout",
            "limits.data_timeout",
            "\"30s\"",
        ),
        (
            "relay_networks = [\"127.0.0.0/8\", \"::1/128\"]",
            "relay_networks = [\"10.0.0.0/33\"]",
            "relay_networks",
            "access.relay_networks",
            "10.0.0.0/8",
        ),
        (
            "relay_networks = [\"127.0.0.0/8\", \"::1/128\"]",
            "relay_networks = [\"0.0.0.0/0\"]",
            "relay_networks",
            "access.relay_networks",
            "your own",
        ),
        (
            "address = \"127.0.0.1:2525\"",
            "address = \"127.0.0.1\"",
            "127.0.0.1",
            "listener.address",
            "port",
        ),
    ];
    for (i, (from, to, marker, key, fix)) in cases.into_iter().enumerate() {
        let (path, text) = variant(&h, &format!("bad-{i}.toml"), from, to);
        let out = check_config(&path);
        assert_one_error(&out, &path, Some(line_of(&text, marker)), key, fix);
        if to.contains("0.0.0.0/0") {
            assert!(out.stderr.contains("open relay"), "{}", out.stderr);
        }
    }
}

#[test]
fn check_config_refuses_a_missing_queue_section() {
    let h = Harness::new("");
    let (path, _) = variant(&h, "noqueue.toml", "[queue]\npath = \"spool\"\n", "");
    let out = check_config(&path);
    // A missing section has no line of its own: file, key and fix are named.
    assert_one_error(&out, &path, None, "queue.path", "[queue]");
}

#[test]
fn check_config_refuses_a_route_to_an_unknown_upstream() {
    let h = Harness::new("");
    let (path, text) = variant(
        &h,
        "route.toml",
        "upstreams = [\"eu-1\"]",
        "upstreams = [\"us-1\"]",
    );
    let out = check_config(&path);
    // The route is located at its [[route]] header or at its upstreams key.
    let header = line_of(&text, "[[route]]");
    let key_line = line_of(&text, "upstreams = [\"us-1\"]");
    let line = if out
        .stderr
        .contains(&format!("{}:{header}:", path.display()))
    {
        header
    } else {
        key_line
    };
    assert_one_error(&out, &path, Some(line), "route.upstreams", "upstream");
    assert!(out.stderr.contains("us-1"), "{}", out.stderr);
}

#[test]
fn check_config_refuses_a_missing_certificate_file() {
    let h = Harness::new("");
    let (path, text) = variant(
        &h,
        "nocert.toml",
        "certificate = \"server.crt\"",
        "certificate = \"missing.crt\"",
    );
    let out = check_config(&path);
    let all = format!("stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(out.stderr.contains("missing.crt"), "{all}");
    // The contract: one error naming the file, the line, the key and the fix.
    assert_one_error(
        &out,
        &path,
        Some(line_of(&text, "missing.crt")),
        "tls.certificate",
        "PEM",
    );
}

/// The reference config shipped in the repository must pass check-config.
#[test]
fn repository_reference_config_passes_check_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smarthost.toml");
    assert!(path.exists(), "{} is missing", path.display());
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "{}: {}{}",
        path.display(),
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("ok"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// check-config: configurations that open the relay or leak a secret (issue 11)

const RELAY_LINE: &str = "relay_networks = [\"127.0.0.0/8\", \"::1/128\"]";

/// Writes `text` as `name` in the harness directory.
fn write_config(h: &Harness, name: &str, text: &str) -> PathBuf {
    let path = h.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `serve` refuses to start on `path` and names `key` in its error.
fn assert_serve_refuses(path: &Path, key: &str) {
    let out = serve_fails(path);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(key), "{}", out.stderr);
    assert!(out.stderr.contains("fix:"), "{}", out.stderr);
}

/// Sets of networks whose union is every IPv4 or every IPv6 address, each
/// as a TOML array; the last entry is the one that completes the cover.
const EVERYONE: [&str; 6] = [
    "[\"0.0.0.0/0\", \"::/0\"]",
    "[\"0.0.0.0/1\", \"128.0.0.0/1\"]",
    "[\"::/1\", \"8000::/1\"]",
    "[\"::ffff:0:0/97\", \"::ffff:8000:0/97\"]",
    "[\"::ffff:0:0/97\", \"128.0.0.0/1\"]",
    // Split over lines: the error points at the entry that completes it.
    "[\n    \"10.0.0.0/8\",\n    \"0.0.0.0/2\",\n    \"64.0.0.0/2\",\n    \"128.0.0.0/1\",\n]",
];

/// The line of `text` holding the last network of `array`.
fn completing_line(text: &str, array: &str) -> usize {
    let last = array.rsplit('"').nth(1).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .rposition(|l| l.contains(&format!("\"{last}\"")))
        .unwrap()
        + 1
}

#[test]
fn check_config_refuses_trusted_proxies_that_cover_everyone() {
    let h = Harness::new("");
    for (i, nets) in EVERYONE.into_iter().enumerate() {
        let text = GOOD
            .replacen(
                "tls = \"starttls\"",
                "tls = \"starttls\"\nproxy_protocol = true",
                1,
            )
            .replacen(
                RELAY_LINE,
                &format!("{RELAY_LINE}\ntrusted_proxies = {nets}"),
                1,
            );
        let path = write_config(&h, &format!("proxies-{i}.toml"), &text);
        let out = check_config(&path);
        assert_one_error(
            &out,
            &path,
            Some(completing_line(&text, nets)),
            "access.trusted_proxies",
            "load balancers",
        );
        assert!(out.stderr.contains("PROXY"), "{}", out.stderr);
        if i == 0 {
            assert_serve_refuses(&path, "access.trusted_proxies");
        }
    }
    // Wide but not open: accepted.
    let text = GOOD.replacen(
        RELAY_LINE,
        &format!("{RELAY_LINE}\ntrusted_proxies = [\"64.0.0.0/9\", \"192.0.2.5/32\"]"),
        1,
    );
    let out = check_config(&write_config(&h, "proxies-ok.toml", &text));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
}

#[test]
fn check_config_refuses_relay_networks_whose_union_covers_everyone() {
    let h = Harness::new("");
    for (i, nets) in EVERYONE.into_iter().enumerate() {
        let text = GOOD.replacen(RELAY_LINE, &format!("relay_networks = {nets}"), 1);
        let path = write_config(&h, &format!("relay-{i}.toml"), &text);
        let out = check_config(&path);
        assert_one_error(
            &out,
            &path,
            Some(completing_line(&text, nets)),
            "access.relay_networks",
            "your own",
        );
        assert!(out.stderr.contains("open relay"), "{}", out.stderr);
        if i == 1 {
            assert_serve_refuses(&path, "access.relay_networks");
        }
    }
    // A public /9 is wide but not open: accepted, with the warning it always had.
    let text = GOOD.replacen(
        RELAY_LINE,
        "relay_networks = [\"64.0.0.0/9\", \"2001:db8::/31\"]",
        1,
    );
    let out = check_config(&write_config(&h, "relay-wide.toml", &text));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    for net in ["64.0.0.0/9", "2001:db8::/31"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("warning:") && l.contains(net) && l.contains("very wide")),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn check_config_refuses_upstream_auth_without_verified_tls() {
    let h = Harness::new("");
    std::fs::write(h.dir.path().join("pw"), "secret\n").unwrap();
    chmod(&h.dir.path().join("pw"), 0o600);
    let auth = "username = \"relay\"\npassword_file = \"pw\"";
    for (i, mode) in ["none", "opportunistic"].into_iter().enumerate() {
        let tls = format!("tls = \"{mode}\"");
        let text = GOOD.replacen("tls = \"required\"", &format!("{tls}\n{auth}"), 1);
        let path = write_config(&h, &format!("upstream-{mode}.toml"), &text);
        let out = check_config(&path);
        assert_one_error(
            &out,
            &path,
            Some(line_of(&text, &tls)),
            "upstream.tls",
            "tls = \"required\"",
        );
        assert!(out.stderr.contains("\"eu-1\""), "{}", out.stderr);
        if i == 0 {
            assert_serve_refuses(&path, "upstream.tls");
        }
    }
    // Without credentials either mode is fine; with them, "required" is.
    for tls in [
        "tls = \"none\"".to_owned(),
        "tls = \"opportunistic\"".to_owned(),
        format!("tls = \"required\"\n{auth}"),
    ] {
        let text = GOOD.replacen("tls = \"required\"", &tls, 1);
        let out = check_config(&write_config(&h, "upstream-ok.toml", &text));
        assert!(out.status.success(), "{tls}: {}{}", out.stdout, out.stderr);
    }
}

/// An argon2id PHC string of "pw" with these costs.
fn argon2id_hash(m: u32, t: u32, p: u32) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let params = argon2::Params::new(m, t, p, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string()
}

/// The `warning:` lines of check-config's output.
fn warnings(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect()
}

#[test]
fn check_config_warns_about_readable_secrets_and_cheap_hashes() {
    let h = Harness::new("");
    let dir = h.dir.path();
    let (rsa_cert, rsa_key) = h.ca.rsa_certificate(dir);
    std::fs::write(dir.join("pw"), "secret\n").unwrap();
    let user =
        |hash: &str| format!("\n[[user]]\nname = \"exchange01\"\npassword_hash = \"{hash}\"\n");
    let base = GOOD
        .replacen(
            "private_key = \"server.key\"\n",
            &format!(
                "private_key = \"server.key\"\n\n[[tls.additional]]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                rsa_cert.display(),
                rsa_key.display()
            ),
            1,
        )
        .replacen(
            "tls = \"required\"",
            "tls = \"required\"\nusername = \"relay\"\npassword_file = \"pw\"",
            1,
        );
    let secrets = [dir.join("server.key"), rsa_key.clone(), dir.join("pw")];

    // Tight modes and hash-password's costs: no warning at all.
    for s in &secrets {
        chmod(s, 0o600);
    }
    chmod(&dir.join("server.key"), 0o640);
    let good_hash = run_with_stdin(&["hash-password"], b"pw\n").stdout;
    let path = write_config(&h, "tight.toml", &(base.clone() + &user(good_hash.trim())));
    let out = check_config(&path);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(warnings(&out).is_empty(), "{}", out.stdout);
    // OWASP's equivalent trade-offs (more passes, less memory) pass too.
    let path = write_config(
        &h,
        "owasp.toml",
        &(base.clone() + &user(&argon2id_hash(12288, 3, 1))),
    );
    let out = check_config(&path);
    assert!(warnings(&out).is_empty(), "{}", out.stdout);

    // Readable by others, writable by the group, executable: each warned, by path.
    chmod(&dir.join("server.key"), 0o644);
    chmod(&rsa_key, 0o660);
    chmod(&dir.join("pw"), 0o604);
    let cheap = argon2id_hash(8, 1, 1);
    let text = base.clone() + &user(&cheap);
    let path = write_config(&h, "loose.toml", &text);
    let out = check_config(&path);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let w = warnings(&out);
    for s in &secrets {
        let fix = format!("chmod 600 {}", s.display());
        assert!(
            w.iter().any(|l| l.ends_with(&fix)),
            "no {fix:?} in {}",
            out.stdout
        );
    }
    let hash_line = line_of(&text, "password_hash");
    let hash_warning = w
        .iter()
        .find(|l| l.contains("OWASP"))
        .unwrap_or_else(|| panic!("no hash warning: {}", out.stdout));
    for part in [
        &format!("{}:{hash_line}: `user.password_hash`", path.display()),
        "\"exchange01\"",
        "m=8",
        "t=1",
        "smarthost hash-password",
    ] {
        assert!(hash_warning.contains(part), "{part:?} in {hash_warning}");
    }
    assert_eq!(w.len(), 4, "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_the_warnings_at_start() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let h = Harness::new(&format!(
            "[[user]]\nname = \"exchange01\"\npassword_hash = \"{}\"\n",
            argon2id_hash(1024, 1, 1)
        ));
        chmod(&h.dir.path().join("server.key"), 0o644);
        let relay = Relay::start(&h).await;
        let log = relay.log();
        let key = h.dir.path().join("server.key");
        assert!(
            log.contains(&format!("chmod 600 {}", key.display())),
            "{log}"
        );
        assert!(log.contains("OWASP"), "{log}");
    })
    .await
    .expect("test timed out");
}

// ---------------------------------------------------------------------------
// hash-password

#[test]
fn hash_password_prints_a_verifiable_argon2id_string() {
    use argon2::{PasswordHash, PasswordVerifier};
    let out = run_with_stdin(&["hash-password"], b"s3cret\n");
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", out.stdout);
    let phc = lines[0];
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    let hash = PasswordHash::new(phc).unwrap();
    let argon = argon2::Argon2::default();
    assert!(argon.verify_password(b"s3cret", &hash).is_ok());
    assert!(argon.verify_password(b"wrong", &hash).is_err());
    // The trailing newline is not part of the password.
    assert!(argon.verify_password(b"s3cret\n", &hash).is_err());
    // A fresh salt each time.
    let again = run_with_stdin(&["hash-password"], b"s3cret\n");
    assert_ne!(again.stdout.trim(), phc);
    // Without a final newline (e.g. printf) and with CRLF it is the same password.
    for input in [&b"s3cret"[..], b"s3cret\r\n"] {
        let out = run_with_stdin(&["hash-password"], input);
        assert!(out.status.success(), "{}", out.stderr);
        let hash = PasswordHash::new(out.stdout.trim()).unwrap();
        assert!(argon.verify_password(b"s3cret", &hash).is_ok());
    }
}

#[test]
fn hash_password_refuses_empty_input() {
    for input in [&b""[..], b"\n"] {
        let out = run_with_stdin(&["hash-password"], input);
        assert!(!out.status.success(), "{input:?}: {}", out.stdout);
        assert!(out.stdout.is_empty(), "{input:?}: {}", out.stdout);
        assert!(!out.stderr.is_empty());
    }
}

// ---------------------------------------------------------------------------
// serve

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_idle_sessions_lets_data_finish_and_exits_0() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let h = Harness::new("");
        let mut relay = Relay::start(&h).await;

        // An idle session: greeted, EHLO, nothing more.
        let mut idle = relay.connect().await;
        idle.hello().await;
        // A session halfway through its message.
        let mut busy = tls_session(relay.connect().await, &h.ca).await;
        busy.cmd("MAIL FROM:<late@tenant.example>", "250").await;
        busy.cmd("RCPT TO:<rcpt@partner.example>", "250").await;
        busy.cmd("DATA", "354").await;
        let body = message_of_size(100_000);
        busy.send(&body[..50_000]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        relay.proc.signal(libc::SIGTERM);
        idle.expect("421 4.3.2").await;
        assert!(idle.closed().await, "idle session not closed after 421");

        // While draining: no new connections.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match TcpStream::connect(("127.0.0.1", relay.port)).await {
                // Refused; or reset, when the listener closed with this
                // connection still in its backlog.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    break;
                }
                Err(e) => panic!("connect: {e}"),
                Ok(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "still accepting 3 s after SIGTERM"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert!(
            relay.proc.child.try_wait().unwrap().is_none(),
            "exited before the open message was finished"
        );

        // The open message finishes and is accepted; then the session is ended.
        busy.send(&body[50_000..]).await;
        busy.send(b".\r\n").await;
        let r = busy.expect("250 2.0.0").await;
        busy.expect("421 4.3.2").await;
        assert!(busy.closed().await);

        let status = tokio::task::block_in_place(|| relay.proc.wait_for(Duration::from_secs(5)))
            .unwrap_or_else(|| panic!("still running 5 s after SIGTERM: {}", relay.log()));
        assert!(status.success(), "{status}: {}", relay.log());
        assert!(
            TcpStream::connect(("127.0.0.1", relay.port)).await.is_err(),
            "connection accepted after exit"
        );

        let spool = Spool::open(&h.spool_dir()).unwrap();
        let ids = spool.list().unwrap();
        assert_eq!(ids.len(), 1);
        assert!(r.text().contains(&ids[0]), "{:?} vs {ids:?}", r.lines);
        assert_eq!(strip_received(&spool.read(&ids[0]).unwrap().1), &body[..]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_an_idle_relay_with_exit_0() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let h = Harness::new("");
        let mut relay = Relay::start(&h).await;
        let mut idle = relay.connect().await;
        idle.hello().await;
        relay.proc.signal(libc::SIGINT);
        idle.expect("421 4.3.2").await;
        assert!(idle.closed().await);
        let status = tokio::task::block_in_place(|| relay.proc.wait_for(Duration::from_secs(5)))
            .expect("exits within 5 s of SIGINT");
        assert!(status.success(), "{status}: {}", relay.log());
    })
    .await
    .expect("test timed out");
}

/// Runs `serve` expecting it to give up at once.
fn serve_fails(config: &Path) -> Output {
    run(&["serve", "--config", config.to_str().unwrap()])
}

#[test]
fn serve_with_an_unusable_config_exits_1_with_the_error_on_stderr() {
    let h = Harness::new("");
    let (path, _) = variant(
        &h,
        "typo.toml",
        "max_message_size = 1048576",
        "max_mesage_size = 1048576",
    );
    let out = serve_fails(&path);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&path.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("limits.max_mesage_size"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("fix:"), "{}", out.stderr);

    // Parses, but the certificate cannot be loaded.
    let (path, _) = variant(
        &h,
        "nocert.toml",
        "certificate = \"server.crt\"",
        "certificate = \"missing.crt\"",
    );
    let out = serve_fails(&path);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("missing.crt"), "{}", out.stderr);

    let out = serve_fails(&h.dir.path().join("does-not-exist.toml"));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("does-not-exist.toml"), "{}", out.stderr);
}

#[test]
fn serve_on_a_taken_port_exits_1_with_a_clear_message() {
    let h = Harness::new("");
    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    h.edit_config("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let out = serve_fails(&h.config_path);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.to_ascii_lowercase().contains("in use"),
        "{}",
        out.stderr
    );
    drop(taken);
}

/// The banner of a fresh connection.
async fn banner(relay: &Relay) -> String {
    let mut c = relay.connect().await;
    let r = c.expect("220").await;
    c.cmd("QUIT", "221").await;
    r.text()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_for_new_sessions_and_keeps_a_bad_config_out() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let h = Harness::new("");
        let relay = Relay::start(&h).await;
        let mut old = relay.connect().await;
        old.hello().await;
        let text = std::fs::read_to_string(&relay.config).unwrap();
        std::fs::write(
            &relay.config,
            text.replace("hostname = \"relay.test\"", "hostname = \"reloaded.test\""),
        )
        .unwrap();
        relay.proc.signal(libc::SIGHUP);
        let mut seen = String::new();
        for _ in 0..100 {
            seen = banner(&relay).await;
            if seen.contains("reloaded.test") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen.contains("reloaded.test"), "{seen}\n{}", relay.log());
        // The session opened before the reload keeps its configuration.
        let ehlo = old.cmd("EHLO again.example", "250").await;
        assert!(ehlo.lines[0].contains("relay.test"), "{ehlo:?}");

        // A broken config is refused; the running one stays.
        std::fs::write(
            &relay.config,
            format!("{text}\n[limits]\nmax_mesage_size = 1\n"),
        )
        .unwrap();
        relay.proc.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !relay.log().contains("reload refused") {
            assert!(Instant::now() < deadline, "{}", relay.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(relay.log().contains("max_mesage_size"), "{}", relay.log());
        assert!(banner(&relay).await.contains("reloaded.test"));
        old.cmd("QUIT", "221").await;
    })
    .await
    .expect("test timed out");
}
