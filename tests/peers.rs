//! Real third-party SMTP clients against the relay running in this process:
//! swaks, `openssl s_client` (negotiating as Exchange on Windows Server 2012
//! R2 does) and Exim (BDAT + PIPELINING, certificate verified).
//!
//! The tools are installed by `scripts/install-test-deps.sh`; a missing one is
//! a test failure, never a skip. Every tool runs with a time limit and is
//! killed if it overruns.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use smarthost::spool::Envelope;
use support::harness::Harness;
use support::message::dot_stuff;
use support::message::strip_received;
use support::pki::TestCa;
use support::tools::{INSTALL_HINT, Ran, TOOL_TIMEOUT, repo, require, run_tool};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";

/// Exim's binary as tests/peers/exim/install.sh unpacks it.
const EXIM: &str = "/opt/exim/usr/sbin/exim4";

/// A message with full headers (so no client adds any), CRLF line ends, a
/// line starting with a dot, one of two dots, and 8-bit UTF-8 text.
fn message(tag: &str) -> Vec<u8> {
    format!(
        "From: Sender <{FROM}>\r\n\
         To: <{TO}>\r\n\
         Subject: {tag} peer test\r\n\
         Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <{tag}-1@tenant.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         first line\r\n\
         .leading dot\r\n\
         ..two leading dots\r\n\
         8bit: h\u{e9}llo w\u{f6}rld \u{20ac} \u{65e5}\u{672c}\r\n\
         last line\r\n"
    )
    .into_bytes()
}

/// The one message spooled, checked against what the client sent.
fn assert_spooled_one(h: &Harness, sent: &[u8], recipients: &[&str]) -> Envelope {
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1, "expected exactly one spooled message");
    let (env, msg) = spooled.into_iter().next().unwrap();
    assert_eq!(
        String::from_utf8_lossy(strip_received(&msg)),
        String::from_utf8_lossy(sent),
        "spooled body differs from what the client sent"
    );
    assert_eq!(strip_received(&msg), sent, "byte for byte");
    assert_eq!(env.sender, FROM);
    let got: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(got, recipients);
    assert!(env.client.tls.is_some(), "spooled without TLS: {env:?}");
    env
}

// ---------------------------------------------------------------- swaks

/// swaks to the relay; `extra` are further swaks options.
async fn swaks(port: u16, data: &Path, extra: &[&str]) -> Ran {
    let swaks = require("swaks");
    let mut cmd = Command::new(swaks);
    cmd.args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["--from", FROM, "--to", TO, "--helo", "swaks.test"])
        .args(["--timeout", "30"])
        .arg("--data")
        .arg(format!("@{}", data.display()))
        .args(extra);
    run_tool(&mut cmd, b"").await
}

/// `--data @file` contents that make swaks send exactly `message`: swaks
/// strips a final `CRLF.CRLF` from the file and then always appends
/// `CRLF.` itself, so a file ending in the message's last CRLF alone would
/// gain an empty line. Everything else (the dot-stuffing included) swaks does
/// itself.
fn swaks_data(message: &[u8]) -> Vec<u8> {
    assert!(message.ends_with(b"\r\n"));
    [message, b".\r\n"].concat()
}

fn write_message(h: &Harness, name: &str, bytes: &[u8]) -> PathBuf {
    let path = h.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_starttls_with_verified_certificate_delivers_byte_for_byte() {
    let h = Harness::new("");
    let relay = h.start().await;
    let sent = message("swaks");
    let data = write_message(&h, "swaks.eml", &swaks_data(&sent));
    let ca = h.ca_path();
    let ran = swaks(
        relay.addr().port(),
        &data,
        &[
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            ca.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(ran.code(), Some(0), "{}", ran.output());
    assert!(
        ran.stdout.contains("<~  250 2.0.0 Ok: queued as "),
        "{}",
        ran.output()
    );
    // swaks dot-stuffed the dotted lines; the relay unstuffed them again.
    assert!(ran.stdout.contains(" ~> ..leading dot"), "{}", ran.output());
    assert!(
        ran.stdout.contains(" ~> ...two leading dots"),
        "{}",
        ran.output()
    );
    let env = assert_spooled_one(&h, &sent, &[TO]);
    assert_eq!(env.client.helo, "swaks.test");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_refuses_a_certificate_from_another_ca() {
    let h = Harness::new("");
    let relay = h.start().await;
    let data = write_message(&h, "swaks.eml", &swaks_data(&message("swaks")));
    let other = write_message(&h, "other-ca.pem", TestCa::new().ca_pem.as_bytes());
    let ran = swaks(
        relay.addr().port(),
        &data,
        &[
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            other.to_str().unwrap(),
        ],
    )
    .await;
    // 29: "error in TLS negotiation": --tls-verify really checks the chain,
    // so the byte-for-byte test above is over a verified session. (Both CAs
    // are named "smarthost test CA"; OpenSSL reports the signature mismatch
    // in odd words, so only swaks' own line is matched.)
    assert_eq!(ran.code(), Some(29), "{}", ran.output());
    assert!(
        ran.stderr.contains("*** TLS startup failed"),
        "{}",
        ran.output()
    );
    assert_eq!(h.spool_files(), 0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_pipelining_over_starttls_is_accepted() {
    let h = Harness::new("");
    let relay = h.start().await;
    let sent = message("swaks-pipeline");
    let data = write_message(&h, "pipeline.eml", &swaks_data(&sent));
    let ca = h.ca_path();
    let ran = swaks(
        relay.addr().port(),
        &data,
        &[
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            ca.to_str().unwrap(),
            "--pipeline",
        ],
    )
    .await;
    assert_eq!(ran.code(), Some(0), "{}", ran.output());
    assert!(
        ran.stdout.contains("<~  250-PIPELINING"),
        "{}",
        ran.output()
    );
    // MAIL, RCPT and DATA went out together, before the first reply.
    let pipelined = format!(" ~> MAIL FROM:<{FROM}>\n ~> RCPT TO:<{TO}>\n ~> DATA\n<~  250 2.1.0 ");
    assert!(ran.stdout.contains(&pipelined), "{}", ran.output());
    assert!(
        ran.stdout.contains("<~  250 2.0.0 Ok: queued as "),
        "{}",
        ran.output()
    );
    assert_spooled_one(&h, &sent, &[TO]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_without_tls_is_refused_at_mail_with_530() {
    let h = Harness::new("");
    let relay = h.start().await;
    let data = write_message(&h, "plain.eml", &swaks_data(&message("swaks-plain")));
    let ran = swaks(relay.addr().port(), &data, &[]).await;
    // 23: "error in MAIL transaction".
    assert_eq!(ran.code(), Some(23), "{}", ran.output());
    assert!(ran.stdout.contains("<** 530 5.7.0 "), "{}", ran.output());
    assert!(!ran.stdout.contains("RCPT TO"), "{}", ran.output());
    assert_eq!(h.spool_files(), 0);
    assert!(h.spooled().is_empty());
    relay.stop().await;
}

// ---------------------------------------------------------------- openssl s_client

/// An interactive `openssl s_client -starttls smtp` session.
struct SClient {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    /// Everything read from its stdout so far.
    transcript: String,
}

impl SClient {
    async fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Reads stdout up to the last line of an SMTP reply and checks its start.
    async fn expect(&mut self, prefix: &str) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {prefix} reply; so far:\n{}", self.transcript))
                .unwrap()
                .unwrap_or_else(|| panic!("s_client ended; so far:\n{}", self.transcript));
            self.transcript.push_str(&line);
            self.transcript.push('\n');
            let b = line.as_bytes();
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                assert!(
                    line.starts_with(prefix),
                    "expected {prefix:?}, got {line:?}; transcript:\n{}",
                    self.transcript
                );
                return line.trim_end().to_owned();
            }
        }
    }

    async fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(prefix).await
    }
}

/// Runs one full transaction through `openssl s_client -starttls smtp` with
/// `tls_args` (protocol, ciphers, groups); returns its stdout and stderr.
async fn s_client_transaction(h: &Harness, port: u16, tls_args: &[&str], body: &[u8]) -> Ran {
    let openssl = require("openssl");
    let mut child = Command::new(openssl)
        .args(["s_client", "-starttls", "smtp", "-name", "client.test"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(h.ca_path())
        // Chain and SAN (IP 127.0.0.1) must verify, or no session at all.
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
        // -ign_eof: stdin's end does not end the session; -nocommands: lines
        // starting with Q (QUIT) or R (RCPT) are not s_client commands.
        .args(["-ign_eof", "-nocommands"])
        .args(tls_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}; {INSTALL_HINT}"));
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s).await;
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut s = SClient {
        stdin: child.stdin.take().unwrap(),
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        child,
        transcript: String::new(),
    };
    let dialogue = async {
        // s_client did the first EHLO and STARTTLS itself; the relay forgot
        // that greeting with the handshake, so greet again inside TLS.
        s.cmd("EHLO client.test", "250 ").await;
        s.cmd(&format!("MAIL FROM:<{FROM}>"), "250 2.1.0").await;
        s.cmd(&format!("RCPT TO:<{TO}>"), "250 2.1.5").await;
        s.cmd("DATA", "354").await;
        s.send(body).await;
        s.send(b".\r\n").await;
        s.expect("250 2.0.0 Ok: queued as ").await;
        s.cmd("QUIT", "221").await;
        // The relay closes after 221; s_client then exits.
        let status = s.child.wait().await.unwrap();
        let mut rest = String::new();
        while let Some(line) = s.lines.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        s.transcript.push_str(&rest);
        status
    };
    let status = tokio::time::timeout(TOOL_TIMEOUT, dialogue)
        .await
        .unwrap_or_else(|_| panic!("openssl s_client still running after {TOOL_TIMEOUT:?}"));
    Ran {
        status,
        stdout: s.transcript,
        stderr: stderr.await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_tls12_ecdhe_ecdsa_aes128_gcm_p256_as_exchange_2012r2() {
    let h = Harness::new("");
    let relay = h.start().await;
    let sent = message("openssl-tls12");
    let ran = s_client_transaction(
        &h,
        relay.addr().port(),
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "-groups",
            "P-256",
        ],
        &dot_stuff(&sent),
    )
    .await;
    assert!(ran.status.success(), "{}", ran.output());
    ran.assert_stdout_has(&[
        "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256",
        "Protocol  : TLSv1.2",
        "Server Temp Key: ECDH, prime256v1, 256 bits",
        "Verify return code: 0 (ok)",
    ]);
    let env = assert_spooled_one(&h, &sent, &[TO]);
    let tls = env.client.tls.unwrap();
    assert_eq!(tls.version, "TLSv1_2");
    assert_eq!(tls.cipher, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_tls13_p256() {
    let h = Harness::new("");
    let relay = h.start().await;
    let sent = message("openssl-tls13");
    let ran = s_client_transaction(
        &h,
        relay.addr().port(),
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256",
            "-groups",
            "P-256",
        ],
        &dot_stuff(&sent),
    )
    .await;
    assert!(ran.status.success(), "{}", ran.output());
    ran.assert_stdout_has(&[
        "New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256",
        "Protocol  : TLSv1.3",
        "Verify return code: 0 (ok)",
    ]);
    let env = assert_spooled_one(&h, &sent, &[TO]);
    let tls = env.client.tls.unwrap();
    assert_eq!(tls.version, "TLSv1_3");
    assert_eq!(tls.cipher, "TLS13_AES_128_GCM_SHA256");
    relay.stop().await;
}

// ---------------------------------------------------------------- Exim

/// tests/peers/exim/send.sh: one message from Exim to the relay, with the
/// exim temp dir kept; returns the run and exim's main log.
async fn exim_send(h: &Harness, port: u16, message: &[u8]) -> (Ran, String) {
    require(EXIM);
    let script = repo().join("tests/peers/exim/send.sh");
    let mut cmd = Command::new(require(script.to_str().unwrap()));
    cmd.arg(port.to_string())
        .arg(h.ca_path())
        .args([FROM, TO])
        .env("EXIM", EXIM)
        .env("EXIM_KEEP", "1")
        .env("EXIM_DEBUG", "-d+transport");
    let ran = run_tool(&mut cmd, message).await;
    let kept = ran
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("send.sh: keeping "))
        .unwrap_or_else(|| {
            panic!(
                "send.sh did not say where it kept its files\n{}",
                ran.output()
            )
        })
        .to_owned();
    let log = std::fs::read_to_string(Path::new(&kept).join("log/mainlog")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&kept);
    (ran, log)
}

/// The BDAT commands Exim's debug output shows it sent (`SMTP>>` when
/// flushed at once, `SMTP+>` when buffered for pipelining).
fn bdat_commands(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let sent = l.strip_prefix("SMTP>> ").or(l.strip_prefix("SMTP+> "))?;
            sent.starts_with("BDAT ").then(|| sent.to_owned())
        })
        .collect()
}

/// Exim's one-line summary of the SMTP dialogue (`|` marks a pipelined
/// command), from its debug output.
fn cmdlog(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("cmdlog: "))
        .unwrap_or_else(|| panic!("no cmdlog in exim's debug output:\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn exim_delivers_with_bdat_over_verified_starttls() {
    let h = Harness::new("");
    let relay = h.start().await;
    // Exim is given LF line ends and normalises them to CRLF on the wire.
    let mut crlf = message("exim");
    crlf.extend_from_slice(b".\r\n..\r\nend\r\n");
    let lf = String::from_utf8(crlf.clone())
        .unwrap()
        .replace("\r\n", "\n");
    let (ran, log) = exim_send(&h, relay.addr().port(), lf.as_bytes()).await;
    assert_eq!(ran.code(), Some(0), "{}\n--- mainlog\n{log}", ran.output());
    let bdat = bdat_commands(&ran.stderr);
    assert_eq!(
        bdat,
        [format!("BDAT {} LAST", crlf.len())],
        "{}",
        ran.stderr
    );
    // MAIL and RCPT pipelined with the one BDAT chunk, after STARTTLS (Exim
    // also pipelines QUIT after the last chunk, before the replies).
    let dialogue = cmdlog(&ran.stderr);
    assert!(
        dialogue.contains(":BDAT:") && dialogue.contains(":QUIT:"),
        "{dialogue}"
    );
    assert_eq!(
        dialogue.replace(":QUIT", ""),
        "'220:EHLO:250-:STARTTLS:220:EHLO:250-:MAIL|:RCPT|:BDAT:250:250:250:221'"
    );
    assert!(
        log.contains(" X=TLS1.3:"),
        "exim did not use TLS 1.3:\n{log}"
    );
    assert!(
        log.contains(" CV=yes "),
        "exim did not verify the certificate:\n{log}"
    );
    assert!(
        log.contains(" K "),
        "no CHUNKING (K) on the delivery line:\n{log}"
    );
    assert_spooled_one(&h, &crlf, &[TO]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exim_sends_a_large_message_in_several_bdat_chunks() {
    let h = Harness::new("");
    let relay = h.start().await;
    let mut crlf = message("exim-large");
    let mut n = 0;
    while crlf.len() < 40 * 1024 {
        n += 1;
        let line = match n % 10 {
            0 => ".a line with a leading dot\r\n".to_owned(),
            5 => format!("{n}: 8bit \u{e9}\u{e8}\u{ea} \u{20ac} \u{3b1}\u{3b2}\u{3b3}\r\n"),
            _ => {
                format!("{n}: 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n")
            }
        };
        crlf.extend_from_slice(line.as_bytes());
    }
    let (ran, log) = exim_send(&h, relay.addr().port(), &crlf).await;
    assert_eq!(ran.code(), Some(0), "{}\n--- mainlog\n{log}", ran.output());
    let bdat = bdat_commands(&ran.stderr);
    assert!(
        bdat.len() >= 2,
        "expected several BDAT chunks, got {bdat:?}\n{}",
        ran.stderr
    );
    assert!(bdat.last().unwrap().ends_with(" LAST"), "{bdat:?}");
    assert!(
        cmdlog(&ran.stderr).contains(":STARTTLS:220:EHLO:250-:MAIL|:RCPT|:BDAT:250:250:250:BDAT:"),
        "{}",
        ran.stderr
    );
    let total: usize = bdat
        .iter()
        .map(|b| b.split(' ').nth(1).unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(total, crlf.len(), "chunk sizes {bdat:?}");
    assert_spooled_one(&h, &crlf, &[TO]);
    relay.stop().await;
}
