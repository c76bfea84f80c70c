//! MAIL FROM (RFC 5321 §4.1.1.2) and its ESMTP parameters.

use smtp_proto::{
    MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_BY_NOTIFY, MAIL_BY_RETURN,
    MAIL_BY_TRACE, MAIL_CONPERM, MAIL_REQUIRETLS, MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8,
    MailFrom,
};

use super::{Session, Transaction};
use crate::address::{Mailbox, Path};
use crate::error::SmtpError;
use crate::policy;
use crate::reply::Reply;
use crate::spool::MailParams;

impl Session {
    pub(super) fn mail(&mut self, from: MailFrom<String>, path: Path) -> Result<Reply, SmtpError> {
        if self.greeting.is_none() {
            return Err(SmtpError::BadSequence("send EHLO or HELO first"));
        }
        if self.txn.is_some() {
            return Err(SmtpError::BadSequence("nested MAIL command"));
        }
        reject_unoffered_parameters(&from)?;
        let sender = match path {
            Path::Null => None,
            Path::Mailbox(m) => Some(m),
            Path::Postmaster => return Err(SmtpError::BadSender),
        };
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && sender.as_ref().is_some_and(|m| !m.is_ascii()) {
            return Err(SmtpError::NeedsSmtputf8);
        }
        let limit = self.ctx.config.limits.max_message_size;
        // RFC 1870 §6.2: a declared size over the limit is refused at MAIL.
        if from.size > limit {
            return Err(SmtpError::MessageTooBig);
        }
        let user = self
            .auth
            .as_deref()
            .and_then(|name| self.ctx.users.get(name));
        // Also refused: a sender no route takes (routes by sender domain
        // without a default route), rather than accepted and bounced later.
        let domain = sender.as_ref().map(Mailbox::domain_lowercase);
        if !policy::sender_allowed(&self.ctx.config.access, user, sender.as_ref())
            || !self.ctx.delivery.routable(domain.as_deref())
        {
            return Err(SmtpError::SenderDenied);
        }
        let body = if from.flags & MAIL_BODY_8BITMIME != 0 {
            Some("8BITMIME".to_owned())
        } else if from.flags & MAIL_BODY_7BIT != 0 {
            Some("7BIT".to_owned())
        } else {
            None
        };
        self.txn = Some(Transaction {
            // The wire form: what the upstream will read back as `sender`.
            sender: sender.map(|m| m.to_string()).unwrap_or_default(),
            params: MailParams {
                declared_size: (from.size > 0).then_some(from.size as u64),
                body,
                smtputf8,
                ret: if from.flags & MAIL_RET_FULL != 0 {
                    Some("FULL".to_owned())
                } else if from.flags & MAIL_RET_HDRS != 0 {
                    Some("HDRS".to_owned())
                } else {
                    None
                },
                envid: from.env_id,
            },
            recipients: Vec::new(),
            body: None,
            chunking: false,
        });
        Ok(Reply::new(250, "2.1.0", "Sender OK"))
    }
}

/// RFC 5321 §4.1.1.11 / RFC 1869: parameters of extensions we did not
/// advertise are refused (`555 5.5.4`), not silently dropped. DSN's RET and
/// ENVID (RFC 3461) are advertised and kept. `AUTH=` (RFC 4954
/// §5) is ignored: Exchange may send `AUTH=<>` and it carries nothing we use.
fn reject_unoffered_parameters(from: &MailFrom<String>) -> Result<(), SmtpError> {
    let unsupported = |p: &str| Err(SmtpError::UnsupportedParameter(p.to_owned()));
    if from.flags & MAIL_BODY_BINARYMIME != 0 {
        return unsupported("BODY=BINARYMIME");
    }
    if from.flags & MAIL_REQUIRETLS != 0 {
        return unsupported("REQUIRETLS");
    }
    if from.flags & MAIL_CONPERM != 0 {
        return unsupported("CONPERM");
    }
    if from.by != 0 || from.flags & (MAIL_BY_NOTIFY | MAIL_BY_RETURN | MAIL_BY_TRACE) != 0 {
        return unsupported("BY");
    }
    if from.hold_for != 0 || from.hold_until != 0 {
        return unsupported("HOLDFOR/HOLDUNTIL");
    }
    if from.mt_priority != 0 {
        return unsupported("MT-PRIORITY");
    }
    if from.trans_id.is_some() || from.solicit.is_some() || from.mtrk.is_some() {
        return unsupported("TRANSID/SOLICIT/MTRK");
    }
    Ok(())
}
