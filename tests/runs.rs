//! Mission runs end to end: real Postgres, a fake LLM and a fake mana-api as
//! real HTTP servers on loopback.

mod common;

use std::time::Duration;

use common::{eventually, mission_data, plan_answer, setup, write, Change, TestDb};
use mana_ai::planner::schema::step_tools;
use mana_ai::run::Outcome;
use mana_ai::sync::generation::Generation;
use serde_json::{json, Value};
use testkit::fake_api::FakeManaApi;
use testkit::fake_llm::FakeLlm;
use testkit::http::FakeReply;

both_generations!(
    a_due_mission_is_planned_and_written_back_as_the_contract_says,
    two_ticks_at_once_run_a_slot_once_and_a_dead_claim_is_taken_over,
    a_browser_edit_of_iterations_during_the_run_survives,
);

async fn seed(t: &TestDb, user: &str, id: &str, extra: Value) {
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(user, id, "insert", mission_data(extra))],
    )
    .await;
}

async fn seed_agent(t: &TestDb, user: &str, id: &str, data: Value) {
    let mut sync = t.sync_client().await;
    let mut agent = Change::mission(user, id, "insert", data);
    agent.table = "agents";
    write(&mut sync, &[agent]).await;
}

async fn iterations(t: &TestDb, user: &str, id: &str) -> Vec<Value> {
    match t.folded_mission(user, id).await.get("iterations") {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    }
}

fn iso_millis_like(s: &str) -> bool {
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.'
}

async fn a_due_mission_is_planned_and_written_back_as_the_contract_says(t: TestDb) {
    let llm = FakeLlm::start(vec![FakeReply::json(
        200,
        &FakeLlm::completion(&plan_answer(), Some((900, 100))),
    )])
    .await
    .unwrap();
    seed_agent(
        &t,
        "ana",
        "agent-1",
        json!({"name": "Planerin", "role": "Wochenplanung", "state": "active"}),
    )
    .await;
    seed(&t, "ana", "m-agent", json!({"agentId": "agent-1"})).await;
    seed(&t, "ana", "m-legacy", json!({})).await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("both missions written", || async {
        t.count("SELECT count(*) FROM mana_ai.mission_runs WHERE state = 'done'")
            .await
            == 2
    })
    .await;

    for (mission, principal, name) in [
        ("m-agent", "agent-1", "Planerin"),
        ("m-legacy", "legacy:ai-default", "Mana"),
    ] {
        let rows = t.writebacks("ana", mission).await;
        assert_eq!(rows.len(), 1, "one write-back for {mission}");
        let (data, stamps, actor): (Value, Value, Value) =
            (rows[0].get(0), rows[0].get(1), rows[0].get(2));
        assert_eq!(rows[0].get::<_, String>(3), "mana-ai-runner");
        assert_eq!(rows[0].get::<_, String>(4), "update");
        assert_eq!(rows[0].get::<_, i32>(5), 1);
        let sorted_keys = |v: &Value| {
            let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        let keys = sorted_keys(&data);
        // Today's webapp derives updatedAt from the stamps; v0.6's stored it.
        match t.generation {
            Generation::V06 => assert_eq!(keys, ["iterations", "nextRunAt", "updatedAt"]),
            Generation::Current => assert_eq!(keys, ["iterations", "nextRunAt"]),
        }
        assert_eq!(sorted_keys(&stamps), keys, "the stamps have the same keys");
        let now = stamps["iterations"].as_str().unwrap();
        assert!(iso_millis_like(now), "{now}");
        assert!(stamps.as_object().unwrap().values().all(|v| v == now));
        if t.generation == Generation::V06 {
            assert_eq!(data["updatedAt"], now);
        }
        let iteration = &data["iterations"][0];
        let iteration_id = iteration["id"].as_str().unwrap();
        assert_eq!(
            actor,
            json!({"kind": "ai", "principalId": principal, "displayName": name, "missionId": mission,
                   "iterationId": iteration_id, "rationale": "Eine ruhige Woche planen"})
        );
        assert_eq!(iteration["source"], "server");
        assert_eq!(iteration["overallStatus"], "awaiting-review");
        assert_eq!(iteration["summary"], "Woche geplant");
        assert!(iso_millis_like(iteration["startedAt"].as_str().unwrap()));
        assert!(iso_millis_like(iteration["finishedAt"].as_str().unwrap()));
        assert_eq!(
            iteration["plan"],
            json!([{"id": format!("{iteration_id}-0"), "summary": "Aufgabe anlegen",
                    "intent": {"kind": "toolCall", "toolName": "create_task", "params": {"title": "Montag planen"}},
                    "status": "planned"}])
        );
        // nextRunAt advanced by the interval cadence (60 minutes from now).
        let next =
            mana_ai::schedule::wheel::parse_next_run(data["nextRunAt"].as_str().unwrap()).unwrap();
        let ahead = next - chrono::Utc::now();
        assert!(
            ahead > chrono::Duration::minutes(58) && ahead <= chrono::Duration::minutes(60),
            "{ahead}"
        );
        // The webapp's fold of the mission shows the iteration and the new time.
        let folded = t.folded_mission("ana", mission).await;
        assert_eq!(folded["iterations"].as_array().unwrap().len(), 1);
        assert_eq!(folded["nextRunAt"], data["nextRunAt"]);
        // ... and the write-back comes round: the snapshot re-arms the timer.
        let armed_next = data["nextRunAt"].as_str().unwrap().to_string();
        eventually("re-armed at the next slot", || {
            let armed = armed_next.clone();
            let wheel = lead.lead.reactor.wheel.clone();
            async move {
                wheel.armed_at("ana", mission).await
                    == mana_ai::schedule::wheel::parse_next_run(&armed)
            }
        })
        .await;
    }
    assert_eq!(
        t.count("SELECT sum(tokens_used)::int8 FROM mana_ai.token_usage")
            .await,
        2_000
    );
    lead.settled().await;
    assert_eq!(lead.metrics.plans_written_back.get(), 2);
    assert_eq!(
        lead.metrics
            .agent_decisions
            .with_label_values(&["ran"])
            .get(),
        2
    );
    assert_eq!(
        llm.requests()[0].header("authorization"),
        Some("Bearer test-service-key")
    );
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_failures_retry_back_off_and_finally_record_a_failed_iteration() {
    let t = setup().await;
    // Mission 1: a 500 then a good answer inside one run.
    let llm = FakeLlm::start(vec![
        FakeReply::raw(500, "overloaded"),
        FakeLlm::answer(&plan_answer()),
        // Then only garbage: no JSON at all.
        FakeLlm::answer("Ich kann das leider nicht."),
    ])
    .await
    .unwrap();
    seed(&t, "ben", "m1", json!({})).await;
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_AI_MAX_FAILURES", "3")])
        .await;
    eventually("m1 written", || async {
        t.writebacks("ben", "m1").await.len() == 1
    })
    .await;
    assert_eq!(
        llm.requests().len(),
        2,
        "the 500 was retried within the run"
    );

    // Mission 2 gets only garbage: backs off twice, then a failed iteration.
    seed(&t, "ben", "m2", json!({})).await;
    eventually("m2 failed for good", || async {
        t.writebacks("ben", "m2").await.len() == 1
    })
    .await;
    let its = iterations(&t, "ben", "m2").await;
    assert_eq!(its.len(), 1);
    assert_eq!(its[0]["overallStatus"], "failed");
    assert_eq!(its[0]["errorDetails"]["name"], "ParseError");
    assert_eq!(its[0]["errorDetails"]["phase"], "parsing-response");
    assert_eq!(lead.metrics.parse_failures.get(), 3);
    let next = t.folded_mission("ben", "m2").await["nextRunAt"].clone();
    assert!(next.is_string(), "moved on to the next slot");
    let calls = llm.requests().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        llm.requests().len(),
        calls,
        "nothing loops after the failed iteration"
    );
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_errors_of_every_kind_are_outcomes_not_crashes() {
    let t = setup().await;
    let big = "x".repeat(10 * 1024 * 1024);
    let cases: Vec<(&str, FakeReply)> = vec![
        ("unknown-tool", FakeLlm::answer("```json\n{\"steps\": [{\"toolName\": \"launch_rocket\", \"rationale\": \"r\"}]}\n```")),
        ("no-rationale", FakeLlm::answer("```json\n{\"steps\": [{\"toolName\": \"create_task\", \"params\": {}}]}\n```")),
        ("no-json", FakeLlm::answer("nope")),
        ("huge", FakeReply::raw(200, big)),
        ("rejected", FakeReply::raw(400, "bad request")),
        ("timeout", FakeLlm::answer(&plan_answer()).delay(Duration::from_secs(3))),
    ];
    for (name, reply) in cases {
        let llm = FakeLlm::start(vec![reply]).await.unwrap();
        let lead = t
            .lead(&[
                ("MANA_LLM_URL", &llm.url()),
                ("MANA_LLM_TIMEOUT_SECS", "1"),
                ("MANA_LLM_MAX_ATTEMPTS", "1"),
                ("MANA_AI_RETRY_BACKOFF_SECS", "3600"),
            ])
            .await;
        seed(&t, "cleo", name, json!({})).await;
        let sql = format!("SELECT count(*) FROM mana_ai.mission_runs WHERE mission_id = '{name}' AND state = 'retry'");
        eventually(name, || async { t.count(&sql).await == 1 }).await;
        let expected = match name {
            "unknown-tool" | "no-rationale" | "no-json" => "parse-failed",
            _ => "planner-failed",
        };
        // The outcome is counted when the run returns, just after its
        // back-off committed.
        let outcome = lead.metrics.run_outcomes.with_label_values(&[expected]);
        eventually(&format!("{name}: outcome {expected} counted"), || async {
            outcome.get() >= 1
        })
        .await;
        assert_eq!(outcome.get(), 1, "{name}");
        assert!(t.writebacks("cleo", name).await.is_empty());
        lead.stop().await;
    }
}

async fn two_ticks_at_once_run_a_slot_once_and_a_dead_claim_is_taken_over(t: TestDb) {
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&plan_answer()).delay(Duration::from_millis(400))
    ])
    .await
    .unwrap();
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("TICK_ENABLED", "true")])
        .await;
    // Seeded after start so the wheel fires too: timer, tick and tick race.
    seed(&t, "dora", "m1", json!({})).await;
    let runner = lead.runner().clone();
    let (a, b) = tokio::join!(runner.run_due_now(), runner.run_due_now());
    let (a, b) = (a.unwrap(), b.unwrap());
    eventually("written", || async {
        t.writebacks("dora", "m1").await.len() == 1
    })
    .await;
    assert_eq!(llm.requests().len(), 1, "one LLM call: {a:?} {b:?}");
    assert_eq!(iterations(&t, "dora", "m1").await.len(), 1);

    // A slot claimed by an instance that died (no longer leading): taken over once.
    let slot = common::iso_in(-5);
    t.admin()
        .await
        .execute(
            "INSERT INTO mana_ai.mission_runs (user_id, mission_id, slot, state, token, claimed_by)
             VALUES ('dora', 'm2', $1, 'running', gen_random_uuid(), gen_random_uuid())",
            &[&slot],
        )
        .await
        .unwrap();
    seed(&t, "dora", "m2", json!({"nextRunAt": slot})).await;
    eventually("taken over and written", || async {
        t.writebacks("dora", "m2").await.len() == 1
    })
    .await;
    // The write-back reaches the snapshot through the queue; until the
    // applier folds it, a run finds the old slot done (AlreadyDone).
    eventually("the next slot folded into the snapshot", || async {
        t.mission("dora", "m2").await.is_some_and(|(record, _, _)| {
            record["nextRunAt"]
                .as_str()
                .is_some_and(|next| next != slot)
        })
    })
    .await;
    assert_eq!(
        runner.run_one("dora", "m2", None).await,
        Outcome::NotDue,
        "the next slot is in the future"
    );
    assert_eq!(iterations(&t, "dora", "m2").await.len(), 1);

    // A snapshot still at a slot that is already written (its write-back not
    // folded yet) is not counted as due by a tick.
    t.admin()
        .await
        .execute(
            "UPDATE mana_ai.mission_snapshots
             SET next_run_at = $1::text, next_run_ts = $1::text::timestamptz
             WHERE user_id = 'dora' AND mission_id = 'm2'",
            &[&slot],
        )
        .await
        .unwrap();
    let stats = runner.run_due_now().await.unwrap();
    assert_eq!(stats.due_mission_count, 0, "{stats:?}");
    lead.stop().await;
}

async fn a_browser_edit_of_iterations_during_the_run_survives(t: TestDb) {
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&plan_answer()).delay(Duration::from_millis(700))
    ])
    .await
    .unwrap();
    seed(
        &t,
        "eva",
        "m1",
        json!({"iterations": [{"id": "old", "overallStatus": "approved", "plan": []}]}),
    )
    .await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("the LLM was asked", || async { !llm.requests().is_empty() }).await;
    let mut sync = t.sync_client().await;
    let browser = json!([
        {"id": "old", "overallStatus": "approved", "plan": [], "userFeedback": "gut so"},
        {"id": "from-browser", "overallStatus": "approved", "plan": [], "source": "browser"}
    ]);
    write(
        &mut sync,
        &[Change::mission(
            "eva",
            "m1",
            "update",
            json!({"iterations": browser}),
        )],
    )
    .await;
    eventually("written", || async {
        t.writebacks("eva", "m1").await.len() == 1
    })
    .await;
    let its = iterations(&t, "eva", "m1").await;
    let ids: Vec<&str> = its.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(&ids[..2], ["old", "from-browser"]);
    assert_eq!(its[0]["userFeedback"], "gut so");
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_gates_skip_without_calling_the_llm() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&plan_answer()).delay(Duration::from_millis(600))
    ])
    .await
    .unwrap();
    seed_agent(&t, "fay", "paused", json!({"name": "P", "state": "paused"})).await;
    seed_agent(
        &t,
        "fay",
        "archived",
        json!({"name": "A", "state": "archived"}),
    )
    .await;
    seed_agent(
        &t,
        "fay",
        "broke",
        json!({"name": "B", "maxTokensPerDay": 100}),
    )
    .await;
    seed_agent(
        &t,
        "fay",
        "single",
        json!({"name": "S", "maxConcurrentMissions": 1}),
    )
    .await;
    t.admin()
        .await
        .execute("INSERT INTO mana_ai.token_usage (user_id, agent_id, mission_id, tokens_used) VALUES ('fay', 'broke', 'x', 150)", &[])
        .await
        .unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    let mut sync = t.sync_client().await;
    let missions = [
        ("m-paused", "paused"),
        ("m-archived", "archived"),
        ("m-broke", "broke"),
        ("c1", "single"),
        ("c2", "single"),
    ];
    let changes: Vec<Change> = missions
        .iter()
        .map(|(m, a)| Change::mission("fay", m, "insert", mission_data(json!({"agentId": a}))))
        .collect();
    write(&mut sync, &changes).await;
    let decided = |d: &'static str| lead.metrics.agent_decisions.with_label_values(&[d]).get();
    eventually("every gate decided", || async {
        decided("skipped-paused") == 1
            && decided("skipped-archived") == 1
            && decided("skipped-budget") == 1
            && decided("skipped-concurrency") == 1
            && decided("ran") == 1
    })
    .await;
    // The run its agent held back waits in the fair queue and runs as soon
    // as the other has ended (issue 9), no longer 30 s later.
    eventually("both runs of the single agent written", || async {
        t.writebacks("fay", "c1").await.len() + t.writebacks("fay", "c2").await.len() == 2
    })
    .await;
    assert_eq!(
        llm.requests().len(),
        2,
        "only the runs that passed their gates called the LLM"
    );
    for m in ["m-paused", "m-archived", "m-broke"] {
        assert!(t.writebacks("fay", m).await.is_empty());
    }
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_deny_removes_a_tool_and_research_feeds_the_prompt() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let api = FakeManaApi::with_results(
        json!([{"url": "https://feeds.example/rust.xml", "title": "Rust", "description": "d"}]),
        json!([{"url": "https://news.example/rust-2026", "title": "Rust 2026", "excerpt": "Neu", "publishedAt": "2026-11-20", "feedUrl": "https://feeds.example/rust.xml", "score": 0.9}]),
    )
    .await
    .unwrap();
    seed_agent(&t, "gus", "a1", json!({"name": "R", "policy": {"tools": {"create_note": "deny"}, "defaultForAi": "propose"}})).await;
    seed(
        &t,
        "gus",
        "research",
        json!({"agentId": "a1", "objective": "Recherchiere aktuelle News zu Rust"}),
    )
    .await;
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_API_URL", &api.url())])
        .await;
    eventually("written", || async {
        t.writebacks("gus", "research").await.len() == 1
    })
    .await;
    let prompt = &llm.prompts()[0];
    // The catalog stays in the cached prefix; the denied tool is stated as
    // denied after it and left out of the schema's step shapes (docs/planner.md).
    assert!(prompt
        .system
        .contains("gesperrt (nicht verwenden): create_note\n"));
    let body = llm.requests()[0].json().unwrap();
    let schema = &body["response_format"]["json_schema"]["schema"];
    let names = step_tools(schema);
    assert!(!names.contains(&"create_note"), "denied tool not allowed");
    assert!(names.contains(&"create_task"));
    assert!(
        prompt.user.contains("https://news.example/rust-2026"),
        "research in the prompt"
    );
    assert_eq!(api.requests().len(), 2);
    lead.stop().await;

    // Without a trigger word no research; with mana-api down the plan is still written.
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    seed(&t, "gus", "quiet", json!({"objective": "Die Woche planen"})).await;
    seed(
        &t,
        "gus",
        "down",
        json!({"objective": "Suche nach Neuigkeiten"}),
    )
    .await;
    let refused = testkit::http::refused_url().await.unwrap();
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_API_URL", &refused)])
        .await;
    eventually("both written", || async {
        t.writebacks("gus", "quiet").await.len() == 1
            && t.writebacks("gus", "down").await.len() == 1
    })
    .await;
    assert_eq!(
        lead.metrics.research_failures.get(),
        1,
        "only the trigger word tried research"
    );
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_within_the_run() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeReply::raw(429, "slow down").header("Retry-After", "3"),
        FakeLlm::answer(&plan_answer()),
    ])
    .await
    .unwrap();
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_LLM_MAX_ATTEMPTS", "2")])
        .await;
    seed(&t, "fritz", "m1", json!({})).await;
    eventually("the LLM was asked", || async { !llm.requests().is_empty() }).await;
    let asked = std::time::Instant::now();
    eventually("written", || async {
        t.writebacks("fritz", "m1").await.len() == 1
    })
    .await;
    // The backoff before a second attempt is at most 1 s: a wait of 3 s can
    // only come from Retry-After. A lower bound only, so load cannot fail it.
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(2500),
        "waited only {waited:?}"
    );
    assert_eq!(llm.requests().len(), 2, "one retry, within the same run");
    lead.settled().await;
    let outcomes = &lead.metrics.run_outcomes;
    assert_eq!(outcomes.with_label_values(&["written"]).get(), 1);
    assert_eq!(iterations(&t, "fritz", "m1").await.len(), 1);
    lead.stop().await;
}
