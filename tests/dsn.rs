//! RFC 3464 delivery status notifications, checked by parsing them back with
//! mail-parser: structure, per-recipient fields, the returned original,
//! header injection, line endings, and NOTIFY.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use smarthost::queue::dsn::{self, Action, RecipientReport};
use smarthost::spool::{ClientInfo, Envelope, MailParams, Recipient, RecipientStatus};

const HOST: &str = "relay.test";
const NOW: u64 = 1_700_000_000;
const ORIGINAL: &[u8] = b"Received: from client.test\r\n\tby relay.test\r\n\
Subject: Quarterly report\r\nMessage-ID: <orig-1@tenant.example>\r\n\
From: sender@tenant.example\r\n\r\nThe body: SECRET BODY TEXT\r\n\r\nSubject: not a header\r\n";

fn envelope(ret: Option<&str>, envid: Option<&str>) -> Envelope {
    Envelope {
        version: smarthost::spool::FORMAT_VERSION,
        id: "ID1".into(),
        received_at: NOW - 3600,
        client: ClientInfo {
            address: "192.0.2.7:40000".parse().unwrap(),
            helo: "client.test".into(),
            tls: None,
            auth: None,
        },
        sender: "sender@tenant.example".into(),
        params: MailParams {
            ret: ret.map(str::to_owned),
            envid: envid.map(str::to_owned),
            ..MailParams::default()
        },
        recipients: vec![],
        size: ORIGINAL.len() as u64,
        route_domain: None,
    }
}

fn failed<'a>(address: &'a str, status: &str, diagnostic: &str) -> RecipientReport<'a> {
    RecipientReport {
        address,
        orcpt: None,
        action: Action::Failed,
        status: status.into(),
        diagnostic: Some(diagnostic.into()),
        remote_mta: Some("eu-smtp-1.example.net:25"),
    }
}

fn two_failures() -> Vec<RecipientReport<'static>> {
    let mut first = failed("nobody@partner.example", "5.1.1", "550 5.1.1 no such user");
    first.orcpt = Some("Nobody@Partner.Example");
    vec![
        first,
        failed("full@partner.example", "5.2.2", "552 5.2.2 mailbox full"),
    ]
}

/// The three parts' content types and bodies.
fn parts<'a>(m: &'a Message<'a>) -> Vec<(String, &'a [u8])> {
    let PartType::Multipart(children) = &m.parts[0].body else {
        panic!("not multipart: {:?}", m.parts[0].body);
    };
    children
        .iter()
        .map(|&i| {
            let p = &m.parts[i as usize];
            let ct = p.content_type().unwrap();
            let ctype = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
            let body = &m.raw_message[p.offset_body as usize..p.offset_end as usize];
            (ctype, body)
        })
        .collect()
}

/// Every line ends in CRLF: no lone CR or LF anywhere, and no line over 998.
fn assert_clean_lines(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    assert!(bytes.ends_with(b"\r\n"));
    for line in bytes.split(|&b| b == b'\n') {
        assert!(line.len() <= 998, "line of {} octets", line.len());
    }
}

#[test]
fn failure_report_structure_and_fields() {
    let env = envelope(None, Some("ENV-42"));
    let bytes = dsn::build(HOST, &env, ORIGINAL, &two_failures(), NOW);
    assert_clean_lines(&bytes);
    let m = MessageParser::default().parse(&bytes).unwrap();

    let ct = m.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    let from = m.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("Mail Delivery System"));
    assert_eq!(from.address(), Some("MAILER-DAEMON@relay.test"));
    assert_eq!(
        m.to().unwrap().first().unwrap().address(),
        Some("sender@tenant.example")
    );
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert!(m.message_id().unwrap().ends_with("@relay.test"));
    assert_eq!(m.date().unwrap().to_timestamp(), NOW as i64);

    let parts = parts(&m);
    let types: Vec<&str> = parts.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );

    let human = String::from_utf8_lossy(parts[0].1);
    assert!(human.contains("<nobody@partner.example>"), "{human}");
    assert!(human.contains("550 5.1.1 no such user"), "{human}");

    let status = String::from_utf8_lossy(parts[1].1).replace("\r\n ", " ");
    for field in [
        "Reporting-MTA: dns; relay.test",
        "Original-Envelope-Id: ENV-42",
        "Arrival-Date: Tue, 14 Nov 2023 21:13:20 +0000",
        "Original-Recipient: rfc822; Nobody@Partner.Example",
        "Final-Recipient: rfc822; nobody@partner.example",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; eu-smtp-1.example.net",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        "Final-Recipient: rfc822; full@partner.example",
        "Status: 5.2.2",
        "Diagnostic-Code: smtp; 552 5.2.2 mailbox full",
        "Last-Attempt-Date: Tue, 14 Nov 2023 22:13:20 +0000",
    ] {
        assert!(
            status.contains(&format!("{field}\r\n")),
            "{field} missing in\n{status}"
        );
    }
    // One per-message group and one group per recipient (RFC 3464 §2.1).
    assert_eq!(status.trim_end().split("\r\n\r\n").count(), 3, "{status}");
    assert!(parts[1].1.is_ascii());

    let headers = String::from_utf8_lossy(parts[2].1);
    assert!(headers.contains("Subject: Quarterly report\r\n"));
    assert!(headers.contains("Message-ID: <orig-1@tenant.example>\r\n"));
    assert!(
        !headers.contains("SECRET"),
        "the body is not returned: {headers}"
    );
    assert!(!headers.contains("not a header"));
}

#[test]
fn ret_full_returns_the_whole_original() {
    let env = envelope(Some("FULL"), None);
    let bytes = dsn::build(HOST, &env, ORIGINAL, &two_failures(), NOW);
    assert_clean_lines(&bytes);
    let m = MessageParser::default().parse(&bytes).unwrap();
    let parts = parts(&m);
    assert_eq!(parts[2].0, "message/rfc822");
    assert_eq!(parts[2].1.trim_ascii_end(), ORIGINAL.trim_ascii_end());
    let PartType::Message(inner) = &m.parts[3].body else {
        panic!("not parsed as a message");
    };
    assert_eq!(inner.subject(), Some("Quarterly report"));
    assert!(
        String::from_utf8_lossy(parts[1].1)
            .find("Original-Envelope-Id")
            .is_none()
    );
}

#[test]
fn injected_line_breaks_never_make_headers() {
    let mut env = envelope(None, Some("E\r\nBcc: victim@example.com"));
    env.sender = "sender@tenant.example>\r\nBcc: victim@example.com".into();
    let evil =
        "550 5.1.1 no\r\nX-Injected: yes\r\n\r\n--boundary\nFinal-Recipient: rfc822; forged@x";
    let long = format!("550 5.7.1 {}", "blocked because of reasons ".repeat(100));
    let reports = vec![
        RecipientReport {
            orcpt: Some("o@x\r\nX-Orcpt-Injected: 1"),
            ..failed("a@partner.example\r\nX-Addr-Injected: 1", "5.1.1", evil)
        },
        failed("b@partner.example", "5.7.1", &long),
    ];
    let bytes = dsn::build(HOST, &env, ORIGINAL, &reports, NOW);
    assert_clean_lines(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    for injected in [
        "X-Injected",
        "Bcc",
        "X-Orcpt-Injected",
        "X-Addr-Injected",
        "Final-Recipient: rfc822; forged",
    ] {
        for line in text.split("\r\n") {
            assert!(
                !line.starts_with(injected),
                "{injected} became a line of its own:\n{text}"
            );
        }
    }
    let m = MessageParser::default().parse(&bytes).unwrap();
    assert!(m.header("Bcc").is_none());
    assert_eq!(parts(&m).len(), 3);
    let status = String::from_utf8_lossy(parts(&m)[1].1).into_owned();
    // The long reply is folded, not cut: unfolded it is all there.
    assert!(status.lines().all(|l| l.len() <= 78 + 30), "{status}");
    assert!(status.replace("\r\n ", " ").contains(long.trim_end()));
    let fields = status
        .split("\r\n")
        .filter(|l| l.starts_with("Final-Recipient:"));
    assert_eq!(fields.count(), 2);
}

#[test]
fn non_ascii_stays_out_of_the_status_part() {
    let env = envelope(None, None);
    let reports = vec![failed(
        "josé@exemple.fr",
        "5.1.1",
        "550 5.1.1 boîte inconnue",
    )];
    let bytes = dsn::build(HOST, &env, ORIGINAL, &reports, NOW);
    assert_clean_lines(&bytes);
    let m = MessageParser::default().parse(&bytes).unwrap();
    let parts = parts(&m);
    assert!(parts[1].1.is_ascii());
    let status = String::from_utf8_lossy(parts[1].1);
    assert!(
        status.contains("Final-Recipient: utf-8; jos\\x{E9}@exemple.fr"),
        "{status}"
    );
    // The human part keeps the text, declared as UTF-8.
    assert_eq!(
        m.parts[1].content_type().unwrap().attribute("charset"),
        Some("utf-8")
    );
    assert!(m.body_text(0).unwrap().contains("boîte inconnue"));
}

#[test]
fn delay_and_relay_reports() {
    let env = envelope(None, None);
    let mut r = failed("a@partner.example", "4.4.1", "421 4.4.1 try later");
    r.action = Action::Delayed;
    let bytes = dsn::build(HOST, &env, ORIGINAL, &[r], NOW);
    let m = MessageParser::default().parse(&bytes).unwrap();
    assert!(m.subject().unwrap().starts_with("Delayed Mail"));
    let status = String::from_utf8_lossy(parts(&m)[1].1).into_owned();
    assert!(
        status.contains("Action: delayed\r\nStatus: 4.4.1\r\n"),
        "{status}"
    );

    let relayed = RecipientReport {
        address: "b@partner.example",
        orcpt: None,
        action: Action::Relayed,
        status: "2.0.0".into(),
        diagnostic: None,
        remote_mta: None,
    };
    let bytes = dsn::build(HOST, &env, ORIGINAL, &[relayed], NOW);
    let m = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(m.subject(), Some("Delivery Status Notification (Relay)"));
    let status = String::from_utf8_lossy(parts(&m)[1].1).into_owned();
    assert!(
        status.contains("Action: relayed\r\nStatus: 2.0.0\r\n"),
        "{status}"
    );
    assert!(!status.contains("Remote-MTA") && !status.contains("Diagnostic-Code"));
}

#[test]
fn an_original_without_a_body_or_with_bare_newlines() {
    let env = envelope(None, None);
    let bytes = dsn::build(
        HOST,
        &env,
        b"Subject: only headers\nX: y",
        &two_failures(),
        NOW,
    );
    assert_clean_lines(&bytes);
    let m = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(parts(&m)[2].1, b"Subject: only headers\r\nX: y\r\n");
}

fn recipient(notify: Option<&[&str]>) -> Recipient {
    Recipient {
        address: "a@partner.example".into(),
        orcpt: None,
        notify: notify.map(|n| n.iter().map(|s| s.to_string()).collect()),
        status: RecipientStatus::Pending,
    }
}

#[test]
fn notify_decides_who_hears() {
    let default = recipient(None);
    assert!(dsn::wants(&default, &Action::Failed));
    assert!(dsn::wants(&default, &Action::Delayed));
    assert!(!dsn::wants(&default, &Action::Relayed));
    let never = recipient(Some(&["NEVER"]));
    for a in [
        Action::Failed,
        Action::Delayed,
        Action::Relayed,
        Action::Delivered,
    ] {
        assert!(!dsn::wants(&never, &a));
    }
    let success = recipient(Some(&["SUCCESS"]));
    assert!(!dsn::wants(&success, &Action::Failed));
    assert!(!dsn::wants(&success, &Action::Delayed));
    assert!(dsn::wants(&success, &Action::Relayed));
    let both = recipient(Some(&["SUCCESS", "FAILURE"]));
    assert!(dsn::wants(&both, &Action::Failed));
    assert!(!dsn::wants(&both, &Action::Delayed));
}
