//! How a conversation with an upstream fails: where (`Stage`) and why
//! (`UpstreamError`). Below both the client and its wire, so neither imports
//! the other for them.

use std::fmt;
use std::io;

use super::reply::UpstreamReply;

/// Where in the conversation something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Reset,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::Reset => "RSET",
        })
    }
}

/// The whole attempt failed; all are temporary: fail over to the next upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("timed out at {0}")]
    Timeout(Stage),
    /// Handshake or certificate verification failed.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// `tls = "required"` but STARTTLS was not offered (or `opportunistic`
    /// with credentials: a password never goes out in the clear).
    #[error("STARTTLS required but not offered")]
    NoStartTls,
    #[error("{stage} rejected: {reply}")]
    Rejected { stage: Stage, reply: UpstreamReply },
    /// Garbage, an over-long reply, the connection closed or lost.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// The reply to record for recipients deferred by this error, with the
    /// error (and so the stage) as its text. RFC 3463 codes: 4.4.1 no answer,
    /// 4.4.2 bad connection, 4.7.5 cryptographic failure. An upstream's own
    /// refusal keeps its code when temporary; a permanent one (a 535 to AUTH,
    /// a 554 greeting) says what is wrong with this relay's link to that
    /// upstream, not with the message, so it is recorded as temporary (451,
    /// class 4, the upstream's subject and detail) and tried again.
    pub fn reply(&self) -> UpstreamReply {
        let text = self.to_string();
        match self {
            UpstreamError::Rejected { reply, .. } if reply.is_transient() => UpstreamReply {
                text,
                ..reply.clone()
            },
            UpstreamError::Rejected { reply, .. } => {
                let status = match reply.status.as_deref().and_then(|s| s.split_once('.')) {
                    Some((_, rest)) => format!("4.{rest}"),
                    None => "4.0.0".to_owned(),
                };
                UpstreamReply::synthetic(451, &status, &text)
            }
            UpstreamError::Connect(_) | UpstreamError::Timeout(_) => {
                UpstreamReply::synthetic(451, "4.4.1", &text)
            }
            UpstreamError::Tls(_) | UpstreamError::NoStartTls => {
                UpstreamReply::synthetic(451, "4.7.5", &text)
            }
            UpstreamError::Protocol(_) => UpstreamReply::synthetic(451, "4.4.2", &text),
        }
    }
}
