//! The generation of `public.sync_changes` is read from the catalog at
//! start and shown on `/health` and `/metrics`; a database of today's
//! generation (fixtures/mana_sync_current.sql) is served: changes folded from
//! `field_meta`, the write-back in today's shape (no `updatedAt`, string
//! stamps in `field_meta`, `origin = 'agent'`, the mission's Space), and a
//! mission whose text is `enc:1:` ciphertext is not planned; a table of
//! neither shape is refused naming its columns.

mod common;

use std::time::Duration;

use common::logs::{capture_logs, captured_logs};
use common::serve::Serve;
use common::{eventually, mission_data, plan_answer, setup, setup_current, TestDb};
use pgtemp::SERVICE_ROLE;
use serde_json::{json, Value};
use testkit::fake_api::FakeManaApi;
use testkit::fake_llm::FakeLlm;
use testkit::http::FakeReply;

async fn get(port: u16, path: &str) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}{path}");
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// Also: a setting of the original that no longer applies is named in a
/// warning at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v06_database_is_served_and_its_generation_shown() {
    capture_logs();
    let t = setup().await;
    let mut serve = Serve::start(&t.db.url_as(SERVICE_ROLE), &[("TICK_INTERVAL_MS", "60000")]);
    serve.answers_within(Duration::from_secs(30)).await;
    let health = get(serve.port, "/health").await;
    assert!(
        health.contains(r#""syncLog":"v0.6 (field_timestamps)""#),
        "{health}"
    );
    let metrics = get(serve.port, "/metrics").await;
    assert!(
        metrics.contains(r#"mana_ai_sync_log_info{generation="v0.6"} 1"#),
        "{metrics}"
    );
    let log = serve.log();
    assert!(log.contains("sync_changes generation"), "{log}");
    assert!(
        log.contains("TICK_INTERVAL_MS is set but not read"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_neither_shape_is_refused_naming_its_columns() {
    capture_logs();
    let t = setup().await;
    t.admin()
        .await
        .batch_execute("ALTER TABLE public.sync_changes RENAME COLUMN field_timestamps TO stamps")
        .await
        .unwrap();
    let mut serve = Serve::start(&t.db.url_as(SERVICE_ROLE), &[]);
    let status = serve.exit_within(Duration::from_secs(30)).await;
    let log = serve.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("neither field_timestamps nor field_meta"),
        "{log}"
    );
    assert!(log.contains("stamps"), "{log}");
}

/// The DBA kit serves both generations (it reads no stamp column) and says
/// which one it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_installs_on_todays_generation_and_names_it() {
    capture_logs();
    let db = pgtemp::TempDb::create(common::server(), "mana_ai_t")
        .await
        .unwrap();
    db.use_current_generation().await.unwrap();
    let (ok, err) = common::psql(&db, "install.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    assert!(
        err.contains("public.sync_changes is current (field_meta)"),
        "{err}"
    );
    let (ok, err) = common::psql(&db, "verify.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    assert!(
        err.contains("ok; public.sync_changes is current (field_meta)"),
        "{err}"
    );
}

/// A database of today's generation and a leader whose LLM gives `reply`.
async fn lead_current(reply: FakeReply) -> (TestDb, FakeLlm, common::Leading) {
    let t = setup_current().await;
    let llm = FakeLlm::start(vec![reply]).await.unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    (t, llm, lead)
}

/// Writes a mission change as today's sync server does: stamps in
/// `field_meta`, `origin = 'user'`, the record's Space.
async fn write_current(t: &TestDb, user: &str, mission: &str, data: Value) {
    write_current_op(t, user, mission, "insert", data).await;
}

async fn write_current_op(t: &TestDb, user: &str, mission: &str, op: &str, data: Value) {
    common::write_today(t, user, mission, op, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mission_in_todays_generation_is_planned_and_written_back_in_its_shape() {
    capture_logs();
    let (t, _llm, lead) = lead_current(FakeLlm::answer(&plan_answer())).await;
    write_current(
        &t,
        "tess",
        "m1",
        mission_data(json!({"spaceId": "space-1"})),
    )
    .await;
    eventually("the write-back is folded into the snapshot", || async {
        t.mission("tess", "m1").await.is_some_and(|(record, _, _)| {
            record["iterations"]
                .as_array()
                .is_some_and(|i| i.len() == 1)
        })
    })
    .await;
    lead.settled().await;
    lead.stop().await;
    let row = t
        .admin()
        .await
        .query_one(
            "SELECT data, field_meta, origin, space_id FROM sync_changes
             WHERE record_id = 'm1' AND client_id = 'mana-ai-runner'",
            &[],
        )
        .await
        .unwrap();
    let (data, meta): (Value, Value) = (row.get(0), row.get(1));
    let (origin, space): (Option<String>, Option<String>) = (row.get(2), row.get(3));
    assert_eq!(
        (origin.as_deref(), space.as_deref()),
        (Some("agent"), Some("space-1"))
    );
    assert!(data.get("updatedAt").is_none(), "{data}");
    assert!(
        data["iterations"].is_array() && data.get("nextRunAt").is_some(),
        "{data}"
    );
    let mut keys: Vec<&String> = meta.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["iterations", "nextRunAt"]);
    assert!(
        meta.as_object().unwrap().values().all(Value::is_string),
        "{meta}"
    );
}

/// Each of the three encrypted fields alone keeps its mission from being
/// planned, although the plaintext around it asks for research: the
/// ciphertext reaches no model, no research query, no actor (nothing is
/// written back), no log line or span, no metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mission_with_encrypted_text_is_not_planned_and_says_why() {
    capture_logs();
    let t = setup_current().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let api = FakeManaApi::with_results(json!([]), json!([]))
        .await
        .unwrap();
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_API_URL", &api.url())])
        .await;
    let secret =
        |field: &str| format!("enc:1:AAECAwQFBgcICQoL.{field}DA0ODxAREhMUFRYXGBkaGxwdHh8=");
    let research = "Recherchiere aktuelle News";
    for field in ["title", "conceptMarkdown", "objective"] {
        let mut data = mission_data(json!({"objective": research, "conceptMarkdown": research}));
        data[field] = json!(secret(field));
        write_current(&t, "tess", field, data).await;
    }
    eventually(
        "the three runs are skipped for their encrypted text",
        || async {
            lead.metrics
                .agent_decisions
                .with_label_values(&["skipped-encrypted"])
                .get()
                == 3
        },
    )
    .await;
    lead.settled().await;
    assert!(llm.requests().is_empty(), "no LLM call");
    assert!(api.requests().is_empty(), "no research query");
    for field in ["title", "conceptMarkdown", "objective"] {
        assert_eq!(t.writebacks_current("tess", field).await, 0, "no actor");
    }
    let text = lead.metrics.render();
    assert!(
        text.contains(r#"mana_ai_missions_stalled_total{reason="encrypted-text"} 3"#),
        "{text}"
    );
    let logs = captured_logs();
    assert!(logs.contains("encrypted-text"), "{logs}");
    for field in ["title", "conceptMarkdown", "objective"] {
        let secret = secret(field);
        assert!(!text.contains(&secret), "a metric carries the ciphertext");
        assert!(
            !logs.contains(&secret),
            "a log line or span carries the ciphertext"
        );
    }
    lead.stop().await;
}

/// Today's webapp runs planned steps at once and marks them: a device's
/// status update that lands while a run waits for the model is kept, and
/// the write-back never turns that step back into `planned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_status_update_during_the_run_survives_the_write_back() {
    capture_logs();
    let slow = FakeLlm::answer(&plan_answer()).delay(std::time::Duration::from_millis(800));
    let (t, llm, lead) = lead_current(slow).await;
    let step = |status: &str| {
        json!({"id": "it-0", "source": "server", "overallStatus": "planned",
               "plan": [{"summary": "Aufgabe", "status": status,
                         "intent": {"kind": "toolCall", "toolName": "create_task", "params": {}}}]})
    };
    let seeded = mission_data(json!({"spaceId": "space-1", "iterations": [step("planned")]}));
    write_current(&t, "tess", "m1", seeded).await;
    eventually("the run asks the model", || async {
        llm.requests().len() == 1
    })
    .await;
    // The device ran the step and says so, while the run waits.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let update = json!({"iterations": [step("approved")]});
    write_current_op(&t, "tess", "m1", "update", update).await;
    eventually("the write-back is folded", || async {
        t.mission("tess", "m1")
            .await
            .is_some_and(|(r, _, _)| r["iterations"].as_array().is_some_and(|i| i.len() == 2))
    })
    .await;
    let (record, _, _) = t.mission("tess", "m1").await.unwrap();
    assert_eq!(
        record["iterations"][0]["plan"][0]["status"],
        json!("approved"),
        "{record}"
    );
    lead.settled().await;
    lead.stop().await;
}
