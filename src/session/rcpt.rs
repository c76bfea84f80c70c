//! RCPT TO (RFC 5321 §4.1.1.3): the relay decision is made here, per recipient.

use smtp_proto::RcptTo;

use super::Session;
use crate::error::SmtpError;
use crate::policy;
use crate::reply::Reply;
use crate::spool::{Recipient, RecipientStatus};

impl Session {
    pub(super) fn rcpt(&mut self, to: RcptTo<String>) -> Result<Reply, SmtpError> {
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
        // DSN (NOTIFY, ORCPT) is not advertised yet, nor RRVS or CONNEG.
        if to.orcpt.is_some() || to.flags != 0 || to.rrvs != 0 {
            return Err(SmtpError::UnsupportedParameter(
                "NOTIFY/ORCPT/RRVS/CONNEG".into(),
            ));
        }
        if !txn.params.smtputf8 && !to.address.is_ascii() {
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
            address: to.address,
            orcpt: None,
            notify: None,
            status: RecipientStatus::Pending,
        });
        Ok(Reply::new(250, "2.1.5", "Recipient OK"))
    }
}
