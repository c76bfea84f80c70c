//! EHLO and HELO (RFC 5321 §4.1.1.1): the greeting, and the extensions we offer.

use super::{Greeting, Session};
use crate::reply::Reply;

impl Session {
    /// Answers EHLO (`esmtp`) or HELO; either one resets any transaction.
    pub(super) fn ehlo(&mut self, host: String, esmtp: bool) -> Reply {
        self.txn = None;
        let hostname = &self.ctx.config.hostname;
        let hello = format!("{hostname} Hello {host} [{}]", self.client_ip());
        self.greeting = Some(Greeting { name: host, esmtp });
        if !esmtp {
            return Reply::plain(250, vec![hello.into()]);
        }
        // Never BINARYMIME or Exchange's private verbs (X-ANONYMOUSTLS,
        // XEXCH50, ...): we implement none of them. DSN (RFC 3461) is honoured
        // by delivery: NOTIFY, RET, ENVID and ORCPT are kept and passed on.
        let mut lines = vec![
            hello.into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.ctx.config.limits.max_message_size).into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
        ];
        if self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::plain(250, lines)
    }
}
