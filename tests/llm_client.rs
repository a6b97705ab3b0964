//! `LlmClient` against `FakeLlm`, a real OpenAI-style server on loopback.
//!
//! Real time, because real sockets: delays are short, backoff is 1 ms, and the
//! only timing assertion is a lower bound (Retry-After was honoured).

use std::time::Duration;

use mana_ai::config::Secret;
use mana_ai::planner::llm::{LlmClient, LlmConfig, LlmError, Usage};
use serde_json::json;
use testkit::{refused_url, FakeLlm, FakeReply};

const KEY: &str = "sk-test-service-key";

fn config(base_url: String) -> LlmConfig {
    let mut config = LlmConfig::new(base_url, Secret::new(KEY), "gemma3:4b");
    config.timeout = Duration::from_secs(5);
    config.max_attempts = 3;
    config.backoff_base = Duration::from_millis(1);
    config.backoff_cap = Duration::from_millis(5);
    config.retry_after_cap = Duration::from_secs(5);
    config
}

async fn client_for(fake: &FakeLlm) -> LlmClient {
    LlmClient::new(config(fake.url())).unwrap()
}

#[tokio::test]
async fn happy_path_returns_content_and_usage() {
    let fake = FakeLlm::start(vec![FakeLlm::answer("```json\n{\"steps\":[]}\n```")])
        .await
        .unwrap();
    let answer = client_for(&fake)
        .await
        .complete("sys", "user")
        .await
        .unwrap();
    assert_eq!(answer.content, "```json\n{\"steps\":[]}\n```");
    assert_eq!(
        answer.usage,
        Some(Usage {
            prompt_tokens: 120,
            completion_tokens: 30,
            total_tokens: 150
        })
    );
    assert_eq!(answer.attempts, 1);
}

#[tokio::test]
async fn request_has_exactly_the_contract_wire_format() {
    let fake = FakeLlm::start(vec![FakeReply::json(200, &FakeLlm::completion("ok", None))])
        .await
        .unwrap();
    let answer = client_for(&fake)
        .await
        .complete("Du planst.", "Mission: Ä ü")
        .await
        .unwrap();
    assert_eq!(answer.usage, None);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        Some("Bearer sk-test-service-key")
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json().unwrap(),
        json!({
            "model": "gemma3:4b",
            "temperature": 0.3,
            "max_tokens": 1024,
            "messages": [
                {"role": "system", "content": "Du planst."},
                {"role": "user", "content": "Mission: Ä ü"},
            ],
        })
    );
    assert_eq!(fake.prompts()[0].user, "Mission: Ä ü");
}

#[tokio::test]
async fn server_error_is_retried() {
    let fake = FakeLlm::start(vec![FakeReply::raw(500, "boom"), FakeLlm::answer("ok")])
        .await
        .unwrap();
    let answer = client_for(&fake).await.complete("s", "u").await.unwrap();
    assert_eq!((answer.content.as_str(), answer.attempts), ("ok", 2));
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let busy = FakeReply::raw(429, "slow down").header("Retry-After", "1");
    let fake = FakeLlm::start(vec![busy, FakeLlm::answer("ok")])
        .await
        .unwrap();
    let answer = client_for(&fake).await.complete("s", "u").await.unwrap();
    assert_eq!(answer.attempts, 2);
    // Backoff is 1-5 ms here, so a wait near 1 s can only come from Retry-After.
    assert!(
        answer.elapsed >= Duration::from_millis(950),
        "waited only {:?}",
        answer.elapsed
    );
}

#[tokio::test]
async fn slow_gateway_times_out_every_attempt_then_exhausts() {
    let fake = FakeLlm::start(vec![FakeLlm::answer("late").delay(Duration::from_secs(60))])
        .await
        .unwrap();
    let mut config = config(fake.url());
    config.timeout = Duration::from_millis(200);
    config.max_attempts = 2;
    let err = LlmClient::new(config)
        .unwrap()
        .complete("s", "u")
        .await
        .unwrap_err();
    match err {
        LlmError::Exhausted { attempts, last } => {
            assert_eq!(attempts, 2);
            assert!(last.contains("timed out"), "{last}");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn persistent_server_errors_exhaust_without_leaking_the_key() {
    let fake = FakeLlm::start(vec![FakeReply::raw(503, "")]).await.unwrap();
    let err = client_for(&fake)
        .await
        .complete("s", "u")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LlmError::Exhausted {
            attempts: 3,
            last: "HTTP 503".into()
        }
    );
    assert!(!err.to_string().contains(KEY) && !format!("{err:?}").contains(KEY));
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn connection_refused_is_retried_then_exhausted() {
    let client = LlmClient::new(config(refused_url().await.unwrap())).unwrap();
    match client.complete("s", "u").await.unwrap_err() {
        LlmError::Exhausted { attempts: 3, last } => assert!(last.contains("connect"), "{last}"),
        other => panic!("expected Exhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn client_error_is_rejected_without_retry() {
    let fake = FakeLlm::start(vec![
        FakeReply::raw(400, "bad model"),
        FakeLlm::answer("never"),
    ])
    .await
    .unwrap();
    let err = client_for(&fake)
        .await
        .complete("s", "u")
        .await
        .unwrap_err();
    assert_eq!(err, LlmError::Rejected { status: 400 });
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn unusable_answers_are_bad_answers_without_retry() {
    for body in [
        json!({"choices": []}),
        json!({"error": "nope"}),
        json!({"choices": [{"message": {}}]}),
    ] {
        let fake = FakeLlm::start(vec![FakeReply::json(200, &body)])
            .await
            .unwrap();
        let err = client_for(&fake)
            .await
            .complete("s", "u")
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::BadAnswer(_)), "{body}: {err:?}");
        assert_eq!(fake.requests().len(), 1);
    }
    let fake = FakeLlm::start(vec![FakeReply::raw(200, "<html>gateway</html>")])
        .await
        .unwrap();
    let err = client_for(&fake)
        .await
        .complete("s", "u")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::BadAnswer(reason) if reason.starts_with("not JSON")),
        "{err:?}"
    );
}

#[tokio::test]
async fn ten_megabyte_answers_are_refused() {
    let ten_mb = vec![b'x'; 10 * 1024 * 1024];
    // With Content-Length (refused before reading) and chunked (refused mid-stream).
    for reply in [
        FakeReply::raw(200, ten_mb),
        FakeReply::chunked(200, vec![b'x'; 64 * 1024], 160),
    ] {
        let fake = FakeLlm::start(vec![reply]).await.unwrap();
        let err = client_for(&fake)
            .await
            .complete("s", "u")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LlmError::BadAnswer(reason) if reason.contains("larger than")),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn duration_histogram_observes_every_call() {
    let fake = FakeLlm::start(vec![FakeLlm::answer("ok"), FakeReply::raw(400, "")])
        .await
        .unwrap();
    let histogram =
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
    let client = client_for(&fake)
        .await
        .with_duration_histogram(histogram.clone());
    client.complete("s", "u").await.unwrap();
    client.complete("s", "u").await.unwrap_err();
    assert_eq!(histogram.get_sample_count(), 2);
}
