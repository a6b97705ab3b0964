//! The reactor against a real Postgres: sync_changes insert -> trigger ->
//! queue -> applier -> snapshot -> timer wheel.

mod common;

use std::time::Duration;

use common::{eventually, iso_in, setup, write, Change, TestDb};
use mana_ai::schedule::wheel::parse_next_run;
use serde_json::json;

both_generations!(
    a_mission_written_by_a_browser_is_snapshotted_and_armed,
    changes_committed_while_stopped_are_applied_on_start,
    the_safety_sweep_applies_changes_no_notification_announced,
    poison_rows_are_set_aside_and_counted_while_good_rows_apply,
    a_change_committed_after_a_later_one_is_still_applied,
);

async fn a_mission_written_by_a_browser_is_snapshotted_and_armed(t: TestDb) {
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let next = iso_in(3600);
    write(
        &mut sync,
        &[Change::mission(
            "alice",
            "m1",
            "insert",
            json!({"title": "Lesen", "state": "active", "nextRunAt": next, "cadence": {"kind": "daily", "atHour": 9, "atMinute": 0}}),
        )],
    )
    .await;
    run.processed(1).await;
    let (record, deleted, count) = t.mission("alice", "m1").await.expect("snapshot");
    assert_eq!(record["title"], "Lesen");
    assert_eq!(record["id"], "m1");
    assert!(!deleted);
    assert_eq!(count, 1);
    let armed = run.reactor.wheel.armed_at("alice", "m1").await;
    assert_eq!(armed, parse_next_run(&next));
    assert_eq!(run.metrics.snapshots_new.get(), 1);
    assert!(run.metrics.notifications_received.get() >= 1);

    // An update moves the timer.
    let later = iso_in(7200);
    write(
        &mut sync,
        &[Change::mission(
            "alice",
            "m1",
            "update",
            json!({"nextRunAt": later, "title": "Mehr lesen"}),
        )],
    )
    .await;
    run.processed(2).await;
    assert_eq!(
        run.reactor.wheel.armed_at("alice", "m1").await,
        parse_next_run(&later)
    );
    assert_eq!(
        t.mission("alice", "m1").await.unwrap().0["title"],
        "Mehr lesen"
    );

    // A field stamped before the current one loses (a stale device syncing late).
    let mut stale = Change::mission("alice", "m1", "update", json!({"title": "Alt"}));
    stale.stamps = json!({"title": "2001-01-01T00:00:00.000Z"});
    write(&mut sync, &[stale]).await;
    run.processed(3).await;
    let (record, _, count) = t.mission("alice", "m1").await.unwrap();
    assert_eq!(record["title"], "Mehr lesen");
    assert_eq!(count, 3);

    // Paused: disarmed. Active again: armed.
    write(
        &mut sync,
        &[Change::mission(
            "alice",
            "m1",
            "update",
            json!({"state": "paused"}),
        )],
    )
    .await;
    run.processed(4).await;
    assert_eq!(run.reactor.wheel.armed_at("alice", "m1").await, None);
    write(
        &mut sync,
        &[Change::mission(
            "alice",
            "m1",
            "update",
            json!({"state": "active"}),
        )],
    )
    .await;
    run.processed(5).await;
    assert!(run.reactor.wheel.armed_at("alice", "m1").await.is_some());

    // deletedAt deletes and disarms; a newer row clearing it restores it.
    write(
        &mut sync,
        &[Change::mission(
            "alice",
            "m1",
            "update",
            json!({"deletedAt": "2026-01-01T00:00:00.000Z"}),
        )],
    )
    .await;
    run.processed(6).await;
    assert!(t.mission("alice", "m1").await.unwrap().1, "deleted");
    assert_eq!(run.reactor.wheel.armed_at("alice", "m1").await, None);
    write(
        &mut sync,
        &[Change::mission(
            "alice",
            "m1",
            "update",
            json!({"deletedAt": null, "nextRunAt": iso_in(60)}),
        )],
    )
    .await;
    run.processed(7).await;
    assert!(!t.mission("alice", "m1").await.unwrap().1, "restored");
    assert!(run.reactor.wheel.armed_at("alice", "m1").await.is_some());

    // op=delete on another mission.
    write(
        &mut sync,
        &[
            Change::mission(
                "alice",
                "m2",
                "insert",
                json!({"state": "active", "nextRunAt": iso_in(60)}),
            ),
            Change::mission("alice", "m2", "delete", json!(null)),
        ],
    )
    .await;
    run.processed(9).await;
    assert!(t.mission("alice", "m2").await.unwrap().1);
    assert_eq!(run.reactor.wheel.armed_at("alice", "m2").await, None);

    // Agents land in agent_snapshots.
    let mut agent = Change::mission(
        "alice",
        "a1",
        "insert",
        json!({"name": "Rechercheur", "role": "research", "state": "active"}),
    );
    agent.table = "agents";
    write(&mut sync, &[agent]).await;
    run.processed(10).await;
    let c = t.pool.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT record->>'name', deleted FROM mana_ai.agent_snapshots WHERE user_id = 'alice' AND agent_id = 'a1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Rechercheur");
    assert!(!row.get::<_, bool>(1));
    let queued: i64 = c
        .query_one("SELECT count(*) FROM mana_ai.change_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);
    run.reactor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_mission_is_handed_to_the_runner() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let past = iso_in(-86_400 * 30);
    write(
        &mut sync,
        &[
            Change::mission(
                "bob",
                "late",
                "insert",
                json!({"state": "active", "nextRunAt": past}),
            ),
            Change::mission(
                "bob",
                "soon",
                "insert",
                json!({"state": "active", "nextRunAt": iso_in(1)}),
            ),
            Change::mission(
                "bob",
                "never",
                "insert",
                json!({"state": "active", "nextRunAt": "someday"}),
            ),
        ],
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(10), run.due.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.user_id.as_str(), first.mission_id.as_str()),
        ("bob", "late")
    );
    let second = tokio::time::timeout(Duration::from_secs(10), run.due.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.mission_id, "soon");
    assert!(second.fired_at >= second.due_at);
    assert_eq!(run.metrics.wheel_unparseable.get(), 1);
    assert_eq!(run.metrics.missions_due.get(), 2);
    run.reactor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_loses_nothing_in_a_burst_of_ten_thousand() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    let admin = t.admin().await;
    let db = t.db.name.clone();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = t.db.url_as(pgtemp::SYNC_ROLE);
            tokio::spawn(async move {
                let mut sync = pgtemp::connect(&url).await.unwrap();
                let user = format!("user{w}");
                // 25 transactions of 100 changes per writer: 10,000 in all.
                for tx in 0..25 {
                    let ids: Vec<String> = (0..100)
                        .map(|i| format!("m{}", (tx * 100 + i) % 50))
                        .collect();
                    let changes: Vec<Change> = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            Change::mission(
                                &user,
                                id,
                                "update",
                                json!({"title": format!("t{tx}-{i}"), "state": "active"}),
                            )
                        })
                        .collect();
                    write(&mut sync, &changes).await;
                }
            })
        })
        .collect();
    // Kill the listener's backend a few times while the writers run.
    let mut kills = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'mana-ai-listener'",
                &[&db],
            )
            .await
            .unwrap();
        kills += n;
        if writers.iter().all(|w| w.is_finished()) {
            break;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(kills >= 1, "the listener was killed at least once");
    run.processed(10_000).await;
    let c = t.pool.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT coalesce(sum(change_count), 0)::int8, count(*) FROM mana_ai.mission_snapshots",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        10_000,
        "every change applied exactly once"
    );
    assert_eq!(row.get::<_, i64>(1), 200);
    let dead: i64 = c
        .query_one("SELECT count(*) FROM mana_ai.dead_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    assert!(run.metrics.listener_reconnects.get() >= 1);
    assert_eq!(
        *run.reactor.processed.borrow(),
        10_000,
        "none processed twice"
    );
    run.reactor.stop().await;
}

async fn changes_committed_while_stopped_are_applied_on_start(t: TestDb) {
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(
            "carol",
            "m0",
            "insert",
            json!({"state": "active", "nextRunAt": iso_in(600)}),
        )],
    )
    .await;
    run.processed(1).await;
    run.reactor.stop().await;

    for i in 0..20 {
        let id = format!("m{}", i % 5);
        write(
            &mut sync,
            &[Change::mission(
                "carol",
                &id,
                "update",
                json!({"state": "active", "nextRunAt": iso_in(900), "n": i}),
            )],
        )
        .await;
    }
    let mut again = t.start(&[]).await;
    assert_eq!(
        again.reactor.rebuilt, 1,
        "the wheel is rebuilt from snapshots"
    );
    again.processed(20).await;
    let c = t.pool.get().await.unwrap();
    let total: i64 = c
        .query_one(
            "SELECT sum(change_count)::int8 FROM mana_ai.mission_snapshots",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 21);
    for m in 0..5 {
        assert!(again
            .reactor
            .wheel
            .armed_at("carol", &format!("m{m}"))
            .await
            .is_some());
    }
    again.reactor.stop().await;
}

async fn the_safety_sweep_applies_changes_no_notification_announced(t: TestDb) {
    let mut run = t
        .start(&[
            ("MANA_AI_LISTEN_CHANNEL", "mana_ai_nobody_notifies"),
            ("MANA_AI_SWEEP_INTERVAL_SECS", "1"),
        ])
        .await;
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(
            "dave",
            "m1",
            "insert",
            json!({"state": "active", "nextRunAt": iso_in(600)}),
        )],
    )
    .await;
    run.processed(1).await;
    assert!(t.mission("dave", "m1").await.is_some());
    assert_eq!(run.metrics.notifications_received.get(), 0);
    assert_eq!(run.metrics.sweep_rows_found.get(), 1);
    run.reactor.stop().await;
}

async fn poison_rows_are_set_aside_and_counted_while_good_rows_apply(t: TestDb) {
    let admin = t.admin().await;
    // The contract's CHECK forbids unknown ops; a sync server bug could still
    // write one, so the fixture drops the constraint for this test.
    admin
        .batch_execute("ALTER TABLE sync_changes DROP CONSTRAINT sync_changes_op_check")
        .await
        .unwrap();
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let long_id = "x".repeat(10_000);
    let huge = "y".repeat(5 * 1024 * 1024);
    write(
        &mut sync,
        &[
            Change::mission(
                "erin",
                "good1",
                "insert",
                json!({"state": "active", "nextRunAt": iso_in(60)}),
            ),
            Change::mission("erin", "p-array", "insert", json!([1, 2, 3])),
            Change::mission("erin", "p-next", "insert", json!({"nextRunAt": 12345})),
            Change::mission("erin", "p-huge", "insert", json!({"conceptMarkdown": huge})),
            Change::mission("erin", "p-op", "upsert", json!({"title": "x"})),
            Change::mission("erin", &long_id, "insert", json!({"title": "x"})),
            Change::mission(
                "erin",
                "good2",
                "insert",
                json!({"state": "active", "nextRunAt": iso_in(60)}),
            ),
        ],
    )
    .await;
    run.processed(7).await;
    assert!(t.mission("erin", "good1").await.is_some());
    assert!(t.mission("erin", "good2").await.is_some());
    assert!(run.reactor.wheel.armed_at("erin", "good2").await.is_some());
    let c = t.pool.get().await.unwrap();
    let reasons: Vec<String> = c
        .query(
            "SELECT reason FROM mana_ai.dead_changes ORDER BY queue_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        reasons,
        [
            "data-not-object",
            "next-run-at-not-string",
            "field-too-large",
            "unknown-op",
            "record-id-too-long"
        ]
    );
    let long: (Option<String>, Option<i32>) = c
        .query_one("SELECT record_id, record_id_length FROM mana_ai.dead_changes WHERE reason = 'record-id-too-long'", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(long.0.map(|s| s.len()), Some(200));
    assert_eq!(long.1, Some(10_000));
    let text = run.metrics.render();
    assert!(
        text.contains("mana_ai_poison_changes_total{reason=\"field-too-large\"} 1"),
        "{text}"
    );
    assert_eq!(run.metrics.snapshot_rows_applied.get(), 2);

    // The reactor keeps going after poison.
    write(
        &mut sync,
        &[Change::mission(
            "erin",
            "good3",
            "insert",
            json!({"state": "active"}),
        )],
    )
    .await;
    run.processed(8).await;
    assert!(t.mission("erin", "good3").await.is_some());
    run.reactor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_role_sees_one_user_at_a_time_and_is_not_privileged() {
    let t = setup().await;
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(
            "frank",
            "m1",
            "insert",
            json!({"title": "frank's"}),
        )],
    )
    .await;
    write(
        &mut sync,
        &[Change::mission(
            "gina",
            "m1",
            "insert",
            json!({"title": "gina's"}),
        )],
    )
    .await;
    let mut svc = t.pool.get().await.unwrap();
    let row = svc
        .query_one(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1));
    // Outside any user scope: nothing.
    let unscoped: i64 = svc
        .query_one("SELECT count(*) FROM sync_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unscoped, 0);
    let tx = mana_ai::db::begin_user(&mut svc, "frank").await.unwrap();
    let titles: Vec<String> = tx
        .query("SELECT data->>'title' FROM sync_changes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(titles, ["frank's"]);
    // Writing as another user inside frank's scope is refused by the policy.
    let err = tx
        .execute(
            "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             VALUES ('ai', 'aiMissions', 'x', 'gina', 'update', '{}', 'mana-ai-runner')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("row-level security"),
        "{err}"
    );
    drop(tx);
    assert!(matches!(
        mana_ai::db::begin_user(&mut svc, "").await,
        Err(mana_ai::db::ScopeError::EmptyUserId)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_changes_column_of_another_type_is_retried_and_nothing_is_lost() {
    let t = setup().await;
    let admin = t.admin().await;
    // sync_changes is the sync server's table: a migration there could
    // change a column's type. That is an error to retry, never a panic.
    admin
        .batch_execute("ALTER TABLE sync_changes ALTER COLUMN created_at TYPE timestamp")
        .await
        .unwrap();
    let run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(
            "finn",
            "m1",
            "insert",
            json!({"state": "active", "nextRunAt": iso_in(60)}),
        )],
    )
    .await;
    eventually("the failed apply is counted", || async {
        run.metrics.apply_errors.get() >= 1
    })
    .await;
    assert!(t.mission("finn", "m1").await.is_none());
    admin
        .batch_execute("ALTER TABLE sync_changes ALTER COLUMN created_at TYPE timestamptz")
        .await
        .unwrap();
    eventually("applied once the column is right again", || async {
        t.mission("finn", "m1").await.is_some()
    })
    .await;
    let dead: i64 = t
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM mana_ai.dead_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "not poison: kept in the queue and applied");
}

/// Queue ids are drawn in order but committed in any order: a change whose
/// transaction commits after a later one's was claimed is still applied
/// (the claim's low-water mark keeps the skipped id open while its
/// transaction runs, however many claims pass it by).
async fn a_change_committed_after_a_later_one_is_still_applied(t: TestDb) {
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let mission = |id: &'static str| {
        Change::mission(
            "erin",
            id,
            "insert",
            json!({"state": "active", "nextRunAt": iso_in(600)}),
        )
    };
    write(&mut sync, &[mission("m0")]).await;
    run.processed(1).await;

    // m1's transaction draws its queue id first and stays open.
    let mut slow = t.sync_client().await;
    let open = mana_ai::db::begin_user(&mut slow, "erin").await.unwrap();
    let stamps = t.generation.stamps_column();
    let insert = format!(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, {stamps}, client_id)
         VALUES ('ai', 'aiMissions', 'm1', 'erin', 'insert', $1, '{{}}', 'slow-browser')"
    );
    open.execute(
        &insert,
        &[&json!({"state": "active", "nextRunAt": iso_in(600)})],
    )
    .await
    .unwrap();
    write(&mut sync, &[mission("m2")]).await;
    run.processed(2).await;
    // Claims go on past the open id for longer than a hole's minimum age.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write(&mut sync, &[mission("m3")]).await;
    run.processed(3).await;
    assert!(t.mission("erin", "m1").await.is_none());

    open.commit().await.unwrap();
    run.processed(4).await;
    assert!(t.mission("erin", "m1").await.is_some(), "m1 applied");
    assert_eq!(
        t.count("SELECT count(*) FROM mana_ai.change_queue").await,
        0
    );
    run.reactor.stop().await;
}
