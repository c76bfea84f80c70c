//! What one delivery attempt means for each recipient: a pure function of the
//! replies (or of why there were none) and of the message's age. The delivery
//! path records, logs and notifies from the verdict; the reply stays typed
//! until it is stored, so the queue listing and the bounce show the
//! upstream's real reply or our own precise one.

use std::time::Duration;

use crate::outbound::{UpstreamError, UpstreamReply};
use crate::queue::dsn::Action;

/// Why an attempt produced no per-recipient replies.
#[derive(Debug)]
pub enum AttemptError {
    /// No route for the sender's domain, and no default route.
    NoRoute,
    /// Every upstream of the route failed; the last one's error.
    Upstream { name: String, error: UpstreamError },
}

impl AttemptError {
    /// The reply recorded for every recipient of the attempt.
    pub fn reply(&self) -> UpstreamReply {
        match self {
            // RFC 3463 X.4.4: unable to route. Temporary: a reload may add a route.
            AttemptError::NoRoute => {
                UpstreamReply::synthetic(451, "4.4.4", "no route for this sender domain")
            }
            AttemptError::Upstream { name, error } => {
                let reply = error.reply();
                UpstreamReply {
                    text: format!("upstream {name}: {}", reply.text),
                    ..reply
                }
            }
        }
    }
}

/// One recipient's fate after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered(UpstreamReply),
    /// Temporary: tried again after the backoff.
    Deferred(UpstreamReply),
    /// Refused for good by the upstream.
    Failed(UpstreamReply),
    /// Still temporary, but the message outlived `max_lifetime`: our own
    /// `554 5.4.7` with the last reply in its text.
    Expired(UpstreamReply),
}

/// The verdict on `reply` for a message that has (`expired`) or has not
/// outlived `max_lifetime`.
pub fn classify(reply: UpstreamReply, expired: bool, max_lifetime: Duration) -> Verdict {
    if reply.is_positive() {
        Verdict::Delivered(reply)
    } else if reply.is_permanent() {
        Verdict::Failed(reply)
    } else if expired {
        // RFC 3463 X.4.7: delivery time expired.
        let text = format!(
            "expired after {} in the queue; last reply: {reply}",
            humantime::format_duration(max_lifetime)
        );
        Verdict::Expired(UpstreamReply::synthetic(554, "5.4.7", &text))
    } else {
        Verdict::Deferred(reply)
    }
}

impl Verdict {
    pub fn reply(&self) -> &UpstreamReply {
        match self {
            Verdict::Delivered(r)
            | Verdict::Deferred(r)
            | Verdict::Failed(r)
            | Verdict::Expired(r) => r,
        }
    }

    /// The notice this verdict may call for (the recipient's NOTIFY decides):
    /// failures, and "relayed" for a recipient handed to an upstream without
    /// DSN, which cannot send the success notice itself (RFC 3461 §6.2.3.1).
    pub fn notice(&self, upstream_has_dsn: bool) -> Option<Action> {
        match self {
            Verdict::Delivered(_) if !upstream_has_dsn => Some(Action::Relayed),
            Verdict::Failed(_) | Verdict::Expired(_) => Some(Action::Failed),
            _ => None,
        }
    }

    /// The RFC 3464 `Status:` for a notice: the reply's enhanced code, or
    /// the class's generic one when the upstream gave none.
    pub fn status(&self) -> String {
        let generic = match self {
            Verdict::Delivered(_) => "2.0.0",
            Verdict::Deferred(_) => "4.0.0",
            Verdict::Failed(_) | Verdict::Expired(_) => "5.0.0",
        };
        self.reply()
            .status
            .clone()
            .unwrap_or_else(|| generic.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::outbound::Stage;

    const DAY: Duration = Duration::from_secs(86400);

    fn reply(raw: &str) -> UpstreamReply {
        UpstreamReply::parse(format!("{raw}\r\n").as_bytes()).unwrap()
    }

    fn failed(error: UpstreamError) -> UpstreamReply {
        AttemptError::Upstream {
            name: "eu".into(),
            error,
        }
        .reply()
    }

    #[test]
    fn replies_classify_by_class_and_age() {
        // (reply, expired, verdict kind, recorded reply)
        let table = [
            ("250 2.0.0 ok", false, "delivered", "250 2.0.0 ok"),
            ("250 2.0.0 ok", true, "delivered", "250 2.0.0 ok"),
            (
                "550 5.1.1 no such user",
                false,
                "failed",
                "550 5.1.1 no such user",
            ),
            (
                "550 5.1.1 no such user",
                true,
                "failed",
                "550 5.1.1 no such user",
            ),
            ("451 4.7.500 busy", false, "deferred", "451 4.7.500 busy"),
            (
                "451 4.7.500 busy",
                true,
                "expired",
                "554 5.4.7 expired after 1day in the queue; last reply: 451 4.7.500 busy",
            ),
            ("452 too many", false, "deferred", "452 too many"),
        ];
        for (raw, expired, kind, recorded) in table {
            let v = classify(reply(raw), expired, DAY);
            let got = match &v {
                Verdict::Delivered(_) => "delivered",
                Verdict::Deferred(_) => "deferred",
                Verdict::Failed(_) => "failed",
                Verdict::Expired(_) => "expired",
            };
            assert_eq!(
                (got, v.reply().to_string().as_str()),
                (kind, recorded),
                "{raw} {expired}"
            );
        }
    }

    #[test]
    fn notices_and_their_status() {
        let delivered = classify(reply("250 ok"), false, DAY);
        assert_eq!(delivered.notice(false), Some(Action::Relayed));
        assert_eq!(delivered.notice(true), None);
        assert_eq!(delivered.status(), "2.0.0");
        let failed = classify(reply("550 5.1.1 no"), false, DAY);
        assert_eq!(
            (failed.notice(true), failed.status().as_str()),
            (Some(Action::Failed), "5.1.1")
        );
        let plain = classify(reply("550 no"), false, DAY);
        assert_eq!(plain.status(), "5.0.0");
        let expired = classify(reply("451 4.4.1 later"), true, DAY);
        assert_eq!(
            (expired.notice(true), expired.status().as_str()),
            (Some(Action::Failed), "5.4.7")
        );
        let deferred = classify(reply("451 4.4.1 later"), false, DAY);
        assert_eq!(
            (deferred.notice(false), deferred.status().as_str()),
            (None, "4.4.1")
        );
    }

    #[test]
    fn attempt_errors_are_recorded_with_precise_codes() {
        let no_route = AttemptError::NoRoute.reply();
        assert_eq!(
            no_route.to_string(),
            "451 4.4.4 no route for this sender domain"
        );

        let refused = failed(UpstreamError::Connect(
            io::ErrorKind::ConnectionRefused.into(),
        ));
        assert_eq!(
            (refused.code, refused.status.as_deref()),
            (451, Some("4.4.1"))
        );
        assert!(
            refused.text.starts_with("upstream eu: cannot connect"),
            "{refused}"
        );
        let timeout = failed(UpstreamError::Timeout(Stage::Data));
        assert_eq!(
            timeout.to_string(),
            "451 4.4.1 upstream eu: timed out at DATA"
        );
        let lost = failed(UpstreamError::Protocol("connection closed".into()));
        assert_eq!(
            lost.to_string(),
            "451 4.4.2 upstream eu: protocol error: connection closed"
        );
        let tls = failed(UpstreamError::Tls("unknown issuer".into()));
        assert_eq!(
            tls.to_string(),
            "451 4.7.5 upstream eu: TLS failed: unknown issuer"
        );
        let plain = failed(UpstreamError::NoStartTls);
        assert_eq!(plain.status.as_deref(), Some("4.7.5"));

        // The upstream's own temporary refusal keeps its code.
        let closing = failed(UpstreamError::Rejected {
            stage: Stage::Mail,
            reply: reply("421 4.3.2 shutting down"),
        });
        assert_eq!(
            closing.to_string(),
            "421 4.3.2 upstream eu: MAIL rejected: 421 4.3.2 shutting down"
        );
        // A permanent refusal of the link (not of the message) is temporary here.
        let auth = failed(UpstreamError::Rejected {
            stage: Stage::Auth,
            reply: reply("535 5.7.8 bad credentials"),
        });
        assert_eq!(
            auth.to_string(),
            "451 4.7.8 upstream eu: AUTH rejected: 535 5.7.8 bad credentials"
        );
        let greeting = failed(UpstreamError::Rejected {
            stage: Stage::Greeting,
            reply: reply("554 go away"),
        });
        assert_eq!(
            (greeting.code, greeting.status.as_deref()),
            (451, Some("4.0.0"))
        );

        // Each of them defers, and expires once the message is too old.
        for r in [
            no_route, refused, timeout, lost, tls, closing, auth, greeting,
        ] {
            assert!(
                matches!(classify(r.clone(), false, DAY), Verdict::Deferred(_)),
                "{r}"
            );
            assert!(
                matches!(classify(r.clone(), true, DAY), Verdict::Expired(_)),
                "{r}"
            );
        }
    }
}
