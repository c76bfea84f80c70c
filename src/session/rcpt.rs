//! RCPT TO (RFC 5321 §4.1.1.3): the relay decision is made here, per recipient.

use smtp_proto::{
    RCPT_CONNEG, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
    RCPT_RRVS_CONTINUE, RCPT_RRVS_REJECT, RcptTo,
};

use super::Session;
use crate::address::Path;
use crate::error::SmtpError;
use crate::policy;
use crate::reply::Reply;
use crate::spool::{Recipient, RecipientStatus};

impl Session {
    pub(super) fn rcpt(&mut self, to: RcptTo<String>, path: Path) -> Result<Reply, SmtpError> {
        let max = self.ctx.config.limits.max_recipients;
        let may_relay = policy::may_relay(
            &self.ctx.config.access,
            self.client_ip(),
            self.auth.is_some(),
        );
        let Some(txn) = self.txn.as_mut() else {
            return Err(SmtpError::BadSequence("send MAIL first"));
        };
        if txn.body.is_some() {
            return Err(SmtpError::BadSequence("RCPT after message content started"));
        }
        // DSN's NOTIFY and ORCPT (RFC 3461) are kept; RRVS and CONNEG are not offered.
        if to.rrvs != 0 || to.flags & (RCPT_CONNEG | RCPT_RRVS_REJECT | RCPT_RRVS_CONTINUE) != 0 {
            return Err(SmtpError::UnsupportedParameter("RRVS/CONNEG".into()));
        }
        // RFC 3461 §4.1: NEVER stands alone; smtp-proto lets "NEVER,SUCCESS" through.
        if to.flags & RCPT_NOTIFY_NEVER != 0
            && to.flags & (RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY) != 0
        {
            return Err(SmtpError::InvalidParameter("NOTIFY"));
        }
        let notify = notify_keywords(to.flags);
        let mailbox = match path {
            Path::Mailbox(m) => m,
            // RFC 5321 §4.5.1: `<Postmaster>` without a domain MUST be
            // accepted. A relay has no mailbox of its own, so it goes where
            // `postmaster` names, under the same relay rules as any other.
            Path::Postmaster => match &self.ctx.config.postmaster {
                Some(m) => m.clone(),
                None => return Err(SmtpError::NoPostmaster),
            },
            Path::Null => return Err(SmtpError::BadRecipient),
        };
        if !txn.params.smtputf8 && !mailbox.is_ascii() {
            return Err(SmtpError::NeedsSmtputf8);
        }
        if !may_relay {
            return Err(SmtpError::RelayDenied);
        }
        // RFC 5321 §4.5.3.1.8: 452 tells the client to send the rest later.
        if txn.recipients.len() >= max {
            return Err(SmtpError::TooManyRecipients);
        }
        txn.recipients.push(Recipient {
            // The wire form: what the upstream will read back.
            address: mailbox.to_string(),
            orcpt: to.orcpt,
            notify: (!notify.is_empty()).then_some(notify),
            status: RecipientStatus::Pending,
        });
        Ok(Reply::new(250, "2.1.5", "Recipient OK"))
    }
}

/// The NOTIFY keywords (RFC 3461 §4.1) set in smtp-proto's RCPT flags, in
/// the order they are stored in the spool.
pub fn notify_keywords(flags: u64) -> Vec<String> {
    [
        (RCPT_NOTIFY_NEVER, "NEVER"),
        (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
        (RCPT_NOTIFY_FAILURE, "FAILURE"),
        (RCPT_NOTIFY_DELAY, "DELAY"),
    ]
    .iter()
    .filter(|(flag, _)| flags & flag != 0)
    .map(|(_, name)| (*name).to_owned())
    .collect()
}
