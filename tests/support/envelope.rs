//! Envelopes as the spool stores them, for tests that write a spool by hand
//! or drive the outbound client without a session.

use smarthost::spool::{
    ClientInfo, Envelope, FORMAT_VERSION, MailParams, Recipient, RecipientStatus, new_queue_id,
    unix_now,
};

/// A fresh envelope from `sender` to `recipients` (all pending), as a
/// plaintext client at 127.0.0.1 would have left it; `size` is 0.
pub fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
    Envelope {
        version: FORMAT_VERSION,
        id: new_queue_id(),
        received_at: unix_now(),
        client: ClientInfo {
            address: "127.0.0.1:4000".parse().unwrap(),
            helo: "client.test".into(),
            tls: None,
            auth: None,
        },
        sender: sender.into(),
        params: MailParams::default(),
        recipients: recipients
            .iter()
            .map(|a| Recipient {
                address: (*a).into(),
                orcpt: None,
                notify: None,
                status: RecipientStatus::Pending,
            })
            .collect(),
        size: 0,
        route_domain: None,
    }
}
