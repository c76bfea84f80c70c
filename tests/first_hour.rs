//! The first hour of a new administrator (issue 12 §4), through the real
//! binary: what check-config catches, the words its errors use, the help
//! text, `queue flush` without a relay, the demo's hints.

mod support;

use std::path::{Path, PathBuf};

use support::binary::{BIN, Output, Proc, Relay, check_config, line_of, run};
use support::harness::{Harness, TLS_SECTION, verified_upstream_toml};
use support::sink::Sink;
use support::wait::{eventually, free_port};

/// A config with no optional section, so each test adds only what it checks.
const BASE: &str =
    "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\n[queue]\npath = \"spool\"\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Exit 1 and an error naming `file:line: `key``, whose fix mentions `fix`.
fn assert_error(out: &Output, path: &Path, line: usize, key: &str, fix: &str) {
    let all = format!("stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let location = format!("error: {}:{line}: `{key}`", path.display());
    assert!(out.stderr.contains(&location), "wanted {location:?}; {all}");
    let fix_text = out.stderr.split_once("fix:").map_or("", |(_, f)| f);
    assert!(fix_text.contains(fix), "fix should mention {fix:?}; {all}");
}

// ---------------------------------------------------------------------------
// 2. check-config loads what serve loads

fn upstream(extra: &str) -> String {
    format!(
        "{BASE}\n[[upstream]]\nname = \"eu-1\"\naddress = \"127.0.0.1:2\"\ntls = \"required\"\n{extra}"
    )
}

#[test]
fn a_missing_upstream_ca_file_fails_check_config_and_serve_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = upstream("ca_file = \"missing-ca.pem\"\n");
    let path = write(dir.path(), "ca.toml", &text);
    let line = line_of(&text, "ca_file");
    let out = check_config(&path);
    assert_error(&out, &path, line, "upstream.ca_file", "PEM");
    assert!(out.stderr.contains("missing-ca.pem"), "{}", out.stderr);
    // serve gives the same located error instead of failing at start-up.
    let out = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{}:{line}: `upstream.ca_file`", path.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn a_ca_file_without_certificates_fails_check_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    let text = upstream("ca_file = \"empty.pem\"\n");
    let path = write(dir.path(), "ca.toml", &text);
    let out = check_config(&path);
    assert_error(
        &out,
        &path,
        line_of(&text, "ca_file"),
        "upstream.ca_file",
        "PEM",
    );
}

#[test]
fn a_missing_password_file_fails_check_config_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = upstream("username = \"relay\"\npassword_file = \"missing-password\"\n");
    let path = write(dir.path(), "pw.toml", &text);
    let out = check_config(&path);
    assert_error(
        &out,
        &path,
        line_of(&text, "password_file"),
        "upstream.password_file",
        "password",
    );
    assert!(out.stderr.contains("missing-password"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// 3. bare addresses in network lists

#[test]
fn a_bare_address_is_one_host_and_a_bad_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{BASE}\n[access]\nrelay_networks = [\"10.1.2.3\", \"2001:db8::25\"]\ntrusted_proxies = [\"192.0.2.5\"]\n"
    );
    let path = write(dir.path(), "bare.toml", &text);
    let out = check_config(&path);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("relay networks: 10.1.2.3/32, 2001:db8::25/128"),
        "{}",
        out.stdout
    );

    // A list over several lines: the error is at the bad entry and names it.
    let text = format!(
        "{BASE}\n[access]\nrelay_networks = [\n    \"10.1.2.3\",\n    \"10.9.0.0/33\",\n]\n"
    );
    let path = write(dir.path(), "bad.toml", &text);
    let out = check_config(&path);
    assert_error(
        &out,
        &path,
        line_of(&text, "10.9.0.0/33"),
        "access.relay_networks",
        "CIDR",
    );
    assert!(out.stderr.contains("\"10.9.0.0/33\""), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// 4. the open-relay guard counts public space

#[test]
fn a_slash_one_of_public_space_is_an_open_relay_private_space_is_not() {
    let dir = tempfile::tempdir().unwrap();
    for (i, nets) in [
        "\"0.0.0.0/1\"",
        "\"128.0.0.0/1\"",
        // Two /2s make a /1; private space added to them changes nothing.
        "\"10.0.0.0/8\", \"0.0.0.0/2\", \"64.0.0.0/2\"",
        "\"::/1\"",
        "\"2000::/4\", \"3000::/4\"",
    ]
    .iter()
    .enumerate()
    {
        for key in ["relay_networks", "trusted_proxies"] {
            let text = format!("{BASE}\n[access]\n{key} = [{nets}]\n");
            let path = write(dir.path(), &format!("open-{i}-{key}.toml"), &text);
            let out = check_config(&path);
            assert_error(
                &out,
                &path,
                line_of(&text, key),
                &format!("access.{key}"),
                "your own",
            );
            assert!(out.stderr.contains("open relay"), "{}", out.stderr);
        }
    }
    // Private and loopback space may be as wide as it is, without warning.
    let text = format!(
        "{BASE}\n[access]\nrelay_networks = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"127.0.0.0/8\", \"fc00::/7\"]\n"
    );
    let out = check_config(&write(dir.path(), "private.toml", &text));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        !out.stdout.contains("relay_networks"),
        "no warning wanted: {}",
        out.stdout
    );
    // 240 public /16s, none wide alone, together nearly a /8: accepted with a warning.
    let nets: Vec<String> = (0..240).map(|i| format!("\"64.{i}.0.0/16\"")).collect();
    let text = format!("{BASE}\n[access]\nrelay_networks = [{}]\n", nets.join(", "));
    let out = check_config(&write(dir.path(), "wide.toml", &text));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("public IPv4 addresses")),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------
// 5. errors in the administrator's words

#[test]
fn config_errors_use_the_administrators_words() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{BASE}\n[limits]\nmax_recipients = \"ten\"\n");
    let path = write(dir.path(), "number.toml", &text);
    let out = check_config(&path);
    assert_error(&out, &path, 9, "limits.max_recipients", "digits");
    assert!(out.stderr.contains("a whole number"), "{}", out.stderr);
    assert!(!out.stderr.contains("usize"), "{}", out.stderr);

    let text = format!("{BASE}\n[limits]\ndata_timeout = 60\n");
    let path = write(dir.path(), "duration.toml", &text);
    let out = check_config(&path);
    assert_error(&out, &path, 9, "limits.data_timeout", "\"30s\"");
    assert!(
        out.stderr.contains("a duration such as \"60s\""),
        "{}",
        out.stderr
    );

    // A misspelt section is named as one, not blamed on the section above.
    let text = format!("{BASE}\n[acess]\nrelay_networks = [\"10.0.0.0/8\"]\n");
    let path = write(dir.path(), "section.toml", &text);
    let out = check_config(&path);
    assert_error(&out, &path, 8, "acess", "[access]");
    assert!(
        out.stderr.contains("unknown section [acess]"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("`listener`"), "{}", out.stderr);
    assert!(
        out.stderr.contains("the example config"),
        "fix names the example config by what it is: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// 8. --help describes every command and flag

/// The lines of a help text's Options/Arguments/Commands lists whose item has
/// no description.
fn undescribed(help: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut in_list = false;
    let lines: Vec<&str> = help.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if ["Options:", "Arguments:", "Commands:"].contains(&l.trim()) {
            in_list = true;
            continue;
        }
        if l.trim().is_empty() || !l.starts_with("  ") {
            if !l.starts_with("  ") && !l.trim().is_empty() {
                in_list = false;
            }
            continue;
        }
        let item = l.trim_start();
        let is_item = item.starts_with('-')
            || item.starts_with('<')
            || l.starts_with("  ") && !l.starts_with("      ");
        if !in_list || !is_item {
            continue;
        }
        // "  --flag <X>  Description" on one line, or the description indented below.
        let described = item.contains("  ")
            || lines
                .get(i + 1)
                .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
        if !described {
            missing.push(l.to_string());
        }
    }
    missing
}

#[test]
fn every_command_and_flag_has_a_description() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["check-config"],
        &["hash-password"],
        &["check-upstreams"],
        &["sink"],
        &["demo"],
        &["queue"],
        &["queue", "list"],
        &["queue", "flush"],
        &["queue", "delete"],
    ];
    for args in commands {
        for help in ["-h", "--help"] {
            let mut argv = args.to_vec();
            argv.push(help);
            let out = run(&argv);
            assert!(out.status.success(), "{argv:?}: {}", out.stderr);
            let missing = undescribed(&out.stdout);
            assert!(
                missing.is_empty(),
                "{argv:?}: no description for {missing:?}\n{}",
                out.stdout
            );
        }
    }
    let out = run(&["serve", "--help"]);
    for word in ["SIGHUP", "SIGTERM", "RUST_LOG"] {
        assert!(out.stdout.contains(word), "{word}: {}", out.stdout);
    }
}

// ---------------------------------------------------------------------------
// 7. hash-password on a terminal: no echo

/// A pseudo-terminal: the master end for the test, the slave end's path.
struct Pty {
    master: std::fs::File,
    slave: PathBuf,
}

fn open_pty() -> Pty {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a new descriptor we take ownership of;
    // ptsname's static buffer is copied before any other pty call.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(fd))
            .to_string_lossy()
            .into_owned();
        Pty {
            master: std::fs::File::from_raw_fd(fd),
            slave: PathBuf::from(name),
        }
    }
}

#[test]
fn hash_password_on_a_terminal_does_not_echo_the_password() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let pty = open_pty();
    let tty = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pty.slave)
            .unwrap()
    };
    let child = Command::new(BIN)
        .arg("hash-password")
        .stdin(tty())
        .stderr(tty())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Proc { child };
    // Everything the terminal shows, read as it comes.
    let screen = Arc::new(Mutex::new(String::new()));
    let mut reader = pty.master.try_clone().unwrap();
    let seen = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |text: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while screen.lock().unwrap().matches(text).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {text:?} on the terminal: {:?}",
                screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let password = "correct-horse-battery";
    let mut master = pty.master.try_clone().unwrap();
    wait_for("Password:", 1);
    master
        .write_all(format!("{password}\r").as_bytes())
        .unwrap();
    wait_for("Again:", 1);
    master
        .write_all(format!("{password}\r").as_bytes())
        .unwrap();
    let status = child
        .wait_for(Duration::from_secs(30))
        .expect("hash-password did not finish");
    assert!(status.success());
    let mut hash = String::new();
    child
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut hash)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let shown = screen.lock().unwrap().clone();
    assert!(!shown.contains(password), "echoed: {shown:?}");
    use argon2::PasswordVerifier;
    let parsed = argon2::PasswordHash::new(hash.trim()).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        "{hash}"
    );
}

// ---------------------------------------------------------------------------
// 9. queue flush without a relay

#[tokio::test(flavor = "multi_thread")]
async fn queue_flush_says_whether_a_relay_will_take_the_request() {
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let h = Harness::new("");
        let config = h.config_path.to_str().unwrap().to_owned();
        // The spool must exist for the queue commands: a first start makes it.
        let relay = Relay::start(&h).await;
        let out = run(&["queue", "flush", "--config", &config]);
        assert!(out.status.success(), "{}", out.stderr);
        assert!(
            out.stdout.contains("running relay is retrying"),
            "{}",
            out.stdout
        );
        drop(relay);

        let out = run(&["queue", "flush", "--config", &config]);
        assert!(out.status.success(), "{}", out.stderr);
        assert!(
            out.stdout.contains("none seems to be running") && out.stdout.contains("starts"),
            "{}",
            out.stdout
        );
        assert!(!out.stdout.contains("within a second"), "{}", out.stdout);
        // The request is kept for the next start, which takes it.
        assert!(h.spool_dir().join("flush-requested").exists());
        let _relay = Relay::start(&h).await;
        eventually("the flush request taken at start", 10, || {
            !h.spool_dir().join("flush-requested").exists()
        })
        .await;
    })
    .await
    .expect("test timed out");
}

// ---------------------------------------------------------------------------
// 10. the self-signed warning: once per start, once per reload

#[tokio::test(flavor = "multi_thread")]
async fn the_self_signed_warning_comes_once_per_start_and_reload() {
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let h = Harness::new("");
        h.edit_config(TLS_SECTION, "");
        let relay = Relay::start(&h).await;
        let count = |log: &str| log.matches("self-signed").count();
        assert_eq!(count(&relay.log()), 1, "{}", relay.log());
        relay.proc.signal(libc::SIGHUP);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !relay.log().contains("reloaded") {
            assert!(std::time::Instant::now() < deadline, "{}", relay.log());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(count(&relay.log()), 2, "{}", relay.log());
    })
    .await
    .expect("test timed out");
}

// ---------------------------------------------------------------------------
// 11. the demo

#[test]
fn the_demo_prints_commands_that_work_and_a_busy_port_suggests_listen() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["demo", "--listen", &busy_addr])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    drop(busy);

    // On a free port: the printed `queue list` command runs as printed.
    let port = free_port();
    let mut demo = Proc {
        child: Command::new(BIN)
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let mut stdout = demo.child.stdout.take().unwrap();
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !printed.contains("Ctrl-C") {
        assert!(Instant::now() < deadline, "{printed}");
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "demo exited: {printed}");
        printed.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let command = printed
        .lines()
        .find_map(|l| l.strip_prefix("See the queue:"))
        .unwrap_or_else(|| panic!("{printed}"))
        .trim()
        .to_owned();
    let out = Command::new("sh")
        .args(["-c", &command])
        .current_dir("/")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("message(s) queued"),
        "{command}"
    );
    demo.kill();

    // Its state directory is ignored by git.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".gitignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "/smarthost-demo"),
        "{ignore}"
    );
}

// ---------------------------------------------------------------------------
// 6. check-upstreams explains TLS failures in words

#[tokio::test(flavor = "multi_thread")]
async fn check_upstreams_explains_tls_failures_and_says_the_connection_worked() {
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let h = Harness::new("");
        // A CA that the upstream wrongly presents as its own certificate.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let dir = h.dir.path();
        std::fs::write(dir.join("own-ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("own-ca.key"), key.serialize_pem()).unwrap();

        let base = tempfile::tempdir().unwrap();
        let mut ca_as_leaf = Sink::new(base.path(), "caleaf");
        ca_as_leaf.tls = Some((dir.join("own-ca.pem"), dir.join("own-ca.key")));
        ca_as_leaf.start().await;
        let mut proper = Sink::new(base.path(), "proper");
        proper.tls = Some((dir.join("server.crt"), dir.join("server.key")));
        proper.start().await;

        let upstream = |name: &str, port: u16, ca: &str, tls_name: &str| {
            verified_upstream_toml(name, format!("127.0.0.1:{port}"), Path::new(ca), tls_name)
        };
        let text = format!(
            "{}{}{}{}",
            std::fs::read_to_string(&h.config_path).unwrap(),
            upstream("caleaf", ca_as_leaf.port, "own-ca.pem", "localhost"),
            // The harness certificate, checked against a CA that did not sign it.
            upstream("stranger", proper.port, "own-ca.pem", "localhost"),
            upstream("wrongname", proper.port, "ca.pem", "other.example"),
        );
        let config = write(dir, "tls.toml", &text);
        let out = run(&["check-upstreams", "--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
        let line = |name: &str| {
            out.stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no row for {name}:\n{}", out.stdout))
                .to_owned()
        };
        for (name, words) in [
            (
                "caleaf",
                "the upstream presents a CA certificate as its own; it must present a leaf certificate signed by ca_file",
            ),
            ("stranger", "not signed by a CA in ca_file"),
            ("wrongname", "set tls_name"),
        ] {
            let row = line(name);
            let columns: Vec<&str> = row.split_whitespace().collect();
            // The TCP connection and EHLO worked: connect says ok.
            assert_eq!(columns[2], "ok", "{name}: {row}");
            assert_eq!(columns[3], "FAILED", "{name}: {row}");
            assert!(row.contains(words), "{name}: wanted {words:?} in {row}");
        }
    })
    .await
    .expect("test timed out");
}
