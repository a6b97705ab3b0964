//! Today's catalog, the schema's bounds, the free-text prompt and native
//! tool calling, against the fake mana-llm (a real HTTP server on loopback)
//! and real Postgres (issue 18 item 6, issue 19 items 1, 4 and 5).

mod common;

use common::{eventually, mission_data, setup, setup_current, write, Change, TestDb};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;

const INVOICE_PLAN: &str = r#"{"summary": "Rechnung", "steps": [{"toolName": "create_invoice", "summary": "Rechnung an Ada", "params": {"clientName": "Ada", "lines": [{"description": "Beratung", "quantity": 2, "unitPrice": 90}]}, "rationale": "Die Arbeit ist getan."}]}"#;

const TASK_PLAN: &str = r#"{"summary": "Woche", "steps": [{"toolName": "create_task", "summary": "Montag", "params": {"title": "Montag"}, "rationale": "Ein Anfang."}]}"#;

async fn seed(t: &TestDb, user: &str, table: &'static str, id: &str, data: Value) {
    let mut sync = t.sync_client().await;
    let mut change = Change::mission(user, id, "insert", data);
    change.table = table;
    write(&mut sync, &[change]).await;
}

async fn seed_mission(t: &TestDb, user: &str, id: &str, extra: Value) {
    seed(t, user, "aiMissions", id, mission_data(extra)).await;
}

/// Writes a mission as today's sync server does (stamps in `field_meta`).
async fn seed_current(t: &TestDb, user: &str, id: &str) {
    let data = mission_data(json!({"spaceId": "space-1"}));
    common::write_today(t, user, id, "insert", &data).await;
}

/// The mission's newest iteration, as the webapp folds it.
async fn last_iteration(t: &TestDb, user: &str, id: &str) -> Option<Value> {
    let record = t.folded_mission(user, id).await;
    let iterations = record.get("iterations")?.as_array()?.clone();
    iterations.last().cloned()
}

async fn planned(t: &TestDb, user: &str, id: &str) -> bool {
    last_iteration(t, user, id).await.is_some()
}

/// The tool names of a request's plan schema.
fn schema_tools(body: &Value) -> Vec<String> {
    let schema = &body["response_format"]["json_schema"]["schema"];
    let branches = schema["properties"]["steps"]["items"]["anyOf"].as_array();
    branches
        .into_iter()
        .flatten()
        .filter_map(|b| b["properties"]["toolName"]["const"].as_str())
        .map(String::from)
        .collect()
}

fn fixture_tools(file: &str) -> Vec<String> {
    let path = format!("{}/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let tools: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tools = tools.as_array().unwrap().iter();
    tools
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// A database of today's generation plans with today's 62 tools, `array`
/// parameters included; `MANA_AI_TOOL_CATALOG=v0.6` names the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todays_database_plans_with_todays_catalog_unless_one_is_named() {
    let t = setup_current().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(INVOICE_PLAN)])
        .await
        .unwrap();
    seed_current(&t, "ida", "m1").await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("m1 planned", || planned(&t, "ida", "m1")).await;
    lead.stop().await;
    let body = &llm.bodies()[0];
    assert_eq!(
        schema_tools(body),
        fixture_tools("propose-tools-current.json")
    );
    let invoice = &body["response_format"]["json_schema"]["schema"]["properties"]["steps"]["items"]
        ["anyOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["properties"]["toolName"]["const"] == "create_invoice")
        .unwrap()["properties"]["params"];
    assert_eq!(invoice["properties"]["lines"]["type"], "array", "{invoice}");
    assert!(llm.prompts()[0].system.contains("- lines: array"));
    let iteration = last_iteration(&t, "ida", "m1").await.unwrap();
    let step = &iteration["plan"][0]["intent"];
    assert_eq!(step["toolName"], "create_invoice", "{iteration}");
    assert_eq!(step["params"]["lines"][0]["quantity"], 2);

    let old = FakeLlm::start(vec![FakeLlm::answer(TASK_PLAN)])
        .await
        .unwrap();
    seed_current(&t, "ida", "m2").await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &old.url()),
            ("MANA_AI_TOOL_CATALOG", "v0.6"),
        ])
        .await;
    eventually("m2 planned", || planned(&t, "ida", "m2")).await;
    lead.stop().await;
    assert_eq!(
        schema_tools(&old.bodies()[0]),
        fixture_tools("propose-tools.json")
    );
}

/// Every summary and rationale at least one character; string parameters
/// bounded by `MANA_AI_PLAN_PARAM_MAX_CHARS` where grammars can take it
/// (up to 500), and left to the token budget above (the default 4000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_wants_text_and_bounds_parameters_by_the_setting() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(TASK_PLAN)])
        .await
        .unwrap();
    seed_mission(&t, "jan", "m1", json!({})).await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    eventually("m1 planned", || planned(&t, "jan", "m1")).await;
    lead.stop().await;
    seed_mission(&t, "jan", "m2", json!({})).await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_AI_PLAN_PARAM_MAX_CHARS", "300"),
        ])
        .await;
    eventually("m2 planned", || planned(&t, "jan", "m2")).await;
    lead.stop().await;
    let bodies = llm.bodies();
    for (body, bound) in bodies.iter().zip([serde_json::Value::Null, json!(300)]) {
        let schema = &body["response_format"]["json_schema"]["schema"];
        assert_eq!(schema["properties"]["summary"]["minLength"], 1, "{schema}");
        let branch = &schema["properties"]["steps"]["items"]["anyOf"][0]["properties"];
        assert_eq!(branch["summary"]["minLength"], 1);
        assert_eq!(branch["rationale"]["minLength"], 1);
        assert_eq!(branch["params"]["properties"]["title"]["maxLength"], bound);
    }
}

/// Free text: a denied tool is not in the prompt at all; under a schema the
/// whole catalog stays as the cacheable prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_text_prompt_leaves_denied_tools_out() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(TASK_PLAN)])
        .await
        .unwrap();
    let policy = json!({"tools": {"create_note": "deny"}, "defaultForAi": "propose"});
    let agent = json!({"name": "Coach", "role": "Fitness", "state": "active", "policy": policy});
    seed(&t, "kai", "agents", "agent-1", agent).await;
    seed_mission(&t, "kai", "m1", json!({"agentId": "agent-1"})).await;
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_LLM_STRUCTURED", "off")])
        .await;
    eventually("m1 planned", || planned(&t, "kai", "m1")).await;
    lead.stop().await;
    seed_mission(&t, "kai", "m2", json!({"agentId": "agent-1"})).await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_LLM_STRUCTURED", "json_schema"),
        ])
        .await;
    eventually("m2 planned", || planned(&t, "kai", "m2")).await;
    lead.stop().await;
    let prompts = llm.prompts();
    assert!(!prompts[0].system.contains("create_note"), "free text");
    assert!(prompts[0].system.contains("- create_task (Modul todo)"));
    assert!(prompts[1].system.contains("- create_note (Modul notes)"));
    assert!(prompts[1].system.contains("gesperrt"));
}

async fn health(port: u16) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// `serve` names the catalog in force in its log and on `/health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shows_the_catalog_in_force() {
    let t = setup_current().await;
    let url = t.db.url_as(pgtemp::SERVICE_ROLE);
    for (extra, expected) in [
        (vec![], "built-in current"),
        (vec![("MANA_AI_TOOL_CATALOG", "v0.6")], "built-in v0.6"),
    ] {
        let mut serve = common::serve::Serve::start(&url, &extra);
        serve
            .answers_within(std::time::Duration::from_secs(30))
            .await;
        let body = health(serve.port).await;
        let shown = format!(r#""toolCatalog":"{expected}""#);
        assert!(body.contains(&shown), "{body}");
        let log = serve.log();
        assert!(log.contains("tool catalog in force"), "{log}");
    }
}

#[path = "planner_tools/tool_calling.rs"]
mod tool_calling;
