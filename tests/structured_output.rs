//! Structured output and the cache-friendly prompt, against the fake LLM (a
//! real HTTP server on loopback) and, for whole runs, real Postgres.

mod common;

use std::time::Duration;

use common::{eventually, mission_data, plan_answer, setup, write, Change, TestDb};
use mana_ai::config::Secret;
use mana_ai::planner::llm::{LlmClient, LlmConfig, LlmError};
use mana_ai::planner::schema::step_tools;
use mana_ai::planner::structured::StructuredMode;
use mana_ai::planner::{AnswerShape, ToolCatalog};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;
use testkit::http::FakeReply;

/// A bare JSON plan, as a server writes it under a schema.
const BARE_PLAN: &str = r#"{"summary": "Woche", "steps": [{"summary": "Aufgabe", "toolName": "create_task", "params": {"title": "Montag"}, "rationale": "Ein Anfang."}]}"#;

fn client(url: String, mode: StructuredMode) -> LlmClient {
    let mut config = LlmConfig::new(url, Secret::new("k"), "smollm2");
    config.timeout = Duration::from_secs(5);
    config.backoff_base = Duration::from_millis(1);
    config.backoff_cap = Duration::from_millis(5);
    config.structured = mode;
    LlmClient::new(config).unwrap()
}

fn schema() -> Value {
    json!({"type": "object", "properties": {"steps": {"type": "array"}}})
}

/// `response_format.type` of every recorded request (`None`: free text).
fn forms(llm: &FakeLlm) -> Vec<Option<String>> {
    llm.requests()
        .iter()
        .map(|r| {
            let body = r.json().expect("a JSON request");
            body.get("response_format")
                .map(|f| f["type"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

fn some(form: &str) -> Option<String> {
    Some(form.to_string())
}

async fn seed(t: &TestDb, user: &str, table: &'static str, id: &str, data: Value) {
    let mut sync = t.sync_client().await;
    let mut change = Change::mission(user, id, "insert", data);
    change.table = table;
    write(&mut sync, &[change]).await;
}

async fn written(t: &TestDb, user: &str, id: &str) -> bool {
    !t.writebacks(user, id).await.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_sends_the_schema_with_exactly_the_allowed_tools_and_a_shared_prefix() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(BARE_PLAN)])
        .await
        .unwrap();
    let policy = json!({"tools": {"create_note": "deny"}, "defaultsByModule": {"quiz": "deny"}, "defaultForAi": "propose"});
    seed(
        &t,
        "ida",
        "agents",
        "agent-1",
        json!({"name": "Coach", "role": "Fitness", "state": "active", "policy": policy}),
    )
    .await;
    seed(
        &t,
        "ida",
        "aiMissions",
        "m-agent",
        mission_data(json!({"agentId": "agent-1", "title": "Laufen"})),
    )
    .await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("m-agent written", || written(&t, "ida", "m-agent")).await;
    // A second mission, another time, no agent.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    seed(
        &t,
        "ida",
        "aiMissions",
        "m-plain",
        mission_data(json!({"title": "Steuern", "objective": "Belege sammeln"})),
    )
    .await;
    eventually("m-plain written", || written(&t, "ida", "m-plain")).await;
    lead.stop().await;

    let requests: Vec<Value> = llm.requests().iter().filter_map(|r| r.json()).collect();
    assert_eq!(requests.len(), 2);
    let catalog = ToolCatalog::builtin();
    let denied = |name: &str| {
        let module = catalog.get(name).map(|t| t.module.as_str());
        name == "create_note" || module == Some("quiz")
    };
    let allowed: Vec<&str> = catalog
        .tools()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !denied(n))
        .collect();
    let format = &requests[0]["response_format"];
    assert_eq!(
        format["type"], "json_schema",
        "auto starts with OpenAI's form: {format}"
    );
    let step = &format["json_schema"]["schema"]["properties"]["steps"];
    assert_eq!(step_tools(&format["json_schema"]["schema"]), allowed);
    assert_eq!(
        (step["minItems"].clone(), step["maxItems"].clone()),
        (json!(1), json!(5))
    );
    let all: Vec<&str> = catalog.tools().iter().map(|t| t.name.as_str()).collect();
    let format = &requests[1]["response_format"];
    assert_eq!(step_tools(&format["json_schema"]["schema"]), all);

    // The two system messages share a prefix that holds the whole catalog;
    // what differs (agent, denied tools, time) comes after it.
    let prompts = llm.prompts();
    let (a, b) = (&prompts[0].system, &prompts[1].system);
    let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let shared = &a[..common];
    for tool in catalog.tools() {
        assert!(
            shared.contains(&format!("- {} (Modul {})", tool.name, tool.module)),
            "{} not in the shared prefix",
            tool.name
        );
    }
    assert!(shared.contains("Du bist der Planungsassistent"));
    assert!(a[common..].contains("<agent_context>") && a[common..].contains("gesperrt"));
    assert!(!shared.contains("Aktueller Zeitpunkt") && !shared.contains("<agent_context>"));
    assert!(
        common * 10 > a.len() * 8,
        "shared {common} of {} bytes",
        a.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_from_json_schema_and_the_next_run_starts_with_json_object() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeReply::raw(500, "unsupported response_format"),
        FakeLlm::answer(BARE_PLAN),
    ])
    .await
    .unwrap();
    seed(&t, "jan", "aiMissions", "m1", mission_data(json!({}))).await;
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_LLM_MAX_ATTEMPTS", "1")])
        .await;
    eventually("m1 written", || written(&t, "jan", "m1")).await;
    assert_eq!(forms(&llm), [some("json_schema"), some("json_object")]);
    seed(&t, "jan", "aiMissions", "m2", mission_data(json!({}))).await;
    eventually("m2 written", || written(&t, "jan", "m2")).await;
    lead.stop().await;
    // A new leadership term (a new client) keeps what the process learned.
    seed(&t, "jan", "aiMissions", "m3", mission_data(json!({}))).await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("m3 written", || written(&t, "jan", "m3")).await;
    let plans = lead.metrics.plans_written_back.get();
    lead.stop().await;
    assert_eq!(
        forms(&llm),
        [
            some("json_schema"),
            some("json_object"),
            some("json_object"),
            some("json_object")
        ]
    );
    assert_eq!(plans, 1, "the bare JSON object is a plan");
}

#[tokio::test]
async fn auto_falls_back_to_free_text_and_remembers_it() {
    let llm = FakeLlm::start(vec![
        FakeReply::raw(400, "response_format not supported"),
        FakeReply::raw(500, "grammar error"),
        FakeLlm::answer(BARE_PLAN),
    ])
    .await
    .unwrap();
    let first = client(llm.url(), StructuredMode::Auto);
    let answer = first
        .complete_plan("s", "u", Some(&schema()))
        .await
        .unwrap();
    assert_eq!((answer.content.as_str(), answer.attempts), (BARE_PLAN, 1));
    let second = client(llm.url(), StructuredMode::Auto);
    second
        .complete_plan("s", "u", Some(&schema()))
        .await
        .unwrap();
    assert_eq!(
        forms(&llm),
        [some("json_schema"), some("json_object"), None, None]
    );
}

#[tokio::test]
async fn a_server_refusing_every_form_is_not_learned_and_load_statuses_never_fall_back() {
    // Every form refused: the call fails as a 400 would, nothing is learned.
    let llm = FakeLlm::start(vec![FakeReply::raw(400, "bad")])
        .await
        .unwrap();
    let c = client(llm.url(), StructuredMode::Auto);
    let e = c
        .complete_plan("s", "u", Some(&schema()))
        .await
        .unwrap_err();
    assert_eq!(e, LlmError::Rejected { status: 400 });
    c.complete_plan("s", "u", Some(&schema()))
        .await
        .unwrap_err();
    let expected = [some("json_schema"), some("json_object"), None];
    assert_eq!(forms(&llm), [expected.clone(), expected].concat());

    // 503 means "away", not "not this form": retried in the same form.
    let llm = FakeLlm::start(vec![
        FakeReply::raw(503, "loading model"),
        FakeLlm::answer(BARE_PLAN),
    ])
    .await
    .unwrap();
    let c = client(llm.url(), StructuredMode::Auto);
    let answer = c.complete_plan("s", "u", Some(&schema())).await.unwrap();
    assert_eq!(answer.attempts, 2);
    assert_eq!(forms(&llm), [some("json_schema"), some("json_schema")]);
}

#[tokio::test]
async fn fixed_modes_send_their_form_and_off_sends_none() {
    let llm = FakeLlm::start(vec![FakeLlm::answer(BARE_PLAN)])
        .await
        .unwrap();
    for (mode, shape) in [
        (StructuredMode::JsonObject, AnswerShape::Json),
        (StructuredMode::JsonSchema, AnswerShape::Json),
        (StructuredMode::Off, AnswerShape::FreeText),
    ] {
        let answer = client(llm.url(), mode)
            .complete_plan("s", "u", Some(&schema()))
            .await
            .unwrap();
        assert_eq!(answer.shape, shape, "{mode:?}");
    }
    // Plain `complete` and a plan without a schema are free text too.
    let auto = client(llm.url(), StructuredMode::Auto);
    auto.complete("s", "u").await.unwrap();
    auto.complete_plan("s", "u", None).await.unwrap();
    assert_eq!(
        forms(&llm),
        [some("json_object"), some("json_schema"), None, None, None]
    );
    let bodies: Vec<Value> = llm.requests().iter().filter_map(|r| r.json()).collect();
    assert_eq!(bodies[0]["response_format"]["schema"], schema());
    assert_eq!(
        bodies[1]["response_format"]["json_schema"]["schema"],
        schema()
    );
    assert_eq!(bodies[1]["response_format"]["json_schema"]["strict"], false);

    // A fixed form is not dropped on a refusal: the error is the caller's.
    let refusing = FakeLlm::start(vec![FakeReply::raw(400, "no")])
        .await
        .unwrap();
    let e = client(refusing.url(), StructuredMode::JsonObject)
        .complete_plan("s", "u", Some(&schema()))
        .await
        .unwrap_err();
    assert_eq!(e, LlmError::Rejected { status: 400 });
    assert_eq!(forms(&refusing), [some("json_object")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_off_runs_send_no_response_format() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    seed(&t, "kai", "aiMissions", "m1", mission_data(json!({}))).await;
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_LLM_STRUCTURED", "off")])
        .await;
    eventually("m1 written", || written(&t, "kai", "m1")).await;
    lead.stop().await;
    assert_eq!(forms(&llm), [None]);
}

/// As llama-cpp-python 0.3 answered under its JSON grammar: a bare object
/// with raw line breaks in its strings and a fence quoted in one of them.
/// Both used to fail the run as "not valid JSON" or "unclosed block".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_answer_with_raw_line_breaks_and_a_quoted_fence_is_a_plan() {
    let t = setup().await;
    let answer = "{ \"summary\" : \"Woche\nplanen\", \"steps\" : [ { \"toolName\" : \"create_task\", \
        \"summary\" : \"Laufen\", \"params\" : {\"title\": \"Laufen ```\"}, \"rationale\" : \"Ziel:\n Bewegung\" }]}";
    let llm = FakeLlm::start(vec![FakeLlm::answer(answer)]).await.unwrap();
    seed(&t, "lia", "aiMissions", "m1", mission_data(json!({}))).await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_LLM_STRUCTURED", "json_object"),
        ])
        .await;
    eventually("m1 written", || written(&t, "lia", "m1")).await;
    lead.stop().await;
    let rows = t.writebacks("lia", "m1").await;
    let data: Value = rows[0].get(0);
    let iteration = &data["iterations"][0];
    assert_eq!(iteration["overallStatus"], "awaiting-review", "{iteration}");
    assert_eq!(iteration["summary"], "Woche\nplanen");
    assert_eq!(
        iteration["plan"][0]["intent"]["params"]["title"],
        "Laufen ```"
    );
}
