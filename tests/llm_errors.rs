//! mana-llm's typed errors, its headers and the resolved model, against the
//! fake mana-llm (a real HTTP server on loopback) and real Postgres
//! (issue 19, item 2).

mod common;

use common::{eventually, mission_data, plan_answer, setup, write, Change, TestDb};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;
use testkit::http::FakeReply;

async fn seed_mission(t: &TestDb, user: &str, id: &str) {
    let mut sync = t.sync_client().await;
    let change = Change::mission(user, id, "insert", mission_data(json!({})));
    write(&mut sync, &[change]).await;
}

/// The mission's newest iteration, as the webapp folds it.
async fn last_iteration(t: &TestDb, user: &str, id: &str) -> Option<Value> {
    let record = t.folded_mission(user, id).await;
    let iterations = record.get("iterations")?.as_array()?.clone();
    iterations.last().cloned()
}

async fn has_iteration(t: &TestDb, user: &str, id: &str) -> bool {
    !t.writebacks(user, id).await.is_empty()
}

/// `blocked` and `auth` end the run at once: one request, no retry, no
/// other form, and a failed iteration with the reason in phase calling-llm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_auth_end_the_run_without_retries() {
    let t = setup().await;
    for (user, kind) in [("ana", "blocked"), ("ben", "auth")] {
        let message = format!("{kind}: the provider said no");
        let llm = FakeLlm::start(vec![FakeLlm::error(kind, &message)])
            .await
            .unwrap();
        seed_mission(&t, user, "m1").await;
        let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
        eventually("a failed iteration", || has_iteration(&t, user, "m1")).await;
        lead.stop().await;
        assert_eq!(llm.requests().len(), 1, "{kind}: sent once, in one form");
        let iteration = last_iteration(&t, user, "m1").await.unwrap();
        assert_eq!(iteration["overallStatus"], "failed", "{iteration}");
        let summary = iteration["summary"].as_str().unwrap();
        assert!(summary.contains("abgelehnt"), "{summary}");
        let details = &iteration["errorDetails"];
        assert_eq!(details["phase"], "calling-llm", "{details}");
        let text = details["message"].as_str().unwrap();
        assert!(text.contains(kind), "{kind}: {text}");
        assert!(text.contains("the provider said no"), "{text}");
    }
}

/// `truncated` is retried once with a smaller answer budget, then final;
/// the key goes as `X-API-Key` as well as the bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_is_retried_once_with_fewer_tokens_and_the_key_is_sent_twice() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::error("truncated", "max_tokens reached")])
        .await
        .unwrap();
    seed_mission(&t, "cem", "m1").await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_LLM_MAX_TOKENS", "800"),
            ("MANA_AI_MAX_FAILURES", "1"),
        ])
        .await;
    eventually("a failed iteration", || has_iteration(&t, "cem", "m1")).await;
    lead.stop().await;
    let bodies = llm.bodies();
    let budgets: Vec<&Value> = bodies.iter().map(|b| &b["max_tokens"]).collect();
    assert_eq!(budgets.len(), 2, "one retry only: {budgets:?}");
    let (first, second) = (budgets[0].as_u64().unwrap(), budgets[1].as_u64().unwrap());
    assert_eq!(first, 800);
    assert!(second < first, "{second} < {first}");
    for request in llm.requests() {
        assert_eq!(request.header("x-api-key"), Some("test-service-key"));
        assert_eq!(
            request.header("authorization"),
            Some("Bearer test-service-key")
        );
    }
    let iteration = last_iteration(&t, "cem", "m1").await.unwrap();
    let text = iteration["errorDetails"]["message"].as_str().unwrap();
    assert!(text.contains("truncated"), "{text}");
}

/// `no_healthy_provider` and `rate_limit` are retried and counted by kind;
/// the plan then comes through and names the resolved model in
/// `mission_runs`; a string `detail` stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_kinds_are_counted_and_the_resolved_model_is_recorded() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeLlm::error("no_healthy_provider", "all providers down"),
        FakeLlm::error("rate_limit", "slow down").header("Retry-After", "0"),
        FakeLlm::resolved(FakeLlm::answer(&plan_answer()), "ollama/gemma3:4b"),
    ])
    .await
    .unwrap();
    seed_mission(&t, "dag", "m1").await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("m1 planned", || has_iteration(&t, "dag", "m1")).await;
    let metrics = lead.metrics.render();
    lead.stop().await;
    assert_eq!(llm.requests().len(), 3);
    let iteration = last_iteration(&t, "dag", "m1").await.unwrap();
    assert_eq!(iteration["overallStatus"], "awaiting-review", "{iteration}");
    for kind in ["no_healthy_provider", "rate_limit"] {
        let series =
            format!("mana_ai_provider_errors_total{{kind=\"{kind}\",provider=\"mana-llm\"}} 1");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    let recorded = t
        .count_as_admin(
            "SELECT count(*) FROM mana_ai.mission_runs
             WHERE mission_id = 'm1' AND resolved_model = 'ollama/gemma3:4b'",
        )
        .await;
    assert_eq!(recorded, 1);

    // A plain string detail is part of the failure the user reads.
    let plain = FakeLlm::start(vec![FakeLlm::plain_error(400, "messages: field required")])
        .await
        .unwrap();
    seed_mission(&t, "dag", "m2").await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &plain.url()),
            ("MANA_LLM_STRUCTURED", "off"),
            ("MANA_AI_MAX_FAILURES", "1"),
        ])
        .await;
    eventually("m2 failed", || has_iteration(&t, "dag", "m2")).await;
    lead.stop().await;
    let iteration = last_iteration(&t, "dag", "m2").await.unwrap();
    let text = iteration["errorDetails"]["message"].as_str().unwrap();
    assert!(text.contains("messages: field required"), "{text}");
}

/// A gateway error that echoes a long prompt is clipped before it reaches
/// the iteration (and the logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_error_message_is_clipped() {
    let t = setup().await;
    let echo = "Wochenplanung ".repeat(400);
    let llm = FakeLlm::start(vec![FakeLlm::error("blocked", &echo)])
        .await
        .unwrap();
    seed_mission(&t, "eda", "m1").await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("a failed iteration", || has_iteration(&t, "eda", "m1")).await;
    lead.stop().await;
    let iteration = last_iteration(&t, "eda", "m1").await.unwrap();
    let text = iteration["errorDetails"]["message"].as_str().unwrap();
    assert!(text.contains("blocked"), "{text}");
    assert!(text.chars().count() < 600, "{} chars", text.chars().count());
}

/// Every family of issue 19 item 5 (the planner's half) is in the first
/// scrape, before any run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_metric_families_are_present_from_the_first_scrape() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeReply::raw(500, "unused")])
        .await
        .unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    let metrics = lead.metrics.render();
    lead.stop().await;
    for family in [
        "mana_ai_tool_calls_total{",
        "mana_ai_planner_rounds_bucket{le=\"5\"}",
        "mana_ai_provider_errors_total{",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
}
