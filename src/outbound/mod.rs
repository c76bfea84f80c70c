//! Delivery to the upstream smart hosts: the SMTP client.
//!
//! `client` speaks the protocol (one `Connection` per upstream session),
//! `wire` frames replies and carries plaintext or TLS, `reply` parses them,
//! `capabilities` reads EHLO, `error` says where and why an attempt failed,
//! `stuffing` puts the message on the wire (CRLF only, dot-stuffed), `tls`
//! builds the client TLS configurations.

pub mod capabilities;
pub mod client;
pub mod error;
pub mod reply;
pub mod stuffing;
pub mod tls;
pub mod wire;

pub use capabilities::Capabilities;
pub use client::{ClientOptions, Connection, Upstream};
pub use error::{Stage, UpstreamError};
pub use reply::UpstreamReply;
