//! Test support for mana-ai: fake HTTP peers on loopback and a fixed
//! environment lookup.
//!
//! A workspace member of its own, so the service never links it; it does
//! not depend on `mana-ai`, so the library's unit tests can use it as well
//! as the integration tests and the benchmark. Each fake is a real HTTP/1
//! server on `127.0.0.1:0` that records what it received and stops when
//! dropped.

pub mod fake_api;
pub mod fake_llm;
pub mod fake_research;
pub mod gateway;
pub mod http;

pub use fake_api::FakeManaApi;
pub use fake_llm::{FakeLlm, FakePrompt};
pub use fake_research::FakeResearch;
pub use http::{refused_url, FakeReply, RecordedRequest, TestServer};

/// An environment lookup that knows exactly `pairs`, for functions that
/// read variables through a lookup instead of the process environment.
pub fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}
