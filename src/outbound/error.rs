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
    /// The reply to record for recipients deferred by this error (RFC 3463
    /// codes: 4.4.1 no answer, 4.4.2 bad connection, 4.7.5 cryptographic failure).
    pub fn reply(&self) -> UpstreamReply {
        let text = self.to_string();
        match self {
            UpstreamError::Rejected { reply, .. } => reply.clone(),
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
