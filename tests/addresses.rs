//! Envelope addresses end to end (issue 11's findings): a relay on loopback
//! over STARTTLS, a scripted upstream that records the exact MAIL and RCPT
//! lines it reads. What the upstream reads back must be the mailbox the
//! relay's policy judged: no parameter smuggled in a quoted local part, no
//! sender-domain bypass, no mail accepted and then lost for its address.

mod support;

use smarthost::address::{Mailbox, Path};
use smarthost::spool::{Envelope, Spool};
use support::auth::{auth_plain, hash};
use support::client::{send_data, tls_session};
use support::envelope::envelope;
use support::fake_upstream::{FakeUpstream, Script, Transaction};
use support::harness::{Harness, upstream_toml};
use support::pki::HOSTNAME;
use support::wait::eventually;

const PASSWORD: &str = "correct horse battery staple";
const BODY: &[u8] = b"Subject: address test\r\n\r\nhello\r\n";

/// A relay in front of `fake`; `access` lines are added to its `[access]`.
fn harness(fake: &FakeUpstream, access: &str, extra: &str) -> Harness {
    let h = Harness::new(&format!(
        "{}{extra}",
        upstream_toml("fake", fake.address(), "none")
    ));
    h.edit_config("[access]\n", &format!("[access]\n{access}"));
    h
}

async fn eventually_transactions(fake: &FakeUpstream, n: usize) -> Vec<Transaction> {
    eventually(&format!("{n} transaction(s) at the upstream"), 20, || {
        fake.transactions()
            .iter()
            .filter(|t| t.method.is_some())
            .count()
            >= n
    })
    .await;
    fake.transactions()
        .into_iter()
        .filter(|t| t.method.is_some())
        .collect()
}

/// The path of a MAIL or RCPT line as an RFC 5321 parser reads it, and the
/// parameters after it: what the upstream understood.
fn read_back(line: &str) -> (Path, String) {
    let open = line.find('<').expect("a path");
    let mut quoted = false;
    let mut escaped = false;
    let mut close = None;
    for (i, c) in line.char_indices().skip(open + 1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close.expect("a closed path");
    let path = Path::parse(&line[open + 1..close]).unwrap_or_else(|e| panic!("{line}: {e}"));
    (path, line[close + 1..].to_owned())
}

fn mailbox(text: &str) -> Path {
    Path::Mailbox(Mailbox::parse(text).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quoted_local_part_cannot_inject_parameters_or_change_the_sender_domain() {
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "sender_domains = [\"good.test\"]\n", "");
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;

    // Judged by its real domain, good.test; the text inside the quotes is
    // a local part, whatever it looks like.
    let sender = "\"ceo@evil.test> AUTH=ceo@evil.test ENVID=x\"@good.test";
    let rcpt = "\"v@dest.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x\"@dest.test";
    let r = send_data(&mut c, sender, &[rcpt], BODY).await;
    assert_eq!(r.status(), "250 2.0.0");
    // The reverse: a domain in quotes is no domain at all.
    c.cmd("MAIL FROM:<\"ceo@good.test\"@evil.test>", "553 5.7.1")
        .await;
    c.cmd("QUIT", "221").await;

    let t = eventually_transactions(&fake, 1).await;
    let (from, params) = read_back(&t[0].mail_from);
    assert_eq!(from, mailbox(sender), "{}", t[0].mail_from);
    assert!(
        !params.contains("AUTH=") && !params.contains("ENVID="),
        "parameters injected: {}",
        t[0].mail_from
    );
    assert_eq!(t[0].rcpt_to.len(), 1);
    let (to, params) = read_back(&t[0].rcpt_to[0]);
    assert_eq!(to, mailbox(rcpt), "{}", t[0].rcpt_to[0]);
    assert!(
        !params.contains("NOTIFY=") && !params.contains("ORCPT="),
        "parameters injected: {}",
        t[0].rcpt_to[0]
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_limited_to_one_domain_cannot_send_as_another_through_quotes() {
    let fake = FakeUpstream::start(Script::default()).await;
    let user = format!(
        "[[user]]\nname = \"tenant\"\npassword_hash = \"{}\"\nallowed_sender_domains = [\"good.test\"]\n\n",
        hash(PASSWORD)
    );
    let h = harness(&fake, "", &user);
    // Only AUTH lets this client relay.
    h.replace_access_line("relay_networks = [\"192.0.2.0/24\"]");
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    c.cmd(&auth_plain("tenant", PASSWORD), "235 2.7.0").await;
    c.cmd("MAIL FROM:<\"boss@good.test\"@evil.test>", "553 5.7.1")
        .await;
    let sender = "\"boss@evil.test> AUTH=boss@evil.test\"@good.test";
    let r = send_data(&mut c, sender, &["to@dest.test"], BODY).await;
    assert_eq!(r.status(), "250 2.0.0");
    let t = eventually_transactions(&fake, 1).await;
    let (from, params) = read_back(&t[0].mail_from);
    assert_eq!(from, mailbox(sender), "{}", t[0].mail_from);
    assert!(!params.contains("AUTH="), "{}", t[0].mail_from);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_part_with_a_space_is_relayed_quoted_and_its_received_header_too() {
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "", "");
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    let r = send_data(
        &mut c,
        "\"john smith\"@good.test",
        &["\"jane doe\"@dest.test"],
        BODY,
    )
    .await;
    assert_eq!(r.status(), "250 2.0.0");
    let t = eventually_transactions(&fake, 1).await;
    assert!(
        t[0].mail_from
            .starts_with("MAIL FROM:<\"john smith\"@good.test>"),
        "{}",
        t[0].mail_from
    );
    assert!(
        t[0].rcpt_to[0].starts_with("RCPT TO:<\"jane doe\"@dest.test>"),
        "{}",
        t[0].rcpt_to[0]
    );
    let text = String::from_utf8_lossy(&t[0].message);
    assert!(
        text.contains("\tfor <\"jane doe\"@dest.test>;"),
        "Received header: {text}"
    );
    eventually("an empty queue", 10, || h.spool_files() == 0).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_spools_unquoted_address_is_quoted_on_the_way_out() {
    // Written as releases before this fix stored it: the quotes dropped.
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "", "");
    let spool = Spool::open(&h.spool_dir()).unwrap();
    let envelope = Envelope {
        size: BODY.len() as u64,
        ..envelope(
            "ceo@evil.test> AUTH=ceo@evil.test ENVID=x@good.test",
            &["john smith@dest.test"],
        )
    };
    spool.store(&envelope, BODY.to_vec()).await.unwrap();
    drop(spool);
    let relay = h.start().await;
    let t = eventually_transactions(&fake, 1).await;
    let (from, params) = read_back(&t[0].mail_from);
    assert_eq!(
        from,
        mailbox("\"ceo@evil.test> AUTH=ceo@evil.test ENVID=x\"@good.test")
    );
    assert!(!params.contains("AUTH="), "{}", t[0].mail_from);
    assert!(
        t[0].rcpt_to[0].starts_with("RCPT TO:<\"john smith\"@dest.test>"),
        "{}",
        t[0].rcpt_to[0]
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_domains_and_c1_controls_are_refused_at_mail_and_rcpt() {
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "", "");
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    // RFC 5321 §4.1.2: a Mailbox has a domain.
    c.cmd("MAIL FROM:<foo@>", "501 5.1.7").await;
    // RFC 5198: C1 controls (here CSI, U+009B) are not text.
    c.cmd("MAIL FROM:<a\u{9b}2Jb@good.test> SMTPUTF8", "501 5.1.7")
        .await;
    c.cmd("MAIL FROM:<\"a\u{85}b\"@good.test> SMTPUTF8", "501 5.1.7")
        .await;
    c.cmd("MAIL FROM:<sender@good.test> SMTPUTF8", "250").await;
    c.cmd("RCPT TO:<user@>", "501 5.1.3").await;
    c.cmd("RCPT TO:<x\u{9b}y@dest.test>", "501 5.1.3").await;
    c.cmd("RCPT TO:<ok@dest.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(BODY).await;
    c.cmd(".", "250 2.0.0").await;
    let t = eventually_transactions(&fake, 1).await;
    assert_eq!(t[0].rcpt_to.len(), 1, "{:?}", t[0].rcpt_to);
    // A UTF-8 address without controls is still fine.
    c.cmd("MAIL FROM:<josé@good.test> SMTPUTF8", "250").await;
    c.cmd("RCPT TO:<孫子@dest.test>", "250").await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postmaster_without_a_domain_is_accepted_and_relayed() {
    // RFC 5321 §4.5.1: a relay MUST accept <Postmaster>, any case.
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "", "");
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    let r = send_data(&mut c, "a@good.test", &["PostMaster"], BODY).await;
    assert_eq!(r.status(), "250 2.0.0");
    let t = eventually_transactions(&fake, 1).await;
    assert!(
        t[0].rcpt_to[0].starts_with(&format!("RCPT TO:<postmaster@{HOSTNAME}>")),
        "{}",
        t[0].rcpt_to[0]
    );
    relay.stop().await;

    // Or to the address the `postmaster` key names.
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "", "");
    h.edit_config(
        "hostname = ",
        "postmaster = \"mail-admin@corp.test\"\nhostname = ",
    );
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    let r = send_data(&mut c, "a@good.test", &["postmaster"], BODY).await;
    assert_eq!(r.status(), "250 2.0.0");
    let t = eventually_transactions(&fake, 1).await;
    assert!(
        t[0].rcpt_to[0].starts_with("RCPT TO:<mail-admin@corp.test>"),
        "{}",
        t[0].rcpt_to[0]
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postmaster_follows_the_relay_rules() {
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "", "");
    h.replace_access_line("relay_networks = [\"192.0.2.0/24\"]");
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    c.cmd("MAIL FROM:<a@good.test>", "250").await;
    c.cmd("RCPT TO:<postmaster>", "554 5.7.1").await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_null_sender_is_allowed_by_default_and_can_be_denied() {
    let fake = FakeUpstream::start(Script::default()).await;
    let h = harness(&fake, "sender_domains = [\"good.test\"]\n", "");
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    // RFC 5321 §4.5.5: notifications come from <>, which has no domain.
    c.cmd("MAIL FROM:<>", "250 2.1.0").await;
    relay.stop().await;

    let h = harness(
        &fake,
        "sender_domains = [\"good.test\"]\nnull_sender = \"deny\"\n",
        "",
    );
    let relay = h.start().await;
    let mut c = tls_session(relay.connect().await, &h.ca).await;
    c.cmd("MAIL FROM:<>", "553 5.7.1").await;
    c.cmd("MAIL FROM:<a@good.test>", "250").await;
    relay.stop().await;
}
