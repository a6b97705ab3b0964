//! Helpers for tests and the demo: fake HTTP peers on loopback.
//!
//! Compiled into the library (not `cfg(test)`) so integration tests and the
//! demo binary can start them. Each fake is a real HTTP/1 server on
//! `127.0.0.1:0` that records what it received and stops when dropped.

pub mod fake_api;
pub mod fake_llm;
pub mod gateway;
pub mod http;

pub use fake_api::FakeManaApi;
pub use fake_llm::{FakeLlm, FakePrompt};
pub use http::{refused_url, FakeReply, RecordedRequest, TestServer};
