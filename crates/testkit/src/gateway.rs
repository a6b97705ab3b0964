//! `FakeGateway`: an OpenAI-compatible gateway on loopback with a capacity.
//!
//! Serves `POST /v1/chat/completions` like [`crate::FakeLlm`] (same answer
//! body, via [`FakeLlm::answer`]), but as a gateway under load does: at most
//! `capacity` requests are served at once, each taking `latency`; a request
//! beyond that is answered at once with 429 and `Retry-After`. It counts
//! requests, refusals and the most it ever served at once, for load tests and
//! the benchmark (issue 9). Any other path answers 404.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::fake_llm::{FakeLlm, COMPLETIONS_PATH};
use crate::http::{FakeReply, TestServer};

/// A plan the parser accepts: one `create_task` step.
pub const GATEWAY_PLAN: &str = r#"{"summary": "Woche", "steps": [{"summary": "Aufgabe", "toolName": "create_task", "params": {"title": "Montag"}, "rationale": "Ein Anfang."}]}"#;

/// How a [`FakeGateway`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Requests served at once; more get 429.
    pub capacity: usize,
    /// Time to answer one admitted request.
    pub latency: Duration,
    /// `Retry-After` (whole seconds) sent with each 429.
    pub retry_after_secs: u64,
    /// `choices[0].message.content` of every answer.
    pub answer: String,
}

impl GatewayConfig {
    /// Capacity and latency, `Retry-After: 1`, answering [`GATEWAY_PLAN`].
    pub fn new(capacity: usize, latency: Duration) -> GatewayConfig {
        GatewayConfig {
            capacity,
            latency,
            retry_after_secs: 1,
            answer: GATEWAY_PLAN.to_string(),
        }
    }
}

/// What a [`FakeGateway`] saw so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayCounts {
    /// Completion requests, refused ones included.
    pub requests: u64,
    /// Answered 429.
    pub refused: u64,
    /// Answered 200.
    pub answered: u64,
    /// The most requests it served at once.
    pub peak_in_flight: usize,
}

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    refused: AtomicU64,
    answered: AtomicU64,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// A running fake gateway; stops on drop.
pub struct FakeGateway {
    server: TestServer,
    stats: Arc<Stats>,
}

impl FakeGateway {
    pub async fn start(config: GatewayConfig) -> std::io::Result<FakeGateway> {
        let stats = Arc::new(Stats::default());
        let config = Arc::new(config);
        let shared = Arc::clone(&stats);
        let server = TestServer::start(move |request| {
            let (stats, config) = (Arc::clone(&shared), Arc::clone(&config));
            async move {
                if request.method == hyper::Method::POST && request.path == COMPLETIONS_PATH {
                    serve(&stats, &config).await
                } else {
                    FakeReply::raw(404, "not found")
                }
                .into_response()
                .await
            }
        })
        .await?;
        Ok(FakeGateway { server, stats })
    }

    /// Base URL for `LlmConfig::base_url` (the client appends the path).
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn counts(&self) -> GatewayCounts {
        GatewayCounts {
            requests: self.stats.requests.load(Ordering::SeqCst),
            refused: self.stats.refused.load(Ordering::SeqCst),
            answered: self.stats.answered.load(Ordering::SeqCst),
            peak_in_flight: self.stats.peak.load(Ordering::SeqCst),
        }
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.stats.in_flight.load(Ordering::SeqCst)
    }
}

/// One completion request: admitted and answered after the latency, or 429.
async fn serve(stats: &Stats, config: &GatewayConfig) -> FakeReply {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let Some(_slot) = Slot::enter(stats, config.capacity) else {
        stats.refused.fetch_add(1, Ordering::SeqCst);
        let retry_after = config.retry_after_secs.to_string();
        return FakeReply::raw(429, "gateway at capacity").header("retry-after", &retry_after);
    };
    tokio::time::sleep(config.latency).await;
    stats.answered.fetch_add(1, Ordering::SeqCst);
    FakeLlm::answer(&config.answer)
}

/// One admitted request; leaves on drop, also when the client hangs up.
struct Slot<'a>(&'a Stats);

impl<'a> Slot<'a> {
    fn enter(stats: &'a Stats, capacity: usize) -> Option<Slot<'a>> {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        if now > capacity {
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        stats.peak.fetch_max(now, Ordering::SeqCst);
        Some(Slot(stats))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    async fn post(client: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
        let response = client
            .post(format!("{url}{COMPLETIONS_PATH}"))
            .json(&serde_json::json!({"model": "m", "messages": []}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry_after, response.text().await.unwrap())
    }

    #[tokio::test]
    async fn answers_like_the_fake_llm_and_refuses_beyond_its_capacity() {
        let gateway = FakeGateway::start(GatewayConfig::new(2, Duration::from_millis(400)))
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let url = gateway.url();
        let answers = futures_util::future::join_all((0..5).map(|_| post(&client, &url))).await;
        let ok: Vec<_> = answers.iter().filter(|a| a.0 == 200).collect();
        let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
        assert_eq!((ok.len(), refused.len()), (2, 3), "{answers:?}");
        assert!(refused.iter().all(|a| a.1.as_deref() == Some("1")));
        let body: Value = serde_json::from_str(&ok[0].2).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], GATEWAY_PLAN);
        assert_eq!(body["usage"]["total_tokens"], 150);
        let counts = gateway.counts();
        assert_eq!(
            counts,
            GatewayCounts {
                requests: 5,
                refused: 3,
                answered: 2,
                peak_in_flight: 2
            }
        );
        assert_eq!(gateway.in_flight(), 0);
        // With room again, the next one is served; other paths are 404.
        assert_eq!(post(&client, &url).await.0, 200);
        let other = client.get(format!("{url}/v1/models")).send().await.unwrap();
        assert_eq!(other.status().as_u16(), 404);
        assert_eq!(gateway.counts().requests, 6);
    }
}
