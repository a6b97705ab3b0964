//! A mission never stops silently (issue 8): a history past the field
//! limit, a write-back whose connection is cut or whose database restarts,
//! a missing agent, a policy that does not parse, a model answer that must
//! not be quoted, and the webapp's iteration phases. Real Postgres, a fake
//! LLM on loopback, the runner in-process.

mod common;

use std::time::Duration;

use common::logs::{capture_logs, captured_logs};
use common::{eventually, mission_data, plan_answer, write, Change, TestDb};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;
use testkit::http::FakeReply;

/// Every test calls this first, so the capturing subscriber is installed
/// before any service code logs.
async fn setup() -> TestDb {
    capture_logs();
    common::setup().await
}

// ---------------------------------------------------------------- helpers

async fn seed(t: &TestDb, user: &str, id: &str, extra: Value) {
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(user, id, "insert", mission_data(extra))],
    )
    .await;
}

/// One row of `op` on `table` as a browser (or a forger) writes it.
async fn browser_row(t: &TestDb, user: &str, table: &str, id: &str, op: &str, data: Value) {
    let mut sync = t.sync_client().await;
    let mut change = Change::mission(user, id, op, data);
    change.table = table;
    write(&mut sync, &[change]).await;
}

async fn count(t: &TestDb, sql: &str) -> i64 {
    t.admin().await.query_one(sql, &[]).await.unwrap().get(0)
}

fn snapshot_iterations(record: &Value) -> Vec<Value> {
    record["iterations"].as_array().cloned().unwrap_or_default()
}

async fn folded_iterations(t: &TestDb, user: &str, id: &str) -> Vec<Value> {
    match t.folded_mission(user, id).await.get("iterations") {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    }
}

/// Terminates every backend of this database waiting on a lock in a
/// statement on `mana_ai.mission_runs`; returns how many.
async fn kill_lock_waiters(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND wait_event_type = 'Lock' AND query LIKE '%mission_runs%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until mission `id` of the first test user has its claim row.
async fn claimed(t: &TestDb, id: &str) {
    let sql = format!("SELECT count(*) FROM mana_ai.mission_runs WHERE mission_id = '{id}'");
    eventually("claimed", || async { count(t, &sql).await == 1 }).await;
}

/// Locks mission `id`'s claim row, so its write-back waits on it.
async fn hold_claim<'a>(
    admin: &'a mut tokio_postgres::Client,
    id: &str,
) -> tokio_postgres::Transaction<'a> {
    let lock = admin.transaction().await.unwrap();
    let sql = format!("SELECT 1 FROM mana_ai.mission_runs WHERE mission_id = '{id}' FOR UPDATE");
    lock.execute(sql.as_str(), &[]).await.unwrap();
    lock
}

/// Mission `m1` of `user` is written (`what`), and after the runs settled it
/// has exactly one iteration and no slot is left `running`.
async fn written_exactly_once(t: &TestDb, lead: &common::Leading, user: &str, what: &str) {
    eventually(what, || async { t.writebacks(user, "m1").await.len() == 1 }).await;
    lead.settled().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        t.writebacks(user, "m1").await.len(),
        1,
        "exactly one iteration"
    );
    assert_eq!(folded_iterations(t, user, "m1").await.len(), 1);
    assert_eq!(
        count(
            t,
            "SELECT count(*) FROM mana_ai.mission_runs WHERE state = 'running'"
        )
        .await,
        0
    );
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mission_past_the_field_limit_keeps_its_cadence_with_every_iteration() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    // Six earlier iterations, just under the limit: the first write-back
    // (seven) is over it.
    let earlier: Vec<Value> = (0..6)
        .map(|i| {
            json!({"id": format!("old-{i}"), "startedAt": "2026-01-01T00:00:00.000Z",
                   "plan": [], "overallStatus": "approved", "summary": "x".repeat(480)})
        })
        .collect();
    seed(&t, "gil", "m1", json!({"iterations": earlier})).await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_AI_MAX_FIELD_BYTES", "4000"),
        ])
        .await;
    for round in 1..=3usize {
        eventually(&format!("write-back {round} folded"), || async {
            let Some((record, _, _)) = t.mission("gil", "m1").await else {
                return false;
            };
            snapshot_iterations(&record).len() == 6 + round
                && record["nextRunAt"] == t.folded_mission("gil", "m1").await["nextRunAt"]
        })
        .await;
        if round < 3 {
            // The user presses "run now": due again.
            let now = json!({"nextRunAt": common::iso_in(-1)});
            browser_row(&t, "gil", "aiMissions", "m1", "update", now).await;
        }
    }
    let (record, _, _) = t.mission("gil", "m1").await.unwrap();
    let ids: Vec<String> = snapshot_iterations(&record)
        .iter()
        .map(|it| it["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        &ids[..6],
        &(0..6).map(|i| format!("old-{i}")).collect::<Vec<_>>()[..]
    );
    assert_eq!(ids.len(), 9, "every iteration kept: {ids:?}");
    let next = record["nextRunAt"].as_str().expect("a next slot");
    assert!(
        next > common::iso_in(30 * 60).as_str(),
        "the hourly cadence goes on: {next}"
    );
    assert_eq!(
        count(&t, "SELECT count(*) FROM mana_ai.dead_changes").await,
        0
    );
    assert_eq!(folded_iterations(&t, "gil", "m1").await.len(), 9);

    // A row that only claims the service's client id keeps the limit.
    let mut sync = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut sync, "gil").await.unwrap();
    let forged = json!({"iterations": [{"id": "f", "summary": "y".repeat(5000)}]});
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
         VALUES ('ai', 'aiMissions', 'm1', 'gil', 'update', $1, 'mana-ai-runner')",
        &[&forged],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    eventually("the forged row set aside", || async {
        count(
            &t,
            "SELECT count(*) FROM mana_ai.dead_changes WHERE reason = 'field-too-large'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(llm.requests().len(), 3);
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writeback_whose_connections_are_cut_gives_the_slot_back_and_runs_once() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&plan_answer()).delay(Duration::from_millis(1000))
    ])
    .await
    .unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    // Hold the slot's claim row so the write-back waits on it, then cut every
    // connection that waits there: the write-back's, then the give-back's.
    let mut admin = t.admin().await;
    seed(&t, "ida", "m1", json!({})).await;
    claimed(&t, "m1").await;
    let lock = hold_claim(&mut admin, "m1").await;
    let killer = t.admin().await;
    let mut killed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while killed < 3 && tokio::time::Instant::now() < deadline {
        killed += kill_lock_waiters(&killer).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        killed >= 2,
        "the write-back and its give-back were cut ({killed})"
    );
    lock.rollback().await.unwrap();
    written_exactly_once(&t, &lead, "ida", "written once the database answers").await;
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_during_the_writeback_still_yields_one_iteration() {
    // Its own cluster: restarting the shared server would break other tests.
    let server =
        pgtemp::PgServer::start_throwaway().expect("a throwaway cluster (needs initdb and pg_ctl)");
    capture_logs();
    let t = common::setup_on(&server).await;
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&plan_answer()).delay(Duration::from_millis(1000))
    ])
    .await
    .unwrap();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    seed(&t, "jo", "m1", json!({})).await;
    claimed(&t, "m1").await;
    // The write-back waits on the claim row while the database restarts.
    let mut admin = t.admin().await;
    let lock = hold_claim(&mut admin, "m1").await;
    let watcher = t.admin().await;
    eventually("the write-back waits on the claim", || async {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                 AND wait_event_type = 'Lock' AND query LIKE '%mission_runs%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    let restarting = server.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap()
        .expect("pg_ctl restart");
    drop((lock, watcher));
    written_exactly_once(&t, &lead, "jo", "written after the restart").await;
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_agent_skips_and_the_mission_runs_once_the_agent_is_synced() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let gone = json!({"name": "G"});
    browser_row(&t, "kai", "agents", "gone", "insert", gone).await;
    browser_row(&t, "kai", "agents", "gone", "delete", json!({})).await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    seed(&t, "kai", "m-late", json!({"agentId": "late"})).await;
    seed(&t, "kai", "m-gone", json!({"agentId": "gone"})).await;
    let decided = |d: &'static str| lead.metrics.agent_decisions.with_label_values(&[d]).get();
    eventually("both skipped", || async {
        decided("skipped-missing-agent") == 2
    })
    .await;
    assert!(llm.requests().is_empty(), "no run as the default agent");
    let stalled = lead
        .metrics
        .missions_stalled
        .with_label_values(&["missing-agent"]);
    assert_eq!(stalled.get(), 2);
    let client = t.pool.get().await.unwrap();
    let blocked = mana_ai::run::stall::blocked(&**client, "kai")
        .await
        .unwrap();
    assert_eq!(blocked["m-late"]["reason"], "missing-agent", "{blocked:?}");
    assert!(captured_logs().contains("the mission's agent does not exist"));

    browser_row(
        &t,
        "kai",
        "agents",
        "late",
        "insert",
        json!({"name": "Spät"}),
    )
    .await;
    eventually("runs once the agent is there", || async {
        t.writebacks("kai", "m-late").await.len() == 1
    })
    .await;
    let rows = t.writebacks("kai", "m-late").await;
    assert_eq!(rows[0].get::<_, Value>(2)["principalId"], "late");
    assert_eq!(decided("ran"), 1);
    assert!(t.writebacks("kai", "m-gone").await.is_empty());
    let blocked = mana_ai::run::stall::blocked(&**client, "kai")
        .await
        .unwrap();
    assert!(!blocked.contains_key("m-late"), "{blocked:?}");
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_does_not_parse_skips_instead_of_showing_every_tool() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let bad = json!({"name": "B", "policy": {"tools": {"create_task": "deny"}, "defaultForAi": "sometimes"}});
    browser_row(&t, "lea", "agents", "a1", "insert", bad).await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    seed(&t, "lea", "m1", json!({"agentId": "a1"})).await;
    let decided = |d: &'static str| lead.metrics.agent_decisions.with_label_values(&[d]).get();
    eventually("skipped", || async { decided("skipped-bad-policy") == 1 }).await;
    assert!(llm.requests().is_empty(), "the model saw nothing");
    let client = t.pool.get().await.unwrap();
    let blocked = mana_ai::run::stall::blocked(&**client, "lea")
        .await
        .unwrap();
    assert_eq!(blocked["m1"]["reason"], "bad-policy", "{blocked:?}");

    let fixed = json!({"policy": {"tools": {}, "defaultForAi": "propose"}});
    browser_row(&t, "lea", "agents", "a1", "update", fixed).await;
    eventually("runs once the policy is fixed", || async {
        t.writebacks("lea", "m1").await.len() == 1
    })
    .await;
    lead.stop().await;
}

const MARKER: &str = "ZEBRA-7731-SECRET";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_iterations_use_the_webapps_phases_and_quote_nothing_the_model_said() {
    let t = setup().await;
    let unknown_tool = format!(
        "Aus deiner Notiz: {MARKER}\n```json\n{{\"summary\": \"{MARKER}\", \"steps\": [{{\"toolName\": \"{MARKER}\", \"rationale\": \"{MARKER}\"}}]}}\n```"
    );
    let broken_json = format!("```json\n{{\"summary\": \"{MARKER}\", \"steps\": [{MARKER}]}}\n```");
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&unknown_tool),
        FakeLlm::answer(&broken_json),
    ])
    .await
    .unwrap();
    let lead = t
        .lead(&[("MANA_LLM_URL", &llm.url()), ("MANA_AI_MAX_FAILURES", "1")])
        .await;
    seed(&t, "max", "m-tool", json!({})).await;
    seed(&t, "max", "m-json", json!({})).await;
    let mut failed = Vec::new();
    for m in ["m-tool", "m-json"] {
        eventually(m, || async { t.writebacks("max", m).await.len() == 1 }).await;
        failed.push((m, folded_iterations(&t, "max", m).await[0].clone()));
    }
    lead.stop().await;

    let rejecting = FakeLlm::start(vec![FakeReply::raw(400, "bad request")])
        .await
        .unwrap();
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &rejecting.url()),
            ("MANA_AI_MAX_FAILURES", "1"),
        ])
        .await;
    seed(&t, "max", "m-llm", json!({})).await;
    eventually("m-llm", || async {
        t.writebacks("max", "m-llm").await.len() == 1
    })
    .await;
    failed.push((
        "m-llm",
        folded_iterations(&t, "max", "m-llm").await[0].clone(),
    ));
    lead.settled().await;
    lead.stop().await;

    // Nowhere: not in a log line, not in any row of ours or of the log.
    let logs = captured_logs();
    assert!(
        logs.contains("mission run failed"),
        "the failures were logged"
    );
    assert!(!logs.contains(MARKER), "a log line quotes the answer");
    for table in [
        "public.sync_changes",
        "mana_ai.mission_snapshots",
        "mana_ai.mission_runs",
        "mana_ai.dead_changes",
    ] {
        let sql = format!("SELECT count(*) FROM {table} x WHERE x::text LIKE '%{MARKER}%'");
        assert_eq!(count(&t, &sql).await, 0, "{table} holds the answer");
    }
    for (m, it) in failed {
        let phase = if m == "m-llm" {
            "calling-llm"
        } else {
            "parsing-response"
        };
        assert_eq!(it["overallStatus"], "failed", "{m}");
        assert_eq!(it["errorDetails"]["phase"], phase, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writeback_appends_to_a_queued_browser_history_and_is_known_as_its_own() {
    use mana_ai::run::claim::{self, Claim, Slot};
    use mana_ai::run::writeback::{self, Author, IterationsSource, WriteBack};
    let t = setup().await;
    // No reactor: the browser's rows stay queued and no snapshot exists.
    let first: Vec<Value> = (0..3).map(|i| json!({"id": format!("b-{i}")})).collect();
    seed(&t, "ned", "m1", json!({"iterations": first})).await;
    let later: Vec<Value> = (0..4).map(|i| json!({"id": format!("b-{i}")})).collect();
    let later = json!({"iterations": later});
    browser_row(&t, "ned", "aiMissions", "m1", "update", later).await;
    let mut sync = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut sync, "ned").await.unwrap();
    let update: uuid::Uuid = tx
        .query_one("SELECT id FROM sync_changes WHERE op = 'update'", &[])
        .await
        .unwrap()
        .get(0);
    drop(tx);

    let mut client = t.pool.get().await.unwrap();
    let tx = mana_ai::db::begin_user(&mut client, "ned").await.unwrap();
    let source = writeback::iterations_source(&tx, t.generation, "ned", "m1", 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        source,
        IterationsSource::Change(update),
        "the newest row wins"
    );
    drop(tx);
    // A newer row whose iterations the applier will set aside (over the
    // limit) is never what the write-back extends: the service would
    // otherwise carry the oversized value past the limit as its own.
    let huge = json!({"iterations": [{"id": "h", "summary": "z".repeat(5000)}]});
    browser_row(&t, "ned", "aiMissions", "m1", "update", huge).await;
    let tx = mana_ai::db::begin_user(&mut client, "ned").await.unwrap();
    let within = writeback::iterations_source(&tx, t.generation, "ned", "m1", 4000)
        .await
        .unwrap();
    assert_eq!(within, IterationsSource::Change(update));
    let unlimited = writeback::iterations_source(&tx, t.generation, "ned", "m1", 1 << 20)
        .await
        .unwrap();
    assert_ne!(unlimited, IterationsSource::Change(update));
    drop(tx);

    let slot = Slot {
        user_id: "ned".into(),
        mission_id: "m1".into(),
        due_at: "2026-01-01T00:00:00.000Z".into(),
    };
    let instance = uuid::Uuid::new_v4();
    let Claim::Claimed { token: stale, .. } =
        claim::claim(&mut client, &slot, instance).await.unwrap()
    else {
        panic!("claimable");
    };
    // A leftover `running` row of this very instance is taken over.
    let Claim::Claimed { token, .. } = claim::claim(&mut client, &slot, instance).await.unwrap()
    else {
        panic!("a run of this term that ended without giving the slot back is taken over");
    };
    let write = WriteBack {
        slot,
        token,
        iteration: json!({"id": "new", "plan": []}),
        iteration_id: "new".into(),
        next_run_at: None,
        author: Author::legacy(),
        objective: "o".into(),
        now: chrono::Utc::now(),
        tokens_used: 0,
        outcome: mana_ai::run_record::RunOutcome::Written,
        max_field_bytes: 4000,
        generation: t.generation,
        space_id: None,
    };
    let zombie = WriteBack {
        token: stale,
        ..write.clone()
    };
    assert!(
        !writeback::commit(&mut client, &zombie).await.unwrap(),
        "the run it took over cannot write"
    );
    assert!(writeback::commit(&mut client, &write).await.unwrap());
    let ids: Vec<String> = folded_iterations(&t, "ned", "m1")
        .await
        .iter()
        .map(|it| it["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["b-0", "b-1", "b-2", "b-3", "new"]);
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM mana_ai.mission_runs r JOIN sync_changes c ON c.id = r.change_id
             WHERE c.client_id = 'mana-ai-runner' AND r.state = 'done'"
        )
        .await,
        1,
        "the write-back's row is recorded with its slot"
    );
}

/// A measurement, not a check (issue 8, item 3):
/// `cargo test --test runs_robust measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_a_run_with_10_and_with_10000_iterations() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let step = |i: usize| {
        json!({"id": format!("s{i}"), "summary": "Aufgabe anlegen: Montag planen", "status": "approved",
               "intent": {"kind": "toolCall", "toolName": "create_task", "params": {"title": "Montag planen"}}})
    };
    for n in [10usize, 10_000] {
        let its: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": format!("it-{i}"), "startedAt": "2026-01-01T00:00:00.000Z",
                       "finishedAt": "2026-01-01T00:00:01.000Z", "summary": "Woche geplant",
                       "source": "server", "overallStatus": "approved",
                       "plan": [step(0), step(1), step(2)]})
            })
            .collect();
        let due_later = json!({"iterations": its, "nextRunAt": common::iso_in(3600)});
        seed(&t, "ole", &format!("m{n}"), due_later).await;
    }
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_AI_MAX_FIELD_BYTES", "67108864"),
        ])
        .await;
    for n in [10usize, 10_000] {
        let id = format!("m{n}");
        eventually("snapshot", || async {
            t.mission("ole", &id).await.is_some()
        })
        .await;
        let row = t
            .admin()
            .await
            .query_one(
                "SELECT octet_length(record::text),
                        octet_length((record || jsonb_build_object('iterations',
                            jsonb_path_query_array(record->'iterations', '$[last-2 to last]')))::text)
                 FROM mana_ai.mission_snapshots WHERE mission_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let (whole, read): (i32, i32) = (row.get(0), row.get(1));
        let started = std::time::Instant::now();
        let due = json!({"nextRunAt": common::iso_in(-1)});
        browser_row(&t, "ole", "aiMissions", &id, "update", due).await;
        eventually("written", || async {
            count(&t, &format!("SELECT count(*) FROM mana_ai.mission_runs WHERE mission_id = '{id}' AND state = 'done'")).await == 1
        })
        .await;
        let written = started.elapsed();
        let run: f64 = t
            .admin()
            .await
            .query_one(
                "SELECT extract(epoch FROM finished_at - claimed_at)::float8 FROM mana_ai.mission_runs WHERE mission_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        eventually("folded", || async {
            t.mission("ole", &id)
                .await
                .is_some_and(|(r, _, _)| snapshot_iterations(&r).len() == n + 1)
        })
        .await;
        eprintln!(
            "{n:>6} iterations: record {whole} bytes, the run reads {read} bytes; claim to done {:.1} ms; due to done {:?}; due to folded {:?}",
            run * 1e3,
            written,
            started.elapsed()
        );
    }
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writeback_set_aside_is_reported_as_a_stalled_mission() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let slot = common::iso_in(-5);
    seed(&t, "pia", "m1", json!({"nextRunAt": slot})).await;
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    written_once(&t).await;
    lead.settled().await;
    // As if the applier had set the write-back aside (any poison reason):
    // the snapshot keeps the written slot.
    let admin = t.admin().await;
    admin
        .execute(
            "INSERT INTO mana_ai.dead_changes (queue_id, change_id, user_id, table_name, reason, detail)
             SELECT 0, change_id, user_id, 'aiMissions', 'apply-failed', 'test'
             FROM mana_ai.mission_runs WHERE mission_id = 'm1'",
            &[],
        )
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE mana_ai.mission_snapshots SET next_run_at = $1::text, next_run_ts = $1::text::timestamptz
             WHERE mission_id = 'm1'",
            &[&slot],
        )
        .await
        .unwrap();
    let outcome = lead.runner().run_one("pia", "m1", None).await;
    assert_eq!(outcome, mana_ai::run::Outcome::AlreadyDone);
    let stalled = lead
        .metrics
        .missions_stalled
        .with_label_values(&["write-back-set-aside"]);
    assert_eq!(stalled.get(), 1);
    let client = t.pool.get().await.unwrap();
    let blocked = mana_ai::run::stall::blocked(&**client, "pia")
        .await
        .unwrap();
    assert_eq!(blocked["m1"]["reason"], "write-back-set-aside");
    assert_eq!(blocked["m1"]["detail"], "apply-failed");
    assert!(captured_logs().contains("the mission cannot advance: its write-back was set aside"));

    // A cadence that does not parse: written with no next run, and said so.
    let odd = json!({"cadence": {"kind": "interval", "everyMinutes": "oft"}});
    seed(&t, "pia", "m2", odd).await;
    eventually("m2 written", || async {
        t.writebacks("pia", "m2").await.len() == 1
    })
    .await;
    lead.settled().await;
    assert_eq!(
        t.folded_mission("pia", "m2").await["nextRunAt"],
        Value::Null
    );
    let no_next = lead
        .metrics
        .missions_stalled
        .with_label_values(&["no-next-run"]);
    assert_eq!(no_next.get(), 1);
    eventually(
        "m2 shown as blocked once its write-back is folded",
        || async {
            let blocked = mana_ai::run::stall::blocked(&**client, "pia")
                .await
                .unwrap();
            blocked
                .get("m2")
                .is_some_and(|b| b["reason"] == "no-next-run")
        },
    )
    .await;
    lead.stop().await;
}

async fn written_once(t: &TestDb) {
    eventually("written", || async {
        t.writebacks("pia", "m1").await.len() == 1
    })
    .await;
}
