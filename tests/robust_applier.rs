//! Issue 8: no row may stop the applier. Whatever one user's change holds
//! (JSON nested past any decoder's limit, a number no decoder converts) or
//! whatever a snapshot holds, that change is set aside with a reason and
//! every other user's changes behind it apply.

mod common;

use std::time::Duration;

use common::{iso_in, setup, write, Change, Running, TestDb};
use serde_json::json;

/// `{"deep": [[...["x"]...]]}`: the whole document `depth` levels deep.
fn nested_data(depth: usize) -> String {
    assert!(depth >= 2);
    let arrays = depth - 1;
    format!(
        "{{\"deep\": {}\"x\"{}}}",
        "[".repeat(arrays),
        "]".repeat(arrays)
    )
}

/// Inserts one change whose `data` is given as JSON text (what a sync
/// server stores; no client-side decoder involved), every top-level key
/// stamped now (the database's clock).
async fn write_text(t: &TestDb, user: &str, record: &str, op: &str, data: &str) {
    let mut client = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
         SELECT 'ai', 'aiMissions', $1, $2, $3, d,
                CASE WHEN jsonb_typeof(d) = 'object' THEN
                  (SELECT coalesce(jsonb_object_agg(k, to_char(now() AT TIME ZONE 'UTC',
                            'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')), '{}')
                   FROM jsonb_object_keys(d) k)
                ELSE '{}' END,
                'test-browser'
         FROM (SELECT ($4::text)::jsonb AS d) src",
        &[&record, &user, &op, &data],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Waits at most 20 s for `n` processed queue rows.
async fn processed(run: &mut Running, n: u64) {
    let waited = tokio::time::timeout(Duration::from_secs(20), run.reactor.wait_processed(n)).await;
    assert!(
        waited.is_ok(),
        "only {} of {n} changes processed in 20 s (apply errors: {})",
        *run.reactor.processed.borrow(),
        run.metrics.apply_errors.get()
    );
}

/// Other users' changes, written after the bad one: they must all apply.
async fn others_write(t: &TestDb) {
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(
            "bob",
            "b1",
            "insert",
            json!({"state": "active", "nextRunAt": iso_in(600)}),
        )],
    )
    .await;
    write(
        &mut sync,
        &[Change {
            user: "carol",
            table: "agents",
            record: "a1",
            op: "insert",
            data: json!({"name": "A", "state": "active"}),
            stamps: json!({}),
        }],
    )
    .await;
}

async fn others_applied(t: &TestDb, run: &Running) {
    assert!(t.mission("bob", "b1").await.is_some(), "bob's mission");
    assert!(run.reactor.wheel.armed_at("bob", "b1").await.is_some());
    let agents: i64 = t
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM mana_ai.agent_snapshots WHERE user_id = 'carol'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(agents, 1, "carol's agent");
}

/// (reason, detail) of every set-aside change, oldest first.
async fn dead(t: &TestDb) -> Vec<(String, String)> {
    t.pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT reason, detail FROM mana_ai.dead_changes ORDER BY queue_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_200_levels_is_set_aside_and_other_users_apply() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    write_text(&t, "alice", "m1", "insert", &nested_data(200)).await;
    others_write(&t).await;
    processed(&mut run, 3).await;
    others_applied(&t, &run).await;
    let dead = dead(&t).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "json-too-deep");
    assert!(dead[0].1.contains("data"), "{dead:?}");
    assert!(t.mission("alice", "m1").await.is_none());
    let text = run.metrics.render();
    assert!(
        text.contains("mana_ai_poison_changes_total{reason=\"json-too-deep\"} 1"),
        "{text}"
    );
    run.reactor.stop().await;
}

/// Just under serde_json's limit (128) the row decodes, but it is over the
/// nesting limit (100, which leaves the stored snapshot room below 127): it
/// is set aside, and the next changes of the record fold as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_just_under_the_decoders_limit_then_an_update_of_the_record() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    write_text(&t, "alice", "m1", "insert", &nested_data(127)).await;
    processed(&mut run, 1).await;
    write_text(&t, "alice", "m1", "update", r#"{"deep": "shallow"}"#).await;
    processed(&mut run, 2).await;
    write_text(&t, "alice", "m1", "update", r#"{"title": "t"}"#).await;
    others_write(&t).await;
    processed(&mut run, 5).await;
    others_applied(&t, &run).await;
    let (record, _, count) = t.mission("alice", "m1").await.expect("alice's m1");
    assert_eq!(record["deep"], "shallow");
    assert_eq!(record["title"], "t");
    assert_eq!(count, 2);
    let dead = dead(&t).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "json-too-deep");
    run.reactor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_no_decoder_converts_is_set_aside() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    write_text(&t, "alice", "m1", "insert", r#"{"n": 1e400}"#).await;
    others_write(&t).await;
    processed(&mut run, 3).await;
    others_applied(&t, &run).await;
    let dead = dead(&t).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "json-undecodable");
    run.reactor.stop().await;
}

/// A snapshot whose `fold_state` cannot be read back (corrupted by hand
/// here): the record's next change is set aside, the rest apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_fold_state_sets_the_change_aside_and_later_rows_apply() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    write_text(&t, "alice", "m1", "insert", r#"{"title": "a"}"#).await;
    write_text(&t, "alice", "m2", "insert", r#"{"title": "a"}"#).await;
    processed(&mut run, 2).await;
    let admin = t.admin().await;
    admin
        .execute(
            "UPDATE mana_ai.mission_snapshots SET fold_state = ($1::text)::jsonb
             WHERE user_id = 'alice' AND mission_id = 'm1'",
            &[&nested_data(200)],
        )
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE mana_ai.mission_snapshots SET record = '{\"n\": 1e400}'
             WHERE user_id = 'alice' AND mission_id = 'm2'",
            &[],
        )
        .await
        .unwrap();
    write_text(&t, "alice", "m1", "update", r#"{"title": "b"}"#).await;
    write_text(&t, "alice", "m2", "update", r#"{"title": "b"}"#).await;
    write_text(&t, "alice", "m3", "insert", r#"{"title": "c"}"#).await;
    others_write(&t).await;
    processed(&mut run, 7).await;
    others_applied(&t, &run).await;
    assert!(t.mission("alice", "m3").await.is_some());
    let dead = dead(&t).await;
    let reasons: Vec<&str> = dead.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(
        reasons,
        ["snapshot-unreadable", "snapshot-unreadable"],
        "{dead:?}"
    );
    assert!(dead[0].1.contains("fold_state"), "{dead:?}");
    assert!(dead[1].1.contains("record"), "{dead:?}");
    run.reactor.stop().await;
}

/// The service's ANALYZE runs beside the applier, never in its way: held
/// up here by a lock that conflicts with ANALYZE alone (SHARE UPDATE
/// EXCLUSIVE), it must not keep the next change from its snapshot. Inline,
/// every user's changes waited for it; an ANALYZE of large snapshot tables
/// took 0.3 to 0.5 s (`reactor-bench --only backfill`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyze_waiting_on_a_lock_does_not_hold_up_the_applier() {
    let t = setup().await;
    let mut run = t.start(&[("MANA_AI_ANALYZE_AFTER_ROWS", "1")]).await;
    let mut admin = t.admin().await;
    let lock = admin.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE mana_ai.mission_snapshots IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut sync = t.sync_client().await;
    let first = Change::mission("erin", "m1", "insert", json!({"title": "a"}));
    write(&mut sync, &[first]).await;
    processed(&mut run, 1).await;
    common::eventually("the ANALYZE is waiting for the lock", || async {
        let waiting = "SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND query LIKE 'ANALYZE mana_ai.%'
                         AND wait_event_type = 'Lock'";
        t.count_as_admin(waiting).await == 1
    })
    .await;
    let second = Change::mission("frank", "m2", "insert", json!({"title": "b"}));
    write(&mut sync, &[second]).await;
    processed(&mut run, 2).await;
    assert!(t.mission("frank", "m2").await.is_some());
    lock.rollback().await.unwrap();
    common::eventually("the ANALYZE ended once the lock was gone", || async {
        run.metrics.snapshot_analyzes.get() >= 1
    })
    .await;
    run.reactor.stop().await;
}

/// Issue 8, statistics: a drain that applied many changes ANALYZEs the
/// snapshot tables (the threshold lowered to 100 here), so plans made while
/// they were empty do not outlive a backfill until autovacuum comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_drain_analyzes_the_snapshot_tables() {
    let t = setup().await;
    let reltuples = || async {
        let c = t.pool.get().await.unwrap();
        let row = c
            .query_one(
                "SELECT (SELECT reltuples FROM pg_class WHERE oid = 'mana_ai.mission_snapshots'::regclass),
                        (SELECT reltuples FROM pg_class WHERE oid = 'mana_ai.agent_snapshots'::regclass)",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, f32>(0), row.get::<_, f32>(1))
    };
    assert_eq!(reltuples().await, (-1.0, -1.0), "never analyzed yet");
    let mut run = t.start(&[("MANA_AI_ANALYZE_AFTER_ROWS", "100")]).await;
    let ids: Vec<String> = (0..150).map(|i| format!("m{i}")).collect();
    let changes: Vec<Change> = ids
        .iter()
        .map(|id| Change::mission("dora", id, "insert", json!({"title": "x"})))
        .collect();
    let mut sync = t.sync_client().await;
    write(&mut sync, &changes).await;
    processed(&mut run, 150).await;
    common::eventually("the snapshot tables were analyzed", || async {
        run.metrics.snapshot_analyzes.get() >= 1
    })
    .await;
    assert_eq!(reltuples().await, (150.0, 0.0));
    run.reactor.stop().await;
}
