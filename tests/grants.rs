//! Key-grants end to end (contract section 7, issue 4): a mission whose grant
//! opens end-to-end-encrypted notes and a task, run by the leader against real
//! Postgres and the fake LLM; the decrypt audit trail and its read; and the
//! privacy of decrypted text and keys in logs and metrics.
//!
//! The RSA key pair is the committed WebCrypto one
//! (`tests/vectors/grant_vectors.json`): generating a key in a debug build is
//! slow. Every test has its own database.

mod common;

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{Duration, Utc};
use common::logs::{capture_logs, captured_logs};
use common::{eventually, mission_data, plan_answer, setup, write, Change, Leading, TestDb};
use mana_ai::audit::{self, AuditEntry};
use mana_ai::crypto::{derive_mdk, encrypt_value, mint_grant, GrantPublicKey, Mdk, MissionGrant};
use pgtemp::SERVICE_ROLE;
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;

both_generations!(
    a_granted_mission_reads_exactly_its_allowlisted_records,
    an_expired_grant_runs_without_the_encrypted_inputs,
    a_tampered_ciphertext_is_audited_as_failed_and_left_out,
    a_record_under_the_vault_key_gets_its_own_reason,
);

const VECTORS: &str = include_str!("vectors/grant_vectors.json");

const USER: &str = "ana";
const MISSION: &str = "m-grant";
const TABLES: [&str; 2] = ["notes", "tasks"];
const RECORD_IDS: [&str; 3] = ["notes:n1", "notes:n2", "tasks:t1"];

// The plaintexts the browser encrypted. Each is distinctive enough that a
// substring search finds any leak.
const N1_TITLE: &str = "Zahnarzt Geheimtermin";
const N1_BODY: &str = "Dienstag 14:30 bei Dr. Quendel, Füllung links unten";
const N2_TITLE: &str = "Gehalt Verhandlung";
const N2_BODY: &str = "Ziel 71.500 Euro brutto, Schmerzgrenze 68.000 🚀";
const T1_TITLE: &str = "Steuererklärung Xylophon einreichen";
const N3_TITLE: &str = "Tagebuch außerhalb";
const N3_BODY: &str = "Diese Notiz liegt ausserhalb des Grants: Quarzuhr-Passwort 7731";

/// Every decrypted string of the fixture (n3's too: it must never be read).
const PLAINTEXTS: [&str; 7] = [
    N1_TITLE, N1_BODY, N2_TITLE, N2_BODY, T1_TITLE, N3_TITLE, N3_BODY,
];

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| serde_json::from_str(VECTORS).expect("vectors are JSON"))
}

fn private_pem() -> &'static str {
    vectors()["privateKeyPem"].as_str().unwrap()
}

fn public_key() -> GrantPublicKey {
    GrantPublicKey::from_public_pem(vectors()["publicKeyPem"].as_str().unwrap()).unwrap()
}

/// The base64 lines of the private key PEM (the secret part).
fn pem_body_lines() -> Vec<&'static str> {
    private_pem()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect()
}

// ------------------------------------------------------------------- fixture

fn random_master() -> [u8; 32] {
    rand::random()
}

fn mint(master: &[u8; 32], expires_in: Duration) -> MissionGrant {
    let now = Utc::now();
    mint_grant(
        &public_key(),
        master,
        MISSION,
        &TABLES,
        &RECORD_IDS,
        now - Duration::minutes(5),
        now + expires_in,
    )
    .expect("RSA-OAEP wrap")
}

fn mdk(master: &[u8; 32]) -> Mdk {
    derive_mdk(master, MISSION, &TABLES, &RECORD_IDS)
}

fn enc(mdk: &Mdk, value: &str) -> String {
    encrypt_value(mdk, &json!(value), rand::random())
}

/// Flips one bit inside the ciphertext (past the IV), keeping valid base64.
fn tamper(value: &str) -> String {
    let (head, ct) = value.rsplit_once('.').unwrap();
    let mut bytes = BASE64.decode(ct).unwrap();
    bytes[0] ^= 0x01;
    format!("{head}.{}", BASE64.encode(bytes))
}

/// One record of another app, inserted as the sync server does (sync role,
/// inside the user's RLS scope).
async fn insert_record(t: &TestDb, app: &str, table: &str, id: &str, data: Value) {
    let mut client = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut client, USER).await.unwrap();
    let stamps = common::stamps_column(&tx).await;
    let insert = format!(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, {stamps}, client_id)
         VALUES ($1, $2, $3, $4, 'insert', $5, '{{}}'::jsonb, 'test-browser')"
    );
    tx.execute(&insert, &[&app, &table, &id, &USER, &data])
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[derive(Clone, Copy, Default)]
enum Variant {
    /// Every record encrypted under the grant's derived key.
    #[default]
    UnderGrantKey,
    /// t1's title ciphertext has one bit flipped.
    TamperT1,
    /// t1 encrypted under the user's vault master key itself, as today's
    /// webapp encrypts records (the grant unwraps the derived key).
    T1UnderVaultKey,
}

/// Writes the encrypted records (n1, n2, t1 in the grant; n3 outside it) and
/// the mission carrying `grant` with all four as inputs.
async fn seed(t: &TestDb, master: &[u8; 32], grant: &MissionGrant, variant: Variant) {
    let key = mdk(master);
    insert_record(
        t,
        "notes",
        "notes",
        "n1",
        json!({"id": "n1", "title": enc(&key, N1_TITLE), "content": enc(&key, N1_BODY), "pinned": false}),
    )
    .await;
    insert_record(
        t,
        "notes",
        "notes",
        "n2",
        json!({"id": "n2", "title": enc(&key, N2_TITLE), "content": enc(&key, N2_BODY)}),
    )
    .await;
    let t1_title = match variant {
        Variant::UnderGrantKey => enc(&key, T1_TITLE),
        Variant::TamperT1 => tamper(&enc(&key, T1_TITLE)),
        Variant::T1UnderVaultKey => enc(&Mdk::from_bytes(*master), T1_TITLE),
    };
    insert_record(
        t,
        "todo",
        "tasks",
        "t1",
        json!({"id": "t1", "title": t1_title, "isCompleted": false, "priority": "high"}),
    )
    .await;
    // Encrypted with the same key: only the allowlist keeps it out.
    insert_record(
        t,
        "notes",
        "notes",
        "n3",
        json!({"id": "n3", "title": enc(&key, N3_TITLE), "content": enc(&key, N3_BODY)}),
    )
    .await;
    let mission = mission_data(json!({
        "grant": serde_json::to_value(grant).unwrap(),
        "inputs": [
            {"module": "notes", "table": "notes", "id": "n1"},
            {"module": "notes", "table": "notes", "id": "n2"},
            {"module": "todo", "table": "tasks", "id": "t1"},
            {"module": "notes", "table": "notes", "id": "n3"},
        ],
    }));
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(USER, MISSION, "insert", mission)],
    )
    .await;
}

async fn lead(t: &TestDb, llm: &FakeLlm, with_key: bool) -> Leading {
    let url = llm.url();
    let mut overrides = vec![("MANA_LLM_URL", url.as_str())];
    if with_key {
        overrides.push(("MANA_AI_PRIVATE_KEY_PEM", private_pem()));
    }
    t.lead(&overrides).await
}

/// Waits for the run's write-back; returns the one prompt the model got.
async fn wait_written(t: &TestDb, llm: &FakeLlm, lead: &Leading) -> String {
    eventually("the mission's iteration is written back", || async {
        t.writebacks(USER, MISSION).await.len() == 1
    })
    .await;
    lead.settled().await;
    let prompts = llm.prompts();
    assert_eq!(prompts.len(), 1, "one planner call");
    format!("{}\n{}", prompts[0].system, prompts[0].user)
}

async fn audit_rows(t: &TestDb) -> Vec<AuditEntry> {
    let mut client = t.db.connect_as(SERVICE_ROLE).await.unwrap();
    audit::read(&mut client, USER, Some(MISSION), 1000)
        .await
        .unwrap()
}

fn find<'a>(rows: &'a [AuditEntry], table: &str, id: &str) -> Vec<&'a AuditEntry> {
    rows.iter()
        .filter(|r| r.table_name == table && r.record_id == id)
        .collect()
}

fn assert_absent(haystack: &str, what: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            !haystack.contains(needle),
            "{what} contains the secret {needle:?}"
        );
    }
}

// --------------------------------------------------------------------- tests

async fn a_granted_mission_reads_exactly_its_allowlisted_records(t: TestDb) {
    capture_logs();
    let master = random_master();
    let grant = mint(&master, Duration::hours(1));
    seed(&t, &master, &grant, Variant::default()).await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let lead = lead(&t, &llm, true).await;
    let prompt = wait_written(&t, &llm, &lead).await;

    // The prompt holds the decrypted granted records, and nothing else.
    for text in [N1_TITLE, N1_BODY, N2_TITLE, N2_BODY, T1_TITLE] {
        assert!(prompt.contains(text), "prompt lacks {text:?}:\n{prompt}");
    }
    assert_absent(&prompt, "the prompt", &[N3_TITLE, N3_BODY, "enc:1:"]);

    // Audit: ok for the granted three, a scope violation for n3.
    let rows = audit_rows(&t).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (table, id) in [("notes", "n1"), ("notes", "n2"), ("tasks", "t1")] {
        let found = find(&rows, table, id);
        assert_eq!(found.len(), 1, "{table}:{id} {rows:?}");
        assert_eq!(found[0].status, "ok");
        assert_eq!(found[0].reason, None);
    }
    let n3 = find(&rows, "notes", "n3");
    assert_eq!(n3.len(), 1, "{rows:?}");
    assert_eq!(n3[0].status, "scope-violation");
    assert_eq!(
        n3[0].reason.as_deref(),
        Some("record-not-in-grant-allowlist")
    );
    // All rows belong to the one iteration that was written.
    let data: Value = t.writebacks(USER, MISSION).await[0].get(0);
    let iteration = &data["iterations"][0];
    let iteration_id = iteration["id"].as_str().unwrap();
    assert!(rows
        .iter()
        .all(|r| r.iteration_id.as_deref() == Some(iteration_id) && r.mission_id == MISSION));

    // Metrics.
    let m = &lead.metrics;
    assert_eq!(m.decrypts.with_label_values(&["notes"]).get(), 2);
    assert_eq!(m.decrypts.with_label_values(&["tasks"]).get(), 1);
    assert_eq!(
        m.grant_scope_violations.with_label_values(&["notes"]).get(),
        1
    );
    assert_eq!(
        m.grant_scope_violations.with_label_values(&["tasks"]).get(),
        0
    );
    for reason in ["not-configured", "expired", "malformed", "wrap-rejected"] {
        assert_eq!(
            m.grant_skips.with_label_values(&[reason]).get(),
            0,
            "{reason}"
        );
    }
    assert_eq!(m.audit_write_failures.get(), 0);

    // The iteration is written, and carries only what the planner wrote.
    assert_eq!(iteration["overallStatus"], "awaiting-review");
    assert_eq!(iteration["summary"], "Woche geplant");
    assert_eq!(m.plans_written_back.get(), 1);
    assert_absent(&data.to_string(), "the write-back", &PLAINTEXTS);
    let folded = t.folded_mission(USER, MISSION).await;
    assert_eq!(folded["iterations"].as_array().unwrap().len(), 1);
    lead.stop().await;
}

async fn an_expired_grant_runs_without_the_encrypted_inputs(t: TestDb) {
    capture_logs();
    let master = random_master();
    let grant = mint(&master, -Duration::minutes(1));
    seed(&t, &master, &grant, Variant::default()).await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let lead = lead(&t, &llm, true).await;
    let prompt = wait_written(&t, &llm, &lead).await;

    assert_absent(&prompt, "the prompt", &PLAINTEXTS);
    assert_absent(&prompt, "the prompt", &["enc:1:"]);
    let m = &lead.metrics;
    assert_eq!(m.grant_skips.with_label_values(&["expired"]).get(), 1);
    assert_eq!(
        m.grant_skips.with_label_values(&["not-configured"]).get(),
        0
    );
    assert_eq!(m.decrypts.with_label_values(&["notes"]).get(), 0);
    assert_eq!(m.decrypts.with_label_values(&["tasks"]).get(), 0);
    // Without a key, nothing is attempted: no audit rows at all.
    let rows = audit_rows(&t).await;
    assert!(rows.iter().all(|r| r.status != "ok"), "{rows:?}");
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(m.plans_written_back.get(), 1, "the run still plans");
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_key_the_grant_is_skipped_as_not_configured() {
    capture_logs();
    let t = setup().await;
    let master = random_master();
    let grant = mint(&master, Duration::hours(1));
    seed(&t, &master, &grant, Variant::default()).await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let lead = lead(&t, &llm, false).await;
    let prompt = wait_written(&t, &llm, &lead).await;

    assert_absent(&prompt, "the prompt", &PLAINTEXTS);
    assert_absent(&prompt, "the prompt", &["enc:1:"]);
    let m = &lead.metrics;
    assert_eq!(
        m.grant_skips.with_label_values(&["not-configured"]).get(),
        1
    );
    assert_eq!(m.grant_skips.with_label_values(&["expired"]).get(), 0);
    assert_eq!(m.decrypts.with_label_values(&["notes"]).get(), 0);
    assert!(audit_rows(&t).await.is_empty());
    assert_eq!(m.plans_written_back.get(), 1);
    lead.stop().await;
}

/// A record the grant's key does not open (a bit flipped, or encrypted
/// under the vault master key as today's webapp does): audited as failed
/// with its own reason, counted by reason, left out of the prompt; the
/// records the key opens still reach the planner.
async fn t1_is_refused_as_not_under_the_grant_key(t: TestDb, variant: Variant) {
    capture_logs();
    let master = random_master();
    let grant = mint(&master, Duration::hours(1));
    seed(&t, &master, &grant, variant).await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let lead = lead(&t, &llm, true).await;
    let prompt = wait_written(&t, &llm, &lead).await;

    for text in [N1_TITLE, N1_BODY, N2_TITLE, N2_BODY] {
        assert!(prompt.contains(text), "prompt lacks {text:?}");
    }
    assert_absent(
        &prompt,
        "the prompt",
        &[T1_TITLE, N3_TITLE, N3_BODY, "enc:1:"],
    );
    let rows = audit_rows(&t).await;
    let t1 = find(&rows, "tasks", "t1");
    assert_eq!(t1.len(), 1, "{rows:?}");
    assert_eq!(t1[0].status, "failed");
    assert_eq!(t1[0].reason.as_deref(), Some("record-not-under-grant-key"));
    assert_eq!(
        rows.iter().filter(|r| r.status == "ok").count(),
        2,
        "{rows:?}"
    );
    let m = &lead.metrics;
    assert_eq!(m.decrypts.with_label_values(&["notes"]).get(), 2);
    assert_eq!(m.decrypts.with_label_values(&["tasks"]).get(), 0);
    let failures = |reason: &str| m.decrypt_failures.with_label_values(&[reason]).get();
    assert_eq!(failures("record-not-under-grant-key"), 1);
    assert_eq!(failures("ciphertext-malformed"), 0);
    assert_eq!(m.plans_written_back.get(), 1);
    lead.stop().await;
}

async fn a_tampered_ciphertext_is_audited_as_failed_and_left_out(t: TestDb) {
    t1_is_refused_as_not_under_the_grant_key(t, Variant::TamperT1).await;
}

/// Today's webapp (docs/interfaces.md
/// section 7): the grant unwraps, the record does not open.
async fn a_record_under_the_vault_key_gets_its_own_reason(t: TestDb) {
    t1_is_refused_as_not_under_the_grant_key(t, Variant::T1UnderVaultKey).await;
}

/// Inserts one audit row at `ts` (seconds ago) in the user's RLS scope, as
/// the service role.
async fn audit_row(t: &TestDb, user: &str, mission: &str, record: &str, ago_secs: i64) {
    let mut client = t.db.connect_as(SERVICE_ROLE).await.unwrap();
    let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
    tx.execute(
        "INSERT INTO mana_ai.decrypt_audit (user_id, mission_id, iteration_id, table_name, record_id, status, reason, ts)
         VALUES ($1, $2, 'it-1', 'notes', $3, 'ok', NULL, now() - make_interval(secs => $4::int8))",
        &[&user, &mission, &record, &ago_secs],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_read_is_newest_first_filtered_clamped_and_per_user() {
    capture_logs();
    let t = setup().await;
    audit_row(&t, USER, "m-a", "oldest", 300).await;
    audit_row(&t, USER, "m-b", "middle", 200).await;
    audit_row(&t, USER, "m-a", "newest", 100).await;
    let mut client = t.db.connect_as(SERVICE_ROLE).await.unwrap();

    let all = audit::read(&mut client, USER, None, 50).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(ids, ["newest", "middle", "oldest"]);
    assert!(all.windows(2).all(|w| w[0].ts >= w[1].ts));
    assert!(all
        .iter()
        .all(|r| r.status == "ok" && r.table_name == "notes"));

    let only_a = audit::read(&mut client, USER, Some("m-a"), 50)
        .await
        .unwrap();
    let ids: Vec<&str> = only_a.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(ids, ["newest", "oldest"]);
    assert!(audit::read(&mut client, USER, Some("m-none"), 50)
        .await
        .unwrap()
        .is_empty());

    // limit 0 is clamped up to 1, a negative one too.
    let one = audit::read(&mut client, USER, None, 0).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].record_id, "newest");
    assert_eq!(
        audit::read(&mut client, USER, None, -5)
            .await
            .unwrap()
            .len(),
        1
    );

    // 5000 is clamped down to 1000.
    {
        let tx = mana_ai::db::begin_user(&mut client, USER).await.unwrap();
        tx.execute(
            "INSERT INTO mana_ai.decrypt_audit (user_id, mission_id, table_name, record_id, status, ts)
             SELECT $1, 'm-bulk', 'notes', 'bulk-' || g, 'ok', now() - interval '1 hour'
             FROM generate_series(1, 1100) g",
            &[&USER],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let many = audit::read(&mut client, USER, None, 5000).await.unwrap();
    assert_eq!(many.len(), 1000);
    assert_eq!(many[0].record_id, "newest", "still newest first");
    assert_eq!(
        audit::read(&mut client, USER, Some("m-bulk"), i64::MAX)
            .await
            .unwrap()
            .len(),
        1000
    );

    // Another user sees nothing of ana's: not through the read, and not even
    // with a raw query in their scope (RLS, not the WHERE clause).
    assert!(audit::read(&mut client, "eve", None, 1000)
        .await
        .unwrap()
        .is_empty());
    assert!(audit::read(&mut client, "eve", Some("m-a"), 1000)
        .await
        .unwrap()
        .is_empty());
    let tx = mana_ai::db::begin_user(&mut client, "eve").await.unwrap();
    let visible: i64 = tx
        .query_one("SELECT count(*) FROM mana_ai.decrypt_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        visible, 0,
        "RLS hides other users' rows from the service role"
    );
    tx.commit().await.unwrap();
    // Eve's own row is hers alone.
    audit_row(&t, "eve", "m-e", "eves", 10).await;
    let eves = audit::read(&mut client, "eve", None, 1000).await.unwrap();
    assert_eq!(eves.len(), 1);
    assert_eq!(eves[0].record_id, "eves");
    assert!(audit::read(&mut client, USER, None, 1000)
        .await
        .unwrap()
        .iter()
        .all(|r| r.record_id != "eves"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypted_values_and_keys_never_reach_logs_or_metrics() {
    capture_logs();
    let t = setup().await;
    let master = random_master();
    let grant = mint(&master, Duration::hours(1));
    // The tampered record exercises the failure path's logging too.
    seed(&t, &master, &grant, Variant::TamperT1).await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let lead = lead(&t, &llm, true).await;
    let prompt = wait_written(&t, &llm, &lead).await;
    assert!(prompt.contains(N1_BODY), "the run did decrypt");
    eventually("the run's end is logged", || async {
        captured_logs().contains("mission run finished")
    })
    .await;
    let metrics_text = lead.metrics.render();
    lead.stop().await;

    let logs = captured_logs();
    // The capture really holds the run's debug-level log.
    assert!(logs.contains(MISSION), "{logs}");
    assert!(
        logs.contains("mission input outside its grant's allowlist"),
        "{logs}"
    );

    let master_b64 = BASE64.encode(master);
    let mut secrets: Vec<&str> = PLAINTEXTS.to_vec();
    secrets.push(&master_b64);
    secrets.extend(pem_body_lines());
    assert_absent(&logs, "the captured log", &secrets);
    assert_absent(&metrics_text, "the Prometheus text", &secrets);
    // The metrics do show the run's counts, by table only.
    assert!(
        metrics_text.contains("mana_ai_decrypts_total{table=\"notes\"} 2"),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains("mana_ai_grant_scope_violations_total{table=\"notes\"} 1"),
        "{metrics_text}"
    );
}
