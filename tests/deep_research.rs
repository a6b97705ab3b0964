//! Deep research jobs end to end (issue 19 item 3; docs/interfaces.md section 6): a
//! matching mission submits a job and waits for it without resolving its
//! inputs, a completed job's answer reaches the prompt, and with the feature
//! off nothing is submitted. The leader against real Postgres and fakes on
//! loopback (`common::research`); the fall-backs are in
//! `deep_research_fallback.rs`.

mod common;

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use common::research::*;
use common::{eventually, plan_answer, setup, TestDb};
use mana_ai::backend::ServiceBackend;
use mana_ai::crypto::{derive_mdk, encrypt_value, mint_grant, GrantPublicKey};
use mana_ai::http::Backend;
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;
use testkit::fake_research::FakeResearch;

// ------------------------------------------------------------------ submit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_mission_submits_a_job_and_waits_one_poll_interval() {
    let t = setup().await;
    let (llm, api) = (llm().await, news_api().await);
    let research = FakeResearch::start(KEY, vec![FakeResearch::queued()])
        .await
        .unwrap();
    let objective = "Tiefe Recherche: lohnt sich eine Wärmepumpe?";
    seed(&t, "ana", "deep", json!({"objective": objective})).await;
    seed(&t, "ana", "plain", json!({"objective": "Die Woche planen"})).await;
    let before = Utc::now();
    let lead = lead(
        &t,
        &llm,
        &research,
        &api,
        &[("MANA_AI_RESEARCH_POLL_SECS", "3600")],
    )
    .await;
    wait_written(&t, "ana", "plain").await;
    eventually(
        "the deep mission is skipped while its job is pending",
        || async { pending_skips(&lead) >= 1.0 },
    )
    .await;
    lead.settled().await;
    let after = Utc::now();

    // One submit, for the matching mission only, as docs/interfaces.md section 6 says.
    let submits = research.submits();
    assert_eq!(submits.len(), 1, "one job");
    let submit = &submits[0];
    assert_eq!(submit.path, "/api/v1/internal/research/async");
    assert_eq!(
        submit.json().unwrap(),
        json!({"query": objective, "provider": PROVIDER})
    );
    assert_eq!(submit.header("x-service-key"), Some(KEY));
    assert_eq!(submit.header("x-user-id"), Some("ana"));
    assert_eq!(submit.header("x-app-id"), Some("mana-ai"));
    assert!(
        research.polls().is_empty(),
        "not polled before the interval"
    );

    // Not planned: only the plain mission reached the model.
    assert_eq!(llm.prompts().len(), 1);
    assert!(t.writebacks("ana", "deep").await.is_empty());
    assert_eq!(job_state(&t, "deep").await.as_deref(), Some("pending"));

    // Re-armed one poll interval ahead, by the wheel and in mission_runs.
    let hour = chrono::Duration::seconds(3600);
    let armed = lead.lead.reactor.wheel.armed_at("ana", "deep").await;
    let armed = armed.expect("the pending mission stays armed");
    assert!(armed >= before + hour && armed <= after + hour, "{armed}");
    let row = t
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT outcome, retry_at, state FROM mana_ai.mission_runs WHERE mission_id = 'deep'",
            &[],
        )
        .await
        .unwrap();
    let (outcome, retry_at, state): (String, DateTime<Utc>, String) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (outcome.as_str(), state.as_str()),
        ("skipped-research-pending", "retry")
    );
    assert!(
        retry_at >= before + hour && retry_at <= after + hour,
        "{retry_at}"
    );

    // GET /internal/missions/{userId} shows the decision as the run's outcome.
    // (A standby's view: the runs come from mission_runs either way.)
    let (_, standby) = tokio::sync::watch::channel(None);
    let backend = ServiceBackend::new(t.pool.clone(), lead.metrics.clone(), true, standby);
    let view = backend.user_missions("ana").await.unwrap();
    let missions = view["missions"].as_array().unwrap();
    let deep = missions.iter().find(|m| m["missionId"] == "deep").unwrap();
    assert_eq!(deep["recentRuns"][0]["outcome"], "skipped-research-pending");
    assert_eq!(deep["blocked"], Value::Null, "waiting is not a stall");

    // Metrics: the decision of its own, the job counted.
    let decision = |d: &str| {
        metric(
            &lead,
            &format!("mana_ai_agent_decisions_total{{decision=\"{d}\"}}"),
        )
    };
    assert_eq!(decision("skipped-research-pending"), 1.0);
    assert_eq!(decision("ran"), 1.0, "only the plain mission ran");
    assert_eq!(jobs(&lead, "submitted"), 1.0);
    assert_eq!(
        (jobs(&lead, "completed"), jobs(&lead, "failed")),
        (0.0, 0.0)
    );
    assert_eq!(pending_skips(&lead), 1.0);
    lead.stop().await;
}

// --------------------------------------- pending: nothing decrypted, then used

const MISSION: &str = "m-deep-grant";
const NOTE_TITLE: &str = "Heizkosten Abrechnung Quendel";

/// An objective longer than mana-research takes (4,000 JavaScript
/// characters, UTF-16 code units) is cut to fit at a character boundary:
/// the job is accepted, not refused with 400 slot after slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_objective_is_cut_to_what_mana_research_takes() {
    let t = setup().await;
    let (llm, api) = (llm().await, news_api().await);
    let research = FakeResearch::start(KEY, vec![FakeResearch::queued()])
        .await
        .unwrap();
    // 17 units, then bees of two units each: 1,991 bees fit, 3,999 units.
    let objective = format!("Tiefe Recherche: {}", "🐝".repeat(3_000));
    seed(&t, "ana", "deep", json!({"objective": objective})).await;
    let extra = [("MANA_AI_RESEARCH_POLL_SECS", "3600")];
    let lead = lead(&t, &llm, &research, &api, &extra).await;
    eventually("the job is accepted and pending", || async {
        pending_skips(&lead) >= 1.0
    })
    .await;
    lead.settled().await;
    let submits = research.submits();
    assert_eq!(submits.len(), 1, "one job");
    let body = submits[0].json().unwrap();
    let query = body["query"].as_str().unwrap();
    assert!(objective.starts_with(query));
    assert_eq!(query.encode_utf16().count(), 3_999);
    assert_eq!(job_state(&t, "deep").await.as_deref(), Some("pending"));
    lead.stop().await;
}

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| serde_json::from_str(include_str!("vectors/grant_vectors.json")).unwrap())
}

/// A note of `ana` encrypted for a grant of [`MISSION`], and the mission
/// carrying that grant with the note as its input.
async fn seed_granted(t: &TestDb, objective: &str) {
    let (tables, ids) = (["notes"], ["notes:n1"]);
    let master: [u8; 32] = rand::random();
    let public = vectors()["publicKeyPem"].as_str().unwrap();
    let public = GrantPublicKey::from_public_pem(public).unwrap();
    let now = Utc::now();
    let grant = mint_grant(
        &public,
        &master,
        MISSION,
        &tables,
        &ids,
        now - chrono::Duration::minutes(5),
        now + chrono::Duration::hours(1),
    )
    .unwrap();
    let mdk = derive_mdk(&master, MISSION, &tables, &ids);
    let title = encrypt_value(&mdk, &json!(NOTE_TITLE), rand::random());
    let mut client = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut client, "ana").await.unwrap();
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
         VALUES ('notes', 'notes', 'n1', 'ana', 'insert', $1, '{}'::jsonb, 'test-browser')",
        &[&json!({"id": "n1", "title": title})],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let extra = json!({
        "objective": objective,
        "grant": serde_json::to_value(&grant).unwrap(),
        "inputs": [{"module": "notes", "table": "notes", "id": "n1"}],
    });
    seed(t, "ana", MISSION, extra).await;
}

async fn audit_rows(t: &TestDb) -> i64 {
    t.count_as_admin("SELECT count(*) FROM mana_ai.decrypt_audit")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_job_decrypts_nothing_and_a_completed_one_reaches_the_prompt() {
    let t = setup().await;
    seed_granted(&t, "Deep Dive: Heizkosten senken").await;
    let (llm, api) = (llm().await, news_api().await);
    let answer = FakeResearch::completed(
        ANSWER,
        json!([{"url": CITED, "title": "Erdwärme-Studie", "snippet": "120 m²"}, {"url": "ftp://x", "title": "nein"}]),
    );
    // Pending until the test says otherwise.
    let script = vec![FakeResearch::queued(), FakeResearch::running()];
    let research = FakeResearch::start(KEY, script).await.unwrap();
    let pem = vectors()["privateKeyPem"].as_str().unwrap();
    let lead = lead(
        &t,
        &llm,
        &research,
        &api,
        &[("MANA_AI_PRIVATE_KEY_PEM", pem)],
    )
    .await;
    eventually("three polls answered pending", || async {
        research.polls().len() >= 3 && pending_skips(&lead) >= 4.0
    })
    .await;
    // The submit and at least three pending polls, each a run of its own:
    // none resolved its inputs, so none decrypted the note or wrote an
    // audit row, and none reached the model.
    assert_eq!(
        audit_rows(&t).await,
        0,
        "no decrypt audit row while pending"
    );
    assert!(llm.prompts().is_empty(), "not planned while pending");
    research.set_script(vec![answer]);

    wait_written(&t, "ana", MISSION).await;
    lead.settled().await;
    let prompts = llm.prompts();
    assert_eq!(prompts.len(), 1, "planned once");
    let user = &prompts[0].user;
    for text in [ANSWER, CITED, "Erdwärme-Studie", NOTE_TITLE] {
        assert!(user.contains(text), "prompt lacks {text:?}:\n{user}");
    }
    assert!(!user.contains("ftp://x"), "only web citations");
    assert!(
        !user.contains(NEWS_URL),
        "no news research beside the answer"
    );
    assert!(api.requests().is_empty());
    assert_eq!(
        audit_rows(&t).await,
        1,
        "the one planning run decrypted the note once"
    );
    assert_eq!(research.submits().len(), 1);
    let polls = research.polls().len() as f64;
    assert_eq!(
        pending_skips(&lead),
        polls,
        "one skip per pending poll and the submit's"
    );
    assert!(research
        .polls()
        .iter()
        .all(|p| p.path.ends_with("/async/task-1")
            && p.header("x-user-id") == Some("ana")
            && p.header("x-service-key") == Some(KEY)));
    assert_eq!(job_state(&t, MISSION).await.as_deref(), Some("completed"));
    assert_eq!(
        job_counts(&lead),
        (1.0, 1.0, 0.0),
        "submitted, completed, failed"
    );
    lead.stop().await;
}

// ------------------------------------------------- a retry of the same slot

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_the_slot_reads_the_answer_again_without_a_new_job() {
    let t = setup().await;
    let api = news_api().await;
    // The first answer fails the parser; the slot is retried after the back-off.
    let llm = FakeLlm::start(vec![
        FakeLlm::answer("kein Plan"),
        FakeLlm::answer(&plan_answer()),
    ])
    .await
    .unwrap();
    let done = FakeResearch::completed(ANSWER, json!([{"url": CITED, "title": "Studie"}]));
    let research = FakeResearch::start(KEY, vec![done]).await.unwrap();
    seed(
        &t,
        "ana",
        "deep",
        json!({"objective": "Deep Dive Wärmepumpen"}),
    )
    .await;
    let lead = lead(&t, &llm, &research, &api, &[]).await;
    wait_written(&t, "ana", "deep").await;
    lead.settled().await;
    let prompts = llm.prompts();
    assert_eq!(prompts.len(), 2, "a failed attempt, then the plan");
    assert!(
        prompts.iter().all(|p| p.user.contains(ANSWER)),
        "both had the answer"
    );
    assert_eq!(research.submits().len(), 1, "one job for the slot");
    assert_eq!(research.polls().len(), 2, "the retry read the answer again");
    assert_eq!(
        job_counts(&lead),
        (1.0, 1.0, 0.0),
        "submitted, completed, failed"
    );
    lead.stop().await;
}

// ---------------------------------------------------------------- feature off

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_feature_off_nothing_is_submitted() {
    let t = setup().await;
    let (llm, api) = (llm().await, news_api().await);
    let research = FakeResearch::start(KEY, vec![FakeResearch::queued()])
        .await
        .unwrap();
    seed(
        &t,
        "ana",
        "deep",
        json!({"objective": "Deep research zu Rust"}),
    )
    .await;
    let off = [("MANA_AI_DEEP_RESEARCH_ENABLED", "false")];
    let lead = lead(&t, &llm, &research, &api, &off).await;
    wait_written(&t, "ana", "deep").await;
    lead.settled().await;
    assert!(research.requests().is_empty(), "mana-research never asked");
    // "research" is a news trigger word: the ordinary pre-step ran.
    assert!(llm.prompts()[0].user.contains(NEWS_URL));
    assert_eq!(job_state(&t, "deep").await, None);
    // The families are there from the start, at 0.
    let text = lead.metrics.render();
    for family in ["submitted", "completed", "failed"] {
        let line = format!("mana_ai_research_jobs_{family}_total{{provider=\"{PROVIDER}\"}} 0");
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }
    assert!(text
        .lines()
        .any(|l| l == "mana_ai_research_jobs_pending_skips_total 0"));
    lead.stop().await;
}
