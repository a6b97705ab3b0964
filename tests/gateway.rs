//! Adaptive concurrency towards the LLM gateway (issue 9, item 3): a gateway
//! on loopback that serves 4 requests at once and answers 429 with
//! `Retry-After: 1` beyond that, with `MANA_AI_MAX_CONCURRENT_RUNS=32`.
//! Every request waits for room under one adaptive limit; a 429 is waited
//! out, never a failed attempt.

mod common;

use std::time::Duration;

use common::{mission_data, setup, write, Change};
use mana_ai::config::Secret;
use mana_ai::metrics::Metrics;
use mana_ai::planner::limiter::LimitConfig;
use mana_ai::planner::llm::{LimiterMetrics, LlmClient, LlmConfig};
use serde_json::json;
use testkit::gateway::{FakeGateway, GatewayConfig};

const CAPACITY: usize = 4;
const LATENCY: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_calls_share_one_limit_and_never_spend_an_attempt_on_a_429() {
    let gateway = FakeGateway::start(GatewayConfig::new(CAPACITY, LATENCY))
        .await
        .unwrap();
    let metrics = Metrics::new();
    let mut config = LlmConfig::new(gateway.url(), Secret::new("k"), "m");
    config.max_attempts = 1;
    let client = LlmClient::new(config)
        .unwrap()
        .with_limiter(LimitConfig::new(32), Some(LimiterMetrics::of(&metrics)));
    let calls = (0..100).map(|_| client.complete("s", "u"));
    let answers = futures_util::future::join_all(calls).await;
    for answer in &answers {
        let answer = answer.as_ref().expect("every call answered");
        assert_eq!(answer.attempts, 1, "a 429 is not an attempt");
    }
    let counts = gateway.counts();
    eprintln!(
        "direct: {counts:?}, limit {}",
        metrics.llm_concurrency_limit.get()
    );
    assert_eq!(counts.answered, 100);
    let share = counts.refused as f64 / counts.requests as f64;
    assert!(share < 0.25, "{counts:?}: {:.0}% refused", share * 100.0);
    assert!(counts.peak_in_flight <= CAPACITY);
    assert_eq!(metrics.llm_overloads.get(), counts.refused);
    assert_eq!(metrics.llm_limiter_wait.get_sample_count(), counts.requests);
    let limit = metrics.llm_concurrency_limit.get();
    assert!((1..=8).contains(&limit), "the limit ended at {limit}");
    assert_eq!(client.limiter().map(|l| l.limit() as i64), Some(limit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighty_missions_due_at_once_converge_to_a_narrow_gateway() {
    let t = setup().await;
    let gateway = FakeGateway::start(GatewayConfig::new(CAPACITY, LATENCY))
        .await
        .unwrap();
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &gateway.url()),
            ("MANA_AI_MAX_CONCURRENT_RUNS", "32"),
            // One attempt and one failure: a 429 spent as an attempt would
            // write a failed iteration at once.
            ("MANA_LLM_MAX_ATTEMPTS", "1"),
            ("MANA_AI_MAX_FAILURES", "1"),
        ])
        .await;
    let mut sync = t.sync_client().await;
    let users: Vec<String> = (0..8).map(|u| format!("user-{u}")).collect();
    let ids: Vec<String> = (0..10).map(|m| format!("m{m}")).collect();
    for user in &users {
        let changes: Vec<Change> = ids
            .iter()
            .map(|id| Change::mission(user, id, "insert", mission_data(json!({}))))
            .collect();
        write(&mut sync, &changes).await;
    }
    let done = "SELECT count(*) FROM mana_ai.mission_runs WHERE state = 'done'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while t.count(done).await < 80 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 80 runs done in 90 s; gateway {:?}",
            t.count(done).await,
            gateway.counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lead.settled().await;
    let written = "SELECT count(*) FROM mana_ai.mission_runs WHERE outcome = 'written'";
    assert_eq!(t.count(written).await, 80, "every run wrote its plan");
    let failed =
        "SELECT count(*) FROM mana_ai.mission_runs WHERE failures > 0 OR outcome <> 'written'";
    assert_eq!(t.count(failed).await, 0, "no run spent an attempt");
    assert_eq!(lead.metrics.mission_errors.get(), 0);
    let counts = gateway.counts();
    eprintln!(
        "missions: {counts:?}, limit {}",
        lead.metrics.llm_concurrency_limit.get()
    );
    assert_eq!(counts.answered, 80, "one answered request per run");
    let share = counts.refused as f64 / counts.requests as f64;
    assert!(share < 0.25, "{counts:?}: {:.0}% refused", share * 100.0);
    assert_eq!(lead.metrics.llm_overloads.get(), counts.refused);
    let limit = lead.metrics.llm_concurrency_limit.get();
    assert!((1..=8).contains(&limit), "the limit ended at {limit}");
    lead.stop().await;
}

#[tokio::test]
async fn overloads_are_absorbed_up_to_a_bound_then_count_as_one_attempt() {
    use mana_ai::planner::llm::LlmError;
    use testkit::fake_llm::FakeLlm;
    use testkit::http::FakeReply;

    // 503 without Retry-After: waited out with a backoff, not an attempt.
    let fake = FakeLlm::start(vec![
        FakeReply::raw(503, "loading"),
        FakeReply::raw(503, "loading"),
        FakeLlm::answer("ok"),
    ])
    .await
    .unwrap();
    let mut config = LlmConfig::new(fake.url(), Secret::new("k"), "m");
    config.max_attempts = 1;
    config.backoff_base = Duration::from_millis(2);
    let client = LlmClient::new(config.clone())
        .unwrap()
        .with_limiter(LimitConfig::new(8), None);
    let answer = client.complete("s", "u").await.unwrap();
    assert_eq!((answer.content.as_str(), answer.attempts), ("ok", 1));
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(client.limiter().map(|l| l.overloads()), Some(2));

    // A gateway that never has room: after `max_overloads` the last one is
    // an ordinary failed attempt, so a run cannot wait forever.
    let full = FakeLlm::start(vec![FakeReply::raw(429, "full")])
        .await
        .unwrap();
    config.base_url = full.url();
    let bounded = LimitConfig {
        max_overloads: 3,
        ..LimitConfig::new(8)
    };
    let client = LlmClient::new(config).unwrap().with_limiter(bounded, None);
    let err = client.complete("s", "u").await.unwrap_err();
    assert_eq!(
        err,
        LlmError::Exhausted {
            attempts: 1,
            last: "HTTP 429".into()
        }
    );
    assert_eq!(full.requests().len(), 4);
}
