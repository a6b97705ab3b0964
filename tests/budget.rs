//! Cost bounds (issue 9, item 4): the interval floor, the per-user token
//! budget of missions without an agent, and budgets checked before each
//! LLM request with the tokens of failed answers charged.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{eventually, mission_data, plan_answer, setup, write, Change, TestDb};
use mana_ai::config::Secret;
use mana_ai::planner::llm::{LlmClient, LlmConfig, LlmError};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;
use testkit::http::FakeReply;

async fn seed(t: &TestDb, user: &str, id: &str, extra: Value) {
    let mut sync = t.sync_client().await;
    let change = Change::mission(user, id, "insert", mission_data(extra));
    write(&mut sync, &[change]).await;
}

/// An answer of `content` that cost 1,000 tokens.
fn costly(content: &str) -> FakeReply {
    FakeReply::json(200, &FakeLlm::completion(content, Some((900, 100))))
}

/// A leader whose every answer costs 1,000 tokens, with a user budget of 500.
async fn lead_with_user_budget(t: &TestDb) -> (FakeLlm, common::Leading) {
    let llm = FakeLlm::start(vec![costly(&plan_answer())]).await.unwrap();
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_AI_USER_TOKENS_PER_DAY", "500"),
        ])
        .await;
    (llm, lead)
}

async fn outcome(t: &TestDb, mission: &str) -> Option<String> {
    let c = t.pool.get().await.unwrap();
    c.query_opt(
        "SELECT outcome FROM mana_ai.mission_runs WHERE mission_id = $1 ORDER BY claimed_at DESC LIMIT 1",
        &[&mission],
    )
    .await
    .unwrap()
    .and_then(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_below_the_floor_runs_once_then_at_the_floor() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    let tiny = json!({"cadence": {"kind": "interval", "everyMinutes": 0.001}});
    seed(&t, "ida", "m1", tiny).await;
    eventually("written", || async {
        t.writebacks("ida", "m1").await.len() == 1
    })
    .await;
    let written_at = chrono::Utc::now();
    // On main this mission made 289 LLM calls in 20 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(llm.requests().len(), 1, "one run, not one every 60 ms");
    assert_eq!(t.writebacks("ida", "m1").await.len(), 1);
    let next = t.folded_mission("ida", "m1").await["nextRunAt"].clone();
    let next = chrono::DateTime::parse_from_rfc3339(next.as_str().expect("a nextRunAt"))
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(
        next >= written_at + chrono::Duration::seconds(55),
        "next run {next} is not a minute after {written_at}"
    );
    assert_eq!(lead.metrics.interval_floored.get(), 1);
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mission_without_an_agent_stops_at_the_users_daily_budget() {
    let t = setup().await;
    let (llm, lead) = lead_with_user_budget(&t).await;
    seed(&t, "jon", "m1", json!({})).await;
    eventually("m1 written", || async {
        t.writebacks("jon", "m1").await.len() == 1
    })
    .await;
    let spent = "SELECT coalesce(sum(tokens_used), 0)::int8 FROM mana_ai.token_usage WHERE user_id = 'jon' AND agent_id IS NULL";
    assert_eq!(t.count(spent).await, 1000);
    // The budget is spent: the user's next mission without an agent skips.
    seed(&t, "jon", "m2", json!({})).await;
    eventually("m2 skipped for the budget", || async {
        outcome(&t, "m2").await.as_deref() == Some("skipped-budget")
    })
    .await;
    lead.settled().await;
    assert_eq!(llm.requests().len(), 1, "no LLM call for m2");
    assert!(t.writebacks("jon", "m2").await.is_empty());
    let skipped = lead
        .metrics
        .agent_decisions
        .with_label_values(&["skipped-budget"]);
    assert_eq!(skipped.get(), 1);
    // Another user is not held to jon's spending.
    seed(&t, "kim", "m3", json!({})).await;
    eventually("kim's mission written", || async {
        t.writebacks("kim", "m3").await.len() == 1
    })
    .await;
    lead.stop().await;
}

/// The user's budget counts every run of the user: an agent created
/// without `maxTokensPerDay` does not lift it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_cap_is_held_to_the_users_daily_budget() {
    let t = setup().await;
    let (llm, lead) = lead_with_user_budget(&t).await;
    let mut sync = t.sync_client().await;
    let agent = Change {
        user: "lea",
        table: "agents",
        record: "a1",
        op: "insert",
        data: json!({"name": "Ohne Grenze", "state": "active"}),
        stamps: json!({}),
    };
    write(&mut sync, &[agent]).await;
    seed(&t, "lea", "m1", json!({"agentId": "a1"})).await;
    eventually("m1 written", || async {
        t.writebacks("lea", "m1").await.len() == 1
    })
    .await;
    seed(&t, "lea", "m2", json!({"agentId": "a1"})).await;
    eventually("m2 skipped for the user's budget", || async {
        outcome(&t, "m2").await.as_deref() == Some("skipped-budget")
    })
    .await;
    lead.settled().await;
    assert_eq!(llm.requests().len(), 1, "no LLM call for m2");
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_budget_spent_by_an_unparseable_answer_stops_the_next_request() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![costly("Ich kann das leider nicht.")])
        .await
        .unwrap();
    let mut sync = t.sync_client().await;
    let mut agent = Change::mission(
        "lea",
        "thrifty",
        "insert",
        json!({"name": "T", "maxTokensPerDay": 500}),
    );
    agent.table = "agents";
    write(&mut sync, &[agent]).await;
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_AI_MAX_FAILURES", "3")])
        .await;
    seed(&t, "lea", "m1", json!({"agentId": "thrifty"})).await;
    eventually("the retry skipped for the budget", || async {
        outcome(&t, "m1").await.as_deref() == Some("skipped-budget")
    })
    .await;
    lead.settled().await;
    // The unparseable answer's 1,000 tokens were charged; the retry after
    // its back-off (0.2 s here) found the budget spent and sent nothing.
    let spent = "SELECT coalesce(sum(tokens_used), 0)::int8 FROM mana_ai.token_usage WHERE agent_id = 'thrifty'";
    assert_eq!(t.count(spent).await, 1000);
    assert_eq!(llm.requests().len(), 1);
    assert_eq!(lead.metrics.parse_failures.get(), 1);
    assert!(
        t.writebacks("lea", "m1").await.is_empty(),
        "no failed iteration either"
    );
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_spent_while_a_run_waits_for_the_gateway_stops_its_request() {
    let t = setup().await;
    let full = FakeReply::raw(503, "full").header("Retry-After", "3");
    let llm = FakeLlm::start(vec![full, costly(&plan_answer())])
        .await
        .unwrap();
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_AI_USER_TOKENS_PER_DAY", "500"),
        ])
        .await;
    seed(&t, "max", "m1", json!({})).await;
    eventually("the gateway said 503", || async {
        llm.requests().len() == 1
    })
    .await;
    // While the run waits out the Retry-After, other runs spend the budget.
    t.admin()
        .await
        .execute("INSERT INTO mana_ai.token_usage (user_id, mission_id, tokens_used) VALUES ('max', 'elsewhere', 800)", &[])
        .await
        .unwrap();
    eventually("m1 skipped for the budget", || async {
        outcome(&t, "m1").await.as_deref() == Some("skipped-budget")
    })
    .await;
    lead.settled().await;
    assert_eq!(llm.requests().len(), 1, "the retry was not sent");
    assert!(t.writebacks("max", "m1").await.is_empty());
    assert_eq!(lead.metrics.mission_errors.get(), 0);
    let outcomes = &lead.metrics.run_outcomes;
    assert_eq!(outcomes.with_label_values(&["skipped"]).get(), 1);
    let decided = |d: &str| lead.metrics.agent_decisions.with_label_values(&[d]).get();
    assert_eq!((decided("ran"), decided("skipped-budget")), (1, 1));
    lead.stop().await;
}

#[tokio::test]
async fn the_check_runs_before_each_request_retries_included() {
    let llm = FakeLlm::start(vec![FakeReply::raw(500, "boom"), FakeLlm::answer("ok")])
        .await
        .unwrap();
    let mut config = LlmConfig::new(llm.url(), Secret::new("k"), "m");
    config.backoff_base = Duration::from_millis(2);
    let client = LlmClient::new(config).unwrap();
    let checks = AtomicU32::new(0);
    // Spent after the first request (by a run beside this one).
    let check = || {
        let n = checks.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if n == 0 {
            Ok(())
        } else {
            Err(LlmError::OverBudget("agent"))
        })
    };
    let err = client
        .complete_checked("s", "u", None, check)
        .await
        .unwrap_err();
    assert_eq!(err, LlmError::OverBudget("agent"));
    assert_eq!(checks.load(Ordering::SeqCst), 2);
    assert_eq!(llm.requests().len(), 1, "the retry was not sent");
}
