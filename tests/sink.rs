//! `smarthost sink` on real loopback sockets: pipelining, DATA unstuffing,
//! BDAT chunks, STARTTLS with the test CA, the JSON sidecar, limits,
//! concurrency, shutdown, and swaks as a real third-party client.

mod support;

use std::path::Path;
use std::time::Duration;

use support::client::{Reply, send_data};
use support::pki::TestCa;
use support::sink::LocalSink;

/// The file name a `250 2.0.0 Ok: <name>` reply gives.
fn named(reply: &Reply) -> String {
    let text = reply.text();
    text.rsplit(' ').next().unwrap().to_owned()
}

#[tokio::test]
async fn pipelined_transaction_in_one_packet() {
    let mut sink = LocalSink::start_temp(None).await;
    let mut c = sink.connect().await;
    let greeting = c.expect("220").await;
    assert_eq!(greeting.lines[0], "220 sink.test smarthost sink");
    c.send(
        "EHLO client.test\r\n\
         MAIL FROM:<a@sender.example> SIZE=40 BODY=8BITMIME\r\n\
         RCPT TO:<b@rcpt.example> NOTIFY=FAILURE ORCPT=rfc822;b@rcpt.example\r\n\
         RCPT TO:<c@rcpt.example>\r\n\
         DATA\r\n\
         Subject: hi\r\n\r\nbody\r\n.\r\n\
         QUIT\r\n",
    )
    .await;
    let ehlo = c.expect("250").await;
    for cap in [
        "PIPELINING",
        "SIZE 209715200",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(ehlo.lines.iter().any(|l| l[4..] == *cap), "{cap}: {ehlo:?}");
    }
    assert!(!ehlo.text().contains("STARTTLS"), "no TLS configured");
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    let done = c.expect("250 2.0.0 Ok: ").await;
    c.expect("221").await;
    assert!(c.closed().await);

    let files = sink.files();
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        named(&done)
    );
    assert_eq!(sink.messages()[0], b"Subject: hi\r\n\r\nbody\r\n");
    let meta = sink.sidecar(0);
    assert_eq!(meta["mail_from"], "a@sender.example");
    assert_eq!(meta["mail_params"], "SIZE=40 BODY=8BITMIME");
    assert_eq!(
        meta["rcpt_to"],
        serde_json::json!(["b@rcpt.example", "c@rcpt.example"])
    );
    assert_eq!(
        meta["rcpt_params"],
        serde_json::json!(["NOTIFY=FAILURE ORCPT=rfc822;b@rcpt.example", ""])
    );
    assert_eq!(meta["tls"], false);
    assert_eq!(meta["chunking"], false);
    assert!(meta["received_at"].as_u64().unwrap() > 1_600_000_000);
    let client = meta["client"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    // Nothing but the pair: no temporary files left behind.
    assert_eq!(std::fs::read_dir(&sink.dir).unwrap().count(), 2);
    sink.stop().await;
}

#[tokio::test]
async fn data_is_unstuffed_byte_for_byte() {
    let mut sink = LocalSink::start_temp(None).await;
    let mut c = sink.connect().await;
    c.hello().await;
    let stuffed: &[u8] = b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n..\r\n. \r\n\
        8-bit \xc3\xa9t\xc3\xa9\r\ntab\there\r\n.x.\r\n";
    let wanted: &[u8] = b"Subject: dots\r\n\r\n.leading dot\r\n..\r\n.\r\n \r\n\
        8-bit \xc3\xa9t\xc3\xa9\r\ntab\there\r\nx.\r\n";
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], stuffed).await;
    assert_eq!(r.status(), "250 2.0.0");
    // The terminating dot split across writes.
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RCPT TO:<b@y.example>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"a\r\n").await;
    c.send(b".").await;
    c.send(b"\r").await;
    c.send(b"\n").await;
    c.expect("250 2.0.0").await;
    assert_eq!(sink.messages(), vec![wanted.to_vec(), b"a\r\n".to_vec()]);
    assert_eq!(sink.sidecar(1)["mail_from"], "");
    sink.stop().await;
}

#[tokio::test]
async fn bdat_chunks_join_and_pipeline() {
    let mut sink = LocalSink::start_temp(None).await;
    let mut c = sink.connect().await;
    c.hello().await;
    let chunks: [&[u8]; 3] = [b"Subject: b\r\n\r\n", b"line one\r\n.\r\n", b"..end\r\n"];
    let mut packet = b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n".to_vec();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i == chunks.len() - 1 { " LAST" } else { "" };
        packet.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        packet.extend_from_slice(chunk);
    }
    packet.extend_from_slice(b"NOOP\r\n");
    c.send(&packet).await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect(&format!("250 2.0.0 {} octets", chunks[0].len()))
        .await;
    c.expect(&format!("250 2.0.0 {} octets", chunks[1].len()))
        .await;
    c.expect("250 2.0.0 Ok: ").await;
    c.expect("250").await; // NOOP
    // BDAT 0 LAST ends a message with nothing more.
    c.cmd("MAIL FROM:<a@x.example>", "250").await;
    c.cmd("RCPT TO:<b@y.example>", "250").await;
    c.send("BDAT 3\r\nabc").await;
    c.expect("250 2.0.0 3 octets").await;
    // A refused chunk (no transaction) is still consumed: NOOP after it works.
    c.send("BDAT 0 LAST\r\nRSET\r\nBDAT 4 LAST\r\nabcdNOOP\r\n")
        .await;
    c.expect("250 2.0.0 Ok: ").await;
    c.expect("250").await;
    c.expect("503 5.5.1").await;
    c.expect("250").await;
    // DATA after BDAT is out of sequence (RFC 3030 §2).
    c.cmd("MAIL FROM:<a@x.example>", "250").await;
    c.cmd("RCPT TO:<b@y.example>", "250").await;
    c.send("BDAT 1\r\nx").await;
    c.expect("250").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("QUIT", "221").await;

    let messages = sink.messages();
    assert_eq!(
        messages[0],
        chunks.concat(),
        "BDAT content is not unstuffed"
    );
    assert_eq!(messages[1], b"abc");
    assert_eq!(messages.len(), 2);
    assert_eq!(sink.sidecar(0)["chunking"], true);
    sink.stop().await;
}

/// The sink's TLS configuration from the test CA's certificate files.
fn tls_files(ca: &TestCa, dir: &Path) -> std::sync::Arc<rustls::ServerConfig> {
    let (cert, key) = ca.write_certificate(dir, "sink");
    smarthost::sink::tls_from_files(&cert, &key).unwrap()
}

#[tokio::test]
async fn starttls_with_the_test_ca() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let mut sink = LocalSink::start_temp(Some(tls_files(&ca, certs.path()))).await;
    let mut c = sink.connect().await;
    let ehlo = c.hello().await;
    assert!(ehlo.text().contains("STARTTLS"));
    // A transaction begun in plaintext is forgotten by the handshake.
    c.cmd("MAIL FROM:<a@x.example>", "250").await;
    let mut c = c.starttls_no_ehlo(&ca).await;
    let ehlo = c.cmd("EHLO client.test", "250").await;
    assert!(!ehlo.text().contains("STARTTLS"));
    c.cmd("STARTTLS", "503").await;
    c.cmd("RCPT TO:<b@y.example>", "503").await;
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], b"secret\r\n").await;
    assert_eq!(r.status(), "250 2.0.0");
    c.cmd("QUIT", "221").await;
    assert_eq!(sink.messages(), vec![b"secret\r\n".to_vec()]);
    assert_eq!(sink.sidecar(0)["tls"], true);

    let bad =
        smarthost::sink::tls_from_files(&certs.path().join("nope"), &certs.path().join("sink.key"));
    assert!(bad.unwrap_err().contains("nope"));
    sink.stop().await;
}

#[tokio::test]
async fn several_messages_per_connection_and_sequence_errors() {
    let mut sink = LocalSink::start_temp(None).await;
    let mut c = sink.connect().await;
    c.hello().await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RCPT TO:<b@y.example>", "503 5.5.1").await;
    c.cmd("MAIL FROM:<a@x.example>", "250").await;
    c.cmd("MAIL FROM:<a@x.example>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<not an address", "501").await;
    c.cmd("FROB", "500").await;
    c.cmd("NOOP", "250").await;
    let mut names = Vec::new();
    for i in 0..5 {
        let body = format!("Subject: {i}\r\n\r\n{i}\r\n");
        let r = send_data(&mut c, "a@x.example", &["b@[192.0.2.1]"], body.as_bytes()).await;
        names.push(named(&r));
    }
    c.cmd("HELO again.test", "250").await;
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], b"x\r\n").await;
    names.push(named(&r));
    c.cmd("QUIT", "221").await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 6);
    for (i, m) in messages.iter().take(5).enumerate() {
        assert_eq!(m, format!("Subject: {i}\r\n\r\n{i}\r\n").as_bytes());
    }
    let files: Vec<String> = sink
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(files, names, "names sort in arrival order");
    assert_eq!(sink.sidecar(0)["rcpt_to"][0], "b@[192.0.2.1]");
    sink.stop().await;
}

#[tokio::test]
async fn limits_long_lines_and_declared_size() {
    let mut sink = LocalSink::start_temp(None).await;
    let mut c = sink.connect().await;
    c.hello().await;
    // Over-long, with and without its line ending yet: one 500 each, then on.
    c.send(format!("NOOP {}\r\n", "x".repeat(5000))).await;
    c.expect("500 5.5.2").await;
    c.send("x".repeat(10_000)).await;
    c.expect("500 5.5.2").await;
    c.send(format!("{}\r\nNOOP\r\n", "y".repeat(3000))).await;
    c.expect("250").await;
    c.cmd("MAIL FROM:<a@x.example> SIZE=999999999999", "552 5.3.4")
        .await;
    c.cmd("BDAT 99999999999999999999999999", "552 5.3.4").await;
    assert!(
        c.closed().await,
        "an unreadable chunk size ends the session"
    );
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    let mut sink = LocalSink::start_temp(None).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = sink.connect().await;
        tasks.push(tokio::spawn(async move {
            c.hello().await;
            let body = format!("Subject: {i}\r\n\r\nn\r\n");
            let r = send_data(&mut c, "a@x.example", &["b@y.example"], body.as_bytes()).await;
            assert_eq!(r.status(), "250 2.0.0");
            c.cmd("QUIT", "221").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sink.files().len(), 50);
    sink.stop().await;
}

#[tokio::test]
async fn shutdown_frees_the_port_and_ends_sessions() {
    let mut sink = LocalSink::start_temp(None).await;
    let addr = sink.addr;
    let mut c = sink.connect().await;
    c.hello().await;
    sink.stop().await;
    c.expect("421 4.3.2").await;
    assert!(c.closed().await);
    // The port can be bound again at once (delivery tests restart sinks).
    tokio::net::TcpListener::bind(addr).await.unwrap();
}

/// swaks, a real client: pipelining, STARTTLS (verified against the test CA),
/// and an attached body with dots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_delivers() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let mut sink = LocalSink::start_temp(Some(tls_files(&ca, certs.path()))).await;
    let body = "Subject: from swaks\r\n\r\n.starts with a dot\r\nend\r\n";
    let body_file = certs.path().join("body.eml");
    std::fs::write(&body_file, body).unwrap();
    let port = sink.addr.port().to_string();
    let mut cmd = tokio::process::Command::new("swaks");
    cmd.args(["--server", "127.0.0.1", "--port", &port])
        .args(["--from", "a@x.example", "--to", "b@y.example,c@y.example"])
        .args(["--ehlo", "swaks.test", "--pipeline", "--tls"])
        .arg("--tls-ca-path")
        .arg(certs.path().join("sink.crt"))
        .arg("--tls-verify")
        .arg("--data")
        .arg(&body_file)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("swaks finishes within 60 s")
        .expect("swaks is installed (scripts/install-test-deps.sh)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(transcript.contains("<~  250 2.0.0 Ok: "), "{transcript}");
    // swaks ends the data with CRLF "." CRLF after the file's own last CRLF,
    // so one empty line more arrives.
    let got = sink.messages();
    assert_eq!(got, vec![format!("{body}\r\n").into_bytes()]);
    let meta = sink.sidecar(0);
    assert_eq!(meta["tls"], true);
    assert_eq!(
        meta["rcpt_to"],
        serde_json::json!(["b@y.example", "c@y.example"])
    );
    sink.stop().await;
}
