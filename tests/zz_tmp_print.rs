use smarthost::queue::dsn::{self, Action, RecipientReport};
use smarthost::spool::*;
#[test]
fn print() {
    let env = Envelope { version: 1, id: "X".into(), received_at: 1_700_000_000, client: ClientInfo { address: "192.0.2.7:1".parse().unwrap(), helo: "h".into(), tls: None, auth: None }, sender: "s@t.example".into(), params: MailParams { envid: Some("QQ314159".into()), ..Default::default() }, recipients: vec![], size: 0, route_domain: None };
    let r = RecipientReport { address: "a@b.example", orcpt: Some("A@B.example"), action: Action::Failed, status: "5.1.1".into(), diagnostic: Some("550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in virtual mailbox table; see https://example.net/why".into()), remote_mta: Some("mx.b.example:25") };
    let b = dsn::build("relay.test", &env, b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n", &[r], 1_700_000_100);
    print!("{}", String::from_utf8_lossy(&b));
}
