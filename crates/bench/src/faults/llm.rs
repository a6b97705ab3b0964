//! The LLM gateway on loopback, with a switchable fault: healthy it answers
//! every completion with a valid plan; in a fault window it answers 429
//! (`Retry-After: 1`), 500, garbage (a body that is not a completion, or a
//! completion whose content is no plan), or slowly (1 to 6 s, past the
//! service's 4 s timeout about half the time).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use testkit::fake_llm::{FakeLlm, COMPLETIONS_PATH};
use testkit::gateway::GATEWAY_PLAN;
use testkit::http::{FakeReply, TestServer};

/// How the gateway answers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Healthy = 0,
    TooMany = 1,
    ServerError = 2,
    Garbage = 3,
    Slow = 4,
}

impl Mode {
    pub const FAULTS: [Mode; 4] = [Mode::TooMany, Mode::ServerError, Mode::Garbage, Mode::Slow];

    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::TooMany,
            2 => Mode::ServerError,
            3 => Mode::Garbage,
            4 => Mode::Slow,
            _ => Mode::Healthy,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Healthy => "llm-healthy",
            Mode::TooMany => "llm-429",
            Mode::ServerError => "llm-500",
            Mode::Garbage => "llm-garbage",
            Mode::Slow => "llm-slow",
        }
    }
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    /// Requests seen, to vary garbage and delays without a lock.
    requests: AtomicU64,
}

/// The gateway; stops on drop.
pub struct Gateway {
    server: TestServer,
    shared: Arc<Shared>,
}

impl Gateway {
    pub async fn start() -> anyhow::Result<Gateway> {
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let server = TestServer::start(move |request| {
            let n = state.requests.fetch_add(1, Ordering::Relaxed);
            let mode = Mode::from_u8(state.mode.load(Ordering::Relaxed));
            let reply = if request.path == COMPLETIONS_PATH {
                reply(mode, n)
            } else {
                FakeReply::raw(404, "not found")
            };
            reply.into_response()
        })
        .await?;
        Ok(Gateway { server, shared })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

/// The `n`th request's answer in `mode`.
fn reply(mode: Mode, n: u64) -> FakeReply {
    match mode {
        Mode::Healthy => FakeLlm::answer(GATEWAY_PLAN),
        Mode::TooMany => {
            FakeReply::json(429, &serde_json::json!({"error": "busy"})).header("retry-after", "1")
        }
        Mode::ServerError => FakeReply::raw(500, "upstream exploded"),
        Mode::Garbage if n.is_multiple_of(2) => FakeReply::raw(200, "<html>\u{0}\u{1}not json"),
        Mode::Garbage => FakeLlm::answer("Ich plane lieber nichts. {\"steps\": 7"),
        Mode::Slow => FakeLlm::answer(GATEWAY_PLAN).delay(Duration::from_millis(1000 + n % 5000)),
    }
}
