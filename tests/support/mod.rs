//! Test support shared by every test crate and the benchmarks, one concept
//! per file. A test file says `mod support;` and imports from the files it
//! needs; a benchmark includes it with `#[path = "../tests/support/mod.rs"]`.
// Each test crate compiles all of it and uses only a part.
#![allow(dead_code)]

pub mod auth;
pub mod binary;
pub mod client;
pub mod deliveries;
pub mod envelope;
pub mod fake_upstream;
pub mod harness;
pub mod message;
pub mod pki;
pub mod sink;
pub mod smtp_sink;
pub mod tools;
pub mod wait;
