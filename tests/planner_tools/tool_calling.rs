//! Native tool calling (issue 19 item 1) and its metrics (item 5).

use super::common::{eventually, setup, TestDb};
use super::{last_iteration, planned, seed, seed_mission, TASK_PLAN};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;

const RESOLVED: &str = "ollama/gemma3:4b";

fn steps(iteration: &Value) -> Vec<(String, Value)> {
    let plan = iteration["plan"].as_array().cloned().unwrap_or_default();
    plan.iter()
        .map(|s| {
            let intent = &s["intent"];
            (
                intent["toolName"].as_str().unwrap().to_string(),
                intent["params"].clone(),
            )
        })
        .collect()
}

/// Messages of one role in a request.
fn of_role<'a>(body: &'a Value, role: &str) -> Vec<&'a Value> {
    let messages = body["messages"].as_array().unwrap();
    messages.iter().filter(|m| m["role"] == role).collect()
}

/// Leads with `llm` in the tools form (and `extra` settings) until the
/// mission has its iteration, then stops.
async fn run_with_tools(
    t: &TestDb,
    llm: &FakeLlm,
    user: &str,
    mission: &str,
    extra: &[(&str, &str)],
) {
    let url = llm.url();
    let mut overrides = vec![
        ("MANA_LLM_URL", url.as_str()),
        ("MANA_LLM_STRUCTURED", "tools"),
    ];
    overrides.extend_from_slice(extra);
    let lead = t.lead(&overrides).await;
    eventually("the mission's iteration", || planned(t, user, mission)).await;
    lead.stop().await;
}

/// Three rounds: valid calls become steps (a repeated one collapses), an
/// unknown tool and bad parameters are answered with what was wrong and
/// never become steps, the reply without calls is the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_over_rounds_become_steps_and_wrong_calls_are_answered() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeLlm::tool_calls(
            &[
                (
                    "c1",
                    "create_task",
                    r#"{"title": "Montag", "rationale": "Ein Anfang."}"#,
                ),
                ("c2", "launch_rocket", r#"{"rationale": "Warum nicht."}"#),
                (
                    "c3",
                    "create_task",
                    r#"{"priority": "urgent", "rationale": "Eilig."}"#,
                ),
                ("c4", "create_note", r#"{"content": "Hallo" "#),
            ],
            None,
        ),
        FakeLlm::tool_calls(
            &[
                (
                    "c5",
                    "create_note",
                    r#"{"content": "Plan", "rationale": "Festhalten."}"#,
                ),
                (
                    "c6",
                    "create_task",
                    r#"{"title": "Montag", "rationale": "Nochmal."}"#,
                ),
            ],
            Some("Noch eine Notiz."),
        ),
        FakeLlm::answer("Die Woche ist geplant."),
    ])
    .await
    .unwrap();
    let policy = json!({"tools": {"create_event": "deny", "create_note": "auto"}, "defaultForAi": "propose"});
    let agent = json!({"name": "Coach", "role": "Plan", "state": "active", "policy": policy});
    seed(&t, "ole", "agents", "agent-1", agent).await;
    seed_mission(&t, "ole", "m1", json!({"agentId": "agent-1"})).await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_LLM_STRUCTURED", "tools"),
        ])
        .await;
    eventually("m1 planned", || planned(&t, "ole", "m1")).await;
    let metrics = lead.metrics.render();
    lead.stop().await;

    let bodies = llm.bodies();
    assert_eq!(bodies.len(), 3, "three rounds");
    let first = &bodies[0];
    assert_eq!(first["tool_choice"], "auto");
    assert!(first.get("response_format").is_none());
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(offered.contains(&"create_task") && !offered.contains(&"create_event"));
    let lines = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "create_task")
        .unwrap();
    assert_eq!(lines["type"], "function");
    assert_eq!(lines["function"]["parameters"]["type"], "object");
    let system = first["messages"][0]["content"].as_str().unwrap();
    assert!(!system.contains("- create_task (Modul"), "no tool list");
    assert!(!system.contains("json"), "no JSON instructions");

    // Round 2 carries round 1's calls and an answer to each of them.
    let second = &bodies[1];
    let assistant = of_role(second, "assistant");
    assert_eq!(assistant[0]["tool_calls"].as_array().unwrap().len(), 4);
    let tools = of_role(second, "tool");
    let ids: Vec<&str> = tools
        .iter()
        .map(|m| m["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c1", "c2", "c3", "c4"]);
    let said = |i: usize| tools[i]["content"].as_str().unwrap().to_string();
    assert!(said(0).contains("vorgemerkt"), "{}", said(0));
    for i in 1..4 {
        assert!(!said(i).contains("vorgemerkt"), "{}", said(i));
        assert!(said(i).contains("Fehler"), "{}", said(i));
    }
    assert_eq!(of_role(&bodies[2], "tool").len(), 6);

    let iteration = last_iteration(&t, "ole", "m1").await.unwrap();
    assert_eq!(iteration["summary"], "Die Woche ist geplant.");
    let got = steps(&iteration);
    assert_eq!(
        got,
        [
            ("create_task".to_string(), json!({"title": "Montag"})),
            ("create_note".to_string(), json!({"content": "Plan"})),
        ]
    );
    for series in [
        "mana_ai_tool_calls_total{outcome=\"planned\",policy=\"propose\",tool=\"create_task\"} 1",
        "mana_ai_tool_calls_total{outcome=\"planned\",policy=\"auto\",tool=\"create_note\"} 1",
        "mana_ai_tool_calls_total{outcome=\"duplicate\",policy=\"propose\",tool=\"create_task\"} 1",
        "mana_ai_tool_calls_total{outcome=\"invalid\",policy=\"none\",tool=\"other\"} 1",
        "mana_ai_tool_calls_total{outcome=\"invalid\",policy=\"propose\",tool=\"create_task\"} 1",
        "mana_ai_planner_rounds_bucket{le=\"2\"} 0",
        "mana_ai_planner_rounds_bucket{le=\"3\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}

/// The loop stops at `MANA_AI_PLANNER_ROUNDS`, and at a spent budget: a
/// round's tokens count before the next round is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_ends_at_the_round_limit_and_at_the_budget() {
    let t = setup().await;
    let calls = |n: usize| {
        let args = format!(r#"{{"title": "Schritt {n}", "rationale": "Weiter."}}"#);
        FakeLlm::tool_calls(&[(&format!("c{n}"), "create_task", &args)], None)
    };
    let llm = FakeLlm::start(vec![calls(1), calls(2), calls(3), calls(4)])
        .await
        .unwrap();
    seed_mission(&t, "pia", "m1", json!({})).await;
    run_with_tools(&t, &llm, "pia", "m1", &[("MANA_AI_PLANNER_ROUNDS", "2")]).await;
    assert_eq!(llm.bodies().len(), 2);
    let iteration = last_iteration(&t, "pia", "m1").await.unwrap();
    assert_eq!(steps(&iteration).len(), 2);

    // 120 tokens per round; the agent may spend 100 a day: one round only.
    let budget = FakeLlm::start(vec![calls(1), calls(2)]).await.unwrap();
    let agent = json!({"name": "Sparsam", "state": "active", "maxTokensPerDay": 100});
    seed(&t, "pia", "agents", "agent-1", agent).await;
    seed_mission(&t, "pia", "m2", json!({"agentId": "agent-1"})).await;
    run_with_tools(&t, &budget, "pia", "m2", &[]).await;
    assert_eq!(budget.bodies().len(), 1, "no round past the budget");
    let iteration = last_iteration(&t, "pia", "m2").await.unwrap();
    assert_eq!(steps(&iteration).len(), 1);
}

/// `auto`: a gateway that says it is mana-llm gets tools from the next run
/// on; one that ignores `tools` never leaves a plan empty; a server without
/// the header never gets tools; `capability` moves on to the next form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_offers_tools_to_mana_llm_only_and_never_settles_on_empty_plans() {
    let t = setup().await;
    let resolved = |reply| FakeLlm::resolved(reply, RESOLVED);
    let args = r#"{"title": "Montag", "rationale": "Ein Anfang."}"#;
    let llm = FakeLlm::start(vec![
        resolved(FakeLlm::answer(TASK_PLAN)),
        resolved(FakeLlm::tool_calls(&[("c1", "create_task", args)], None)),
        resolved(FakeLlm::answer("Fertig.")),
        FakeLlm::error("capability", "model has no tool support"),
        resolved(FakeLlm::answer(TASK_PLAN)),
    ])
    .await
    .unwrap();
    seed_mission(&t, "rea", "m1", json!({})).await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("m1 planned", || planned(&t, "rea", "m1")).await;
    seed_mission(&t, "rea", "m2", json!({})).await;
    eventually("m2 planned", || planned(&t, "rea", "m2")).await;
    // `capability` on tools: the same call goes on in the next form.
    seed_mission(&t, "rea", "m3", json!({})).await;
    eventually("m3 planned", || planned(&t, "rea", "m3")).await;
    lead.stop().await;
    let forms: Vec<bool> = llm
        .bodies()
        .iter()
        .map(|b| b.get("tools").is_some())
        .collect();
    assert_eq!(forms, [false, true, true, true, false]);
    for id in ["m2", "m3"] {
        let iteration = last_iteration(&t, "rea", id).await.unwrap();
        assert_eq!(steps(&iteration).len(), 1, "{id}: {iteration}");
    }

    // mana-llm in name, but the model behind it ignores `tools`: the call
    // goes on in the next form and the plan is not empty.
    let ignoring = FakeLlm::start(vec![resolved(FakeLlm::answer(TASK_PLAN))])
        .await
        .unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &ignoring.url())]).await;
    for id in ["i1", "i2", "i3"] {
        seed_mission(&t, "rea", id, json!({})).await;
        eventually("planned", || planned(&t, "rea", id)).await;
    }
    lead.stop().await;
    for id in ["i1", "i2", "i3"] {
        let iteration = last_iteration(&t, "rea", id).await.unwrap();
        assert_eq!(steps(&iteration).len(), 1, "{id}: {iteration}");
    }

    // No header: never tools.
    let plain = FakeLlm::start(vec![FakeLlm::answer(TASK_PLAN)])
        .await
        .unwrap();
    for id in ["m5", "m6"] {
        seed_mission(&t, "rea", id, json!({})).await;
        let lead = t.lead(&[("MANA_LLM_URL", &plain.url())]).await;
        eventually("planned", || planned(&t, "rea", id)).await;
        lead.stop().await;
    }
    assert_eq!(plain.bodies().len(), 2);
    assert!(plain.bodies().iter().all(|b| b.get("tools").is_none()));
}

/// `blocked` in a later round ends the run like in the first: a failed
/// iteration with the reason, not a plan of the earlier rounds' steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_a_later_round_ends_the_run() {
    let t = setup().await;
    let args = r#"{"title": "Montag", "rationale": "Ein Anfang."}"#;
    let llm = FakeLlm::start(vec![
        FakeLlm::tool_calls(&[("c1", "create_task", args)], None),
        FakeLlm::error("blocked", "content policy"),
    ])
    .await
    .unwrap();
    seed_mission(&t, "sam", "m1", json!({})).await;
    run_with_tools(&t, &llm, "sam", "m1", &[]).await;
    assert_eq!(llm.bodies().len(), 2);
    let iteration = last_iteration(&t, "sam", "m1").await.unwrap();
    assert_eq!(iteration["overallStatus"], "failed", "{iteration}");
    assert_eq!(iteration["errorDetails"]["phase"], "calling-llm");
    assert!(steps(&iteration).is_empty());
}

/// Every round has its own retries: a 5xx in round 2 is retried under
/// `MANA_LLM_MAX_ATTEMPTS` like one in round 1, not charged against the
/// attempts the earlier rounds used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_round_has_retries_of_its_own() {
    let t = setup().await;
    let call = |id: &str, title: &str| {
        let args = format!(r#"{{"title": "{title}", "rationale": "Weiter."}}"#);
        FakeLlm::tool_calls(&[(id, "create_task", &args)], None)
    };
    let llm = FakeLlm::start(vec![
        call("c1", "Montag"),
        testkit::http::FakeReply::raw(500, "hiccup"),
        call("c2", "Dienstag"),
        FakeLlm::answer("Fertig."),
    ])
    .await
    .unwrap();
    seed_mission(&t, "tom", "m1", json!({})).await;
    run_with_tools(&t, &llm, "tom", "m1", &[("MANA_LLM_MAX_ATTEMPTS", "2")]).await;
    assert_eq!(llm.bodies().len(), 4);
    let iteration = last_iteration(&t, "tom", "m1").await.unwrap();
    assert_eq!(steps(&iteration).len(), 2, "{iteration}");
    assert_eq!(iteration["summary"], "Fertig.");
}

/// A 5xx on a tools request to mana-llm is a failure to retry, not a verdict
/// on tools: the retry stays in the tools form and tools stay in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_on_tools_is_retried_as_tools() {
    let t = setup().await;
    let resolved = |reply| FakeLlm::resolved(reply, RESOLVED);
    let args = r#"{"title": "Montag", "rationale": "Ein Anfang."}"#;
    let llm = FakeLlm::start(vec![
        resolved(FakeLlm::answer(TASK_PLAN)),
        FakeLlm::plain_error(500, "internal error"),
        resolved(FakeLlm::tool_calls(&[("c1", "create_task", args)], None)),
        resolved(FakeLlm::answer("Fertig.")),
    ])
    .await
    .unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    for id in ["m1", "m2"] {
        seed_mission(&t, "uli", id, json!({})).await;
        eventually("planned", || planned(&t, "uli", id)).await;
    }
    lead.stop().await;
    let forms: Vec<bool> = llm
        .bodies()
        .iter()
        .map(|b| b.get("tools").is_some())
        .collect();
    assert_eq!(forms, [false, true, true, true]);
    let m2 = last_iteration(&t, "uli", "m2").await.unwrap();
    assert_eq!(steps(&m2).len(), 1, "{m2}");
}
