//! smarthost: an SMTP smart-host relay.
//!
//! The flow of a message, one module each: `listener` accepts, `session`
//! speaks SMTP (with `tls`, `policy` for who may relay, `body` for content
//! rules), `spool` makes it durable. `config` is parsed once at start;
//! `error` maps every refusal to its reply.
//!
//! No unsafe code here: the few calls that need it act on the whole process
//! (glibc's allocator, the terminal's echo) and are made by the binary.

#![forbid(unsafe_code)]

pub mod address;
pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod connections;
pub mod context;
pub mod demo;
pub mod dot;
pub mod error;
pub mod health;
pub mod listener;
pub mod logging;
pub mod outbound;
pub mod pem;
pub mod policy;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod reply;
pub mod server;
pub mod session;
pub mod sink;
pub mod spool;
pub mod telemetry;
pub mod tls;
pub mod tracking;

pub use config::Config;
pub use context::ServerContext;
pub use server::{bind, serve};
