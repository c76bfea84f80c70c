//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, as
//! Exchange's "Basic authentication" uses them.

use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tracing::{info, warn};

use super::{Flow, Session, State};
use crate::auth::{self, Credentials};
use crate::error::SmtpError;
use crate::reply::Reply;

/// A SASL exchange in progress: what the next client line answers.
#[derive(Debug)]
pub(super) enum SaslStep {
    /// PLAIN without an initial response: the whole message comes next.
    Plain,
    /// LOGIN: the username comes next.
    LoginUser,
    /// LOGIN: the password for `user` comes next.
    LoginPassword { user: String },
}

/// "Username:" and "Password:" in base64, the LOGIN challenges every client expects.
const USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
const PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

impl Session {
    /// AUTH is offered only inside TLS and only when users are configured.
    pub(super) fn auth_offered(&self) -> bool {
        self.tls.is_some() && !self.ctx.users.is_empty()
    }

    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) -> Flow {
        if self.tls.is_none() {
            // On a require_tls listener the 530 was sent already; here TLS is optional.
            return self.refuse(SmtpError::EncryptionRequired);
        }
        if self.ctx.users.is_empty() {
            return self.refuse(SmtpError::AuthUnavailable);
        }
        if self.auth.is_some() {
            return self.refuse(SmtpError::BadSequence("already authenticated"));
        }
        if self.txn.is_some() {
            return self.refuse(SmtpError::BadSequence("AUTH inside a mail transaction"));
        }
        if self.greeting.is_none() {
            return self.refuse(SmtpError::BadSequence("send EHLO first"));
        }
        let step = match mechanism {
            AUTH_PLAIN => SaslStep::Plain,
            AUTH_LOGIN => SaslStep::LoginUser,
            _ => return self.refuse(SmtpError::UnsupportedMechanism),
        };
        if initial.is_empty() {
            let challenge = match step {
                SaslStep::Plain => "",
                _ => USERNAME_CHALLENGE,
            };
            self.reply(Reply::plain(334, vec![challenge.into()]));
            self.state = State::Auth(step);
            return Flow::Continue;
        }
        self.sasl_response(step, &initial).await
    }

    /// One client line during a SASL exchange.
    pub(super) async fn sasl_line(&mut self, step: SaslStep, line: &[u8]) -> Flow {
        self.state = State::Command;
        let Ok(text) = std::str::from_utf8(line) else {
            return self.refuse(SmtpError::BadBase64);
        };
        let text = text.trim_end_matches(['\r', '\n']);
        // RFC 4954 §4: "*" cancels the exchange. A cancelled exchange did no
        // work, like a NOOP: endless AUTH / "*" cycles end at the junk limit.
        if text == "*" {
            if self.junk_command() == Flow::Close {
                return Flow::Close;
            }
            return self.refuse(SmtpError::AuthCancelled);
        }
        self.sasl_response(step, text).await
    }

    async fn sasl_response(&mut self, step: SaslStep, response: &str) -> Flow {
        let decoded = match auth::decode_response(response) {
            Ok(d) => d,
            Err(_) => return self.refuse(SmtpError::BadBase64),
        };
        let credentials = match step {
            SaslStep::Plain => auth::parse_plain(&decoded).ok(),
            SaslStep::LoginUser => {
                let user = String::from_utf8_lossy(&decoded).into_owned();
                self.reply(Reply::plain(334, vec![PASSWORD_CHALLENGE.into()]));
                self.state = State::Auth(SaslStep::LoginPassword { user });
                return Flow::Continue;
            }
            SaslStep::LoginPassword { user } => Some(Credentials {
                authzid: String::new(),
                username: user,
                password: decoded,
            }),
        };
        self.check_credentials(credentials).await
    }

    /// One attempt; a malformed PLAIN message (`None`) is an attempt too, and
    /// waits its turn like the others.
    async fn check_credentials(&mut self, c: Option<Credentials>) -> Flow {
        let throttle = self.ctx.auth_throttle.clone();
        let limit = self.ctx.config.limits.command_timeout;
        // Attempts from one address queue behind each other: a session's wait
        // is bounded like any other wait for the client, and ends at shutdown.
        let turn = tokio::select! {
            turn = tokio::time::timeout(limit, throttle.wait_turn(self.client_ip())) => turn,
            _ = self.shutdown.cancelled() => return self.refuse(SmtpError::ShuttingDown),
        };
        let Ok(turn) = turn else {
            info!(client = %self.peer, "AUTH attempts from this address queued too long; closing");
            return self.refuse(SmtpError::TooManyAuthFailures);
        };
        let Some(c) = c else {
            let from_address = turn.failure();
            return self.auth_failed("(malformed)", from_address);
        };
        let valid = self.ctx.users.verify(&c.username, &c.password).await;
        // RFC 4616 §2: acting as someone else (authzid) is not supported.
        if valid && (c.authzid.is_empty() || c.authzid == c.username) {
            turn.success();
            info!(client = %self.peer, user = &*crate::tracking::clean(&c.username), "authenticated");
            self.auth = Some(c.username);
            self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
            return Flow::Continue;
        }
        let from_address = turn.failure();
        self.auth_failed(&c.username, from_address)
    }

    fn auth_failed(&mut self, user: &str, from_address: u32) -> Flow {
        self.auth_failures += 1;
        // The address and the name tried are logged; never the password.
        let user: String = user.chars().take(64).collect();
        let user = &*crate::tracking::clean(&user);
        warn!(client = %self.peer, user, failures = self.auth_failures, failures_from_address = from_address, "authentication failed");
        if self.auth_failures >= self.ctx.config.limits.max_auth_failures {
            return self.refuse(SmtpError::TooManyAuthFailures);
        }
        self.refuse(SmtpError::AuthFailed)
    }
}
