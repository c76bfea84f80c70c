//! Everything the session refuses, and the one place each refusal becomes
//! an SMTP reply. Codes follow `shared/INTERFACE.md`, and RFC 5321 / RFC 3463
//! where it is silent.

use crate::reply::Reply;
use crate::spool::SpoolError;

/// What can go wrong in a session, as the client will be told.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("unknown command")]
    UnknownCommand,
    #[error("bad sequence: {0}")]
    BadSequence(&'static str),
    #[error("command line too long")]
    LineTooLong,
    /// RFC 5321 §2.3.8: commands end in CRLF; CR or NUL elsewhere is refused.
    #[error("NUL or bare CR in command")]
    BadCharacters,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad sender address")]
    BadSender,
    #[error("bad recipient address")]
    BadRecipient,
    /// `<Postmaster>` without a domain, and no `postmaster` address to
    /// relay it to (the hostname is not a mail domain).
    #[error("no postmaster address configured")]
    NoPostmaster,
    /// RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter.
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtputf8,
    #[error("unsupported parameter {0}")]
    UnsupportedParameter(String),
    #[error("invalid value for {0}")]
    InvalidParameter(&'static str),
    /// RFC 3207 §4: on a TLS-required listener.
    #[error("TLS required")]
    TlsRequired,
    #[error("STARTTLS not available")]
    TlsUnavailable,
    #[error("already using TLS")]
    AlreadyTls,
    #[error("relaying denied")]
    RelayDenied,
    #[error("sender domain not allowed")]
    SenderDenied,
    #[error("message too big")]
    MessageTooBig,
    #[error("too many recipients")]
    TooManyRecipients,
    /// RFC 5321 §6.3: a mail loop.
    #[error("too many Received headers")]
    TooManyHops,
    #[error("bare CR or LF in message")]
    BareLineEnding,
    #[error("NUL in message")]
    NulInContent,
    #[error("BDAT size out of range")]
    BdatSizeOutOfRange,
    #[error("authentication not available")]
    AuthUnavailable,
    /// RFC 4954 §6: AUTH before TLS on a listener where TLS is optional.
    #[error("encryption required for authentication")]
    EncryptionRequired,
    #[error("unsupported SASL mechanism")]
    UnsupportedMechanism,
    #[error("authentication cancelled")]
    AuthCancelled,
    #[error("invalid base64 in SASL response")]
    BadBase64,
    #[error("authentication failed")]
    AuthFailed,
    #[error("too many authentication failures")]
    TooManyAuthFailures,
    #[error("too many connections from this address")]
    TooManyConnectionsFromIp,
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("shutting down")]
    ShuttingDown,
    #[error("timeout")]
    Timeout,
    #[error("too many errors")]
    TooManyErrors,
    #[error("too many connections")]
    TooManyConnections,
    #[error("client talked before the greeting")]
    Pregreet,
    /// CVE-2011-0411: bytes after STARTTLS in the same packet.
    #[error("data pipelined after STARTTLS")]
    PipelinedStartTls,
    #[error("TLS handshake failed")]
    TlsHandshake,
}

impl SmtpError {
    /// The `reason` label of `smarthost_refused_total` for refusals an
    /// operator graphs; `None` for protocol mistakes and our own trouble.
    pub fn metric_reason(&self) -> Option<&'static str> {
        use SmtpError::*;
        Some(match self {
            RelayDenied => "relay_denied",
            AuthFailed | TooManyAuthFailures => "auth_failed",
            TlsRequired | EncryptionRequired => "tls_required",
            SenderDenied => "sender_domain",
            MessageTooBig => "size",
            TooManyConnections | TooManyConnectionsFromIp => "rate",
            _ => return None,
        })
    }

    /// The reply for this error. This is the only place error codes are chosen.
    pub fn reply(&self) -> Reply {
        use SmtpError::*;
        match self {
            UnknownCommand => Reply::new(500, "5.5.1", "Command unrecognized"),
            BadSequence(why) => {
                Reply::new(503, "5.5.1", format!("Bad sequence of commands: {why}"))
            }
            LineTooLong => Reply::new(500, "5.5.2", "Line too long"),
            BadCharacters => Reply::new(500, "5.5.2", "Command contains NUL or bare CR"),
            Syntax(usage) => Reply::new(501, "5.5.4", format!("Syntax: {usage}")),
            BadSender => Reply::new(501, "5.1.7", "Bad sender address syntax"),
            BadRecipient => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            NoPostmaster => Reply::new(
                550,
                "5.1.1",
                "No postmaster address is configured here; write postmaster@domain",
            ),
            NeedsSmtputf8 => Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"),
            UnsupportedParameter(p) => {
                Reply::new(555, "5.5.4", format!("Unsupported parameter {p}"))
            }
            InvalidParameter(p) => Reply::new(501, "5.5.4", format!("Invalid value for {p}")),
            TlsRequired => Reply::new(530, "5.7.0", "Must issue a STARTTLS command first"),
            TlsUnavailable => Reply::new(502, "5.5.1", "STARTTLS not available here"),
            AlreadyTls => Reply::new(503, "5.5.1", "TLS already active"),
            RelayDenied => Reply::new(554, "5.7.1", "Relaying denied"),
            SenderDenied => Reply::new(553, "5.7.1", "Sender address not allowed here"),
            MessageTooBig => Reply::new(552, "5.3.4", "Message size exceeds fixed maximum"),
            TooManyRecipients => Reply::new(452, "4.5.3", "Too many recipients"),
            TooManyHops => Reply::new(554, "5.4.6", "Too many Received headers: mail loop"),
            BareLineEnding => Reply::new(
                550,
                "5.5.2",
                "Bare CR or LF in message content; lines must end in CRLF",
            ),
            // RFC 3463 §3.7: X.6.0, a media problem; BINARYMIME is not offered.
            NulInContent => Reply::new(
                554,
                "5.6.0",
                "NUL characters are not allowed in message content",
            ),
            BdatSizeOutOfRange => Reply::new(501, "5.5.4", "BDAT chunk size out of range"),
            AuthUnavailable => Reply::new(502, "5.5.1", "AUTH not available"),
            EncryptionRequired => Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ),
            UnsupportedMechanism => Reply::new(504, "5.5.4", "Unrecognized authentication type"),
            AuthCancelled => Reply::new(501, "5.7.0", "Authentication cancelled"),
            BadBase64 => Reply::new(501, "5.5.2", "Cannot decode response"),
            AuthFailed => Reply::new(535, "5.7.8", "Authentication credentials invalid"),
            TooManyAuthFailures => Reply::new(
                421,
                "4.7.0",
                "Too many authentication failures, closing connection",
            ),
            TooManyConnectionsFromIp => {
                Reply::new(421, "4.7.0", "Too many connections from your address")
            }
            Spool(e) if e.is_out_of_space() => {
                Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
            }
            Spool(_) => Reply::new(451, "4.3.0", "Local error in processing, try again later"),
            ShuttingDown => Reply::new(421, "4.3.2", "Service shutting down, try again later"),
            Timeout => Reply::new(421, "4.4.2", "Timeout exceeded, closing connection"),
            TooManyErrors => Reply::new(421, "4.7.0", "Too many errors, closing connection"),
            TooManyConnections => Reply::new(421, "4.3.2", "Too many connections, try again later"),
            Pregreet => Reply::new(554, "5.5.0", "Protocol error: talked before the greeting"),
            PipelinedStartTls => Reply::new(
                554,
                "5.5.0",
                "Protocol error: data pipelined after STARTTLS",
            ),
            TlsHandshake => Reply::new(454, "4.7.0", "TLS not available due to temporary reason"),
        }
    }

    /// After this reply the connection is closed.
    pub fn closes_connection(&self) -> bool {
        use SmtpError::*;
        matches!(
            self,
            ShuttingDown
                | TooManyAuthFailures
                | TooManyConnectionsFromIp
                | Timeout
                | TooManyErrors
                | TooManyConnections
                | Pregreet
                | PipelinedStartTls
                | BdatSizeOutOfRange
                | TlsHandshake
        )
    }

    /// Counts toward `max_errors`: protocol mistakes, not our own trouble or
    /// ordinary policy answers a correct client may get.
    pub fn counts_as_error(&self) -> bool {
        use SmtpError::*;
        matches!(
            self,
            UnknownCommand
                | BadSequence(_)
                | LineTooLong
                | BadCharacters
                | Syntax(_)
                | BadSender
                | BadRecipient
                | UnsupportedParameter(_)
                | InvalidParameter(_)
                | TlsRequired
                | RelayDenied
                | AuthUnavailable
                | EncryptionRequired
                | UnsupportedMechanism
                | BadBase64
        )
    }
}

impl SmtpError {
    /// A stable name for the refusal, for log lines (`reason=`) and whoever
    /// counts refusals: it never changes with the reply's wording.
    pub fn reason(&self) -> &'static str {
        use SmtpError::*;
        match self {
            UnknownCommand | LineTooLong | BadCharacters | Syntax(_) | BadBase64 => "syntax",
            BadSequence(_) | AlreadyTls => "sequence",
            BadSender | BadRecipient | NeedsSmtputf8 | NoPostmaster => "address",
            UnsupportedParameter(_) | InvalidParameter(_) => "parameter",
            TlsRequired | EncryptionRequired => "tls_required",
            TlsUnavailable | TlsHandshake => "tls",
            RelayDenied => "relay_denied",
            SenderDenied => "sender_domain",
            MessageTooBig | BdatSizeOutOfRange => "size",
            TooManyRecipients => "recipients",
            TooManyHops => "loop",
            BareLineEnding | NulInContent => "content",
            AuthUnavailable | UnsupportedMechanism | AuthCancelled => "auth",
            AuthFailed | TooManyAuthFailures => "auth_failed",
            TooManyConnectionsFromIp | TooManyConnections | TooManyErrors => "rate",
            Pregreet | PipelinedStartTls => "protocol",
            Spool(_) => "storage",
            ShuttingDown => "shutdown",
            Timeout => "timeout",
        }
    }
}
